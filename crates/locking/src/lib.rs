//! Locking: the [`Locker`] trait, its in-memory provider ([`InMemoryLocker`]) and the suite every
//! provider passes ([`testing`], behind the `testing` feature).
//!
//! A lock protects a set of [`LockKey`]s for one [`OwnerId`] for a bounded time, its **lease**. Each
//! acquisition hands out a [`FencingToken`] per key that grows every time the key changes hands, so
//! a protected resource can refuse a write from a holder whose lease ran out while it was stalled.
//!
//! # How to use it
//! 1. Build a provider: [`InMemoryLocker::new`] for one process, or `gorgon-locking-postgres` /
//!    `gorgon-locking-redis` (chosen by their serde `Options`) when several processes share locks.
//! 2. Hold it as `Arc<dyn Locker>`.
//! 3. Run a critical section with [`LockerExt::with_lock`] (or the object-safe [`Locker::execute`]):
//!    it waits up to [`LockOptions::wait_timeout`] for every key, renews the lease while the job runs,
//!    and releases when the job ends.
//! 4. Pass [`Lease::token`] along with every write to a resource that can check it (a column or key
//!    holding the highest token seen, refusing lower ones).
//! 5. For a nested workflow, reuse the parent's [`OwnerId`]: locks are re-entrant per owner.
//!
//! ```text
//!  execute(keys, owner, options, job)
//!     │ acquire: sort + dedup keys, take ALL or NONE atomically, retry until wait_timeout
//!     ▼                                   ┌───────────────────────────────────────┐
//!  job(lease) ──────── runs ─────────────▶│ renewal: every lease/3, renew(keys)   │
//!     │                                   │ lost? → job dropped, Error::LeaseLost │
//!     ▼                                   └───────────────────────────────────────┘
//!  release(keys, owner)   (hold count −1; the key is free when it reaches 0)
//! ```
//!
//! # Contract (every provider)
//! - **Mutual exclusion:** at any instant a key has at most one live owner. A holder keeps a key
//!   until it releases it or its lease elapses; after that another owner may take it.
//! - **All or nothing, no deadlocks:** an acquisition of several keys takes all of them in one
//!   atomic step (keys sorted and deduplicated first) or none, so two callers locking `[a, b]` and
//!   `[b, a]` cannot deadlock and a failed attempt never leaves a partial hold behind.
//! - **Re-entrant per owner:** an owner that already holds a key may acquire it again; that adds a
//!   hold (the lease is extended to the longer of the two) and keeps the same fencing token. Each
//!   [`Locker::release`] removes one hold; the key is free when its holds reach zero.
//!   [`Locker::release_all`] drops every hold of an owner at once.
//! - **Fencing:** every time a key passes to a new holding (after a release or an expiry), its token
//!   is strictly greater than every token handed out for that key before.
//! - **Owner-checked release:** releasing or renewing a key the owner does not hold (any more) does
//!   nothing to the current holder; it is reported (`false` / [`Error::LeaseLost`]).
//! - **Waiting:** acquisition retries until [`LockOptions::wait_timeout`] elapses and then fails
//!   with [`Error::WaitTimeout`]; a zero wait timeout is a single attempt. There is no fairness
//!   guarantee between waiters.
//! - **Durability:** locks live as long as their backend: the in-memory provider is per process
//!   and forgets everything on exit; the PostgreSQL and Redis providers survive a crash of the
//!   holder, whose locks then expire with their lease.
//! - **Cancellation:** if the future returned by [`Locker::execute`] is dropped, the keys are not
//!   released eagerly; they stay held until their lease elapses.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod memory;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use memory::InMemoryLocker;

/// The name of a lockable resource, for example a cart id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LockKey(String);

impl LockKey {
    /// Wraps a key name. Validation (non-empty) happens when the key is used.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for LockKey {
    fn from(key: &str) -> Self {
        Self(key.to_owned())
    }
}

