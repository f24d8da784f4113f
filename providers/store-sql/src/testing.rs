//! Checks every SQL store runs against itself in [`Durability::Batched`] mode, beside
//! `gorgon_orchestration::testing::store_suite`; the records and headers the stores' tests
//! write; and the measurement of their ignored `throughput` tests.
//!
//! ```ignore
//! #[tokio::test]
//! async fn batched_appends_share_commits() {
//!     let store = SqliteStore::connect(Options { durability: Durability::Batched, ..Options::in_memory() })
//!         .await
//!         .expect("open");
//!     gorgon_store_sql::testing::batched_store_suite(async || store.clone(), SqliteStore::stats).await;
//! }
//! ```
//!
//! Each check uses unique transaction ids and reads the counters before and after, so a store
//! shared between checks stays isolated.

use std::sync::Arc;
use std::time::Instant;

use gorgon_orchestration::log::TransactionFields;
use gorgon_orchestration::store::TransactionHeader;
use gorgon_orchestration::{
    Data, EngineOptions, Error, Flow, FlowDefinition, HandlerType, Record, RunOptions, StepCall,
    StepError, StepOutcome, StepRun, Store, TransactionError, TransactionKey, TransactionState,
    WorkflowOptions,
};
use serde_json::json;
use sqlx::{AssertSqlSafe, Database, Executor, FromRow, IntoArguments, Pool};

use crate::{Durability, Stats};

/// The workflow of the checks' transactions.
const WORKFLOW: &str = "sql-batched";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7())
}

/// Creates `n` transactions with unique ids starting with `prefix`; their ids.
async fn create(store: &impl Store, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| unique(&format!("{prefix}-{i}"))).collect();
    for id in &ids {
        store
            .create(&header(WORKFLOW, id), None)
            .await
            .expect("create");
    }
    ids
}

/// A header of transaction `id` of `workflow`: a new run id, the payload `{"id": id}`, created
/// at 42.
pub fn header(workflow: &str, id: &str) -> TransactionHeader {
    TransactionHeader {
        key: TransactionKey::new(workflow, id),
        run_id: Arc::from(format!("run-{}", uuid::Uuid::new_v4())),
        payload: Data::json(json!({"id": id})),
        created_at: 42,
        keep: Default::default(),
    }
}

/// A transaction record of `state`, started at 1.
pub fn state(state: TransactionState) -> Record {
    Record::Transaction(TransactionFields {
        state,
        started_at: Some(1),
        ..TransactionFields::NOT_STARTED
    })
}

/// A step record of step 1 after `n` attempts.
pub fn step(n: u32) -> Record {
    let run = StepRun {
        attempts: n,
        ..StepRun::default()
    };
    Record::Step { step: 1, run }
}

/// Runs every batched check, each on a store made by `make` (in batched mode); `stats` reads a
/// store's counters.
pub async fn batched_store_suite<S>(make: impl AsyncFn() -> S, stats: impl Fn(&S) -> Stats)
where
    S: Store + Clone + 'static,
{
    batched_appends_of_200_transactions_share_commits(make().await, &stats).await;
    a_missing_transaction_fails_only_its_own_append(make().await).await;
}

