//! Redis provider of Gorgon locking: a [`Locker`] whose locks are expiring Redis keys, shared by
//! every process that uses the same Redis and namespace.
//!
//! # How to use it
//! 1. Deserialize an [`Options`] from configuration (`url`, optionally `namespace` and polling).
//! 2. [`RedisLocker::connect`].
//! 3. Hold it as `Arc<dyn gorgon_locking::Locker>` and use it like any locker.
//!
//! # How it works
//! Each step is one Lua script, so it is atomic on the Redis server:
//! ```text
//!  <ns>lock:<key>    hash {owner, holds, token} with PEXPIRE = lease   (SET NX PX, with a hold count)
//!  <ns>fencing       INCR counter: the next fencing token, shared by all keys, never expires
//!  <ns>owner:<owner> set of the lock keys an owner took, for release_all
//!
//!  acquire  all keys free or ours? → take them all (INCR token for new holdings) : busy + PTTL
//!  renew    all keys still ours?   → PEXPIRE each to max(PTTL, lease)           : lease lost
//!  release  for each key still ours: holds − 1, DEL at 0   (compare-and-delete)
//! ```
//! A busy acquisition sleeps (exponential backoff with jitter, never past the blocking lease's
//! expiry or the wait deadline) and retries; no connection is held while waiting.
//!
//! # Contract
//! The [`gorgon_locking`] contract, across processes sharing one Redis server. Leases are
//! measured by the Redis server's clock. Locks survive a crash of the holder (they expire with the
//! lease); they survive a Redis restart only as far as Redis persistence (AOF/RDB) does, and a
//! failover to a replica that missed the last writes can hand a key out twice: the fencing token
//! (if the counter survived) is then what protects the resource. Scripts touch several keys, so a
//! Redis Cluster must map a namespace to one slot (put it in braces: `{gorgon-lock}:`).
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gorgon_locking::{
    Error, FencingToken, Lease, LockKey, LockOptions, Locker, OwnerId, normalize_keys,
    validate_lease, validate_owner,
};
use redis::Script;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use tokio::time::Instant;

/// Configuration of a [`RedisLocker`], deserializable from the application config:
/// `{ "url": "redis://127.0.0.1:6379", "namespace": "gorgon:lock:" }`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Connection URL, for example `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every Redis key this locker writes. Processes that must exclude each other use
    /// the same namespace. Default `gorgon:lock:`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// First retry delay of a waiting acquisition, doubled up to `poll_max_ms`. Default 5 ms.
    #[serde(default = "default_poll_min_ms")]
    pub poll_min_ms: u64,
    /// Longest retry delay of a waiting acquisition. Default 100 ms.
    #[serde(default = "default_poll_max_ms")]
    pub poll_max_ms: u64,
}

/// The URL may carry a password: it is shown as `[redacted]`.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &"[redacted]")
            .field("namespace", &self.namespace)
            .field("poll_min_ms", &self.poll_min_ms)
            .field("poll_max_ms", &self.poll_max_ms)
            .finish()
    }
}

fn default_namespace() -> String {
    "gorgon:lock:".into()
}
fn default_poll_min_ms() -> u64 {
    5
}
fn default_poll_max_ms() -> u64 {
    100
}

impl Options {
    /// Options with the given URL and every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: default_namespace(),
            poll_min_ms: default_poll_min_ms(),
            poll_max_ms: default_poll_max_ms(),
        }
    }
}

/// KEYS: fencing counter, owner set, lock keys… ARGV: owner, lease ms.
/// Returns {1, token…} when taken, {0, pttl of a blocking key} when busy.
const ACQUIRE: &str = r"
local owner, lease = ARGV[1], tonumber(ARGV[2])
for i = 3, #KEYS do
  local holder = redis.call('HGET', KEYS[i], 'owner')
  if holder and holder ~= owner then
    return {0, redis.call('PTTL', KEYS[i])}
  end