impl From<String> for LockKey {
    fn from(key: String) -> Self {
        Self(key)
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Who holds a lock. Locks are re-entrant per owner: reuse one owner id across nested calls that
/// must not block each other (a workflow run and its nested runs), use a fresh one otherwise.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OwnerId(String);

impl OwnerId {
    /// Wraps an owner name (for example a workflow transaction id).
    pub fn new(owner: impl Into<String>) -> Self {
        Self(owner.into())
    }

    /// A fresh owner that nobody else uses (a random UUID).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The owner as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for OwnerId {
    fn from(owner: &str) -> Self {
        Self(owner.to_owned())
    }
}

impl From<String> for OwnerId {
    fn from(owner: String) -> Self {
        Self(owner)
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A number that grows every time a key passes to a new holding. A protected resource remembers
/// the highest token it has accepted and refuses writes that carry a lower one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token value (providers build tokens from their counters).
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw value, to store next to the protected data.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an acquisition returns: the owner, the fencing token of every key, and the lease length.
///
/// A `Lease` is plain data: dropping it does not release anything. Release with
/// [`Locker::release`] or let the lease elapse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    owner: OwnerId,
    tokens: Vec<(LockKey, FencingToken)>,
    duration: Duration,
}

impl Lease {
    /// Builds a lease (used by providers). `tokens` should be in the acquisition order (sorted).
    pub fn new(owner: OwnerId, tokens: Vec<(LockKey, FencingToken)>, duration: Duration) -> Self {
        Self {
            owner,
            tokens,
            duration,
        }
    }

    /// The owner that holds the keys.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }

    /// The keys held, sorted and deduplicated.
    pub fn keys(&self) -> Vec<LockKey> {
        self.tokens.iter().map(|(key, _)| key.clone()).collect()
    }

    /// The fencing token of `key`, or `None` when this lease does not cover it.
    pub fn token(&self, key: &LockKey) -> Option<FencingToken> {
        self.tokens
            .iter()
            .find(|(held, _)| held == key)
            .map(|(_, token)| *token)
    }

    /// Every key with its fencing token.
    pub fn tokens(&self) -> &[(LockKey, FencingToken)] {
        &self.tokens
    }

    /// How long the lease lasts after each acquisition or renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

/// How long to wait for keys and how long to hold them. Deserializable so configuration can set
/// defaults: `{ "wait_timeout_ms": 5000, "lease_ms": 60000 }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockOptions {
    /// How long an acquisition retries before failing with [`Error::WaitTimeout`]; zero means one
    /// attempt. Default 5 s.
    #[serde(rename = "wait_timeout_ms", with = "duration_ms")]
    pub wait_timeout: Duration,
    /// How long a holding lasts without renewal. [`Locker::execute`] renews it every third of this
    /// while its job runs. Must be at least 1 ms. Default 60 s.
    #[serde(rename = "lease_ms", with = "duration_ms")]
    pub lease: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            wait_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(60),
        }
    }
}

impl LockOptions {
    /// Options with the given wait timeout and lease.
    pub fn new(wait_timeout: Duration, lease: Duration) -> Self {
        Self {
            wait_timeout,
            lease,
        }
    }
}

/// Serde helper: a [`Duration`] written as whole milliseconds (`u64`).
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration as milliseconds.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        serializer.serialize_u64(millis)
    }

    /// Reads milliseconds into a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// The errors of locking operations. Every variant names the operation and the keys or owner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The keys stayed held by another owner for the whole wait timeout.
    #[error(
        "{operation}: owner {owner} waited {waited:?} for keys {keys:?}, still held by another owner"
    )]
    WaitTimeout {
        /// The operation (`acquire`, `execute`).
        operation: &'static str,
        /// The keys requested.
        keys: Vec<LockKey>,
        /// The owner that waited.
        owner: OwnerId,
        /// How long it waited.
        waited: Duration,
    },
    /// The owner no longer holds (some of) the keys: the lease elapsed or the locks were released
    /// behind its back. Anything done since may have overlapped another holder.
    #[error("{operation}: owner {owner} no longer holds keys {keys:?} (lease lost)")]
    LeaseLost {
        /// The operation (`renew`, `execute`).
        operation: &'static str,
        /// The keys of the lease.
        keys: Vec<LockKey>,
        /// The owner that lost them.
        owner: OwnerId,
    },
    /// The request itself is invalid (no keys, an empty key or owner, a zero lease, a bad option).
    #[error("{operation}: invalid request: {reason}")]
    InvalidRequest {
        /// The operation.
        operation: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The backend (database, Redis) failed.
    #[error("{operation} on {keys:?}: locking backend failed: {source}")]
    Backend {
        /// The operation.
        operation: &'static str,
        /// The keys concerned (empty for owner-wide operations and setup).
        keys: Vec<LockKey>,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// [`Locker::execute`] returned without running its job to the end (a provider bug).
    #[error("execute on {keys:?}: the job did not run to completion")]
    JobIncomplete {
        /// The keys of the execution.
        keys: Vec<LockKey>,
    },
}

impl Error {
    /// Wraps a backend error.
    pub fn backend(
        operation: &'static str,
        keys: &[LockKey],
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            operation,
            keys: keys.to_vec(),
            source: source.into(),
        }
    }
}