/// 200 transactions append 10 times each, concurrently: every record is stored, in order per
/// transaction, and the appends shared far fewer commits.
pub async fn batched_appends_of_200_transactions_share_commits<S>(
    store: S,
    stats: impl Fn(&S) -> Stats,
) where
    S: Store + Clone + 'static,
{
    let ids = create(&store, "batch", 200).await;
    let before = stats(&store);
    let started = Instant::now();
    let tasks = ids.iter().map(|id| {
        let store = store.clone();
        let key = TransactionKey::new(WORKFLOW, id.as_str());
        tokio::spawn(async move {
            store
                .append(&key, 1, vec![state(TransactionState::Invoking)])
                .await?;
            for n in 1..=9 {
                store.append(&key, 1, vec![step(n)]).await?;
            }
            Ok::<_, Error>(())
        })
    });
    for result in futures::future::join_all(tasks).await {
        result.expect("task").expect("append");
    }
    let elapsed = started.elapsed();
    let after = stats(&store);
    let (appends, commits) = (
        after.appends - before.appends,
        after.commits - before.commits,
    );
    println!(
        "batched: {appends} appends in {commits} commits, {:.0} appends/s",
        appends as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(appends, 2000);
    assert_eq!(after.records - before.records, 2000);
    assert!(
        commits < appends / 2,
        "{after:?} after {before:?}: appends must share commits"
    );
    for id in &ids {
        let key = TransactionKey::new(WORKFLOW, id.as_str());
        let stored = store.load(&key).await.expect("load").expect("exists");
        let mut expected = vec![state(TransactionState::Invoking)];
        expected.extend((1..=9).map(step));
        assert_eq!(stored.records, expected, "{id}: every record, in order");
        let summary = store.summary(&key).await.expect("summary").expect("exists");
        assert_eq!(summary.state, TransactionState::Invoking);
        assert_eq!(summary.created_at, 42);
    }
}

/// In a batch, an append to a transaction that was never created fails alone.
pub async fn a_missing_transaction_fails_only_its_own_append<S>(store: S)
where
    S: Store + Clone + 'static,
{
    let ids = create(&store, "mixed", 20).await;
    let ghost = TransactionKey::new(WORKFLOW, unique("ghost"));
    let appends = ids
        .iter()
        .map(|id| TransactionKey::new(WORKFLOW, id.as_str()))
        .chain(std::iter::once(ghost.clone()))
        .map(|key| {
            let store = store.clone();
            tokio::spawn(async move { (store.append(&key, 1, vec![step(1)]).await, key) })
        });
    for result in futures::future::join_all(appends).await {
        let (result, key) = result.expect("task");
        if key == ghost {
            assert!(matches!(
                result,
                Err(Error::Store {
                    operation: "append",
                    ..
                })
            ));
        } else {
            result.expect("the others are written");
            let stored = store.load(&key).await.expect("load").expect("exists");
            assert_eq!(stored.records, vec![step(1)]);
        }
    }
}

/// Sixteen creates of one id at once, alternating between `first` and `second` (two stores on
/// one database, as two processes would, or two clones of one): exactly one wins, the others are
/// `AlreadyStarted`; the same once that run finished, one epoch later.
pub async fn concurrent_creates_of_one_id_let_exactly_one_win<S>(first: S, second: S)
where
    S: Store + Clone + 'static,
{
    let id = unique("race");
    let key = TransactionKey::new(WORKFLOW, id.as_str());
    for round in 0..2 {
        let attempts = (0..16).map(|i| {
            let store = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            let h = header(WORKFLOW, &id);
            tokio::spawn(async move { store.create(&h, None).await.map(|e| (h.run_id, e)) })
        });
        let results: Vec<_> = futures::future::join_all(attempts)
            .await
            .into_iter()
            .map(|r| r.expect("task"))
            .collect();
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one create wins");
        for result in &results {
            if let Err(e) = result {
                assert!(
                    matches!(e, Error::AlreadyStarted { .. }),
                    "round {round}: {e}"
                );
            }
        }
        let stored = second.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            &stored.header.run_id, &winners[0].0,
            "the winner's run is stored"
        );
        assert_eq!(winners[0].1, round + 1, "a new run is one epoch later");
        first
            .append(
                &key,
                winners[0].1,
                vec![step(1), state(TransactionState::Done)],
            )
            .await
            .expect("finish");
    }
}

/// In batched mode, when the commit fails (here: `pool`, the store's database, loses its log
/// table), every append of the batch gets the error, none is counted, and nothing of the batch
/// is kept. The store is of no further use.
pub async fn a_failed_batch_commit_fails_every_append_in_it<S, DB>(
    store: S,
    stats: impl Fn(&S) -> Stats,
    pool: &Pool<DB>,
) where
    S: Store + Clone + 'static,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
{
    let ids = create(&store, "doomed", 50).await;
    sqlx::query("DROP TABLE transaction_log")
        .execute(pool)
        .await
        .expect("drop the log");
    let before = stats(&store);
    let appends = ids.iter().map(|id| {
        let store = store.clone();
        let key = TransactionKey::new(WORKFLOW, id.as_str());
        tokio::spawn(async move { store.append(&key, 1, vec![step(1)]).await })
    });
    for result in futures::future::join_all(appends).await {
        let error = result.expect("task").expect_err("the commit failed");
        assert!(
            matches!(
                error,
                Error::Store {
                    operation: "append",
                    ..
                }
            ),
            "{error}"
        );
    }
    assert_eq!(stats(&store).appends, before.appends);
    // The summaries were rolled back with the log rows.
    let summary = store
        .summary(&TransactionKey::new(WORKFLOW, ids[0].as_str()))
        .await
        .expect("summary")
        .expect("exists");
    assert_eq!(summary.state, TransactionState::NotStarted);
}

/// A log row's seq, kind, step, side and attempt.
type LogRow = (i64, String, Option<i64>, Option<String>, Option<i64>);