end
local out = {1}
for i = 3, #KEYS do
  local key = KEYS[i]
  if redis.call('HGET', key, 'owner') then
    redis.call('HINCRBY', key, 'holds', 1)
    if redis.call('PTTL', key) < lease then redis.call('PEXPIRE', key, lease) end
    out[#out + 1] = tonumber(redis.call('HGET', key, 'token'))
  else
    local token = redis.call('INCR', KEYS[1])
    redis.call('HSET', key, 'owner', owner, 'holds', 1, 'token', token)
    redis.call('PEXPIRE', key, lease)
    out[#out + 1] = token
  end
  redis.call('SADD', KEYS[2], key)
end
if redis.call('PTTL', KEYS[2]) < lease then redis.call('PEXPIRE', KEYS[2], lease) end
return out
";

/// KEYS: owner set, lock keys… ARGV: owner, lease ms. Returns 1 when renewed, 0 when lost.
const RENEW: &str = r"
local owner, lease = ARGV[1], tonumber(ARGV[2])
for i = 2, #KEYS do
  if redis.call('HGET', KEYS[i], 'owner') ~= owner then return 0 end
end
for i = 2, #KEYS do
  if redis.call('PTTL', KEYS[i]) < lease then redis.call('PEXPIRE', KEYS[i], lease) end
end
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
";

/// KEYS: owner set, lock keys… ARGV: owner. Returns {keys held, keys freed}.
const RELEASE: &str = r"
local owner = ARGV[1]
local held, freed = 0, 0
for i = 2, #KEYS do
  local key = KEYS[i]
  if redis.call('HGET', key, 'owner') == owner then
    held = held + 1
    if redis.call('HINCRBY', key, 'holds', -1) <= 0 then
      redis.call('DEL', key)
      redis.call('SREM', KEYS[1], key)
      freed = freed + 1
    end
  end
end
return {held, freed}
";

/// KEYS: owner set, lock keys listed in it… ARGV: owner. Returns how many keys were freed.
const RELEASE_ALL: &str = r"
local owner = ARGV[1]
local freed = 0
for i = 2, #KEYS do
  if redis.call('HGET', KEYS[i], 'owner') == owner then
    redis.call('DEL', KEYS[i])
    freed = freed + 1
  end
  redis.call('SREM', KEYS[1], KEYS[i])
end
return freed
";

/// A [`Locker`] backed by Redis. Cheap to clone (clones share one multiplexed connection, which
/// reconnects by itself).
#[derive(Clone)]
pub struct RedisLocker {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    namespace: String,
    poll_min: Duration,
    poll_max: Duration,
    acquire: Script,
    renew: Script,
    release: Script,
    release_all: Script,
}

/// A random delay in `[0, max)`, to spread retries of waiters that woke together.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(random % max_nanos)
}

fn lease_millis(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisLocker {
    /// Connects to `options.url`.
    pub async fn connect(options: &Options) -> Result<Self, Error> {
        let fail = |error: redis::RedisError| Error::backend("connect", &[], error);
        let client = redis::Client::open(options.url.as_str()).map_err(fail)?;
        let connection = ConnectionManager::new(client).await.map_err(fail)?;
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                namespace: options.namespace.clone(),
                poll_min: Duration::from_millis(options.poll_min_ms.max(1)),
                poll_max: Duration::from_millis(options.poll_max_ms.max(options.poll_min_ms)),
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                release_all: Script::new(RELEASE_ALL),
            }),
        })
    }

    fn lock_key(&self, key: &LockKey) -> String {
        format!("{}lock:{}", self.inner.namespace, key.as_str())
    }

    fn owner_key(&self, owner: &OwnerId) -> String {
        format!("{}owner:{}", self.inner.namespace, owner.as_str())
    }

    fn fencing_key(&self) -> String {
        format!("{}fencing", self.inner.namespace)
    }

    /// One attempt: `Ok(tokens)` when taken, `Err(pttl)` (ms) of a blocking key when busy.
    async fn try_acquire(
        &self,
        keys: &[LockKey],
        owner: &OwnerId,
        lease: Duration,
    ) -> Result<Result<Vec<(LockKey, FencingToken)>, i64>, Error> {
        let mut invocation = self.inner.acquire.prepare_invoke();
        invocation
            .key(self.fencing_key())
            .key(self.owner_key(owner));
        for key in keys {
            invocation.key(self.lock_key(key));
        }
        invocation.arg(owner.as_str()).arg(lease_millis(lease));
        let mut connection = self.inner.connection.clone();
        let reply: Vec<i64> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| Error::backend("acquire", keys, error))?;
        match reply.split_first() {
            Some((1, tokens)) if tokens.len() == keys.len() => {
                let mut taken = Vec::with_capacity(keys.len());
                for (key, token) in keys.iter().zip(tokens) {
                    let token = u64::try_from(*token).map_err(|error| {
                        Error::backend("acquire", keys, format!("bad fencing token: {error}"))
                    })?;
                    taken.push((key.clone(), FencingToken::new(token)));
                }
                Ok(Ok(taken))
            }
            Some((0, [pttl])) => Ok(Err(*pttl)),
            _ => Err(Error::backend(
                "acquire",
                keys,
                format!("unexpected script reply {reply:?}"),
            )),
        }
    }
}

