//! The Redis cache against the real server at `REDIS_URL` (default `redis://127.0.0.1:6379`): the
//! cache suite, and consistency between two instances.

use std::sync::Arc;
use std::time::Duration;

use gorgon_cache::{Bytes, Cache, CacheExt};
use gorgon_cache_redis::{Options, RedisCache};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn options(namespace: &str) -> Options {
    Options {
        namespace: namespace.into(),
        ..Options::new(redis_url())
    }
}

async fn connect(namespace: &str) -> RedisCache {
    RedisCache::connect(&options(namespace))
        .await
        .expect("Redis must run at REDIS_URL (default redis://127.0.0.1:6379)")
}

async fn cache() -> Arc<dyn Cache> {
    Arc::new(connect("gorgon:cache-test:").await)
}

gorgon_cache::cache_suite!(cache());

fn unique_namespace() -> String {
    format!("gorgon:cache-test:{}:", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn two_instances_share_entries_and_invalidations() {
    let namespace = unique_namespace();
    let (one, two) = (connect(&namespace).await, connect(&namespace).await);
    let ttl = Duration::from_secs(60);

    one.set_json("product:1", &42u32, ttl, &["product"])
        .await
        .unwrap();
    one.set_json("product:2", &43u32, ttl, &["product"])
        .await
        .unwrap();
    assert_eq!(two.get_json::<u32>("product:1").await.unwrap(), Some(42));

    two.invalidate("product:1").await.unwrap();
    assert_eq!(one.get("product:1").await.unwrap(), None);

    two.invalidate_tag("product").await.unwrap();
    assert_eq!(one.get("product:2").await.unwrap(), None);

    let other = connect(&unique_namespace()).await;
    one.set("shared", Bytes::from_static(b"v"), ttl, &[])
        .await
        .unwrap();
    assert_eq!(
        other.get("shared").await.unwrap(),
        None,
        "namespaces isolate"
    );
    one.invalidate("shared").await.unwrap();
}

#[tokio::test]
async fn invalidating_a_large_tag_removes_every_entry() {
    let cache = connect(&unique_namespace()).await;
    let ttl = Duration::from_secs(60);
    for i in 0..600 {
        cache
            .set(&format!("k{i}"), Bytes::from(i.to_string()), ttl, &["bulk"])
            .await
            .unwrap();
    }
    cache.invalidate_tag("bulk").await.unwrap();
    for i in 0..600 {
        assert_eq!(
            cache.get(&format!("k{i}")).await.unwrap(),
            None,
            "k{i} survived"
        );
    }
}

#[tokio::test]
async fn options_deserialize_with_defaults_and_a_bad_url_is_a_typed_error() {
    let parsed: Options =
        serde_json::from_value(serde_json::json!({ "url": redis_url() })).unwrap();
    assert_eq!(parsed, Options::new(redis_url()));
    match RedisCache::connect(&Options::new("not a url")).await {
        Err(gorgon_cache::Error::Backend { operation, .. }) => assert_eq!(operation, "connect"),
        Err(other) => panic!("expected a Backend error, got {other}"),
        Ok(_) => panic!("connecting to a bad URL succeeded"),
    }
}
