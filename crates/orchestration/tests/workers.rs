//! Several engines on one store: leases, takeover of a dead worker's transactions, timers that
//! outlive their worker, enqueued starts, and refusing a start while another worker runs it.
//! (The same behaviour across processes, with SIGKILL, is tested on PostgreSQL and Redis in the
//! store crates.)

use std::sync::Arc;
use std::time::Duration;

use gorgon_orchestration::{
    Data, Engine, EngineOptions, Error, Flow, FlowDefinition, HandlerType, ManualClock,
    MemoryStore, RunOptions, StepCall, StepOutcome, Store, TransactionState, WorkerOptions,
    WorkflowOptions,
};
use parking_lot::Mutex;
use serde_json::json;

fn flow(workflow: &str, json: &str) -> Flow {
    Flow::compile(
        workflow,
        FlowDefinition::from_json(json).expect("valid flow"),
        WorkflowOptions::default(),
    )
    .expect("compiles")
}

fn engine(store: &Arc<MemoryStore>, clock: &Arc<ManualClock>, id: &str) -> Engine {
    EngineOptions {
        store: store.clone() as Arc<dyn Store>,
        clock: clock.clone(),
        worker: WorkerOptions {
            id: Arc::from(id),
            lease_ms: 1_000,
            poll_ms: 100,
            claim_batch: 16,
        },
        ..EngineOptions::default()
    }
    .build()
}

fn with_id(id: &str) -> RunOptions {
    RunOptions {
        transaction_id: Some(id.to_string()),
        payload: Some(Data::json(json!({}))),
        ..Default::default()
    }
}

async fn until(mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("condition not reached");
}

type Calls = Arc<Mutex<Vec<String>>>;

/// A handler recording `<idempotency key>` per call; `b`'s first invoke never returns (its
/// worker dies while it runs).
fn hanging_handler(calls: Calls) -> impl Fn(StepCall) -> futures_like::Boxed + Send + Sync {
    move |call: StepCall| {
        let calls = calls.clone();
        Box::pin(async move {
            let first_b = {
                let mut calls = calls.lock();
                calls.push(call.idempotency_key().to_string());
                call.action() == "b"
                    && call.handler_type() == HandlerType::Invoke
                    && calls.iter().filter(|k| k.contains(":b:invoke")).count() == 1
            };
            if first_b {
                std::future::pending::<()>().await;
            }
            StepOutcome::ok(json!(call.action()))
        })
    }
}

mod futures_like {
    use gorgon_orchestration::StepOutcome;
    /// A boxed handler future.
    pub type Boxed = std::pin::Pin<Box<dyn std::future::Future<Output = StepOutcome> + Send>>;
}

#[tokio::test]
async fn a_dead_workers_transaction_is_taken_over_and_only_its_step_in_flight_runs_again() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    // The store's time is the clock the test moves: leases lapse when it says.
    let store = Arc::new(MemoryStore::new().with_clock(clock.clone()));
    let calls: Calls = Arc::default();
    let definition = r#"{"next":{"action":"a","next":{"action":"b","next":{"action":"c"}}}}"#;
    let a = engine(&store, &clock, "worker-a");
    a.register(flow("w", definition), hanging_handler(calls.clone()))
        .unwrap();
    let b = engine(&store, &clock, "worker-b");
    b.register(flow("w", definition), hanging_handler(calls.clone()))
        .unwrap();

    let dying = tokio::spawn({
        let a = a.clone();
        async move { a.run("w", with_id("t1")).await }
    });
    until(|| calls.lock().len() == 2).await;
    dying.abort(); // worker A dies while `b` runs

    // Its lease still runs: B can neither take it over nor start it again.
    assert_eq!(b.take_over_due().await, 0);
    match b.run("w", with_id("t1")).await {
        Err(Error::AlreadyStarted { transaction, .. }) => assert_eq!(transaction, "t1"),
        other => panic!("expected AlreadyStarted, got {other:?}"),
    }

    clock.advance(Duration::from_millis(1_200));
    assert_eq!(b.take_over_due().await, 1);
    until(|| b.is_quiet("w", "t1") && calls.lock().len() == 4).await;
    let execution = b.get("w", "t1").await.unwrap();
    assert_eq!(execution.state, TransactionState::Done);
    assert_eq!(
        *calls.lock(),
        vec![
            "w:t1:a:invoke",
            "w:t1:b:invoke",
            "w:t1:b:invoke",
            "w:t1:c:invoke"
        ],
        "a, which completed, never runs again; b, in flight, runs again with the same key"
    );
}

#[tokio::test]
async fn a_retry_timer_outlives_its_worker() {
    // Two clocks that agree: the dead worker's never moves again, so its timer never fires;
    // the store keeps time with the other.
    let clock_a = Arc::new(ManualClock::new(5_000_000));
    let clock_b = Arc::new(ManualClock::new(5_000_000));
    let store = Arc::new(MemoryStore::new().with_clock(clock_b.clone()));
    let attempts = Arc::new(Mutex::new(0));
    let handler = {
        let attempts = attempts.clone();
        move |_call: StepCall| {
            let attempts = attempts.clone();
            async move {
                let mut n = attempts.lock();
                *n += 1;
                if *n == 1 {
                    StepOutcome::fail("later")
                } else {
                    StepOutcome::ok(json!(*n))
                }
            }
        }
    };
    let definition = r#"{"next":{"action":"a","maxRetries":1,"retryInterval":30}}"#;
    let a = engine(&store, &clock_a, "worker-a");
    a.register(flow("retry", definition), handler.clone())
        .unwrap();
    let run = a.run("retry", with_id("r")).await.unwrap();
    assert_eq!(run.state, TransactionState::Invoking, "waits for its retry");
    drop(a);

    let b = engine(&store, &clock_b, "worker-b");
    b.register(flow("retry", definition), handler).unwrap();
    clock_b.advance(Duration::from_secs(29));
    assert_eq!(b.take_over_due().await, 0, "not due before the interval");
    clock_b.advance(Duration::from_secs(2));
    assert_eq!(b.take_over_due().await, 1);
    until(|| *attempts.lock() == 2 && b.is_quiet("retry", "r")).await;
    assert_eq!(
        b.get("retry", "r").await.unwrap().state,
        TransactionState::Done
    );
}

