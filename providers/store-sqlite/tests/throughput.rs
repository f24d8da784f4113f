//! Rough throughput of the engine on SQLite: `seq10` workflows (ten steps in a row), many at
//! once. Ignored by default (timing on a shared machine is not a test); run with
//! `cargo test --release -p gorgon-store-sqlite --test throughput -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use gorgon_orchestration::{
    EngineOptions, Flow, FlowDefinition, RunOptions, StepCall, StepOutcome, TransactionState,
    WorkflowOptions,
};
use gorgon_store_sqlite::{Durability, Options, SqliteStore};
use serde_json::json;

async fn seq10(durability: Durability, workflows: usize, concurrency: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::connect(Options {
        durability,
        ..Options::file(dir.path().join("bench.db"))
    })
    .await
    .expect("open");
    let engine = EngineOptions {
        store: Arc::new(store.clone()),
        ..EngineOptions::default()
    }
    .build();
    let mut step = json!({"action": "s10"});
    for i in (1..10).rev() {
        step = json!({"action": format!("s{i}"), "next": step});
    }
    let definition = FlowDefinition::from_value(json!({ "next": step })).expect("flow");
    engine
        .register(
            Flow::compile("seq10", definition, WorkflowOptions::default()).expect("compiles"),
            |call: StepCall| async move { StepOutcome::ok(json!({"step": call.action()})) },
        )
        .expect("register");
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let runs = (0..workflows).map(|_| {
        let engine = engine.clone();
        let semaphore = semaphore.clone();
        tokio::spawn(async move {
            let _permit = semaphore.acquire().await.expect("semaphore");
            engine.run("seq10", RunOptions::default()).await
        })
    });
    for run in futures::future::join_all(runs).await {
        assert_eq!(
            run.expect("task").expect("run").state,
            TransactionState::Done
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = store.stats();
    println!(
        "{durability:?}: {workflows} seq10 workflows, {concurrency} at a time: {:.0} wf/s, {} appends in {} commits ({:.0} appends/s)",
        workflows as f64 / elapsed,
        stats.appends,
        stats.commits,
        stats.appends as f64 / elapsed
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run by hand with --release"]
async fn seq10_throughput() {
    seq10(Durability::EveryStep, 20, 1).await;
    seq10(Durability::EveryStep, 500, 64).await;
    seq10(Durability::Batched, 20, 1).await;
    seq10(Durability::Batched, 5000, 1000).await;
}
