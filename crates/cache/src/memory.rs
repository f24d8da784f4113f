//! The in-memory provider: a size-bounded `moka` cache in this process, with a tag index.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::Expiry;
use moka::ops::compute::Op;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{Cache, Error, validate_name, validate_set};

/// How many `set`s happen between two prunings of the tag index.
const PRUNE_EVERY: u64 = 1024;

/// Configuration of a [`MemoryCache`]: `{ "max_capacity_bytes": 67108864 }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryOptions {
    /// Upper bound of the cache's weight (key + value + tag bytes); least useful entries are
    /// evicted beyond it. Default 64 MiB.
    pub max_capacity_bytes: u64,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            max_capacity_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A per-process cache on `moka`. Cheap to clone (clones share the entries).
///
/// Contract: as the crate docs say, within this process only; nothing is shared with other
/// processes and nothing survives a restart. TTLs are per entry. Eviction under the capacity bound
/// can drop entries before their TTL.
#[derive(Clone)]
pub struct MemoryCache {
    inner: Arc<Inner>,
}

struct Inner {
    entries: moka::future::Cache<String, Arc<Stored>>,
    /// tag → keys that were set with it. May hold keys that expired or were overwritten without
    /// the tag: invalidation checks the entry's own tags, and pruning drops missing keys.
    tags: Mutex<HashMap<String, HashSet<String>>>,
    sets_since_prune: AtomicU64,
}

struct Stored {
    value: Bytes,
    tags: Box<[String]>,
    ttl: Duration,
}

/// Each entry expires after its own TTL, counted from its last write.
struct TtlPerEntry;

impl Expiry<String, Arc<Stored>> for TtlPerEntry {
    fn expire_after_create(
        &self,
        _key: &String,
        stored: &Arc<Stored>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(stored.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        stored: &Arc<Stored>,
        _updated_at: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(stored.ttl)
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new(&MemoryOptions::default())
    }
}

impl MemoryCache {
    /// An empty cache bounded by `options.max_capacity_bytes`.
    pub fn new(options: &MemoryOptions) -> Self {
        let entries = moka::future::Cache::builder()
            .max_capacity(options.max_capacity_bytes)
            .weigher(|key: &String, stored: &Arc<Stored>| {
                let tags: usize = stored.tags.iter().map(String::len).sum();
                u32::try_from(key.len() + stored.value.len() + tags).unwrap_or(u32::MAX)
            })
            .expire_after(TtlPerEntry)
            .build();
        Self {
            inner: Arc::new(Inner {
                entries,
                tags: Mutex::new(HashMap::new()),
                sets_since_prune: AtomicU64::new(0),
            }),
        }
    }

    /// Drops index entries of keys that are no longer cached.
    fn prune_tag_index(&self) {
        let entries = &self.inner.entries;
        self.inner.tags.lock().retain(|_, keys| {
            keys.retain(|key| entries.contains_key(key));
            !keys.is_empty()
        });
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        validate_name("get", "key", key)?;
        Ok(self
            .inner
            .entries
            .get(key)
            .await
            .map(|stored| stored.value.clone()))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        tags: &[&str],
    ) -> Result<(), Error> {
        validate_set(key, ttl, tags)?;
        let stored = Arc::new(Stored {
            value,
            tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
            ttl,
        });
        // Entry first, index second: an invalidation running in between cannot miss the entry
        // later, because the key reaches the index after the entry exists.
        self.inner
            .entries
            .entry(key.to_owned())
            .and_compute_with(|_| async { Op::Put(stored) })
            .await;
        if !tags.is_empty() {
            let mut index = self.inner.tags.lock();
            for tag in tags {
                index
                    .entry((*tag).to_owned())
                    .or_default()
                    .insert(key.to_owned());
            }
        }
        if self.inner.sets_since_prune.fetch_add(1, Ordering::Relaxed) + 1 >= PRUNE_EVERY {
            self.inner.sets_since_prune.store(0, Ordering::Relaxed);
            self.prune_tag_index();
        }
        Ok(())
    }

    async fn invalidate(&self, key: &str) -> Result<(), Error> {
        validate_name("invalidate", "key", key)?;
        self.inner
            .entries
            .entry(key.to_owned())
            .and_compute_with(|_| async { Op::Remove })
            .await;
        Ok(())
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), Error> {
        validate_name("invalidate_tag", "tag", tag)?;
        let keys = self.inner.tags.lock().remove(tag).unwrap_or_default();
        for key in keys {
            // Per key, atomically: remove only if the current entry still carries the tag.
            self.inner
                .entries
                .entry(key)
                .and_compute_with(|current| async move {
                    match current {
                        Some(entry) if entry.value().tags.iter().any(|t| t == tag) => Op::Remove,
                        _ => Op::Nop,
                    }
                })
                .await;
        }
        Ok(())
    }
}
