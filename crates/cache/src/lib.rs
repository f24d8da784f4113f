//! The cache: the [`Cache`] trait, its in-memory provider ([`MemoryCache`], on `moka`) and the
//! suite every provider passes ([`testing`], behind the `testing` feature).
//!
//! Values are **bytes** ([`Bytes`]): the object-safe core stores whatever the caller encoded.
//! [`CacheExt::get_json`] / [`CacheExt::set_json`] add typed JSON on top, which is what most
//! callers want.
//!
//! # How to use it
//! 1. Build a provider: [`MemoryCache::new`] (per process) or `gorgon-cache-redis` (shared by
//!    every instance), chosen by their serde options.
//! 2. Hold it as `Arc<dyn Cache>`.
//! 3. `set_json(key, &value, ttl, &["product:prod_1"])` with a TTL and the tags it depends on.
//! 4. `get_json::<T>(key)`: `None` on a miss or after expiry.
//! 5. When the data changes, `invalidate(key)` or `invalidate_tag("product:prod_1")`.
//!
//! # Contract (every provider)
//! - **A cache, not a store:** an entry may disappear at any time before its TTL (eviction under
//!   memory pressure, a restart); it never outlives its TTL. Callers must be able to recompute.
//! - **Read your writes:** after `set` returns, a `get` of the key (through the same provider
//!   instance) returns the new value until the TTL, an invalidation or an overwrite.
//! - **Overwrite replaces** the value, the TTL and the tags of the key.
//! - **Tags:** after `invalidate_tag(t)` returns, no entry that was set with tag `t` before the call
//!   is returned any more; entries without `t` (including keys overwritten without `t`) stay.
//! - **Consistency across instances:** [`MemoryCache`] is per process: another process (or another
//!   `MemoryCache`) neither sees its entries nor its invalidations, so use it for data that may be
//!   stale for up to its TTL, or in single-instance deployments. The Redis provider is shared: a
//!   `set` or invalidation by one instance is seen by every instance's next `get`.
//! - **Bad input** (an empty key or tag, a zero TTL) is [`Error::InvalidRequest`], never a panic.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod memory;
#[cfg(feature = "testing")]
pub mod testing;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
pub use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use memory::{MemoryCache, MemoryOptions};

/// The errors of cache operations; every variant names the operation and the key or tag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid (empty key or tag, zero TTL).
    #[error("cache {operation} of {target:?}: invalid request: {reason}")]
    InvalidRequest {
        /// The operation (`get`, `set`, `invalidate`, `invalidate_tag`).
        operation: &'static str,
        /// The key or tag concerned.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// A value could not be encoded as JSON ([`CacheExt::set_json`]).
    #[error("cache set_json of {key:?}: cannot encode the value: {source}")]
    Encode {
        /// The key.
        key: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A cached value is not the JSON of the requested type ([`CacheExt::get_json`]).
    #[error("cache get_json of {key:?}: the cached value does not decode: {source}")]
    Decode {
        /// The key.
        key: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The backend failed.
    #[error("cache {operation} of {target:?}: backend failed: {source}")]
    Backend {
        /// The operation.
        operation: &'static str,
        /// The key or tag concerned.
        target: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps a backend error.
    pub fn backend(
        operation: &'static str,
        target: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            operation,
            target: target.to_owned(),
            source: source.into(),
        }
    }
}

/// The longest key or tag, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Checks a key or tag is neither empty nor longer than [`MAX_NAME_BYTES`].
pub fn validate_name(operation: &'static str, what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidRequest {
            operation,
            target: name.to_owned(),
            reason: format!("the {what} is empty"),
        });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidRequest {
            operation,
            target: name.chars().take(64).collect::<String>() + "…",
            reason: format!("the {what} is longer than {MAX_NAME_BYTES} bytes"),
        });
    }
    Ok(())
}

/// Checks the arguments of a `set`: non-empty key and tags, TTL of at least 1 ms.
pub fn validate_set(key: &str, ttl: Duration, tags: &[&str]) -> Result<(), Error> {
    validate_name("set", "key", key)?;
    if ttl < Duration::from_millis(1) {
        return Err(Error::InvalidRequest {
            operation: "set",
            target: key.to_owned(),
            reason: format!("the TTL must be at least 1 ms, got {ttl:?}"),
        });
    }
    for tag in tags {
        validate_name("set", "tag", tag)?;
    }
    Ok(())
}

/// A key-value cache with TTLs and tag invalidation. Held as `Arc<dyn Cache>`; see the crate docs
/// for the contract (read-your-writes per instance, tag semantics, per-process vs shared).
#[async_trait]
pub trait Cache: Send + Sync {
    /// The value of `key`, or `None` on a miss (never set, expired, evicted, invalidated).
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error>;

    /// Stores `value` under `key` for `ttl`, tagged with `tags` (replacing any previous value,
    /// TTL and tags of the key).
    async fn set(&self, key: &str, value: Bytes, ttl: Duration, tags: &[&str])
    -> Result<(), Error>;

    /// Removes `key` (nothing happens if it is missing).
    async fn invalidate(&self, key: &str) -> Result<(), Error>;

    /// Removes every entry currently tagged with `tag`, and nothing else.
    async fn invalidate_tag(&self, tag: &str) -> Result<(), Error>;
}

/// Typed JSON helpers over any [`Cache`] (including `dyn Cache`).
pub trait CacheExt: Cache {
    /// The value of `key` decoded from JSON; [`Error::Decode`] if it is not a `T`.
    fn get_json<'a, T>(
        &'a self,
        key: &'a str,
    ) -> impl Future<Output = Result<Option<T>, Error>> + Send + 'a
    where
        T: DeserializeOwned + 'a,
    {
        async move {
            match self.get(key).await? {
                None => Ok(None),
                Some(bytes) => {
                    serde_json::from_slice(&bytes)
                        .map(Some)
                        .map_err(|source| Error::Decode {
                            key: key.to_owned(),
                            source,
                        })
                }
            }
        }
    }

    /// Stores `value` as JSON under `key` (see [`Cache::set`]).
    fn set_json<'a, T>(
        &'a self,
        key: &'a str,
        value: &'a T,
        ttl: Duration,
        tags: &'a [&'a str],
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a
    where
        T: Serialize + Sync + ?Sized,
    {
        async move {
            let bytes = serde_json::to_vec(value).map_err(|source| Error::Encode {
                key: key.to_owned(),
                source,
            })?;
            self.set(key, Bytes::from(bytes), ttl, tags).await
        }
    }
}

impl<C: Cache + ?Sized> CacheExt for C {}
