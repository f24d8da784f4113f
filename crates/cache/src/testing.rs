//! The conformance suite every [`Cache`] provider runs against itself (feature `testing`).
//!
//! Each case is a public async function taking the provider as `Arc<dyn Cache>`; it panics on a
//! contract violation. Cases use fresh random keys and tags, so they can share one backend and run
//! concurrently. [`cache_suite!`](crate::cache_suite) expands to one `#[tokio::test]` per case:
//!
//! ```text
//! async fn cache() -> Arc<dyn Cache> { Arc::new(MyCache::connect(..).await.unwrap()) }
//! gorgon_cache::cache_suite!(cache());
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Cache, CacheExt, Error};

/// Expands to one `#[tokio::test]` per suite case; `$make` is an expression evaluating to a
/// future of `Arc<dyn Cache>` (called once per test). The calling crate needs `tokio`.
#[macro_export]
macro_rules! cache_suite {
    ($make:expr) => {
        $crate::cache_suite!(@cases $make;
            get_returns_what_set_stored,
            a_missing_key_is_none,
            an_entry_expires_after_its_ttl,
            invalidate_removes_only_that_key,
            invalidate_tag_removes_every_tagged_entry_and_nothing_else,
            an_overwrite_replaces_value_ttl_and_tags,
            json_of_the_wrong_type_is_a_decode_error,
            invalid_requests_are_typed_errors
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let cache: ::std::sync::Arc<dyn $crate::Cache> = $make.await;
                $crate::testing::$case(cache).await;
            }
        )*
    };
}

/// A fresh name (key or tag) unique to one test run.
pub fn unique(name: &str) -> String {
    format!("suite-{name}-{}", uuid::Uuid::new_v4().simple())
}

const LONG: Duration = Duration::from_secs(60);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Product {
    id: String,
    price: u64,
    tags: Vec<String>,
}

/// Bytes come back byte for byte; typed JSON round-trips.
pub async fn get_returns_what_set_stored(cache: Arc<dyn Cache>) {
    let raw = unique("raw");
    let bytes = Bytes::from_static(b"\x00\x01binary\xff");
    cache.set(&raw, bytes.clone(), LONG, &[]).await.unwrap();
    assert_eq!(cache.get(&raw).await.unwrap(), Some(bytes));

    let typed = unique("typed");
    let product = Product {
        id: "prod_1".into(),
        price: 1999,
        tags: vec!["summer".into()],
    };
    cache.set_json(&typed, &product, LONG, &[]).await.unwrap();
    assert_eq!(
        cache.get_json::<Product>(&typed).await.unwrap(),
        Some(product)
    );
    cache.invalidate(&raw).await.unwrap();
    cache.invalidate(&typed).await.unwrap();
}

/// A key never set is a miss, in bytes and in JSON.
pub async fn a_missing_key_is_none(cache: Arc<dyn Cache>) {
    let key = unique("missing");
    assert_eq!(cache.get(&key).await.unwrap(), None);
    assert_eq!(cache.get_json::<Product>(&key).await.unwrap(), None);
}

