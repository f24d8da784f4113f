//! The in-memory store passes the store suite.

use gorgon_orchestration::TransactionLog;
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
async fn memory_store_drops_an_old_run_without_the_newer_run_of_its_id() {
    use gorgon_orchestration::{RunOptions, TransactionKey};
    let store = Arc::new(MemoryStore::keeping_finished(2));
    let engine = one_step_engine(store.clone());
    let run = |id: &str| {
        let (engine, id) = (engine.clone(), id.to_string());
        async move {
            let options = RunOptions {
                transaction_id: Some(id),
                ..RunOptions::default()
            };
            engine.run("bounded", options).await.unwrap()
        }
    };
    let load = |id: &str| {
        let (store, key) = (store.clone(), TransactionKey::new("bounded", id));
        async move { store.load(&key).await.unwrap() }
    };
    run("again").await;
    let first = load("again").await.unwrap().header.run_id;
    // The same id runs again (a new run of a finished, not idempotent, workflow): two finished
    // runs are noted, the older of which the store no longer holds.
    run("again").await;
    let second = load("again").await.unwrap().header.run_id;
    assert_ne!(first, second);
    // A third finished run puts the first over the bound: dropping it leaves the second.
    run("other").await;
    assert_eq!(store.len(), 2);
    assert_eq!(load("again").await.unwrap().header.run_id, second);
    // The next one drops the second run.
    run("last").await;
    assert!(load("again").await.is_none());
    assert!(load("other").await.is_some() && load("last").await.is_some());
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

#[tokio::test]
async fn memory_store_keeps_idempotent_and_retained_runs_beyond_its_bound() {
    use gorgon_orchestration::{RunOptions, TransactionKey, WorkflowOptions};
    let store = Arc::new(MemoryStore::keeping_finished(3));
    let engine = one_step_engine(store.clone());
    let flow = |name: &str, options: WorkflowOptions| {
        let definition = FlowDefinition::from_json(r#"{"next":{"action":"a"}}"#).unwrap();
        Flow::compile(name, definition, options).unwrap()
    };
    let ok = |_c: StepCall| async { StepOutcome::Success(None) };
    let idempotent = WorkflowOptions {
        idempotent: Some(true),
        ..WorkflowOptions::default()
    };
    engine.register(flow("idempotent", idempotent), ok).unwrap();
    let retained = WorkflowOptions {
        retention_time: Some(0.2),
        ..WorkflowOptions::default()
    };
    engine.register(flow("retained", retained), ok).unwrap();
    let run = |workflow: &'static str, id: &str| {
        let (engine, id) = (engine.clone(), id.to_string());
        async move {
            let options = RunOptions {
                transaction_id: Some(id),
                ..RunOptions::default()
            };
            engine.run(workflow, options).await.unwrap()
        }
    };
    let held = |workflow: &'static str, id: &str| {
        let (store, key) = (store.clone(), TransactionKey::new(workflow, id));
        async move { store.load(&key).await.unwrap().is_some() }
    };
    run("idempotent", "kept").await;
    run("retained", "for-a-while").await;
    for i in 0..300 {
        run("bounded", &format!("other-{i}")).await;
    }
    assert!(
        held("idempotent", "kept").await,
        "an idempotent run is kept"
    );
    assert!(
        held("retained", "for-a-while").await,
        "a retained run is kept"
    );
    assert!(
        !held("bounded", "other-0").await,
        "an evictable run is dropped"
    );
    assert_eq!(store.len(), 3 + 2, "the bound holds for the evictable runs");
    // Once its retention ended, a retained run goes at the next finish.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    run("bounded", "after-retention").await;
    assert!(
        !held("retained", "for-a-while").await,
        "its retention ended"
    );
    assert!(
        held("idempotent", "kept").await,
        "idempotent without retention: for good"
    );
}

/// An engine on `store` with the workflow `chain`: steps `a`, `b` and `c` in sequence, whose
/// handler is `handler`.
fn chain_engine<H, F>(store: Arc<MemoryStore>, handler: H) -> Engine
where
    H: Fn(StepCall) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = StepOutcome> + Send + 'static,
{
    let engine: Engine = EngineOptions {
        store,
        ..EngineOptions::default()
    }
    .build();
    let flow = FlowDefinition::from_json(
        r#"{"next":{"action":"a","next":{"action":"b","next":{"action":"c"}}}}"#,
    )
    .unwrap();
    engine
        .register(
            Flow::compile("chain", flow, Default::default()).unwrap(),
            handler,
        )
        .unwrap();
    engine
}

/// How many `Step` records the stored log of `chain/id` holds for each of its three steps.
async fn step_records(store: &MemoryStore, id: &str) -> Vec<usize> {
    use gorgon_orchestration::{Record, TransactionKey};
    let stored = store
        .load(&TransactionKey::new("chain", id))
        .await
        .unwrap()
        .expect("the run is stored");
    (1..=3)
        .map(|index| {
            stored
                .records
                .iter()
                .filter(|r| matches!(r, Record::Step { step, .. } if *step == index))
                .count()
        })
        .collect()
}

