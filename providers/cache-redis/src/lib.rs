//! Redis provider of the Gorgon cache: a [`Cache`] shared by every instance that uses the same
//! Redis and namespace.
//!
//! # How to use it
//! 1. Deserialize an [`Options`] from configuration (`url`, optionally `namespace`).
//! 2. [`RedisCache::connect`].
//! 3. Hold it as `Arc<dyn gorgon_cache::Cache>`; use `get_json` / `set_json` from
//!    [`gorgon_cache::CacheExt`].
//!
//! # How it works
//! ```text
//!  <ns>e:<key>   hash { v: value bytes, tags: JSON array of the entry's tags }, PEXPIRE = TTL
//!  <ns>t:<tag>   set of entry keys set with the tag; its TTL is stretched to its longest member
//!
//!  set             one Lua script: replace the hash, PEXPIRE, SADD to each tag set
//!  invalidate_tag  SMEMBERS, then Lua per batch: DEL members whose own tags still contain the tag
//! ```
//! TTLs are native Redis expiries, so an entry never outlives its TTL, whichever instance reads.
//!
//! # Contract
//! The [`gorgon_cache`] contract, **shared across instances**: a `set` or an invalidation by one
//! instance is visible to every instance's next `get` (one Redis server is the single copy). An
//! entry set while an `invalidate_tag` of its tag runs may survive it (it counts as set after).
//! Entries survive a restart of the application; across a Redis restart only as far as Redis
//! persistence does. Scripts touch several keys, so a Redis Cluster must map the namespace to
//! one slot (put it in braces: `{gorgon-cache}:`).
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gorgon_cache::{Cache, Error, validate_name, validate_set};
use redis::Script;
use redis::aio::ConnectionManager;
use serde::Deserialize;

/// Members invalidated per script call, so one call never blocks Redis for long.
const INVALIDATE_BATCH: usize = 256;

/// Configuration of a [`RedisCache`], deserializable from the application config:
/// `{ "url": "redis://127.0.0.1:6379", "namespace": "gorgon:cache:" }`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Connection URL, for example `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every Redis key this cache writes; instances that share entries use the same
    /// namespace. Default `gorgon:cache:`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

/// The URL may carry a password: it is shown as `[redacted]`.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &"[redacted]")
            .field("namespace", &self.namespace)
            .finish()
    }
}

fn default_namespace() -> String {
    "gorgon:cache:".into()
}

impl Options {
    /// Options with the given URL and the default namespace.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: default_namespace(),
        }
    }
}

/// KEYS: entry, tag sets… ARGV: value, ttl ms, tags as JSON.
const SET: &str = r"
local ttl = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'tags', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
";

/// KEYS: tag set, member entries… ARGV: tag. Returns how many entries were deleted.
const INVALIDATE_TAG: &str = r"
local removed = 0
for i = 2, #KEYS do
  local tags = redis.call('HGET', KEYS[i], 'tags')
  if tags then
    for _, tag in ipairs(cjson.decode(tags)) do
      if tag == ARGV[1] then
        redis.call('DEL', KEYS[i])
        removed = removed + 1
        break
      end
    end
  end
  redis.call('SREM', KEYS[1], KEYS[i])
end
return removed
";

/// A [`Cache`] backed by Redis. Cheap to clone (clones share one multiplexed connection, which
/// reconnects by itself).
#[derive(Clone)]
pub struct RedisCache {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    namespace: String,
    set: Script,
    invalidate_tag: Script,
}

impl RedisCache {
    /// Connects to `options.url`.
    pub async fn connect(options: &Options) -> Result<Self, Error> {
        let fail = |error: redis::RedisError| Error::backend("connect", &options.namespace, error);
        let client = redis::Client::open(options.url.as_str()).map_err(fail)?;
        let connection = ConnectionManager::new(client).await.map_err(fail)?;
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                namespace: options.namespace.clone(),
                set: Script::new(SET),
                invalidate_tag: Script::new(INVALIDATE_TAG),
            }),
        })
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}e:{key}", self.inner.namespace)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.inner.namespace)
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        validate_name("get", "key", key)?;
        let mut connection = self.inner.connection.clone();
        let value: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.entry_key(key))
            .arg("v")
            .query_async(&mut connection)
            .await
            .map_err(|error| Error::backend("get", key, error))?;
        Ok(value.map(Bytes::from))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        tags: &[&str],
    ) -> Result<(), Error> {
        validate_set(key, ttl, tags)?;
        let fail = |error: redis::RedisError| Error::backend("set", key, error);
        let tags_json =
            serde_json::to_string(tags).map_err(|error| Error::backend("set", key, error))?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.inner.set.prepare_invoke();
        invocation.key(self.entry_key(key));
        for tag in tags {
            invocation.key(self.tag_key(tag));
        }
        invocation.arg(value.as_ref()).arg(ttl_ms).arg(tags_json);
        let mut connection = self.inner.connection.clone();
        let _: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(fail)?;
        Ok(())
    }

    async fn invalidate(&self, key: &str) -> Result<(), Error> {
        validate_name("invalidate", "key", key)?;
        let mut connection = self.inner.connection.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.entry_key(key))
            .query_async(&mut connection)
            .await
            .map_err(|error| Error::backend("invalidate", key, error))?;
        Ok(())
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), Error> {
        validate_name("invalidate_tag", "tag", tag)?;
        let fail = |error: redis::RedisError| Error::backend("invalidate_tag", tag, error);
        let tag_key = self.tag_key(tag);
        let mut connection = self.inner.connection.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&tag_key)
            .query_async(&mut connection)
            .await
            .map_err(fail)?;
        for batch in members.chunks(INVALIDATE_BATCH) {
            let mut invocation = self.inner.invalidate_tag.prepare_invoke();
            invocation.key(&tag_key);
            for member in batch {
                invocation.key(member);
            }
            invocation.arg(tag);
            let _: i64 = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(fail)?;
        }
        Ok(())
    }
}