/// Each log row carries the record's kind, step, side and attempt beside the JSON, in seq order
/// (`pool` reads the store's log table; every-step mode, where a row holds one record).
pub async fn log_rows_are_keyed_by_step_side_and_attempt<S, DB>(store: S, pool: &Pool<DB>)
where
    S: Store,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> LogRow: FromRow<'r, DB::Row>,
{
    let h = header(WORKFLOW, &unique("columns"));
    let epoch = store.create(&h, None).await.expect("create");
    let mut compensating = StepRun {
        attempts: 2,
        compensating: true,
        ..StepRun::default()
    };
    compensating.failures = 1;
    let records = [
        state(TransactionState::Compensating),
        Record::Step {
            step: 3,
            run: compensating,
        },
        Record::Response {
            step: 3,
            handler: HandlerType::Compensate,
            data: Some(Data::json(json!({"undone": true}))),
        },
        Record::Error(TransactionError {
            action: "charge".into(),
            handler_type: HandlerType::Invoke,
            error: StepError::new("declined"),
        }),
    ];
    store
        .append(&h.key, epoch, records[..2].to_vec())
        .await
        .expect("append");
    store
        .append(&h.key, epoch, records[2..].to_vec())
        .await
        .expect("append");
    // The id is the check's own (letters, digits and `-`), so it can stand in the SQL text.
    let rows: Vec<LogRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT seq, kind, CAST(step AS BIGINT), side, CAST(attempt AS BIGINT) FROM transaction_log \
         WHERE workflow = '{WORKFLOW}' AND transaction_id = '{}' ORDER BY seq",
        h.key.id
    )))
    .fetch_all(pool)
    .await
    .expect("query the log");
    let expected = vec![
        (0, "transaction".to_string(), None, None, None),
        (
            1,
            "step".to_string(),
            Some(3),
            Some("compensate".to_string()),
            Some(2),
        ),
        (
            2,
            "response".to_string(),
            Some(3),
            Some("compensate".to_string()),
            None,
        ),
        (
            3,
            "error".to_string(),
            None,
            Some("invoke".to_string()),
            None,
        ),
    ];
    assert_eq!(rows, expected);
    let stored = store.load(&h.key).await.expect("load").expect("exists");
    assert_eq!(stored.records, records.to_vec());
    let summary = store
        .summary(&h.key)
        .await
        .expect("summary")
        .expect("exists");
    assert_eq!(summary.state, TransactionState::Compensating);
}

/// Measures the engine on stores made by `connect`: `seq10` workflows (ten steps in a row), one
/// at a time and many at once, in both durability modes (`every_step_runs` of them many at once
/// in every-step mode), printing workflows and appends per second and the commits `stats`
/// counted; `done` disposes of each store.
pub async fn seq10_throughput<S>(
    connect: impl AsyncFn(Durability) -> S,
    stats: impl Fn(&S) -> Stats,
    every_step_runs: usize,
    done: impl AsyncFn(S),
) where
    S: Store + Clone + 'static,
{
    for (durability, workflows, concurrency) in [
        (Durability::EveryStep, 20, 1),
        (Durability::EveryStep, every_step_runs, 64),
        (Durability::Batched, 20, 1),
        (Durability::Batched, 5000, 1000),
    ] {
        let store = connect(durability).await;
        let engine = EngineOptions {
            store: Arc::new(store.clone()),
            ..EngineOptions::default()
        }
        .build();
        let mut step = json!({"action": "s10"});
        for i in (1..10).rev() {
            step = json!({"action": format!("s{i}"), "next": step});
        }
        let definition = FlowDefinition::from_value(json!({ "next": step })).expect("flow");
        engine
            .register(
                Flow::compile("seq10", definition, WorkflowOptions::default()).expect("compiles"),
                |call: StepCall| async move { StepOutcome::ok(json!({"step": call.action()})) },
            )
            .expect("register");
        let started = Instant::now();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let runs = (0..workflows).map(|_| {
            let engine = engine.clone();
            let semaphore = semaphore.clone();
            tokio::spawn(async move {
                let _permit = semaphore.acquire().await.expect("semaphore");
                engine.run("seq10", RunOptions::default()).await
            })
        });
        for run in futures::future::join_all(runs).await {
            assert_eq!(
                run.expect("task").expect("run").state,
                TransactionState::Done
            );
        }
        let elapsed = started.elapsed().as_secs_f64();
        let counted = stats(&store);
        println!(
            "{durability:?}: {workflows} seq10 workflows, {concurrency} at a time: {:.0} wf/s, {} appends in {} commits ({:.0} appends/s)",
            workflows as f64 / elapsed,
            counted.appends,
            counted.commits,
            counted.appends as f64 / elapsed
        );
        done(store).await;
    }
}
