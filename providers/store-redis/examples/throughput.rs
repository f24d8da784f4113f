//! Append throughput of both durability modes against the Redis at `REDIS_URL`:
//! `cargo run --release -p gorgon-store-redis --example throughput [TRANSACTIONS] [CONCURRENCY]`.
//!
//! Each transaction is a create and 12 appends (a `seq10` workflow's step events: start, ten
//! steps, finish), run with CONCURRENCY transactions in flight. Keys go under a prefix of the
//! run's own and are deleted at the end.

use gorgon_orchestration::TransactionLog;
use std::sync::Arc;
use std::time::Instant;

use gorgon_orchestration::machine::TransactionFields;
use gorgon_orchestration::store::{Lease, TransactionHeader, TransactionKey};
use gorgon_orchestration::{Data, HandlerType, Record, TransactionState};
use gorgon_store_redis::{Durability, Options, RedisStore};
use tokio::sync::Semaphore;

fn fields(state: TransactionState) -> Record {
    Record::Transaction(TransactionFields {
        state,
        started_at: Some(1),
        ..TransactionFields::NOT_STARTED
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let transactions: usize = args.next().map_or(Ok(2000), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(256), |a| a.parse())?;
    for durability in [Durability::EveryStep, Durability::Batched] {
        let store = RedisStore::connect(&Options {
            prefix: format!("gorgon:throughput:{}:", uuid::Uuid::now_v7()),
            durability,
            ..Options::default()
        })
        .await?;
        let permits = Arc::new(Semaphore::new(concurrency));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(transactions);
        for tx in 0..transactions {
            let store = store.clone();
            let permit = permits.clone().acquire_owned().await?;
            tasks.push(tokio::spawn(async move {
                let key = TransactionKey::new("seq10", format!("tx-{tx}"));
                let header = TransactionHeader {
                    key: key.clone(),
                    run_id: Arc::from("run"),
                    payload: Data::json(serde_json::json!({"n": tx})),
                    created_at: tx as u64,
                    keep: Default::default(),
                };
                let lease = Lease {
                    owner: Arc::from("throughput"),
                    ms: 3_600_000,
                };
                let epoch = store.create(&header, Some(&lease)).await?;
                store
                    .append(&key, epoch, vec![fields(TransactionState::Invoking)])
                    .await?;
                for step in 1..=10 {
                    let response = Record::Response {
                        step,
                        handler: HandlerType::Invoke,
                        data: Some(Data::json(serde_json::json!({"step": step}))),
                    };
                    store.append(&key, epoch, vec![response]).await?;
                }
                store
                    .append(&key, epoch, vec![fields(TransactionState::Done)])
                    .await?;
                drop(permit);
                Ok::<_, gorgon_orchestration::Error>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let stats = store.stats();
        println!(
            "{durability:?}: {transactions} transactions ({concurrency} in flight) in {elapsed:.2}s: \
             {:.0} tx/s, {:.0} appends/s, {} round trips for {} creates and {} appends",
            transactions as f64 / elapsed,
            stats.appends as f64 / elapsed,
            stats.round_trips,
            stats.creates,
            stats.appends
        );
        store.clear().await?;
    }
    Ok(())
}
