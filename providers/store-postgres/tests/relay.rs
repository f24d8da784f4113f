//! The PostgreSQL relay against the real database: the relay suite, and two engines on two
//! stores of one schema seeing each other's runs. Each test uses its own schema and drops it.

use std::sync::Arc;
use std::time::Duration;

use gorgon_orchestration::{
    EngineOptions, EventKind, EventRelay, Flow, FlowDefinition, HandlerType, RunOptions, StepCall,
    StepOutcome, Store, TransactionKey, TransactionState, WorkflowOptions,
};
use gorgon_store_postgres::{Options, PostgresRelay, PostgresStore};
use serde_json::json;

fn options() -> Options {
    Options {
        schema: format!("gorgon_relay_{}", uuid::Uuid::new_v4().simple()),
        max_connections: 4,
        ..Options::default()
    }
}

async fn connect(options: &Options) -> PostgresStore {
    PostgresStore::connect(options.clone())
        .await
        .expect("PostgreSQL must run at DATABASE_URL or postgres://postgres@127.0.0.1:5432/test")
}

#[tokio::test]
async fn postgres_relay_passes_the_relay_suite() {
    let options = options();
    let first = connect(&options).await;
    let stores = std::sync::Mutex::new(Vec::new());
    gorgon_orchestration::testing::relay_suite(|| {
        let options = options.clone();
        let stores = &stores;
        async move {
            // Each handle is its own pool, as another process would have.
            let store = connect(&options).await;
            let relay = PostgresRelay::new(&store);
            stores.lock().expect("lock").push(store);
            Arc::new(relay) as Arc<dyn EventRelay>
        }
    })
    .await;
    first.drop_schema().await.expect("drop");
}

/// Two engines, each on its own store (pool) of one schema, relayed through it: a run on A is
/// seen on B from begin to finish, and B reads the finished run from the shared store.
#[tokio::test]
async fn a_run_on_engine_a_is_observed_on_engine_b() {
    let options = options();
    let (store_a, store_b) = (connect(&options).await, connect(&options).await);
    let engine = |store: &PostgresStore| {
        EngineOptions {
            store: Arc::new(store.clone()) as Arc<dyn Store>,
            relay: Some(Arc::new(PostgresRelay::new(store))),
            ..EngineOptions::default()
        }
        .build()
    };
    let (a, b) = (engine(&store_a), engine(&store_b));
    a.relay_ready().await;
    b.relay_ready().await;
    let definition =
        FlowDefinition::from_json(r#"{"next":{"action":"reserve","next":{"action":"charge"}}}"#)
            .expect("flow");
    for engine in [&a, &b] {
        let flow = Flow::compile("pg-relay", definition.clone(), WorkflowOptions::default())
            .expect("compiles");
        engine
            .register(flow, |call: StepCall| async move {
                match call.handler_type() {
                    HandlerType::Invoke => StepOutcome::ok(json!({"did": call.action()})),
                    HandlerType::Compensate => StepOutcome::ok(json!(null)),
                }
            })
            .expect("register");
    }
    let mut on_b = b.subscribe();
    let id = format!("watched-{}", uuid::Uuid::now_v7());
    let run = a
        .run(
            "pg-relay",
            RunOptions {
                transaction_id: Some(id.clone()),
                payload: None,
                ..Default::default()
            },
        )
        .await
        .expect("run");
    assert_eq!(run.state, TransactionState::Done);
    let key = TransactionKey::new("pg-relay", id.as_str());
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.last() != Some(&EventKind::Finish) {
            let event = on_b.recv().await.expect("receive");
            if event.key == key {
                seen.push(event.kind);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("B saw only {seen:?}"));
    assert_eq!(
        seen,
        vec![
            EventKind::Begin,
            EventKind::StepBegin,
            EventKind::StepSuccess,
            EventKind::StepBegin,
            EventKind::StepSuccess,
            EventKind::Finish,
        ]
    );
    let detail = b.get("pg-relay", &id).await.expect("B reads A's run");
    assert_eq!(detail.state, TransactionState::Done);
    assert_eq!(
        detail
            .response("charge", HandlerType::Invoke)
            .map(|d| d.to_json().expect("json")),
        Some(json!({"did": "charge"}))
    );
    store_a.drop_schema().await.expect("drop");
}

/// Envelopes over PostgreSQL's 8,000-byte limit are skipped and counted, the others still go.
#[tokio::test]
async fn oversized_events_are_skipped_not_fatal() {
    use futures::StreamExt;
    use gorgon_orchestration::TransactionEvent;
    use gorgon_orchestration::relay::RelayedEvent;
    let options = options();
    let store = connect(&options).await;
    let relay = PostgresRelay::new(&store);
    let mut stream = relay.subscribe().await.expect("subscribe");
    let event = |id: String, seq| RelayedEvent {
        origin: Arc::from("big"),
        seq,
        event: TransactionEvent {
            key: TransactionKey::new("pg-relay", id),
            kind: EventKind::Begin,
            action: None,
            state: TransactionState::Invoking,
            origin: None,
        },
    };
    relay
        .publish(&[event("x".repeat(9000), 0), event("small".into(), 1)])
        .await
        .expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("in time")
        .expect("an event");
    assert_eq!(got.seq, 1);
    assert_eq!(relay.oversized(), 1);
    store.drop_schema().await.expect("drop");
}

/// 500 events, each published and received before the next: all arrive, in order; prints the
/// publish-to-receive latency.
#[tokio::test]
async fn relay_latency_one_event_at_a_time() {
    let options = options();
    let (a, b) = (connect(&options).await, connect(&options).await);
    let latencies = gorgon_orchestration::testing::relay_latencies(
        Arc::new(PostgresRelay::new(&a)),
        Arc::new(PostgresRelay::new(&b)),
        500,
    )
    .await;
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "postgres relay: p50 {} µs, p99 {} µs, max {} µs",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    a.drop_schema().await.expect("drop");
}
