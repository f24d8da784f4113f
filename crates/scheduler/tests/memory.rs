//! Three scheduler instances in one process sharing the in-memory locker and one memory store.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::Backend;
use gorgon_locking::{InMemoryLocker, Locker};
use gorgon_orchestration::{MemoryStore, Store};

struct Memory {
    store: Arc<MemoryStore>,
    locker: Arc<InMemoryLocker>,
}

impl Memory {
    fn new() -> Self {
        Memory {
            store: Arc::new(MemoryStore::new()),
            locker: Arc::new(InMemoryLocker::new()),
        }
    }
}

impl Backend for Memory {
    fn store(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
        Box::pin(async { self.store.clone() as Arc<dyn Store> })
    }
    fn locker(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Locker>> + Send + '_>> {
        Box::pin(async { self.locker.clone() as Arc<dyn Locker> })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_every_tick_fires_once_and_a_follower_takes_over() {
    common::every_tick_once_across_a_handover(&Memory::new(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_crashed_leader_is_replaced_after_its_lease() {
    common::every_tick_once_across_a_handover(&Memory::new(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_forbid_never_overlaps_runs() {
    common::forbid_holds_across_instances_and_a_leader_change(&Memory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_allow_overlaps_runs() {
    common::allow_lets_runs_overlap(&Memory::new()).await;
}
