//! Three scheduler instances on Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`): each with
//! its own store and locker connections under one test's key prefix; the store's keys are
//! cleared at the end (the lock keys expire with their leases).

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::Backend;
use gorgon_locking::Locker;
use gorgon_locking_redis::RedisLocker;
use gorgon_orchestration::Store;
use gorgon_store_redis::RedisStore;
use parking_lot::Mutex;

/// One test's key prefixes, and the stores to clear at the end.
struct Redis {
    prefix: String,
    stores: Mutex<Vec<Arc<RedisStore>>>,
}

impl Redis {
    fn new() -> Self {
        Redis {
            prefix: format!("sched-test:{}:", uuid::Uuid::new_v4().simple()),
            stores: Mutex::new(Vec::new()),
        }
    }

    /// Deletes the test's keys: the store's, and the locker's fencing counter (lease keys
    /// expire by themselves).
    async fn clear(&self) {
        let store = self.stores.lock().first().cloned();
        if let Some(store) = store {
            store.clear().await.expect("clear the store's keys");
        }
        let url = gorgon_store_redis::Options::default().url;
        let client = redis::Client::open(url).expect("url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut connection)
            .await
            .expect("keys");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut connection)
                .await
                .expect("del");
        }
    }
}

impl Backend for Redis {
    fn store(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
        Box::pin(async {
            let options = gorgon_store_redis::Options {
                prefix: format!("{}store:", self.prefix),
                ..gorgon_store_redis::Options::default()
            };
            let store = Arc::new(
                RedisStore::connect(&options)
                    .await
                    .expect("Redis must run at REDIS_URL or redis://127.0.0.1:6379"),
            );
            self.stores.lock().push(store.clone());
            store as Arc<dyn Store>
        })
    }
    fn locker(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Locker>> + Send + '_>> {
        Box::pin(async {
            let url = gorgon_store_redis::Options::default().url;
            let options = gorgon_locking_redis::Options {
                namespace: format!("{}lock:", self.prefix),
                ..gorgon_locking_redis::Options::new(url)
            };
            let locker = RedisLocker::connect(&options).await.expect("locker");
            Arc::new(locker) as Arc<dyn Locker>
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_every_tick_fires_once_and_a_follower_takes_over() {
    let redis = Redis::new();
    common::every_tick_once_across_a_handover(&redis, false).await;
    redis.clear().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_crashed_leader_is_replaced_after_its_lease() {
    let redis = Redis::new();
    common::every_tick_once_across_a_handover(&redis, true).await;
    redis.clear().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_forbid_never_overlaps_runs() {
    let redis = Redis::new();
    common::forbid_holds_across_instances_and_a_leader_change(&redis).await;
    redis.clear().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_allow_overlaps_runs() {
    let redis = Redis::new();
    common::allow_lets_runs_overlap(&redis).await;
    redis.clear().await;
}