/// The longest lock key, in bytes (keys are database rows and Redis keys).
pub const MAX_KEY_BYTES: usize = 512;

/// The most keys one call takes.
pub const MAX_KEYS: usize = 1024;

/// Validates a key list for `operation` and returns it sorted and deduplicated: the order in
/// which every provider takes keys.
pub fn normalize_keys(operation: &'static str, keys: &[LockKey]) -> Result<Vec<LockKey>, Error> {
    if keys.is_empty() {
        return Err(Error::InvalidRequest {
            operation,
            reason: "no keys given".into(),
        });
    }
    if let Some(empty) = keys.iter().position(|key| key.as_str().is_empty()) {
        return Err(Error::InvalidRequest {
            operation,
            reason: format!("key #{empty} is empty"),
        });
    }
    if let Some(long) = keys
        .iter()
        .position(|key| key.as_str().len() > MAX_KEY_BYTES)
    {
        return Err(Error::InvalidRequest {
            operation,
            reason: format!("key #{long} is longer than {MAX_KEY_BYTES} bytes"),
        });
    }
    if keys.len() > MAX_KEYS {
        return Err(Error::InvalidRequest {
            operation,
            reason: format!("{} keys at once, more than {MAX_KEYS}", keys.len()),
        });
    }
    let mut sorted = keys.to_vec();
    sorted.sort();
    sorted.dedup();
    Ok(sorted)
}

/// Validates an owner id for `operation`.
pub fn validate_owner(operation: &'static str, owner: &OwnerId) -> Result<(), Error> {
    if owner.as_str().is_empty() {
        return Err(Error::InvalidRequest {
            operation,
            reason: "the owner id is empty".into(),
        });
    }
    Ok(())
}

/// Validates a lease length for `operation` (at least 1 ms).
pub fn validate_lease(operation: &'static str, lease: Duration) -> Result<(), Error> {
    if lease < Duration::from_millis(1) {
        return Err(Error::InvalidRequest {
            operation,
            reason: format!("the lease must be at least 1 ms, got {lease:?}"),
        });
    }
    Ok(())
}

/// The job of [`Locker::execute`]: called once with the lease (owner + fencing tokens) after every
/// key is held. Boxed so the trait stays object-safe; [`LockerExt::with_lock`] builds it for you.
pub type Job<'a> = Box<dyn FnOnce(Lease) -> BoxFuture<'a, ()> + Send + 'a>;

/// A lock service. Held as `Arc<dyn Locker>`; see the crate docs for the contract every provider
/// keeps (mutual exclusion, all-or-nothing multi-key acquisition, re-entrancy, fencing).
#[async_trait]
pub trait Locker: Send + Sync {
    /// Takes every key for `owner`, retrying until `options.wait_timeout`, and returns the lease
    /// with one fencing token per key. Keys the owner already holds gain a hold (re-entrancy).
    ///
    /// Errors: [`Error::WaitTimeout`] when another owner kept any key for the whole wait,
    /// [`Error::InvalidRequest`] for no/empty keys, an empty owner or a zero lease.
    async fn acquire(
        &self,
        keys: &[LockKey],
        owner: &OwnerId,
        options: &LockOptions,
    ) -> Result<Lease, Error>;

    /// Extends the lease of every key to at least `lease` from now, if `owner` still holds all of
    /// them; otherwise changes nothing and fails with [`Error::LeaseLost`].
    async fn renew(&self, keys: &[LockKey], owner: &OwnerId, lease: Duration) -> Result<(), Error>;

    /// Removes one hold of `owner` from each key; a key is free when its holds reach zero.
    /// Returns `true` when the owner held every key, `false` when some were not held by it (any
    /// more): those are left untouched, whoever holds them now.
    async fn release(&self, keys: &[LockKey], owner: &OwnerId) -> Result<bool, Error>;

    /// Frees every key `owner` holds, whatever its hold count. Returns how many keys were freed.
    async fn release_all(&self, owner: &OwnerId) -> Result<usize, Error>;

