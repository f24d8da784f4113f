//! The in-memory store passes the store suite.

use std::sync::Arc;

use gorgon_orchestration::{
    Engine, EngineOptions, Flow, FlowDefinition, MemoryStore, StepCall, StepOutcome, Store,
};

/// An engine on `store` with the workflow `bounded`: one step that succeeds.
fn one_step_engine(store: Arc<MemoryStore>) -> Engine {
    let engine: Engine = EngineOptions {
        store,
        ..EngineOptions::default()
    }
    .build();
    let flow = FlowDefinition::from_json(r#"{"next":{"action":"a"}}"#).unwrap();
    engine
        .register(
            Flow::compile("bounded", flow, Default::default()).unwrap(),
            |_c: StepCall| async { StepOutcome::Success(None) },
        )
        .unwrap();
    engine
}

#[tokio::test]
async fn memory_store_passes_the_store_suite() {
    gorgon_orchestration::testing::store_suite(|| async {
        Arc::new(MemoryStore::new()) as Arc<dyn Store>
    })
    .await;
}

#[tokio::test]
async fn memory_store_drops_the_oldest_finished_transactions_beyond_its_bound() {
    use gorgon_orchestration::RunOptions;
    let store = Arc::new(MemoryStore::keeping_finished(3));
    let engine = one_step_engine(store.clone());
    for _ in 0..10 {
        engine.run("bounded", RunOptions::default()).await.unwrap();
    }
    assert_eq!(store.len(), 3);
}

#[tokio::test]
async fn memory_store_bounds_the_records_its_finished_transactions_keep() {
    use gorgon_orchestration::{RunOptions, TransactionKey};
    // Room for 10 records keeps as many of the newest runs as fit whole.
    let store = Arc::new(MemoryStore::keeping_finished(100).keeping_records(10));
    let engine = one_step_engine(store.clone());
    for i in 0..10 {
        let run = RunOptions {
            transaction_id: Some(format!("run-{i}")),
            ..RunOptions::default()
        };
        engine.run("bounded", run).await.unwrap();
    }
    let logged = |i: usize| {
        let store = store.clone();
        async move {
            let key = TransactionKey::new("bounded", format!("run-{i}"));
            store.load(&key).await.unwrap().map(|t| t.records.len())
        }
    };
    let per_run = logged(9).await.expect("the newest run is kept");
    assert_eq!(store.len(), 10 / per_run, "{per_run} records a run");
    assert!(logged(0).await.is_none(), "the oldest run is dropped");
    // However large, the newest finished run is kept.
    let tiny = Arc::new(MemoryStore::keeping_finished(100).keeping_records(1));
    let engine = one_step_engine(tiny.clone());
    engine.run("bounded", RunOptions::default()).await.unwrap();
    engine.run("bounded", RunOptions::default()).await.unwrap();
    assert_eq!(tiny.len(), 1);
}