#[tokio::test]
async fn a_volatile_store_gets_one_append_for_a_run_that_never_waits() {
    use gorgon_orchestration::{RunOptions, StepState, TransactionState};
    let store = Arc::new(MemoryStore::new());
    let engine = chain_engine(store.clone(), |_c: StepCall| async {
        StepOutcome::Success(None)
    });
    let run = RunOptions {
        transaction_id: Some("quick".into()),
        ..RunOptions::default()
    };
    assert_eq!(
        engine.run("chain", run).await.unwrap().state,
        TransactionState::Done
    );
    // Each step's last state once, not one record per step boundary (invoking, then done).
    assert_eq!(step_records(&store, "quick").await, [1, 1, 1]);
    // The log alone rebuilds the finished run.
    let stored = engine.get("chain", "quick").await.unwrap();
    assert_eq!(stored.state, TransactionState::Done);
    assert!(
        stored.steps[1..]
            .iter()
            .all(|s| s.invoke.state == StepState::Done)
    );
}

/// Starts the `chain` run `id` on `store` with a step `b` that waits until released, and
/// returns once `b` was called: the engine, the run's task and the release.
async fn run_held_at_b(
    store: Arc<MemoryStore>,
    id: &str,
) -> (
    Engine,
    tokio::task::JoinHandle<gorgon_orchestration::Result<gorgon_orchestration::Execution>>,
    Arc<tokio::sync::Notify>,
) {
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let engine = {
        let release = release.clone();
        chain_engine(store, move |c: StepCall| {
            let (started_tx, release) = (started_tx.clone(), release.clone());
            async move {
                if c.action() == "b" {
                    let _ = started_tx.send(());
                    release.notified().await;
                }
                StepOutcome::Success(None)
            }
        })
    };
    let running = tokio::spawn({
        let engine = engine.clone();
        let run = gorgon_orchestration::RunOptions {
            transaction_id: Some(id.into()),
            ..Default::default()
        };
        async move { engine.run("chain", run).await }
    });
    started.recv().await.expect("b was called");
    (engine, running, release)
}

#[tokio::test]
async fn a_handler_that_waits_finds_the_run_so_far_in_a_volatile_store() {
    use gorgon_orchestration::{Record, StepState, TransactionKey, TransactionState};
    let store = Arc::new(MemoryStore::new());
    let (_engine, running, release) = run_held_at_b(store.clone(), "slow").await;
    // While `b` waits, the store shows `a` done and `b` invoking.
    let stored = store
        .load(&TransactionKey::new("chain", "slow"))
        .await
        .unwrap()
        .expect("stored before the handler waited");
    let last = |index: usize| {
        stored.records.iter().rev().find_map(|r| match r {
            Record::Step { step, run } if *step == index => Some(run.invoke.state),
            _ => None,
        })
    };
    assert_eq!(last(1), Some(StepState::Done));
    assert_eq!(last(2), Some(StepState::Invoking));
    assert_eq!(last(3), None);
    release.notify_one();
    let done = running.await.unwrap().unwrap();
    assert_eq!(done.state, TransactionState::Done);
    // `c` ran without waiting: its boundaries went into the last append as one record.
    assert_eq!(step_records(&store, "slow").await, [1, 2, 1]);
}

#[tokio::test]
async fn with_a_subscriber_a_volatile_store_gets_every_step_boundary() {
    use gorgon_orchestration::RunOptions;
    let store = Arc::new(MemoryStore::new());
    let engine = chain_engine(store.clone(), |_c: StepCall| async {
        StepOutcome::Success(None)
    });
    let mut events = engine.subscribe();
    let run = RunOptions {
        transaction_id: Some("watched".into()),
        ..RunOptions::default()
    };
    engine.run("chain", run).await.unwrap();
    // Invoking, then done: the boundaries the events were sent after.
    assert_eq!(step_records(&store, "watched").await, [2, 2, 2]);
    let mut received = 0;
    while events.try_recv().is_ok() {
        received += 1;
    }
    assert!(
        received >= 7,
        "begin, three step begins and successes, finish: {received}"
    );
}

#[tokio::test]
async fn a_subscriber_that_arrives_while_a_step_waits_gets_the_rest_of_the_run() {
    use gorgon_orchestration::{EventKind, TransactionState};
    let store = Arc::new(MemoryStore::new());
    // Nobody listens when the run begins, so its first events are not made at all.
    let (engine, running, release) = run_held_at_b(store, "joined").await;
    let mut events = engine.subscribe();
    release.notify_one();
    assert_eq!(
        running.await.unwrap().unwrap().state,
        TransactionState::Done
    );
    let mut received = Vec::new();
    while let Ok(event) = events.try_recv() {
        received.push((event.kind, event.action.as_deref().map(str::to_string)));
    }
    let step = |kind, action: &str| (kind, Some(action.to_string()));
    assert_eq!(
        received,
        [
            step(EventKind::StepSuccess, "b"),
            step(EventKind::StepBegin, "c"),
            step(EventKind::StepSuccess, "c"),
            (EventKind::Finish, None),
        ]
    );
}
