//! Engine behaviour beyond the conformance scenarios: what handlers receive, injected time,
//! async steps, cancel, idempotency, events, replay from the store, and typed errors.

use gorgon_orchestration::Leases;
use std::sync::Arc;
use std::time::Duration;

use gorgon_orchestration::{
    Data, Engine, EngineOptions, Error, EventKind, Flow, FlowDefinition, HandlerType,
    IdempotencyKey, ManualClock, MemoryStore, RunOptions, StepCall, StepError, StepOutcome,
    StepState, StepStatus, TransactionKey, TransactionState, WorkflowOptions,
};
use parking_lot::Mutex;
use serde_json::json;

fn flow(workflow: &str, json: &str, options: &str) -> Flow {
    Flow::compile(
        workflow,
        FlowDefinition::from_json(json).expect("valid flow"),
        WorkflowOptions::from_json(options).expect("valid options"),
    )
    .expect("compiles")
}

fn run_with_id(id: &str, payload: serde_json::Value) -> RunOptions {
    RunOptions {
        transaction_id: Some(id.to_string()),
        payload: Some(Data::json(payload)),
        ..Default::default()
    }
}

/// Waits (in real time, briefly) until spawned timer tasks have run after a clock advance.
async fn until(mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn handlers_get_key_attempt_payload_and_saved_responses() {
    let engine = Engine::in_memory();
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let log = seen.clone();
    engine
        .register(
            flow(
                "order",
                r#"{"next":{"action":"a","next":{"action":"b","maxRetries":1}}}"#,
                "{}",
            ),
            move |call: StepCall| {
                let log = log.clone();
                async move {
                    let previous = call
                        .response("a", HandlerType::Invoke)
                        .map(|d| d.to_json().unwrap());
                    log.lock().push(json!({
                        "key": call.idempotency_key().to_string(),
                        "attempt": call.attempt(),
                        "payload": call.payload().to_json().unwrap(),
                        "a": previous,
                    }));
                    if call.action() == "b" && call.attempt() == 1 {
                        return StepOutcome::fail("first try fails");
                    }
                    StepOutcome::ok(json!({"from": call.action()}))
                }
            },
        )
        .unwrap();
    let run = engine
        .run("order", run_with_id("t1", json!({"prop": 123})))
        .await
        .unwrap();
    assert_eq!(run.state, TransactionState::Done);
    assert!(run.errors.is_empty());
    let seen = seen.lock().clone();
    assert_eq!(
        seen[0],
        json!({"key": "order:t1:a:invoke", "attempt": 1, "payload": {"prop": 123}, "a": null})
    );
    assert_eq!(seen[1]["key"], "order:t1:b:invoke");
    assert_eq!(
        seen[2],
        json!({"key": "order:t1:b:invoke", "attempt": 2, "payload": {"prop": 123}, "a": {"from": "a"}})
    );
    assert_eq!(
        run.response("b", HandlerType::Invoke)
            .unwrap()
            .to_json()
            .unwrap(),
        json!({"from": "b"})
    );
}

/// A run is stamped from the engine's clock alone: its run id's time, its creation and its
/// first step's start are the clock's reading, whatever the wall clock says.
#[tokio::test]
async fn a_run_is_stamped_with_the_engine_clock() {
    let at = 1_700_000_123_456;
    let store = Arc::new(MemoryStore::new());
    let engine = EngineOptions {
        store: store.clone(),
        clock: Arc::new(ManualClock::new(at)),
        ..EngineOptions::default()
    }
    .build();
    engine
        .register(
            flow("stamped", r#"{"next":{"action":"a"}}"#, "{}"),
            |_call| async { StepOutcome::ok(json!(1)) },
        )
        .unwrap();
    let execution = engine.run("stamped", RunOptions::default()).await.unwrap();
    let run_id = uuid::Uuid::parse_str(execution.run_id()).unwrap();
    assert_eq!(run_id.get_version_num(), 7);
    let (secs, nanos) = run_id
        .get_timestamp()
        .expect("a v7 uuid has a time")
        .to_unix();
    assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, at);
    let summary = store
        .summary(&TransactionKey::new("stamped", execution.transaction_id()))
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(summary.created_at, at);
    let a = execution.flow().step_index("a").unwrap();
    assert_eq!(execution.steps[a].started_at, Some(at));
}

#[tokio::test]
async fn retry_interval_waits_for_the_clock_not_for_wall_time() {
    let clock = Arc::new(ManualClock::default());
    let engine = EngineOptions {
        store: Arc::new(MemoryStore::new()),
        clock: clock.clone(),
        ..EngineOptions::default()
    }
    .build();
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    engine
        .register(
            flow(
                "retry",
                r#"{"next":{"action":"a","maxRetries":2,"retryInterval":60}}"#,
                "{}",
            ),
            move |_call: StepCall| {
                let counter = counter.clone();
                async move {
                    let mut n = counter.lock();
                    *n += 1;
                    if *n < 3 {
                        StepOutcome::fail("not yet")
                    } else {
                        StepOutcome::ok(json!(*n))
                    }
                }
            },
        )
        .unwrap();
    let run = engine
        .run("retry", run_with_id("r1", json!({})))
        .await
        .unwrap();
    assert_eq!(
        run.state,
        TransactionState::Invoking,
        "waits for the retry timer"
    );
    assert_eq!(
        run.step("a").unwrap().invoke.status,
        StepStatus::TemporaryFailure
    );
    clock.advance(Duration::from_secs(59));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(*calls.lock(), 1, "no retry before the interval");
    clock.advance(Duration::from_secs(1));
    until(|| *calls.lock() == 2).await;
    clock.advance(Duration::from_secs(60));
    until(|| engine.is_quiet("retry", "r1") && *calls.lock() == 3).await;
    assert_eq!(
        engine.get("retry", "r1").await.unwrap().state,
        TransactionState::Done
    );
}

#[tokio::test]
async fn async_step_timeout_fires_from_a_timer_and_compensates() {
    let clock = Arc::new(ManualClock::default());
    let engine = EngineOptions {
        store: Arc::new(MemoryStore::new()),
        clock: clock.clone(),
        ..EngineOptions::default()
    }
    .build();
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = calls.clone();
    engine
        .register(
            flow(
                "slow",
                r#"{"next":{"action":"a","next":{"action":"b","async":true,"timeout":30}}}"#,
                "{}",
            ),
            move |call: StepCall| {
                let log = log.clone();
                async move {
                    log.lock()
                        .push(format!("{}:{}", call.handler_type(), call.action()));
                    StepOutcome::Success(None)
                }
            },
        )
        .unwrap();
    let run = engine
        .run("slow", run_with_id("s1", json!({})))
        .await
        .unwrap();
    assert_eq!(run.state, TransactionState::Invoking);
    until(|| calls.lock().len() == 2).await;
    clock.advance(Duration::from_secs(31));
    until(|| engine.is_quiet("slow", "s1") && calls.lock().len() == 4).await;
    let done = engine.get("slow", "s1").await.unwrap();
    assert_eq!(done.state, TransactionState::Reverted);
    assert_eq!(done.step("b").unwrap().invoke.state, StepState::Timeout);
    assert_eq!(
        done.errors[0].error.name.as_deref(),
        Some("TransactionStepTimeoutError")
    );
    assert_eq!(
        *calls.lock(),
        ["invoke:a", "invoke:b", "compensate:b", "compensate:a"]
    );
}

#[tokio::test]
async fn transaction_timeout_of_an_async_flow_fires_from_a_timer() {
    let clock = Arc::new(ManualClock::default());
    let engine = EngineOptions {
        store: Arc::new(MemoryStore::new()),
        clock: clock.clone(),
        ..EngineOptions::default()
    }
    .build();
    engine
        .register(
            flow(
                "tt",
                r#"{"next":{"action":"a","next":{"action":"b","async":true}}}"#,
                r#"{"timeout":10}"#,
            ),
            |_call: StepCall| async { StepOutcome::Success(None) },
        )
        .unwrap();
    engine.run("tt", run_with_id("x", json!({}))).await.unwrap();
    clock.advance(Duration::from_secs(11));
    until(|| engine.is_quiet("tt", "x")).await;
    let run = engine.get("tt", "x").await.unwrap();
    assert_eq!(run.state, TransactionState::Reverted);
    assert_eq!(
        run.errors[0].error.name.as_deref(),
        Some("TransactionTimeoutError")
    );
}

#[tokio::test]
async fn set_step_success_and_failure_are_typed() {
    let engine = Engine::in_memory();
    engine
        .register(
            flow(
                "wait",
                r#"{"next":{"action":"a","async":true,"next":{"action":"b"}}}"#,
                "{}",
            ),
            |_c: StepCall| async { StepOutcome::Success(None) },
        )
        .unwrap();
    engine
        .run("wait", run_with_id("w1", json!({})))
        .await
        .unwrap();
    let key: IdempotencyKey = "wait:w1:a:invoke".parse().unwrap();
    let wrong_side = IdempotencyKey::new("wait", "w1", "a", HandlerType::Compensate);
    assert!(matches!(
        engine.set_step_success(&wrong_side, None).await,
        Err(Error::WrongHandlerType { .. })
    ));
    let unknown = IdempotencyKey::new("wait", "w1", "zz", HandlerType::Invoke);
    assert!(matches!(
        engine.set_step_success(&unknown, None).await,
        Err(Error::UnknownStep { .. })
    ));
    let missing = IdempotencyKey::new("wait", "nope", "a", HandlerType::Invoke);
    assert!(matches!(
        engine.set_step_success(&missing, None).await,
        Err(Error::TransactionNotFound { .. })
    ));
    assert!(matches!(
        "wait:w1:a".parse::<IdempotencyKey>(),
        Err(Error::InvalidKey { .. })
    ));

    let done = engine
        .set_step_success(&key, Some(Data::json(json!({"id": 1}))))
        .await
        .unwrap();
    assert_eq!(done.state, TransactionState::Done);
    assert_eq!(
        done.response("a", HandlerType::Invoke)
            .unwrap()
            .to_json()
            .unwrap(),
        json!({"id": 1})
    );
    match engine
        .set_step_failure(&key, StepError::new("late"), false)
        .await
    {
        Err(Error::StepNotWaiting {
            status: StepStatus::Ok,
            ..
        }) => {}
        other => panic!("expected StepNotWaiting, got {other:?}"),
    }
}

#[tokio::test]
async fn cancel_of_a_finished_transaction_replays_it_from_the_store() {
    let store = Arc::new(MemoryStore::new());
    let engine = EngineOptions {
        store: store.clone(),
        ..EngineOptions::default()
    }
    .build();
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = calls.clone();
    let handler = move |call: StepCall| {
        let log = log.clone();
        async move {
            log.lock()
                .push(format!("{}:{}", call.handler_type(), call.action()));
            StepOutcome::ok(json!(call.action()))
        }
    };
    engine
        .register(
            flow(
                "c",
                r#"{"next":{"action":"a","next":{"action":"b"}}}"#,
                "{}",
            ),
            handler.clone(),
        )
        .unwrap();
    engine.run("c", run_with_id("c1", json!({}))).await.unwrap();

    // A second engine on the same store sees the finished transaction through its log.
    let other = EngineOptions {
        store,
        ..EngineOptions::default()
    }
    .build();
    other
        .register(
            flow(
                "c",
                r#"{"next":{"action":"a","next":{"action":"b"}}}"#,
                "{}",
            ),
            handler,
        )
        .unwrap();
    let cancelled = other.cancel("c", "c1").await.unwrap();
    assert_eq!(cancelled.state, TransactionState::Reverted);
    assert_eq!(
        *calls.lock(),
        ["invoke:a", "invoke:b", "compensate:b", "compensate:a"]
    );
    // As in Medusa, cancelling a reverted transaction is allowed and compensates nothing twice.
    assert_eq!(
        other.cancel("c", "c1").await.unwrap().state,
        TransactionState::Reverted
    );
    assert_eq!(calls.lock().len(), 4);
}

#[tokio::test]
async fn idempotent_runs_return_the_stored_result_and_others_run_again() {
    let engine = Engine::in_memory();
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let handler = move |_c: StepCall| {
        let counter = counter.clone();
        async move {
            *counter.lock() += 1;
            StepOutcome::Success(None)
        }
    };
    engine
        .register(
            flow(
                "idem",
                r#"{"next":{"action":"a"}}"#,
                r#"{"idempotent":true}"#,
            ),
            handler.clone(),
        )
        .unwrap();
    engine
        .register(flow("plain", r#"{"next":{"action":"a"}}"#, "{}"), handler)
        .unwrap();
    let first = engine
        .run("idem", run_with_id("same", json!({})))
        .await
        .unwrap();
    let second = engine
        .run("idem", run_with_id("same", json!({})))
        .await
        .unwrap();
    assert_eq!(first.run_id(), second.run_id());
    assert_eq!(*calls.lock(), 1);
    let a = engine
        .run("plain", run_with_id("same", json!({})))
        .await
        .unwrap();
    let b = engine
        .run("plain", run_with_id("same", json!({})))
        .await
        .unwrap();
    assert_ne!(
        a.run_id(),
        b.run_id(),
        "a finished non-idempotent id runs again as a new run"
    );
    assert_eq!(*calls.lock(), 3);
}

#[tokio::test]
async fn a_concurrent_start_of_the_same_id_is_refused() {
    let engine = Engine::in_memory();
    let (release, wait) = tokio::sync::watch::channel(false);
    engine
        .register(
            flow("busy", r#"{"next":{"action":"a"}}"#, "{}"),
            move |_c: StepCall| {
                let mut wait = wait.clone();
                async move {
                    let _ = wait.wait_for(|go| *go).await;
                    StepOutcome::Success(None)
                }
            },
        )
        .unwrap();
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run("busy", run_with_id("one", json!({}))).await }
    });
    until(|| !engine.is_quiet("busy", "one")).await;
    assert!(matches!(
        engine.run("busy", run_with_id("one", json!({}))).await,
        Err(Error::AlreadyStarted { .. })
    ));
    release.send(true).unwrap();
    assert_eq!(first.await.unwrap().unwrap().state, TransactionState::Done);
}

#[tokio::test]
async fn events_are_published_in_order() {
    let engine = Engine::in_memory();
    let mut events = engine.subscribe();
    engine
        .register(
            flow(
                "ev",
                r#"{"next":{"action":"a","next":{"action":"b"}}}"#,
                "{}",
            ),
            |call: StepCall| async move {
                if call.action() == "b" && call.handler_type() == HandlerType::Invoke {
                    StepOutcome::permanent("no")
                } else {
                    StepOutcome::Success(None)
                }
            },
        )
        .unwrap();
    engine.run("ev", run_with_id("e", json!({}))).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push((event.kind, event.action.as_deref().map(str::to_string)));
    }
    let s = |k, a: Option<&str>| (k, a.map(str::to_string));
    assert_eq!(
        seen,
        vec![
            s(EventKind::Begin, None),
            s(EventKind::StepBegin, Some("a")),
            s(EventKind::StepSuccess, Some("a")),
            s(EventKind::StepBegin, Some("b")),
            s(EventKind::StepFailure, Some("b")),
            s(EventKind::CompensateBegin, None),
            s(EventKind::StepBegin, Some("b")),
            s(EventKind::CompensateStepSuccess, Some("b")),
            s(EventKind::StepBegin, Some("a")),
            s(EventKind::CompensateStepSuccess, Some("a")),
            s(EventKind::Finish, None),
        ]
    );
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    let engine = Engine::in_memory();
    assert!(matches!(
        engine.run("nope", RunOptions::default()).await,
        Err(Error::UnknownWorkflow { .. })
    ));
    engine
        .register(
            flow("ok", r#"{"next":{"action":"a"}}"#, "{}"),
            |_c: StepCall| async { StepOutcome::Success(None) },
        )
        .unwrap();
    let too_long = "x".repeat(257);
    for bad in ["a:b", "evil\u{0}", "line\nbreak", too_long.as_str()] {
        let refused = engine.run("ok", run_with_id(bad, json!({}))).await;
        assert!(
            matches!(refused, Err(Error::InvalidTransactionId { .. })),
            "{bad:?}: {refused:?}"
        );
    }
    let longest = "x".repeat(256);
    engine
        .run("ok", run_with_id(&longest, json!({})))
        .await
        .unwrap();
    let different = flow("ok", r#"{"next":{"action":"b"}}"#, "{}");
    assert!(matches!(
        engine.register(different, |_c: StepCall| async {
            StepOutcome::Success(None)
        }),
        Err(Error::DuplicateWorkflow { .. })
    ));
    assert!(matches!(
        engine.cancel("ok", "missing").await,
        Err(Error::TransactionNotFound { .. })
    ));
}

#[tokio::test]
async fn many_transactions_and_parallel_siblings_run_at_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let engine = Engine::in_memory();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (gauge, peak) = (in_flight.clone(), most.clone());
    engine
        .register(
            flow(
                "par",
                r#"{"next":{"action":"a","next":[{"action":"b"},{"action":"c"}]}}"#,
                "{}",
            ),
            move |_c: StepCall| {
                let (gauge, peak) = (gauge.clone(), peak.clone());
                async move {
                    let now = gauge.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    gauge.fetch_sub(1, Ordering::SeqCst);
                    StepOutcome::Success(None)
                }
            },
        )
        .unwrap();
    let runs: Vec<_> = (0..100)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.run("par", RunOptions::default()).await })
        })
        .collect();
    for run in runs {
        assert_eq!(run.await.unwrap().unwrap().state, TransactionState::Done);
    }
    // Handlers of different transactions (and b, c of one) overlap instead of queueing.
    assert!(
        most.load(Ordering::SeqCst) > 50,
        "at most {} handlers ran at once",
        most.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_failed_compensation_fails_the_transaction_even_under_continue_on_failure() {
    // Medusa 2.21.2 reports `reverted` here; a compensation that failed for good must not hide.
    let engine = Engine::in_memory();
    engine
        .register(
            flow(
                "cf",
                r#"{"next":[{"action":"s0","next":{"action":"s1"}},{"action":"s2","continueOnPermanentFailure":true}]}"#,
                "{}",
            ),
            |call: StepCall| async move {
                match (call.action(), call.handler_type()) {
                    ("s1", HandlerType::Invoke) | ("s2", HandlerType::Compensate) => StepOutcome::fail("boom"),
                    _ => StepOutcome::Success(None),
                }
            },
        )
        .unwrap();
    let run = engine.run("cf", RunOptions::default()).await.unwrap();
    assert_eq!(run.state, TransactionState::Failed);
    assert_eq!(run.step("s2").unwrap().compensate.state, StepState::Failed);
}
