//! The Redis relay against the real Redis: the relay suite, and two engines on two stores of one
//! prefix seeing each other's runs. Every test uses its own prefix (so its own channel).

use std::sync::Arc;
use std::time::Duration;

use gorgon_orchestration::{
    EngineOptions, EventKind, EventRelay, Flow, FlowDefinition, HandlerType, RunOptions, StepCall,
    StepOutcome, Store, TransactionKey, TransactionState, WorkflowOptions,
};
use gorgon_store_redis::{Options, RedisRelay, RedisStore};
use serde_json::json;

fn options(test: &str) -> Options {
    Options {
        prefix: format!("gorgon:test:relay:{test}:{}:", uuid::Uuid::now_v7()),
        ..Options::default()
    }
}

async fn relay(options: &Options) -> RedisRelay {
    RedisRelay::connect(options)
        .await
        .unwrap_or_else(|e| panic!("Redis must run at {} for these tests: {e}", options.url))
}

#[tokio::test]
async fn redis_relay_passes_the_relay_suite() {
    let options = options("suite");
    gorgon_orchestration::testing::relay_suite(|| {
        let options = options.clone();
        async move { Arc::new(relay(&options).await) as Arc<dyn EventRelay> }
    })
    .await;
}

/// Two engines, each with its own store and relay connections on one prefix: a run on A is seen
/// on B from begin to finish, and B reads the run from the shared store.
#[tokio::test]
async fn a_run_on_engine_a_is_observed_on_engine_b() {
    let options = options("engines");
    let mut engines = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect(&options).await.expect("store");
        let engine = EngineOptions {
            store: Arc::new(store) as Arc<dyn Store>,
            relay: Some(Arc::new(relay(&options).await)),
            ..EngineOptions::default()
        }
        .build();
        engine.relay_ready().await;
        let definition = FlowDefinition::from_json(
            r#"{"next":{"action":"reserve","next":{"action":"charge"}}}"#,
        )
        .expect("flow");
        let flow =
            Flow::compile("redis-relay", definition, WorkflowOptions::default()).expect("flow");
        engine
            .register(flow, |call: StepCall| async move {
                match (call.action(), call.handler_type()) {
                    ("charge", HandlerType::Invoke) => StepOutcome::permanent("declined"),
                    (action, _) => StepOutcome::ok(json!({"did": action})),
                }
            })
            .expect("register");
        engines.push(engine);
    }
    let (a, b) = (&engines[0], &engines[1]);
    let mut on_b = b.subscribe();
    let id = format!("watched-{}", uuid::Uuid::now_v7());
    let run = a
        .run(
            "redis-relay",
            RunOptions {
                transaction_id: Some(id.clone()),
                payload: None,
            },
        )
        .await
        .expect("run");
    assert_eq!(run.state, TransactionState::Reverted);
    let key = TransactionKey::new("redis-relay", id.as_str());
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.last().map(|(k, _)| *k) != Some(EventKind::Finish) {
            let event = on_b.recv().await.expect("receive");
            if event.key == key {
                seen.push((event.kind, event.action.as_deref().map(str::to_string)));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("B saw only {seen:?}"));
    let step = |kind, action: &str| (kind, Some(action.to_string()));
    assert_eq!(
        seen,
        vec![
            (EventKind::Begin, None),
            step(EventKind::StepBegin, "reserve"),
            step(EventKind::StepSuccess, "reserve"),
            step(EventKind::StepBegin, "charge"),
            step(EventKind::StepFailure, "charge"),
            (EventKind::CompensateBegin, None), // the failed step compensates too (Medusa)
            step(EventKind::StepBegin, "charge"),
            step(EventKind::CompensateStepSuccess, "charge"),
            step(EventKind::StepBegin, "reserve"),
            step(EventKind::CompensateStepSuccess, "reserve"),
            (EventKind::Finish, None),
        ]
    );
    let detail = b.get("redis-relay", &id).await.expect("B reads A's run");
    assert_eq!(detail.state, TransactionState::Reverted);
    let store = RedisStore::connect(&options).await.expect("store");
    store.clear().await.expect("clear");
}
