//! The in-memory relay passes the relay suite, and an engine without a relay is unchanged.

use std::sync::Arc;

use gorgon_orchestration::{EventRelay, MemoryRelay};

#[tokio::test]
async fn memory_relay_passes_the_relay_suite() {
    let relay = MemoryRelay::new();
    gorgon_orchestration::testing::relay_suite(|| {
        let relay = relay.clone();
        async move { Arc::new(relay) as Arc<dyn EventRelay> }
    })
    .await;
}

/// A full publisher queue drops events (counted) instead of slowing the steps down.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_relay_drops_events_instead_of_blocking_steps() {
    use gorgon_orchestration::relay::{RelayStream, RelayedEvent};
    use gorgon_orchestration::{
        EngineOptions, Flow, FlowDefinition, RunOptions, StepCall, StepOutcome, TransactionState,
    };

    /// A relay whose publish never completes.
    struct Stalled;
    #[async_trait::async_trait]
    impl EventRelay for Stalled {
        async fn publish(&self, _: &[RelayedEvent]) -> gorgon_orchestration::Result<()> {
            std::future::pending().await
        }
        async fn subscribe(&self) -> gorgon_orchestration::Result<RelayStream> {
            Ok(Box::pin(futures::stream::pending()))
        }
    }
    let engine = EngineOptions {
        relay: Some(Arc::new(Stalled)),
        ..EngineOptions::default()
    }
    .build();
    let flow = FlowDefinition::from_json(r#"{"next":{"action":"a","next":{"action":"b"}}}"#)
        .expect("flow");
    engine
        .register(
            Flow::compile("stalled", flow, Default::default()).expect("compiles"),
            |_c: StepCall| async { StepOutcome::Success(None) },
        )
        .expect("register");
    let runs = 1000;
    for _ in 0..runs {
        let run = engine
            .run("stalled", RunOptions::default())
            .await
            .expect("run");
        assert_eq!(run.state, TransactionState::Done);
    }
    let stats = engine.relay_stats();
    // Each run emits several events; the queue holds 4,096 (+ one batch in the stalled publish).
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.failed, 0);
}