/// An entry is gone after its TTL; an entry with a longer TTL set at the same time is not.
pub async fn an_entry_expires_after_its_ttl(cache: Arc<dyn Cache>) {
    let short = unique("short");
    let long = unique("long");
    cache
        .set(
            &short,
            Bytes::from_static(b"short"),
            Duration::from_millis(300),
            &[],
        )
        .await
        .unwrap();
    cache
        .set(&long, Bytes::from_static(b"long"), LONG, &[])
        .await
        .unwrap();
    assert!(cache.get(&short).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(cache.get(&short).await.unwrap(), None, "outlived its TTL");
    assert_eq!(
        cache.get(&long).await.unwrap(),
        Some(Bytes::from_static(b"long"))
    );
    cache.invalidate(&long).await.unwrap();
}

/// `invalidate(key)` removes that key and no other; invalidating a missing key is fine.
pub async fn invalidate_removes_only_that_key(cache: Arc<dyn Cache>) {
    let gone = unique("gone");
    let kept = unique("kept");
    cache
        .set(&gone, Bytes::from_static(b"1"), LONG, &[])
        .await
        .unwrap();
    cache
        .set(&kept, Bytes::from_static(b"2"), LONG, &[])
        .await
        .unwrap();
    cache.invalidate(&gone).await.unwrap();
    assert_eq!(cache.get(&gone).await.unwrap(), None);
    assert_eq!(
        cache.get(&kept).await.unwrap(),
        Some(Bytes::from_static(b"2"))
    );
    cache.invalidate(&gone).await.unwrap();
    cache.invalidate(&unique("never-set")).await.unwrap();
    cache.invalidate(&kept).await.unwrap();
}

/// `invalidate_tag(t)` removes every entry set with `t` and leaves untagged entries, entries with
/// other tags, and keys overwritten without `t`; a key set again afterwards is cached again.
pub async fn invalidate_tag_removes_every_tagged_entry_and_nothing_else(cache: Arc<dyn Cache>) {
    let (t1, t2, t3) = (unique("t1"), unique("t2"), unique("t3"));
    let (a, b, c, d, e) = (
        unique("a"),
        unique("b"),
        unique("c"),
        unique("d"),
        unique("e"),
    );
    let value = || Bytes::from_static(b"v");
    cache.set(&a, value(), LONG, &[&t1]).await.unwrap();
    cache.set(&b, value(), LONG, &[&t1, &t2]).await.unwrap();
    cache.set(&c, value(), LONG, &[&t2]).await.unwrap();
    cache.set(&d, value(), LONG, &[]).await.unwrap();
    cache.set(&e, value(), LONG, &[&t3]).await.unwrap();
    cache.set(&e, value(), LONG, &[]).await.unwrap(); // overwritten without t3

    cache.invalidate_tag(&t1).await.unwrap();
    assert_eq!(cache.get(&a).await.unwrap(), None, "a carried t1");
    assert_eq!(cache.get(&b).await.unwrap(), None, "b carried t1");
    assert!(cache.get(&c).await.unwrap().is_some(), "c only carried t2");
    assert!(cache.get(&d).await.unwrap().is_some(), "d carried no tag");

    cache.invalidate_tag(&t2).await.unwrap();
    assert_eq!(cache.get(&c).await.unwrap(), None);
    assert!(cache.get(&d).await.unwrap().is_some());

    cache.invalidate_tag(&t3).await.unwrap();
    assert!(
        cache.get(&e).await.unwrap().is_some(),
        "e was overwritten without t3"
    );

    cache.set(&a, value(), LONG, &[&t1]).await.unwrap();
    assert!(
        cache.get(&a).await.unwrap().is_some(),
        "a set after the invalidation is cached"
    );
    cache.invalidate_tag(&unique("unused")).await.unwrap();
    cache.invalidate_tag(&t1).await.unwrap();
    assert_eq!(cache.get(&a).await.unwrap(), None);
    for key in [&d, &e] {
        cache.invalidate(key).await.unwrap();
    }
}

/// An overwrite replaces the value, the TTL and the tags.
pub async fn an_overwrite_replaces_value_ttl_and_tags(cache: Arc<dyn Cache>) {
    let key = unique("overwrite");
    let tag = unique("tag");
    cache
        .set(&key, Bytes::from_static(b"old"), LONG, &[&tag])
        .await
        .unwrap();
    cache
        .set(
            &key,
            Bytes::from_static(b"new"),
            Duration::from_millis(300),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Some(Bytes::from_static(b"new"))
    );
    cache.invalidate_tag(&tag).await.unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Some(Bytes::from_static(b"new")),
        "the old tag no longer applies"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        cache.get(&key).await.unwrap(),
        None,
        "the new, shorter TTL applies"
    );

    cache
        .set(
            &key,
            Bytes::from_static(b"short"),
            Duration::from_millis(300),
            &[],
        )
        .await
        .unwrap();
    cache
        .set(&key, Bytes::from_static(b"long"), LONG, &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Some(Bytes::from_static(b"long")),
        "the new, longer TTL applies"
    );
    cache.invalidate(&key).await.unwrap();
}

/// Reading a cached value as a type it is not is a `Decode` error naming the key.
pub async fn json_of_the_wrong_type_is_a_decode_error(cache: Arc<dyn Cache>) {
    let key = unique("json");
    cache.set_json(&key, &"a string", LONG, &[]).await.unwrap();
    match cache.get_json::<Product>(&key).await {
        Err(Error::Decode { key: reported, .. }) => assert_eq!(reported, key),
        other => panic!("expected Decode, got {other:?}"),
    }
    cache.invalidate(&key).await.unwrap();
}

/// Empty or oversized keys or tags and zero TTLs are `InvalidRequest`, not panics, and store
/// nothing.
pub async fn invalid_requests_are_typed_errors(cache: Arc<dyn Cache>) {
    #[track_caller]
    fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>) {
        match result {
            Err(Error::InvalidRequest { .. }) => {}
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }
    let key = unique("invalid");
    let value = Bytes::from_static(b"v");
    assert_invalid(cache.get("").await);
    assert_invalid(cache.set("", value.clone(), LONG, &[]).await);
    assert_invalid(cache.set(&key, value.clone(), Duration::ZERO, &[]).await);
    assert_invalid(cache.set(&key, value.clone(), LONG, &["ok", ""]).await);
    assert_invalid(cache.invalidate("").await);
    assert_invalid(cache.invalidate_tag("").await);
    let huge = "k".repeat(crate::MAX_NAME_BYTES + 1);
    assert_invalid(cache.set(&huge, value.clone(), LONG, &[]).await);
    assert_invalid(cache.get(&huge).await);
    assert_invalid(cache.set(&key, value.clone(), LONG, &[huge.as_str()]).await);
    assert_eq!(cache.get(&key).await.unwrap(), None);
}
