//! The moka-backed in-memory cache passes the cache suite.

use std::sync::Arc;
use std::time::Duration;

use gorgon_cache::{Bytes, Cache, MemoryCache, MemoryOptions};

async fn cache() -> Arc<dyn Cache> {
    Arc::new(MemoryCache::default())
}

gorgon_cache::cache_suite!(cache());

#[tokio::test]
async fn two_memory_caches_do_not_share_entries() {
    let (one, two) = (MemoryCache::default(), MemoryCache::default());
    one.set("k", Bytes::from_static(b"v"), Duration::from_secs(60), &[])
        .await
        .unwrap();
    assert!(one.get("k").await.unwrap().is_some());
    assert_eq!(two.get("k").await.unwrap(), None);
    let clone = one.clone();
    assert!(
        clone.get("k").await.unwrap().is_some(),
        "clones share entries"
    );
}

#[tokio::test]
async fn the_capacity_bound_evicts_entries() {
    let cache = MemoryCache::new(&MemoryOptions {
        max_capacity_bytes: 10_000,
    });
    for i in 0..100 {
        cache
            .set(
                &format!("k{i}"),
                Bytes::from(vec![0u8; 1_000]),
                Duration::from_secs(60),
                &["t"],
            )
            .await
            .unwrap();
    }
    let mut present = 0;
    for i in 0..100 {
        if cache.get(&format!("k{i}")).await.unwrap().is_some() {
            present += 1;
        }
    }
    assert!(
        present <= 10,
        "{present} entries of 1 kB kept under a 10 kB bound"
    );
}

#[test]
fn options_deserialize_with_defaults() {
    let options: MemoryOptions = serde_json::from_str("{}").unwrap();
    assert_eq!(options, MemoryOptions::default());
    let options: MemoryOptions = serde_json::from_str(r#"{ "max_capacity_bytes": 1024 }"#).unwrap();
    assert_eq!(options.max_capacity_bytes, 1024);
    assert!(serde_json::from_str::<MemoryOptions>(r#"{ "ttl": 1 }"#).is_err());
}