#[async_trait]
impl Locker for RedisLocker {
    async fn acquire(
        &self,
        keys: &[LockKey],
        owner: &OwnerId,
        options: &LockOptions,
    ) -> Result<Lease, Error> {
        let keys = normalize_keys("acquire", keys)?;
        validate_owner("acquire", owner)?;
        validate_lease("acquire", options.lease)?;
        let started = Instant::now();
        let deadline = started + options.wait_timeout;
        let mut delay = self.inner.poll_min;
        loop {
            let blocked_for = match self.try_acquire(&keys, owner, options.lease).await? {
                Ok(tokens) => return Ok(Lease::new(owner.clone(), tokens, options.lease)),
                Err(pttl) => pttl,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::WaitTimeout {
                    operation: "acquire",
                    keys,
                    owner: owner.clone(),
                    waited: started.elapsed(),
                });
            }
            let mut sleep = (delay + jitter(delay)).min(deadline - now);
            if let Ok(expires_in) = u64::try_from(blocked_for) {
                // Wake right when the blocking lease runs out, if that comes first.
                sleep = sleep.min(Duration::from_millis(expires_in.max(1)));
            }
            tokio::time::sleep(sleep).await;
            delay = (delay * 2).min(self.inner.poll_max);
        }
    }

    async fn renew(&self, keys: &[LockKey], owner: &OwnerId, lease: Duration) -> Result<(), Error> {
        let keys = normalize_keys("renew", keys)?;
        validate_owner("renew", owner)?;
        validate_lease("renew", lease)?;
        let mut invocation = self.inner.renew.prepare_invoke();
        invocation.key(self.owner_key(owner));
        for key in &keys {
            invocation.key(self.lock_key(key));
        }
        invocation.arg(owner.as_str()).arg(lease_millis(lease));
        let mut connection = self.inner.connection.clone();
        let renewed: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| Error::backend("renew", &keys, error))?;
        if renewed == 1 {
            Ok(())
        } else {
            Err(Error::LeaseLost {
                operation: "renew",
                keys,
                owner: owner.clone(),
            })
        }
    }

    async fn release(&self, keys: &[LockKey], owner: &OwnerId) -> Result<bool, Error> {
        let keys = normalize_keys("release", keys)?;
        validate_owner("release", owner)?;
        let mut invocation = self.inner.release.prepare_invoke();
        invocation.key(self.owner_key(owner));
        for key in &keys {
            invocation.key(self.lock_key(key));
        }
        invocation.arg(owner.as_str());
        let mut connection = self.inner.connection.clone();
        let (held, _freed): (usize, usize) = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| Error::backend("release", &keys, error))?;
        Ok(held == keys.len())
    }

    async fn release_all(&self, owner: &OwnerId) -> Result<usize, Error> {
        validate_owner("release_all", owner)?;
        let fail = |error: redis::RedisError| Error::backend("release_all", &[], error);
        let owner_key = self.owner_key(owner);
        let mut connection = self.inner.connection.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&owner_key)
            .query_async(&mut connection)
            .await
            .map_err(fail)?;
        if members.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.inner.release_all.prepare_invoke();
        invocation.key(&owner_key);
        for member in &members {
            invocation.key(member);
        }
        invocation.arg(owner.as_str());
        invocation.invoke_async(&mut connection).await.map_err(fail)
    }
}
