//! Executions on the engine: a purge across workflows, and the retention sweep of workflows
//! with a `retentionTime`.

use std::sync::Arc;
use std::time::Duration;

use gorgon_orchestration::{
    EngineOptions, Error, Flow, FlowDefinition, MemoryStore, RunOptions, StepCall, StepOutcome,
    TransactionFilter, TransactionState, WorkflowOptions,
};

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

fn flow(name: &str, options: &str) -> Flow {
    let definition = FlowDefinition::from_json(r#"{"next":{"action":"a"}}"#).expect("flow");
    Flow::compile(
        name,
        definition,
        WorkflowOptions::from_json(options).expect("options"),
    )
    .expect("compiles")
}

/// `purge_finished` deletes finished runs of every workflow older than the cut, in batches,
/// and leaves newer ones; the listing shows what is left.
#[tokio::test]
async fn purge_finished_spans_workflows_and_batches() {
    // Room for every run (the default keeps fewer than two batches).
    let store = Arc::new(MemoryStore::keeping_finished(10_000));
    let engine = EngineOptions {
        store: store.clone(),
        ..EngineOptions::default()
    }
    .build();
    for name in ["first", "second"] {
        engine
            .register(flow(name, "{}"), |_c: StepCall| async {
                StepOutcome::Success(None)
            })
            .expect("register");
    }
    let runs = gorgon_orchestration::engine::PURGE_BATCH + 20;
    for i in 0..runs {
        let workflow = if i % 2 == 0 { "first" } else { "second" };
        let run = engine
            .run(workflow, RunOptions::default())
            .await
            .expect("run");
        assert_eq!(run.state, TransactionState::Done);
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cut = wall_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let kept = engine
        .run("first", RunOptions::default())
        .await
        .expect("run");
    let purged = engine.purge_finished(cut).await.expect("purge");
    assert_eq!(purged, runs as u64, "more than one batch, every workflow");
    let left = engine
        .list(&TransactionFilter::default())
        .await
        .expect("list");
    assert_eq!(left.items.len(), 1);
    assert_eq!(left.items[0].key.id.as_ref(), kept.transaction_id());
    assert!(matches!(
        engine
            .list(&TransactionFilter {
                limit: 5000,
                ..TransactionFilter::default()
            })
            .await,
        Err(Error::InvalidFilter { field: "limit", .. })
    ));
}

/// The retention sweep purges a workflow's finished runs once its `retentionTime` passed, and
/// keeps those of a workflow without one.
#[tokio::test]
async fn the_retention_sweep_honours_retention_time() {
    let engine = EngineOptions::default().build();
    engine
        .register(
            flow("short-lived", r#"{"retentionTime": 0.05}"#),
            |_c: StepCall| async { StepOutcome::Success(None) },
        )
        .expect("register");
    engine
        .register(flow("kept", "{}"), |_c: StepCall| async {
            StepOutcome::Success(None)
        })
        .expect("register");
    let short = engine
        .run("short-lived", RunOptions::default())
        .await
        .expect("run");
    let kept = engine
        .run("kept", RunOptions::default())
        .await
        .expect("run");
    let sweep = engine.spawn_retention_sweep(Duration::from_millis(20));
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if matches!(
            engine.get("short-lived", short.transaction_id()).await,
            Err(Error::TransactionNotFound { .. })
        ) {
            gone = true;
            break;
        }
    }
    sweep.abort();
    assert!(gone, "the short-lived run was purged within 2 s");
    let still = engine
        .get("kept", kept.transaction_id())
        .await
        .expect("kept");
    assert_eq!(still.state, TransactionState::Done);
}
