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
                ..Default::default()
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

/// Where the child process finds its prefix and transaction id.
const CHILD_PREFIX: &str = "GORGON_RELAY_TEST_PREFIX";
const CHILD_ID: &str = "GORGON_RELAY_TEST_ID";

/// A run in another OS process (this test binary, run as `child_engine`) is observed by a
/// subscriber here, begin to finish, through Redis.
#[tokio::test]
async fn a_run_in_another_process_is_observed_here() {
    use std::process::{Command, Stdio};
    let options = options("process");
    let engine = EngineOptions {
        relay: Some(Arc::new(relay(&options).await)),
        ..EngineOptions::default()
    }
    .build();
    engine.relay_ready().await;
    let mut events = engine.subscribe();
    let id = format!("child-{}", uuid::Uuid::now_v7());
    let started = std::time::Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_engine", "--ignored", "--nocapture"])
        .env(CHILD_PREFIX, &options.prefix)
        .env(CHILD_ID, &id)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child process");
    let key = TransactionKey::new("redis-relay-child", id.as_str());
    let mut seen = Vec::new();
    let observed = tokio::time::timeout(Duration::from_secs(30), async {
        while seen.last() != Some(&EventKind::Finish) {
            let event = events.recv().await.expect("receive");
            if event.key == key {
                seen.push(event.kind);
            }
        }
    })
    .await;
    let status = child.wait().expect("the child ends");
    assert!(observed.is_ok(), "saw only {seen:?} (child: {status})");
    assert!(status.success(), "child: {status}");
    println!(
        "observed a run of another process in {:?}",
        started.elapsed()
    );
    assert_eq!(
        seen,
        vec![
            EventKind::Begin,
            EventKind::StepBegin,
            EventKind::StepSuccess,
            EventKind::Finish
        ]
    );
}

/// The child side of `a_run_in_another_process_is_observed_here`: runs one workflow on an
/// engine relayed through Redis, then waits until its events are published.
#[tokio::test]
#[ignore = "run as a child process by a_run_in_another_process_is_observed_here"]
async fn child_engine() {
    let (Ok(prefix), Ok(id)) = (std::env::var(CHILD_PREFIX), std::env::var(CHILD_ID)) else {
        return;
    };
    let options = Options {
        prefix,
        ..Options::default()
    };
    let engine = EngineOptions {
        relay: Some(Arc::new(relay(&options).await)),
        ..EngineOptions::default()
    }
    .build();
    let definition = FlowDefinition::from_json(r#"{"next":{"action":"only"}}"#).expect("flow");
    let flow =
        Flow::compile("redis-relay-child", definition, WorkflowOptions::default()).expect("flow");
    engine
        .register(flow, |_call: StepCall| async { StepOutcome::ok(json!(1)) })
        .expect("register");
    let run = engine
        .run(
            "redis-relay-child",
            RunOptions {
                transaction_id: Some(id),
                payload: None,
                ..Default::default()
            },
        )
        .await
        .expect("run");
    assert_eq!(run.state, TransactionState::Done);
    // Events are published by a background task: give it time before the process exits.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// 500 events, each published and received before the next: all arrive, in order; prints the
/// publish-to-receive latency.
#[tokio::test]
async fn relay_latency_one_event_at_a_time() {
    let options = options("latency");
    let latencies = gorgon_orchestration::testing::relay_latencies(
        Arc::new(relay(&options).await),
        Arc::new(relay(&options).await),
        500,
    )
    .await;
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "redis relay: p50 {} µs, p99 {} µs, max {} µs",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
