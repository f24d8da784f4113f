//! Where a [`Notifier`](crate::Notifier) remembers the idempotency keys it sent: [`SentRecord`],
//! the per-process [`MemoryRecord`], and [`SharedRecord`] over the application's shared cache
//! and locks (Redis, PostgreSQL), which every worker of a cluster sees.
//!
//! ```text
//!  send(key) ─► record.hold(key) ─┬─ Sent(entry) ─► same request? replay : conflict
//!                                 └─ Free(hold) ─► provider.send ─ok─► hold.sent(entry)
//!                                                               └err─► hold dropped: nothing kept
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gorgon_cache::Cache;
use gorgon_locking::{LockKey, LockOptions, Locker, OwnerId};
use serde::{Deserialize, Serialize};

use crate::{Error, IdempotencyKey, Receipt};

/// A send the record kept: its receipt, and a hash of the request it answered (recipient,
/// channel, template, data), so that a key reused for another request is told apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentEntry {
    /// The receipt the first send returned.
    pub receipt: Receipt,
    /// SHA-256 of the request, hex.
    pub request_hash: String,
}

/// What [`SentRecord::hold`] found.
pub enum Held {
    /// The key was sent already.
    Sent(SentEntry),
    /// The key is this caller's to send: no other sender (in this process or, for a shared
    /// record, on any worker) holds it until the hold is done or dropped.
    Free(Box<dyn Hold>),
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Sent(entry) => f.debug_tuple("Sent").field(entry).finish(),
            Held::Free(_) => f.write_str("Free"),
        }
    }
}

/// A key held for one send; dropping it without [`sent`](Hold::sent) records nothing.
#[async_trait]
pub trait Hold: Send {
    /// Records the successful send, for the record's retention, and lets the key go.
    async fn sent(self: Box<Self>, entry: SentEntry) -> Result<(), Error>;
}

/// Where sent idempotency keys are remembered. Object-safe; held as `Arc<dyn SentRecord>`.
///
/// Contract: while one caller holds a key, another `hold` of it waits; a key recorded as sent
/// is returned as [`Held::Sent`] for the record's retention.
#[async_trait]
pub trait SentRecord: Send + Sync + std::fmt::Debug {
    /// Waits until no one else holds `key`, then returns what was sent under it, or holds it.
    async fn hold(&self, key: &IdempotencyKey) -> Result<Held, Error>;
}

type Slot = Arc<tokio::sync::Mutex<Option<(SentEntry, Instant)>>>;

/// The per-process record (the default): clones of one [`Notifier`](crate::Notifier) share it;
/// another process, or this one after a restart, does not see it. Keeps at most `capacity`
/// sends (the oldest forgotten first, logged) for at most `retention`.
#[derive(Debug)]
pub struct MemoryRecord {
    retention: Duration,
    capacity: usize,
    state: Arc<parking_lot::Mutex<Memory>>,
}

#[derive(Debug, Default)]
struct Memory {
    slots: HashMap<IdempotencyKey, Slot>,
    /// Keys in the order their sends were recorded, for the bound.
    order: VecDeque<IdempotencyKey>,
}

impl Memory {
    /// Forgets the slots nobody holds whose send is absent or older than `retention`, and the
    /// oldest sends beyond `capacity`.
    fn prune(&mut self, retention: Duration, capacity: usize) {
        let now = Instant::now();
        self.slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot.try_lock().map_or(true, |sent| {
                    sent.as_ref()
                        .is_some_and(|(_, at)| now.duration_since(*at) < retention)
                })
        });
        let slots = &self.slots;
        self.order.retain(|key| slots.contains_key(key));
        let mut forgotten = 0;
        while self.order.len() > capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.slots.remove(&oldest);
                forgotten += 1;
            }
        }
        if forgotten > 0 {
            tracing::warn!(
                forgotten,
                capacity,
                "the notification record is full: the oldest sent keys are forgotten"
            );
        }
    }
}

impl MemoryRecord {
    /// The default bound on kept sends.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A record keeping sends for `retention`, at most [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY).
    pub fn new(retention: Duration) -> Self {
        Self::with_capacity(retention, Self::DEFAULT_CAPACITY)
    }

