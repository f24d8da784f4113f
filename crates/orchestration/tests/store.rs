//! The in-memory store passes the store suite.

use std::sync::Arc;

use gorgon_orchestration::{MemoryStore, Store};

#[tokio::test]
async fn memory_store_passes_the_store_suite() {
    gorgon_orchestration::testing::store_suite(|| async {
        Arc::new(MemoryStore::new()) as Arc<dyn Store>
    })
    .await;
}

#[tokio::test]
async fn memory_store_drops_the_oldest_finished_transactions_beyond_its_bound() {
    use gorgon_orchestration::{
        Engine, EngineOptions, Flow, FlowDefinition, RunOptions, StepCall, StepOutcome,
    };
    let store = Arc::new(MemoryStore::keeping_finished(3));
    let engine: Engine = EngineOptions {
        store: store.clone(),
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
    for _ in 0..10 {
        engine.run("bounded", RunOptions::default()).await.unwrap();
    }
    assert_eq!(store.len(), 3);
}