    /// Acquires `keys` for `owner` (as [`Locker::acquire`]), runs `job` with the lease while a
    /// concurrent renewal loop extends the lease every `options.lease / 3`, then releases one hold.
    ///
    /// If a renewal finds the lease lost (or cannot reach the backend until the lease has run
    /// out), the job's future is dropped at its next await point and this returns
    /// [`Error::LeaseLost`]. It also returns `LeaseLost` when the final release finds the keys no
    /// longer held. A panic in the job releases the keys and resumes unwinding.
    async fn execute<'a>(
        &self,
        keys: &[LockKey],
        owner: &OwnerId,
        options: &LockOptions,
        job: Job<'a>,
    ) -> Result<(), Error> {
        validate_lease("execute", options.lease)?;
        let keys = normalize_keys("execute", keys)?;
        let started = tokio::time::Instant::now();
        let lease = self
            .acquire(&keys, owner, options)
            .await
            .map_err(|error| match error {
                Error::WaitTimeout {
                    keys,
                    owner,
                    waited,
                    ..
                } => Error::WaitTimeout {
                    operation: "execute",
                    keys,
                    owner,
                    waited,
                },
                other => other,
            })?;
        let renewal = renew_until_lost(self, &keys, owner, options.lease, started);
        let job = AssertUnwindSafe(job(lease)).catch_unwind();
        let outcome = tokio::select! {
            biased;
            finished = job => Some(finished),
            () = renewal => None,
        };
        match outcome {
            None => {
                tracing::warn!(?keys, %owner, "lease lost while the job ran; job cancelled");
                Err(Error::LeaseLost {
                    operation: "execute",
                    keys,
                    owner: owner.clone(),
                })
            }
            Some(Err(panic)) => {
                if let Err(error) = self.release(&keys, owner).await {
                    tracing::warn!(?keys, %owner, %error, "release after a panicking job failed");
                }
                std::panic::resume_unwind(panic)
            }
            Some(Ok(())) => {
                if self.release(&keys, owner).await? {
                    Ok(())
                } else {
                    Err(Error::LeaseLost {
                        operation: "execute",
                        keys,
                        owner: owner.clone(),
                    })
                }
            }
        }
    }
}

/// Renews the lease every third of its length; returns only when the lease is lost (the backend
/// says so, or renewals kept failing or hanging until the last successful renewal's lease ran
/// out).
async fn renew_until_lost<L: Locker + ?Sized>(
    locker: &L,
    keys: &[LockKey],
    owner: &OwnerId,
    lease: Duration,
    acquired_no_later_than: tokio::time::Instant,
) {
    let every = (lease / 3).max(Duration::from_millis(1));
    let mut valid_until = acquired_no_later_than + lease;
    loop {
        tokio::time::sleep(every).await;
        let attempt = tokio::time::Instant::now();
        // A renewal still pending when the lease runs out counts as lost.
        let Ok(renewed) =
            tokio::time::timeout_at(valid_until, locker.renew(keys, owner, lease)).await
        else {
            return;
        };
        match renewed {
            Ok(()) => valid_until = attempt + lease,
            Err(Error::LeaseLost { .. }) => return,
            Err(error) => {
                tracing::warn!(?keys, %owner, %error, "lease renewal failed; retrying");
                if tokio::time::Instant::now() >= valid_until {
                    return;
                }
            }
        }
    }
}

/// Typed conveniences over any [`Locker`] (including `dyn Locker`).
pub trait LockerExt: Locker {
    /// Runs `job` under the lock like [`Locker::execute`] and returns its output.
    ///
    /// ```
    /// # use gorgon_locking::{InMemoryLocker, LockKey, LockOptions, LockerExt, OwnerId};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let locker = InMemoryLocker::new();
    /// let keys = [LockKey::from("cart:1")];
    /// let total = locker
    ///     .with_lock(&keys, &OwnerId::random(), &LockOptions::default(), |lease| async move {
    ///         // write to the protected resource with lease.token(...) here
    ///         40 + 2
    ///     })
    ///     .await?;
    /// assert_eq!(total, 42);
    /// # Ok::<(), gorgon_locking::Error>(())
    /// # }).unwrap();
    /// ```
    fn with_lock<'a, T, F, Fut>(
        &'a self,
        keys: &'a [LockKey],
        owner: &'a OwnerId,
        options: &'a LockOptions,
        job: F,
    ) -> impl Future<Output = Result<T, Error>> + Send + 'a
    where
        F: FnOnce(Lease) -> Fut + Send + 'a,
        Fut: Future<Output = T> + Send + 'a,
        T: Send + 'a,
    {
        async move {
            let mut output = None;
            let slot = &mut output;
            let job: Job<'_> = Box::new(move |lease| {
                Box::pin(async move {
                    *slot = Some(job(lease).await);
                })
            });
            self.execute(keys, owner, options, job).await?;
            output.ok_or_else(|| Error::JobIncomplete {
                keys: keys.to_vec(),
            })
        }
    }
}

impl<L: Locker + ?Sized> LockerExt for L {}