    /// A record keeping at most `capacity` sends for `retention`.
    pub fn with_capacity(retention: Duration, capacity: usize) -> Self {
        MemoryRecord {
            retention,
            capacity: capacity.max(1),
            state: Arc::default(),
        }
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.state.lock().slots.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct MemoryHold {
    key: IdempotencyKey,
    slot: tokio::sync::OwnedMutexGuard<Option<(SentEntry, Instant)>>,
    state: Arc<parking_lot::Mutex<Memory>>,
    retention: Duration,
    capacity: usize,
}

#[async_trait]
impl Hold for MemoryHold {
    async fn sent(mut self: Box<Self>, entry: SentEntry) -> Result<(), Error> {
        *self.slot = Some((entry, Instant::now()));
        let mut state = self.state.lock();
        state.order.push_back(self.key.clone());
        if state.order.len() > self.capacity {
            state.prune(self.retention, self.capacity);
        }
        Ok(())
    }
}

#[async_trait]
impl SentRecord for MemoryRecord {
    async fn hold(&self, key: &IdempotencyKey) -> Result<Held, Error> {
        let slot = self
            .state
            .lock()
            .slots
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = slot.lock_owned().await;
        if let Some((entry, at)) = guard.as_ref()
            && at.elapsed() < self.retention
        {
            return Ok(Held::Sent(entry.clone()));
        }
        Ok(Held::Free(Box::new(MemoryHold {
            key: key.clone(),
            slot: guard,
            state: self.state.clone(),
            retention: self.retention,
            capacity: self.capacity,
        })))
    }
}

/// A record every worker of a cluster shares: the key is held with the application's lock
/// service (a lease, so a worker that dies mid-send lets it go) and the send recorded in its
/// cache for `retention`. With the Redis or PostgreSQL providers, a step re-run on another
/// worker after a takeover finds the send and does not send again.
#[derive(Clone)]
pub struct SharedRecord {
    cache: Arc<dyn Cache>,
    locker: Arc<dyn Locker>,
    retention: Duration,
    /// How long a send may hold its key (its lock's lease). Default 5 minutes.
    hold_for: Duration,
    /// How long a `hold` waits for another sender of the key. Default 5 minutes.
    wait_for: Duration,
}

impl std::fmt::Debug for SharedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRecord")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl SharedRecord {
    /// A record in `cache`, with keys held through `locker`, kept for `retention`.
    pub fn new(cache: Arc<dyn Cache>, locker: Arc<dyn Locker>, retention: Duration) -> Self {
        SharedRecord {
            cache,
            locker,
            retention,
            hold_for: Duration::from_secs(300),
            wait_for: Duration::from_secs(300),
        }
    }

    fn cache_key(key: &IdempotencyKey) -> String {
        format!("gorgon:notification:sent:{key}")
    }
}

struct SharedHold {
    record: SharedRecord,
    key: IdempotencyKey,
    lock: LockKey,
    owner: OwnerId,
}

impl Drop for SharedHold {
    fn drop(&mut self) {
        // Let the key go at once (a send that failed, or finished); the lease ends it anyway.
        let (locker, lock, owner) = (
            self.record.locker.clone(),
            self.lock.clone(),
            self.owner.clone(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = locker.release(&[lock], &owner).await;
            });
        }
    }
}

fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Record {
        source: Box::new(error),
    }
}

#[async_trait]
impl Hold for SharedHold {
    async fn sent(self: Box<Self>, entry: SentEntry) -> Result<(), Error> {
        let value = serde_json::to_vec(&entry).map_err(backend)?;
        self.record
            .cache
            .set(
                &SharedRecord::cache_key(&self.key),
                value.into(),
                self.record.retention,
                &[],
            )
            .await
            .map_err(backend)
    }
}

#[async_trait]
impl SentRecord for SharedRecord {
    async fn hold(&self, key: &IdempotencyKey) -> Result<Held, Error> {
        let lock = LockKey::new(format!("gorgon:notification:{key}"));
        let owner = OwnerId::random();
        let options = LockOptions::new(self.wait_for, self.hold_for);
        self.locker
            .acquire(std::slice::from_ref(&lock), &owner, &options)
            .await
            .map_err(backend)?;
        let hold = SharedHold {
            record: self.clone(),
            key: key.clone(),
            lock,
            owner,
        };
        let stored = self
            .cache
            .get(&Self::cache_key(key))
            .await
            .map_err(backend)?;
        match stored {
            Some(bytes) => {
                let entry = serde_json::from_slice(&bytes).map_err(backend)?;
                drop(hold);
                Ok(Held::Sent(entry))
            }
            None => Ok(Held::Free(Box::new(hold))),
        }
    }
}