#[tokio::test]
async fn an_enqueued_start_is_run_by_a_serving_worker() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(7_000_000));
    let producer = engine(&store, &clock, "producer");
    let worker = engine(&store, &clock, "worker");
    let definition = r#"{"next":{"action":"a","next":{"action":"b"}}}"#;
    let ran: Calls = Arc::default();
    let handler = {
        let ran = ran.clone();
        move |call: StepCall| {
            let ran = ran.clone();
            async move {
                ran.lock().push(call.action().to_string());
                StepOutcome::ok(json!(1))
            }
        }
    };
    producer
        .register(flow("queued", definition), handler.clone())
        .unwrap();
    worker
        .register(flow("queued", definition), handler)
        .unwrap();
    let id = producer
        .enqueue("queued", RunOptions::default())
        .await
        .unwrap();
    assert!(ran.lock().is_empty(), "enqueue runs nothing");
    clock.advance(Duration::from_millis(200));
    assert_eq!(worker.take_over_due().await, 1);
    until(|| ran.lock().len() == 2 && worker.is_quiet("queued", &id)).await;
    assert_eq!(
        producer.get("queued", &id).await.unwrap().state,
        TransactionState::Done
    );
}

#[tokio::test]
async fn a_waiting_step_is_completed_through_another_worker() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(9_000_000));
    let definition = r#"{"next":{"action":"wait","async":true,"next":{"action":"after"}}}"#;
    let handler = |call: StepCall| async move { StepOutcome::ok(json!(call.action())) };
    let a = engine(&store, &clock, "worker-a");
    a.register(flow("signal", definition), handler).unwrap();
    let b = engine(&store, &clock, "worker-b");
    b.register(flow("signal", definition), handler).unwrap();
    let run = a.run("signal", with_id("s")).await.unwrap();
    assert_eq!(run.state, TransactionState::Invoking);
    until(|| a.is_quiet("signal", "s")).await;
    // Worker A parked the transaction, so B may complete the waiting step.
    let key = "signal:s:wait:invoke".parse().unwrap();
    let done = b
        .set_step_success(&key, Some(Data::json(json!("signalled"))))
        .await
        .unwrap();
    assert_eq!(done.state, TransactionState::Done);
    // A's copy is stale; it reads the store and sees the end.
    assert_eq!(
        a.get("signal", "s").await.unwrap().state,
        TransactionState::Done
    );
}

#[tokio::test]
async fn get_reads_the_store_for_a_transaction_another_worker_advanced() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let release = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let release = release.clone();
        move |call: StepCall| {
            let release = release.clone();
            async move {
                if call.action() == "b" {
                    release.notified().await;
                }
                StepOutcome::ok(json!(call.action()))
            }
        }
    };
    let definition = r#"{"next":{"action":"a","next":{"action":"b"}}}"#;
    let a = engine(&store, &clock, "worker-a");
    a.register(flow("w", definition), handler.clone()).unwrap();
    let b = engine(&store, &clock, "worker-b");
    b.register(flow("w", definition), handler).unwrap();

    let running = tokio::spawn({
        let a = a.clone();
        async move { a.run("w", with_id("t1")).await }
    });
    until(|| !a.is_quiet("w", "t1")).await;
    // B's refused start leaves it a copy of the transaction as it was then, `b` invoking.
    assert!(matches!(
        b.run("w", with_id("t1")).await,
        Err(Error::AlreadyStarted { .. })
    ));
    release.notify_one();
    assert_eq!(
        running.await.unwrap().unwrap().state,
        TransactionState::Done
    );
    assert_eq!(
        b.get("w", "t1").await.unwrap().state,
        TransactionState::Done,
        "B reports what A stored, not its own stale copy"
    );
}

/// Leases are the store's time: a worker whose clock runs far ahead (more than a lease) does not
/// take over a live lease of another worker, and takes it over once its holder is gone.
#[tokio::test]
async fn a_worker_whose_clock_runs_ahead_does_not_take_a_live_lease() {
    let store_clock = Arc::new(ManualClock::new(9_000_000));
    let store = Arc::new(MemoryStore::new().with_clock(store_clock.clone()));
    let calls: Calls = Arc::default();
    let definition = r#"{"next":{"action":"a","next":{"action":"b","next":{"action":"c"}}}}"#;
    let holder = engine(&store, &store_clock, "holder");
    holder
        .register(flow("w", definition), hanging_handler(calls.clone()))
        .unwrap();
    // Thirty seconds ahead, thirty leases' worth.
    let ahead = Arc::new(ManualClock::new(9_030_000));
    let eager = engine(&store, &ahead, "eager");
    eager
        .register(flow("w", definition), hanging_handler(calls.clone()))
        .unwrap();
    let running = tokio::spawn({
        let holder = holder.clone();
        async move { holder.run("w", with_id("skewed")).await }
    });
    until(|| calls.lock().len() == 2).await; // `b` runs on the holder
    assert_eq!(eager.take_over_due().await, 0, "the lease still runs");
    // The holder dies; once its lease lapses on the store's clock, it is taken over.
    running.abort();
    store_clock.advance(Duration::from_millis(1_200));
    assert_eq!(eager.take_over_due().await, 1);
    until(|| calls.lock().len() == 4).await;
}
