//! The store test suite: every [`Store`] implementation runs it against itself.
//!
//! ```ignore
//! #[tokio::test]
//! async fn memory_store_passes_the_suite() {
//!     gorgon_orchestration::testing::store_suite(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
//! }
//! ```
//!
//! Each check gets a fresh store from the factory and uses unique transaction ids, so stores
//! shared between tests (one database) stay isolated.

mod relay;

pub use relay::{
    a_run_on_one_engine_is_seen_by_another, every_subscriber_gets_each_publishers_events_in_order,
    publishing_without_subscribers_succeeds, relay_suite,
};

use std::future::Future;
use std::sync::Arc;

use serde_json::json;

use crate::machine::{Record, TransactionFields};
use crate::state::{StepRun, StepState, TransactionState};
use crate::store::{Store, TransactionHeader, TransactionKey};
use crate::{
    Data, EngineOptions, Error, Flow, FlowDefinition, HandlerType, RunOptions, StepCall,
    StepOutcome, Transaction, WorkflowOptions,
};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7())
}

fn header(workflow: &str, id: &str, run: &str) -> TransactionHeader {
    TransactionHeader {
        key: TransactionKey::new(workflow, id),
        run_id: Arc::from(run),
        payload: Data::json(json!({"n": 1})),
        created_at: 1,
    }
}

fn fields(state: TransactionState) -> Record {
    Record::Transaction(TransactionFields {
        state,
        started_at: Some(1),
        timed_out_at: None,
        cancelled_at: None,
        has_failed_steps: false,
        has_skipped_steps: false,
        has_skipped_on_failure_steps: false,
        has_waiting_steps: false,
        has_reverted_steps: false,
    })
}

/// Runs every check of the suite, each on a store made by `make`.
pub async fn store_suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    appends_are_returned_in_order(make().await).await;
    unfinished_ids_cannot_be_created_twice(make().await).await;
    a_finished_id_starts_a_new_run(make().await).await;
    append_to_an_unknown_transaction_is_an_error(make().await).await;
    an_engine_run_replays_from_the_log(make().await).await;
}

/// Records come back in append order, responses and errors included, after the header.
pub async fn appends_are_returned_in_order(store: Arc<dyn Store>) {
    let id = unique("order");
    let h = header("suite", &id, "run-1");
    store.create(&h).await.expect("create");
    let mut run = StepRun::default();
    run.invoke.state = StepState::Invoking;
    store
        .append(
            &h.key,
            &[
                fields(TransactionState::Invoking),
                Record::Step { step: 1, run },
            ],
        )
        .await
        .expect("append");
    run.invoke.state = StepState::Done;
    let response = Record::Response {
        step: 1,
        handler: HandlerType::Invoke,
        data: Some(Data::json(json!({"ok": 1}))),
    };
    store
        .append(&h.key, &[response.clone(), Record::Step { step: 1, run }])
        .await
        .expect("append");
    let stored = store.load(&h.key).await.expect("load").expect("exists");
    assert_eq!(stored.header.run_id.as_ref(), "run-1");
    assert_eq!(
        stored.header.payload.to_json().expect("json"),
        json!({"n": 1})
    );
    assert_eq!(stored.records.len(), 4);
    assert_eq!(stored.records[2], response);
    assert_eq!(stored.records[3], Record::Step { step: 1, run });
    let summary = store
        .summary(&h.key)
        .await
        .expect("summary")
        .expect("exists");
    assert_eq!(summary.state, TransactionState::Invoking);
    assert!(
        store
            .load(&TransactionKey::new("suite", unique("missing")))
            .await
            .expect("load")
            .is_none()
    );
}

/// A second create of an unfinished transaction is refused with `AlreadyStarted`.
pub async fn unfinished_ids_cannot_be_created_twice(store: Arc<dyn Store>) {
    let id = unique("twice");
    store
        .create(&header("suite", &id, "a"))
        .await
        .expect("create");
    match store.create(&header("suite", &id, "b")).await {
        Err(Error::AlreadyStarted { transaction, .. }) => assert_eq!(transaction, id),
        other => panic!("expected AlreadyStarted, got {other:?}"),
    }
}

/// Once finished, the same id may be created again; the new run replaces the old log.
pub async fn a_finished_id_starts_a_new_run(store: Arc<dyn Store>) {
    let id = unique("again");
    let first = header("suite", &id, "first");
    store.create(&first).await.expect("create");
    store
        .append(&first.key, &[fields(TransactionState::Done)])
        .await
        .expect("append");
    assert_eq!(
        store
            .summary(&first.key)
            .await
            .expect("summary")
            .expect("exists")
            .state,
        TransactionState::Done
    );
    store
        .create(&header("suite", &id, "second"))
        .await
        .expect("a finished id runs again");
    let stored = store.load(&first.key).await.expect("load").expect("exists");
    assert_eq!(stored.header.run_id.as_ref(), "second");
    assert!(stored.records.is_empty());
}

/// Appending to a transaction that was never created is a store error, not a panic.
pub async fn append_to_an_unknown_transaction_is_an_error(store: Arc<dyn Store>) {
    let key = TransactionKey::new("suite", unique("ghost"));
    assert!(matches!(
        store
            .append(&key, &[fields(TransactionState::Invoking)])
            .await,
        Err(Error::Store { .. })
    ));
}

/// A transaction run by the engine on this store replays to the same states.
pub async fn an_engine_run_replays_from_the_log(store: Arc<dyn Store>) {
    let engine = EngineOptions {
        store: store.clone(),
        ..EngineOptions::default()
    }
    .build();
    let definition = FlowDefinition::from_json(
        r#"{"next":{"action":"a","next":[{"action":"b","maxRetries":1},{"action":"c","next":{"action":"d"}}]}}"#,
    )
    .expect("flow");
    let flow = Arc::new(
        Flow::compile("suite-replay", definition, WorkflowOptions::default()).expect("compiles"),
    );
    engine
        .register_arc(
            flow.clone(),
            Arc::new(|call: StepCall| async move {
                match (call.action(), call.handler_type(), call.attempt()) {
                    ("b", HandlerType::Invoke, 1) => StepOutcome::fail("retry me"),
                    ("d", HandlerType::Invoke, _) => StepOutcome::permanent("no"),
                    (action, _, _) => StepOutcome::ok(json!({ "step": action })),
                }
            }),
        )
        .expect("register");
    let id = unique("replay");
    let run = engine
        .run(
            "suite-replay",
            RunOptions {
                transaction_id: Some(id.clone()),
                payload: Some(Data::json(json!(7))),
            },
        )
        .await
        .expect("run");
    assert_eq!(run.state, TransactionState::Reverted);
    let stored = store
        .load(&TransactionKey::new("suite-replay", id.as_str()))
        .await
        .expect("load")
        .expect("exists");
    let replayed = Transaction::replay(
        flow,
        Arc::from(id.as_str()),
        stored.header.run_id.clone(),
        stored.header.payload,
        &stored.records,
    )
    .expect("replays");
    assert_eq!(replayed.state(), run.state);
    assert_eq!(replayed.steps(), run.steps.as_slice());
    assert_eq!(replayed.errors(), run.errors.as_slice());
    let b = replayed.flow().step_index("b").expect("b");
    assert_eq!(
        replayed
            .shared()
            .responses
            .get(b, HandlerType::Invoke)
            .map(|d| d.to_json().expect("json")),
        Some(json!({"step": "b"}))
    );
}
