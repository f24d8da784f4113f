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
    publishing_without_subscribers_succeeds, relay_latencies, relay_suite,
};

use std::future::Future;
use std::sync::Arc;

use serde_json::json;

use crate::log::{Record, Timer, TransactionFields};
use crate::state::{StepRun, StepState, TransactionState};
use crate::store::{
    Claim, Lease, PageCursor, Purge, Store, TransactionFilter, TransactionHeader, TransactionKey,
    TransactionSummary,
};
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
        keep: Default::default(),
    }
}

fn lease(owner: &str, ms: u64) -> Lease {
    Lease {
        owner: Arc::from(owner),
        ms,
    }
}

/// A lease that outlives any test.
const LONG: u64 = 3_600_000;
/// A lease the lease tests let lapse, and how long they wait for that (the store's clock runs on
/// its own: a database's, or the memory store's).
const SHORT: u64 = 150;
const LAPSE: std::time::Duration = std::time::Duration::from_millis(300);

fn fields(state: TransactionState) -> Record {
    Record::Transaction(TransactionFields {
        state,
        started_at: Some(1),
        ..TransactionFields::NOT_STARTED
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
    a_taken_over_lease_fences_the_old_writer(make().await).await;
    released_transactions_are_due_at_their_wake_up_time(make().await).await;
    enqueued_transactions_are_due_at_once(make().await).await;
    renewed_leases_are_kept_and_lapsed_ones_taken_over(make().await).await;
    finishing_ends_the_lease(make().await).await;
    create_and_append_writes_both(make().await).await;
    // executions listing and retention
    listings_page_newest_first_with_filters(make().await).await;
    purge_deletes_only_old_finished_transactions(make().await).await;
    the_engine_lists_details_and_purges_runs(make().await).await;
}

/// For durable stores: a workflow input or a record larger than
/// [`MAX_VALUE_BYTES`](crate::store::MAX_VALUE_BYTES) is refused with [`Error::TooLarge`] and
/// nothing is written; the transaction stays as it was.
pub async fn oversized_values_are_refused(store: Arc<dyn Store>) {
    let huge = || Data::json(json!("x".repeat(crate::store::MAX_VALUE_BYTES + 1)));
    let h = TransactionHeader {
        payload: huge(),
        ..header("suite", &unique("huge"), "run")
    };
    match store.create(&h, None).await {
        Err(Error::TooLarge {
            what: "payload", ..
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(store.load(&h.key).await.expect("load").is_none());
    let h = header("suite", &unique("huge-record"), "run");
    let epoch = store.create(&h, None).await.expect("create");
    let record = Record::Response {
        step: 1,
        handler: HandlerType::Invoke,
        data: Some(huge()),
    };
    match store.append(&h.key, epoch, vec![record]).await {
        Err(Error::TooLarge { what: "record", .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let stored = store.load(&h.key).await.expect("load").expect("exists");
    assert!(stored.records.is_empty());
}

/// Records come back in append order, responses and errors included, after the header.
pub async fn appends_are_returned_in_order(store: Arc<dyn Store>) {
    let id = unique("order");
    let h = header("suite", &id, "run-1");
    let epoch = store
        .create(&h, Some(&lease("w1", LONG)))
        .await
        .expect("create");
    let mut run = StepRun::default();
    run.invoke.state = StepState::Invoking;
    store
        .append(
            &h.key,
            epoch,
            vec![
                fields(TransactionState::Invoking),
                Record::Step { step: 1, run },
                Record::Timer {
                    timer: Timer::Retry(1),
                    at: Some(5),
                },
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
        .append(
            &h.key,
            epoch,
            vec![response.clone(), Record::Step { step: 1, run }],
        )
        .await
        .expect("append");
    let stored = store.load(&h.key).await.expect("load").expect("exists");
    assert_eq!(stored.header.run_id.as_ref(), "run-1");
    assert_eq!(
        stored.header.payload.to_json().expect("json"),
        json!({"n": 1})
    );
    assert_eq!(stored.records.len(), 5);
    assert_eq!(
        stored.records[2],
        Record::Timer {
            timer: Timer::Retry(1),
            at: Some(5)
        }
    );
    assert_eq!(stored.records[3], response);
    assert_eq!(stored.records[4], Record::Step { step: 1, run });
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
        .create(&header("suite", &id, "a"), None)
        .await
        .expect("create");
    match store
        .create(&header("suite", &id, "b"), Some(&lease("w", LONG)))
        .await
    {
        Err(Error::AlreadyStarted { transaction, .. }) => assert_eq!(transaction, id),
        other => panic!("expected AlreadyStarted, got {other:?}"),
    }
}

/// Once finished, the same id may be created again; the new run replaces the old log.
pub async fn a_finished_id_starts_a_new_run(store: Arc<dyn Store>) {
    let id = unique("again");
    let first = header("suite", &id, "first");
    let epoch = store
        .create(&first, Some(&lease("w", LONG)))
        .await
        .expect("create");
    store
        .append(&first.key, epoch, vec![fields(TransactionState::Done)])
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
    let second = store
        .create(&header("suite", &id, "second"), Some(&lease("w", LONG)))
        .await
        .expect("a finished id runs again");
    assert!(second > epoch, "a new run has a newer epoch");
    assert!(matches!(
        store
            .append(&first.key, epoch, vec![fields(TransactionState::Invoking)])
            .await,
        Err(Error::Fenced { .. })
    ));
    let stored = store.load(&first.key).await.expect("load").expect("exists");
    assert_eq!(stored.header.run_id.as_ref(), "second");
    assert!(stored.records.is_empty());
}

/// Appending to a transaction that was never created is a store error, not a panic.
pub async fn append_to_an_unknown_transaction_is_an_error(store: Arc<dyn Store>) {
    let key = TransactionKey::new("suite", unique("ghost"));
    assert!(matches!(
        store
            .append(&key, 1, vec![fields(TransactionState::Invoking)])
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
                ..Default::default()
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

    // A generated id is created with its first append (pipelined stores: behind the steps);
    // the run returns only once the whole log is stored.
    let auto = engine
        .run(
            "suite-replay",
            RunOptions {
                transaction_id: None,
                payload: Some(Data::json(json!(8))),
                ..Default::default()
            },
        )
        .await
        .expect("run");
    let stored = store
        .load(&TransactionKey::new("suite-replay", auto.transaction_id()))
        .await
        .expect("load")
        .expect("a generated id is stored");
    assert_eq!(stored.header.payload.to_json().expect("json"), json!(8));
    let replayed = Transaction::replay(
        replayed.shared().flow.clone(),
        Arc::from(auto.transaction_id()),
        stored.header.run_id.clone(),
        stored.header.payload,
        &stored.records,
    )
    .expect("replays");
    assert_eq!(replayed.state(), TransactionState::Reverted);
    assert_eq!(replayed.steps(), auto.steps.as_slice());
}

/// A worker whose lease lapsed and was taken over cannot write any more; the new holder can,
/// and claiming again while holding keeps the epoch.
pub async fn a_taken_over_lease_fences_the_old_writer(store: Arc<dyn Store>) {
    let h = header(&unique("fence"), "t", "run");
    let first = store
        .create(&h, Some(&lease("a", SHORT)))
        .await
        .expect("create");
    assert_eq!(
        store.claim(&h.key, &lease("b", LONG)).await.expect("claim"),
        Claim::Leased {
            owner: "a".to_string()
        }
    );
    tokio::time::sleep(LAPSE).await;
    let Claim::Granted { epoch } = store.claim(&h.key, &lease("b", LONG)).await.expect("claim")
    else {
        panic!("a lapsed lease is granted to another worker");
    };
    assert_eq!(epoch, first + 1);
    match store
        .append(&h.key, first, vec![fields(TransactionState::Invoking)])
        .await
    {
        Err(Error::Fenced { epoch: stale, .. }) => assert_eq!(stale, first),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(matches!(
        store.release(&h.key, first, None).await,
        Err(Error::Fenced { .. })
    ));
    store
        .append(&h.key, epoch, vec![fields(TransactionState::Invoking)])
        .await
        .expect("the new holder writes");
    assert_eq!(
        store.claim(&h.key, &lease("b", LONG)).await.expect("claim"),
        Claim::Granted { epoch },
        "a claim by the holder is re-entrant"
    );
    let stored = store.load(&h.key).await.expect("load").expect("exists");
    assert_eq!(stored.records.len(), 1, "the fenced append wrote nothing");
    assert_eq!(
        store
            .claim(
                &TransactionKey::new("suite", unique("none")),
                &lease("b", LONG)
            )
            .await
            .expect("claim"),
        Claim::NotFound
    );
}

/// A released transaction is claimed by `claim_due` once its wake-up time has come, once.
pub async fn released_transactions_are_due_at_their_wake_up_time(store: Arc<dyn Store>) {
    let workflow: Arc<str> = Arc::from(unique("wake"));
    let h = header(&workflow, "t", "run");
    let epoch = store
        .create(&h, Some(&lease("a", LONG)))
        .await
        .expect("create");
    store
        .append(&h.key, epoch, vec![fields(TransactionState::Invoking)])
        .await
        .expect("append");
    store
        .release(&h.key, epoch, Some(SHORT))
        .await
        .expect("release");
    let workflows = [workflow.clone()];
    assert!(
        store
            .claim_due(&workflows, &lease("b", LONG), 10)
            .await
            .expect("claim_due")
            .is_empty(),
        "not due before its wake-up time"
    );
    tokio::time::sleep(LAPSE).await;
    let claimed = store
        .claim_due(&workflows, &lease("b", LONG), 10)
        .await
        .expect("claim_due");
    assert_eq!(claimed, vec![(h.key.clone(), epoch + 1)]);
    assert!(
        store
            .claim_due(&workflows, &lease("c", LONG), 10)
            .await
            .expect("claim_due")
            .is_empty(),
        "a claimed transaction is not claimed twice"
    );
    let released = header(&workflow, "never", "run");
    let e = store
        .create(&released, Some(&lease("a", LONG)))
        .await
        .expect("create");
    store
        .release(&released.key, e, None)
        .await
        .expect("release");
    assert!(
        store
            .claim_due(&workflows, &lease("c", LONG), 10)
            .await
            .expect("claim_due")
            .is_empty(),
        "without a wake-up time a released transaction waits to be claimed by name"
    );
    assert_eq!(
        store
            .claim(&released.key, &lease("c", LONG))
            .await
            .expect("claim"),
        Claim::Granted { epoch: e + 1 }
    );
}

/// A transaction created without a lease is due at once, for the named workflows only.
pub async fn enqueued_transactions_are_due_at_once(store: Arc<dyn Store>) {
    let workflow: Arc<str> = Arc::from(unique("queue"));
    let other: Arc<str> = Arc::from(unique("other"));
    let h = header(&workflow, "t", "run");
    let epoch = store.create(&h, None).await.expect("create");
    assert!(
        store
            .claim_due(&[other], &lease("b", LONG), 10)
            .await
            .expect("claim_due")
            .is_empty()
    );
    let claimed = store
        .claim_due(&[workflow], &lease("b", LONG), 10)
        .await
        .expect("claim_due");
    assert_eq!(claimed, vec![(h.key.clone(), epoch + 1)]);
}

/// `renew` extends the named leases of its owner, and only those (a transaction the owner
/// dropped lapses); a lease that lapsed is taken over by `claim_due`.
pub async fn renewed_leases_are_kept_and_lapsed_ones_taken_over(store: Arc<dyn Store>) {
    let workflow: Arc<str> = Arc::from(unique("renew"));
    let owner = unique("owner");
    let a = header(&workflow, "a", "run");
    let b = header(&workflow, "b", "run");
    let dropped = header(&workflow, "dropped", "run");
    for h in [&a, &b, &dropped] {
        store
            .create(h, Some(&lease(&owner, SHORT)))
            .await
            .expect("create");
    }
    let renewed = store
        .renew(&lease(&owner, LONG), &[a.key.clone(), b.key.clone()])
        .await
        .expect("renew");
    assert_eq!(renewed, 2);
    let stranger = header(&workflow, "stranger", "run");
    store
        .create(&stranger, Some(&lease("someone-else", LONG)))
        .await
        .expect("create");
    assert_eq!(
        store
            .renew(&lease(&owner, LONG), std::slice::from_ref(&stranger.key))
            .await
            .expect("renew"),
        0,
        "another owner's lease is not renewed"
    );
    tokio::time::sleep(LAPSE).await;
    let workflows = [workflow.clone()];
    let orphan = store
        .claim_due(&workflows, &lease(&owner, LONG), 10)
        .await
        .expect("claim_due");
    assert_eq!(
        orphan,
        vec![(dropped.key.clone(), 2)],
        "a lease its owner stopped renewing lapses (and the owner itself may take it again); \
         the renewed ones and the stranger's still run"
    );
    // Renewed for a short while only: both lapse and are taken over, the limit holding.
    store
        .renew(&lease(&owner, SHORT), &[a.key.clone(), b.key.clone()])
        .await
        .expect("renew");
    tokio::time::sleep(LAPSE).await;
    let mut claimed = store
        .claim_due(&workflows, &lease("heir", LONG), 1)
        .await
        .expect("claim_due");
    assert_eq!(claimed.len(), 1, "the limit holds");
    claimed.extend(
        store
            .claim_due(&workflows, &lease("heir", LONG), 10)
            .await
            .expect("claim_due"),
    );
    claimed.sort();
    assert_eq!(claimed.len(), 2, "both are taken over: {claimed:?}");
    assert_eq!(claimed[0].0, a.key);
    assert_eq!(claimed[1].0, b.key);
}

/// A finished transaction has no owner and is never due.
pub async fn finishing_ends_the_lease(store: Arc<dyn Store>) {
    let workflow: Arc<str> = Arc::from(unique("finish"));
    let h = header(&workflow, "t", "run");
    let epoch = store
        .create(&h, Some(&lease("a", SHORT)))
        .await
        .expect("create");
    store
        .append(&h.key, epoch, vec![fields(TransactionState::Done)])
        .await
        .expect("append");
    tokio::time::sleep(LAPSE).await;
    assert!(
        store
            .claim_due(&[workflow], &lease("b", LONG), 10)
            .await
            .expect("claim_due")
            .is_empty()
    );
}

// ---- executions listing and retention ----

fn wall_ms() -> u64 {
    crate::clock::now_millis().max(0) as u64
}

/// Every page of a listing, following the cursors (at most 100 pages).
async fn all_pages(store: &Arc<dyn Store>, filter: &TransactionFilter) -> Vec<TransactionSummary> {
    let mut filter = filter.clone();
    let mut items = Vec::new();
    for _ in 0..100 {
        let page = store.list(&filter).await.expect("list");
        assert!(
            page.items.len() <= filter.limit,
            "a page holds at most `limit`"
        );
        items.extend(page.items);
        match page.next {
            Some(next) => {
                let text = next.to_string();
                assert_eq!(text.parse::<PageCursor>().expect("cursor parses"), next);
                filter.after = Some(next);
            }
            None => return items,
        }
    }
    panic!("more than 100 pages");
}

/// Listings: newest first, each matching transaction once across keyset pages, filtered by
/// workflow, states and creation time; bad limits and cursors are typed errors.
pub async fn listings_page_newest_first_with_filters(store: Arc<dyn Store>) {
    let workflow = unique("list");
    let other = unique("list-other");
    // Creation times unique to this check, so a store shared with other checks stays apart.
    let base = 10_000 + (uuid::Uuid::now_v7().as_u128() % 1_000_000_000) as u64 * 100;
    let before_ms = wall_ms();
    let states = [
        TransactionState::Done,
        TransactionState::Invoking,
        TransactionState::Reverted,
        TransactionState::Failed,
        TransactionState::Done,
        TransactionState::Compensating,
        TransactionState::Done,
    ];
    let mut expected = Vec::new();
    let mut done_in_both = 0;
    for (i, state) in states.iter().enumerate() {
        // Two transactions share each creation time from the third on (ties across pages).
        for (n, wf) in [(0, &workflow), (1, &workflow), (2, &other)] {
            if n == 1 && i < 2 {
                continue;
            }
            let mut h = header(wf, &format!("t{i}-{n}"), "run");
            h.created_at = base + i as u64;
            let epoch = store.create(&h, None).await.expect("create");
            store
                .append(&h.key, epoch, vec![fields(*state)])
                .await
                .expect("append");
            done_in_both += usize::from(*state == TransactionState::Done);
            if wf == &workflow {
                expected.push((h.key.clone(), *state, h.created_at));
            }
        }
    }
    let by_workflow = TransactionFilter {
        workflow: Some(Arc::from(workflow.as_str())),
        limit: 3,
        ..TransactionFilter::default()
    };
    let listed = all_pages(&store, &by_workflow).await;
    assert_eq!(listed.len(), expected.len(), "{listed:?}");
    for pair in listed.windows(2) {
        assert!(
            pair[0].created_at >= pair[1].created_at,
            "newest first: {pair:?}"
        );
    }
    let mut seen: Vec<_> = listed.iter().map(|s| s.key.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), expected.len(), "each transaction once");
    for (key, state, created_at) in &expected {
        let found = listed.iter().find(|s| &s.key == key).expect("listed");
        assert_eq!((found.state, found.created_at), (*state, *created_at));
        assert_eq!(found.run_id.as_ref(), "run");
        // Wall clock, as the store reads it (a counter-based clock may trail the system's by
        // a millisecond or two between its re-anchorings).
        assert!(
            found.updated_at + 50 >= before_ms,
            "updated_at is wall clock"
        );
    }
    // A single page of everything is the same order as the pages.
    let one_page = store
        .list(&TransactionFilter {
            limit: 100,
            ..by_workflow.clone()
        })
        .await
        .expect("list");
    assert_eq!(one_page.items, listed);
    assert_eq!(one_page.next, None);

    let finished = TransactionFilter {
        states: vec![TransactionState::Reverted, TransactionState::Failed],
        ..by_workflow.clone()
    };
    let listed = all_pages(&store, &finished).await;
    let mut want: Vec<_> = expected
        .iter()
        .filter(|(_, s, _)| matches!(s, TransactionState::Reverted | TransactionState::Failed))
        .map(|(k, _, _)| k.clone())
        .collect();
    let mut got: Vec<_> = listed.iter().map(|s| s.key.clone()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "states filter");

    let window = TransactionFilter {
        created_from: Some(base + 2),
        created_before: Some(base + 5),
        ..by_workflow.clone()
    };
    let listed = all_pages(&store, &window).await;
    assert_eq!(listed.len(), 6, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|s| (base + 2..base + 5).contains(&s.created_at))
    );

    // Without a workflow: both workflows' transactions in the time window, in the given states.
    let across = TransactionFilter {
        workflow: None,
        states: vec![TransactionState::Done],
        created_from: Some(base),
        created_before: Some(base + 7),
        limit: 2,
        ..TransactionFilter::default()
    };
    let listed = all_pages(&store, &across).await;
    assert_eq!(listed.len(), done_in_both, "{listed:?}");
    assert!(listed.iter().any(|s| *s.key.workflow == *other));
    assert!(listed.iter().all(|s| s.state == TransactionState::Done));

    match store
        .list(&TransactionFilter {
            limit: 0,
            ..TransactionFilter::default()
        })
        .await
    {
        Err(Error::InvalidFilter { field: "limit", .. }) => {}
        other => panic!("expected InvalidFilter, got {other:?}"),
    }
    for bad in ["", "12", "x.3.abc", "5.9.abc", "5.0.abc"] {
        assert!(
            matches!(bad.parse::<PageCursor>(), Err(Error::InvalidCursor { .. })),
            "{bad:?} is refused"
        );
    }
}

/// Purge deletes finished transactions last updated before the cut, of the workflow asked,
/// in batches of at most `limit`; unfinished and newer ones stay; a purged id can run again.
pub async fn purge_deletes_only_old_finished_transactions(store: Arc<dyn Store>) {
    let workflow = unique("purge");
    let mut old = Vec::new();
    for (i, state) in [
        TransactionState::Done,
        TransactionState::Reverted,
        TransactionState::Failed,
    ]
    .into_iter()
    .enumerate()
    {
        let h = header(&workflow, &format!("old-{i}"), "run");
        let epoch = store.create(&h, None).await.expect("create");
        store
            .append(&h.key, epoch, vec![fields(state)])
            .await
            .expect("append");
        old.push(h.key);
    }
    let running = header(&workflow, "running", "run");
    store.create(&running, None).await.expect("create");
    store
        .append(&running.key, 1, vec![fields(TransactionState::Invoking)])
        .await
        .expect("append");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cut = wall_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let recent = header(&workflow, "recent", "run");
    store.create(&recent, None).await.expect("create");
    store
        .append(&recent.key, 1, vec![fields(TransactionState::Done)])
        .await
        .expect("append");

    let purge = |workflow: &str, limit| Purge {
        older_than: cut,
        workflow: Some(Arc::from(workflow)),
        limit,
    };
    let elsewhere = unique("purge-elsewhere");
    assert_eq!(
        store
            .purge_finished(&purge(&elsewhere, 10))
            .await
            .expect("purge"),
        0,
        "another workflow's purge touches nothing here"
    );
    assert_eq!(
        store
            .purge_finished(&purge(&workflow, 2))
            .await
            .expect("purge"),
        2,
        "one batch"
    );
    assert_eq!(
        store
            .purge_finished(&purge(&workflow, 2))
            .await
            .expect("purge"),
        1
    );
    assert_eq!(
        store
            .purge_finished(&purge(&workflow, 2))
            .await
            .expect("purge"),
        0
    );
    for key in &old {
        assert!(
            store.load(key).await.expect("load").is_none(),
            "{key} purged"
        );
        assert!(store.summary(key).await.expect("summary").is_none());
    }
    assert!(store.load(&running.key).await.expect("load").is_some());
    assert!(store.load(&recent.key).await.expect("load").is_some());
    let left = all_pages(
        &store,
        &TransactionFilter {
            workflow: Some(Arc::from(workflow.as_str())),
            ..TransactionFilter::default()
        },
    )
    .await;
    let mut left: Vec<_> = left.into_iter().map(|s| s.key.id.to_string()).collect();
    left.sort();
    assert_eq!(left, vec!["recent".to_string(), "running".to_string()]);
    let again = header(&workflow, "old-0", "second");
    store
        .create(&again, None)
        .await
        .expect("a purged id runs again");
    let stored = store.load(&again.key).await.expect("load").expect("exists");
    assert!(stored.records.is_empty());
}

/// The engine lists its runs, details one (steps, attempts, outputs, errors, times) and purges
/// them; a purged run is gone.
pub async fn the_engine_lists_details_and_purges_runs(store: Arc<dyn Store>) {
    let engine = EngineOptions {
        store: store.clone(),
        ..EngineOptions::default()
    }
    .build();
    let workflow = unique("suite-detail");
    let definition = FlowDefinition::from_json(
        r#"{"next":{"action":"a","next":{"action":"b","maxRetries":1,"next":{"action":"c"}}}}"#,
    )
    .expect("flow");
    let flow = Flow::compile(&workflow, definition, WorkflowOptions::default()).expect("compiles");
    engine
        .register(flow, |call: StepCall| async move {
            match (call.action(), call.handler_type(), call.attempt()) {
                ("b", HandlerType::Invoke, 1) => StepOutcome::fail("busy"),
                ("c", HandlerType::Invoke, _) => StepOutcome::permanent("out of stock"),
                (action, handler, _) => {
                    StepOutcome::ok(json!({ "step": action, "side": handler.to_string() }))
                }
            }
        })
        .expect("register");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = engine
            .run(&workflow, RunOptions::default())
            .await
            .expect("run");
        assert_eq!(run.state, TransactionState::Reverted);
        ids.push(run.transaction_id().to_string());
    }
    let page = engine
        .list(&TransactionFilter {
            workflow: Some(Arc::from(workflow.as_str())),
            ..TransactionFilter::default()
        })
        .await
        .expect("list");
    let mut listed: Vec<_> = page.items.iter().map(|s| s.key.id.to_string()).collect();
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want);

    let detail = engine.detail(&workflow, &ids[0]).await.expect("detail");
    assert_eq!(detail.state, TransactionState::Reverted);
    assert!(detail.created_at.is_some() && detail.updated_at.is_some());
    let actions: Vec<_> = detail.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(actions, ["a", "b", "c"]);
    let b = &detail.steps[1];
    assert_eq!(b.invoke.state, crate::StepState::Done);
    assert_eq!(b.compensate.state, crate::StepState::Reverted);
    assert!(b.started_at.is_some());
    assert_eq!(
        b.output.as_ref().map(|d| d.to_json().expect("json")),
        Some(json!({"step": "b", "side": "invoke"}))
    );
    assert_eq!(
        b.compensation_output
            .as_ref()
            .map(|d| d.to_json().expect("json")),
        Some(json!({"step": "b", "side": "compensate"}))
    );
    // A temporary failure that a retry overcame is not an error of the transaction (Medusa).
    assert!(b.errors.is_empty(), "{:?}", b.errors);
    assert_eq!(
        b.attempts, 1,
        "the compensation's attempts (counters restart per side)"
    );
    let c = &detail.steps[2];
    assert_eq!(c.invoke.state, crate::StepState::Failed);
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    assert_eq!(c.errors[0].handler, HandlerType::Invoke);
    assert_eq!(c.errors[0].error.message, "out of stock");
    assert_eq!(detail.errors.len(), 1);
    assert!(
        serde_json::to_value(&detail).is_ok(),
        "the detail serializes"
    );

    let purged = engine
        .purge_finished_of(&workflow, wall_ms() + 1)
        .await
        .expect("purge");
    assert_eq!(purged, 3);
    assert!(matches!(
        engine.get(&workflow, &ids[0]).await,
        Err(Error::TransactionNotFound { .. })
    ));
}

/// `create_and_append` writes the header and the first records at the creation's epoch; an id
/// whose transaction is unfinished is refused with `AlreadyStarted`, and nothing is appended.
pub async fn create_and_append_writes_both(store: Arc<dyn Store>) {
    let h = header(&unique("both"), "t", "run");
    let epoch = store
        .create_and_append(
            &h,
            Some(&lease("a", LONG)),
            vec![fields(TransactionState::Invoking)],
        )
        .await
        .expect("create and append");
    let stored = store.load(&h.key).await.expect("load").expect("exists");
    assert_eq!(stored.header.run_id.as_ref(), "run");
    assert_eq!(stored.records, vec![fields(TransactionState::Invoking)]);
    match store
        .create_and_append(&h, None, vec![fields(TransactionState::Done)])
        .await
    {
        Err(Error::AlreadyStarted { .. }) => {}
        other => panic!("expected AlreadyStarted, got {other:?}"),
    }
    store
        .append(&h.key, epoch, vec![fields(TransactionState::Done)])
        .await
        .expect("the creator appends at its epoch");
    let stored = store.load(&h.key).await.expect("load").expect("exists");
    assert_eq!(stored.records.len(), 2, "the refused call appended nothing");
}
