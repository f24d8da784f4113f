//! The PostgreSQL store against the real database: the store suite in both durability modes,
//! create races, batching, failures and reopening. Each test uses its own schema and drops it.

use std::sync::Arc;
use std::time::Instant;

use gorgon_orchestration::machine::TransactionFields;
use gorgon_orchestration::store::TransactionHeader;
use gorgon_orchestration::{
    Data, Error as StoreError, HandlerType, Record, StepError, StepRun, Store, TransactionError,
    TransactionKey, TransactionState,
};
use gorgon_store_postgres::{Durability, Error, Options, PostgresStore};
use serde_json::json;

fn options(durability: Durability) -> Options {
    Options {
        schema: format!("gorgon_test_{}", uuid::Uuid::new_v4().simple()),
        durability,
        ..Options::default()
    }
}

/// Drops a test's schema when the test ends, even by a panic (on its own connection, since the
/// test's runtime may be gone).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&Options::default().url).await?;
                let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut connection)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
    }
}

async fn connect(durability: Durability) -> (PostgresStore, Cleanup) {
    let options = options(durability);
    let cleanup = Cleanup(options.schema.clone());
    let store = PostgresStore::connect(options)
        .await
        .expect("PostgreSQL must run at DATABASE_URL or postgres://postgres@127.0.0.1:5432/test");
    (store, cleanup)
}

fn header(id: &str) -> TransactionHeader {
    TransactionHeader {
        key: TransactionKey::new("pg-test", id),
        run_id: Arc::from(format!("run-{}", uuid::Uuid::new_v4())),
        payload: Data::json(json!({"id": id})),
        created_at: 42,
        keep: Default::default(),
    }
}

fn state(state: TransactionState) -> Record {
    Record::Transaction(TransactionFields {
        state,
        started_at: Some(1),
        ..TransactionFields::NOT_STARTED
    })
}

fn step(n: u32) -> Record {
    let run = StepRun {
        attempts: n,
        ..StepRun::default()
    };
    Record::Step { step: 1, run }
}

#[tokio::test]
async fn every_step_store_passes_the_suite() {
    let (store, _cleanup) = connect(Durability::EveryStep).await;
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    gorgon_orchestration::testing::store_suite(|| {
        let shared = shared.clone();
        async move { shared }
    })
    .await;
    store.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn oversized_values_are_refused_in_both_modes() {
    for durability in [Durability::EveryStep, Durability::Batched] {
        let (store, _cleanup) = connect(durability).await;
        let shared: Arc<dyn Store> = Arc::new(store.clone());
        gorgon_orchestration::testing::oversized_values_are_refused(shared).await;
        store.drop_schema().await.expect("drop");
    }
}

#[tokio::test]
async fn batched_store_passes_the_suite() {
    let (store, _cleanup) = connect(Durability::Batched).await;
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    gorgon_orchestration::testing::store_suite(|| {
        let shared = shared.clone();
        async move { shared }
    })
    .await;
    store.drop_schema().await.expect("drop");
}

/// Sixteen creates of one id at once: exactly one wins, the others are `AlreadyStarted`; the same
/// once that run finished (exactly one new run replaces it).
#[tokio::test]
async fn concurrent_creates_of_one_id_let_exactly_one_win() {
    let (store, _cleanup) = connect(Durability::EveryStep).await;
    let id = format!("race-{}", uuid::Uuid::new_v4());
    for round in 0..2 {
        let attempts = (0..16).map(|_| {
            let store = store.clone();
            let h = header(&id);
            tokio::spawn(async move { store.create(&h, None).await.map(|_| h.run_id) })
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
                    matches!(e, StoreError::AlreadyStarted { .. }),
                    "round {round}: {e}"
                );
            }
        }
        let key = TransactionKey::new("pg-test", id.as_str());
        let stored = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(
            &stored.header.run_id, winners[0],
            "the winner's run is stored"
        );
        store
            .append(
                &key,
                round + 1,
                vec![step(1), state(TransactionState::Done)],
            )
            .await
            .expect("finish");
    }
    store.drop_schema().await.expect("drop");
}

/// 200 transactions append 10 times each, concurrently, on a batched store: every record is
/// stored, in order per transaction, and the appends shared far fewer commits.
#[tokio::test]
async fn batched_appends_of_200_transactions_share_commits() {
    let (store, _cleanup) = connect(Durability::Batched).await;
    let ids: Vec<String> = (0..200)
        .map(|i| format!("batch-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    for id in &ids {
        store.create(&header(id), None).await.expect("create");
    }
    let started = Instant::now();
    let tasks = ids.iter().map(|id| {
        let store = store.clone();
        let key = TransactionKey::new("pg-test", id.as_str());
        tokio::spawn(async move {
            store
                .append(&key, 1, vec![state(TransactionState::Invoking)])
                .await?;
            for n in 1..=9 {
                store.append(&key, 1, vec![step(n)]).await?;
            }
            Ok::<_, StoreError>(())
        })
    });
    for result in futures::future::join_all(tasks).await {
        result.expect("task").expect("append");
    }
    let elapsed = started.elapsed();
    let stats = store.stats();
    println!(
        "batched: {} appends in {} commits, {:.0} appends/s",
        stats.appends,
        stats.commits,
        stats.appends as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(stats.appends, 2000);
    assert_eq!(stats.records, 2000);
    assert!(
        stats.commits < stats.appends / 2,
        "{stats:?}: appends must share commits"
    );
    for id in &ids {
        let key = TransactionKey::new("pg-test", id.as_str());
        let stored = store.load(&key).await.expect("load").expect("exists");
        let mut expected = vec![state(TransactionState::Invoking)];
        expected.extend((1..=9).map(step));
        assert_eq!(stored.records, expected, "{id}: every record, in order");
        let summary = store.summary(&key).await.expect("summary").expect("exists");
        assert_eq!(summary.state, TransactionState::Invoking);
        assert_eq!(summary.created_at, 42);
    }
    store.drop_schema().await.expect("drop");
}

/// In a batch, an append to a transaction that was never created fails alone.
#[tokio::test]
async fn a_missing_transaction_fails_only_its_own_append_in_a_batch() {
    let (store, _cleanup) = connect(Durability::Batched).await;
    let ids: Vec<String> = (0..20)
        .map(|i| format!("mixed-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    for id in &ids {
        store.create(&header(id), None).await.expect("create");
    }
    let ghost = TransactionKey::new("pg-test", "ghost");
    let appends = ids
        .iter()
        .map(|id| TransactionKey::new("pg-test", id.as_str()))
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
                Err(StoreError::Store {
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
    store.drop_schema().await.expect("drop");
}

/// When the commit fails, every append of the batch gets the error (none is acknowledged).
#[tokio::test]
async fn a_failed_batch_commit_fails_every_append_in_it() {
    let (store, _cleanup) = connect(Durability::Batched).await;
    let ids: Vec<String> = (0..50).map(|i| format!("doomed-{i}")).collect();
    for id in &ids {
        store.create(&header(id), None).await.expect("create");
    }
    sqlx::query("DROP TABLE transaction_log")
        .execute(store.pool())
        .await
        .expect("drop the log");
    let appends = ids.iter().map(|id| {
        let store = store.clone();
        let key = TransactionKey::new("pg-test", id.as_str());
        tokio::spawn(async move { store.append(&key, 1, vec![step(1)]).await })
    });
    for result in futures::future::join_all(appends).await {
        let error = result.expect("task").expect_err("the commit failed");
        assert!(
            matches!(
                error,
                StoreError::Store {
                    operation: "append",
                    ..
                }
            ),
            "{error}"
        );
    }
    assert_eq!(store.stats().appends, 0);
    store.drop_schema().await.expect("drop");
}

/// A log row's seq, kind, step, side and attempt.
type LogRow = (i64, String, Option<i64>, Option<String>, Option<i64>);

/// Each log row carries the record's kind, step, side and attempt beside the JSON, in seq order.
#[tokio::test]
async fn log_rows_are_keyed_by_step_side_and_attempt() {
    let (store, _cleanup) = connect(Durability::EveryStep).await;
    let h = header("columns");
    store.create(&h, None).await.expect("create");
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
        .append(&h.key, 1, records[..2].to_vec())
        .await
        .expect("append");
    store
        .append(&h.key, 1, records[2..].to_vec())
        .await
        .expect("append");
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT seq, kind, CAST(step AS BIGINT), side, CAST(attempt AS BIGINT) FROM transaction_log \
         WHERE workflow = $1 AND transaction_id = $2 ORDER BY seq",
    )
    .bind("pg-test")
    .bind("columns")
    .fetch_all(store.pool())
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

/// A second store on the same schema (another process, or this one restarted) reads the log.
#[tokio::test]
async fn a_reconnected_store_reads_the_same_log() {
    let opts = options(Durability::EveryStep);
    let _cleanup = Cleanup(opts.schema.clone());
    let first = PostgresStore::connect(opts.clone()).await.expect("connect");
    let h = header("reopen");
    first.create(&h, None).await.expect("create");
    first
        .append(&h.key, 1, vec![state(TransactionState::Invoking), step(1)])
        .await
        .expect("append");
    assert_eq!(
        first.stats().commits,
        1,
        "every-step: one commit per append"
    );
    first.pool().close().await;
    drop(first);
    let second = PostgresStore::connect(opts)
        .await
        .expect("reconnect (migrations already applied)");
    let stored = second.load(&h.key).await.expect("load").expect("exists");
    assert_eq!(stored.header.run_id, h.run_id);
    assert_eq!(
        stored.header.payload.to_json().expect("json"),
        json!({"id": "reopen"})
    );
    assert_eq!(
        stored.records,
        vec![state(TransactionState::Invoking), step(1)]
    );
    second.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn bad_options_are_typed_errors() {
    let bad_schema = Options {
        schema: "Robert'); DROP TABLE".into(),
        ..Options::default()
    };
    assert!(matches!(
        PostgresStore::connect(bad_schema).await,
        Err(Error::InvalidOptions {
            field: "schema",
            ..
        })
    ));
    let nowhere = Options {
        url: "postgres://postgres:secret@127.0.0.1:1/test".into(),
        acquire_timeout_ms: 500,
        ..Options::default()
    };
    match PostgresStore::connect(nowhere).await {
        Err(Error::Connect { url, .. }) => assert!(!url.contains("secret"), "{url}"),
        other => panic!("expected a connect error, got {other:?}"),
    }
    let parsed: Options =
        serde_json::from_value(json!({"schema": "s1", "durability": "batched"})).expect("options");
    assert_eq!(parsed.durability, Durability::Batched);
    assert!(serde_json::from_value::<Options>(json!({"durability": "sometimes"})).is_err());
}

/// One payload carrying a NUL character among 20 concurrent creations with their first append
/// (one batch): all 20 are stored, the NUL kept as given. A value the database cannot hold (a NUL
/// in a transaction id, which PostgreSQL's text refuses) fails its own append only.
#[tokio::test]
async fn a_nul_character_fails_nothing_else_in_its_batch() {
    let (store, _cleanup) = connect(Durability::Batched).await;
    let run = |id: String, payload: serde_json::Value| {
        let store = store.clone();
        tokio::spawn(async move {
            let h = TransactionHeader {
                payload: Data::json(payload),
                ..header(&id)
            };
            store
                .create_and_append(&h, None, vec![state(TransactionState::Invoking)])
                .await
        })
    };
    let ids: Vec<String> = (0..20)
        .map(|i| format!("nul-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let note = if i == 7 { "evil\u{0}" } else { "fine" };
            run(id.clone(), json!({ "note": note }))
        })
        .collect();
    for result in futures::future::join_all(tasks).await {
        result.expect("task").expect("every creation is stored");
    }
    let evil = store
        .load(&TransactionKey::new("pg-test", ids[7].as_str()))
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        evil.header.payload.to_json().unwrap(),
        json!({"note": "evil\u{0}"})
    );

    // Now an append PostgreSQL refuses, among 19 it accepts.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let id = if i == 3 {
                format!("bad\u{0}id-{}", uuid::Uuid::new_v4())
            } else {
                format!("good-{i}-{}", uuid::Uuid::new_v4())
            };
            run(id, json!({}))
        })
        .collect();
    let outcomes: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let failed: Vec<usize> = (0..20).filter(|&i| outcomes[i].is_err()).collect();
    assert_eq!(failed, [3], "only the refused append fails");
    // The caller is told what kind of failure it was; the database's own text is logged.
    let message = outcomes[3].as_ref().unwrap_err().to_string();
    assert!(
        message.contains("the database refused it (code 22021)"),
        "{message}"
    );
    assert!(!message.contains("invalid byte sequence"), "{message}");
    store.drop_schema().await.expect("drop");
}

/// A batched commit that PostgreSQL aborts for a deadlock is tried again whole (a retry inside
/// the aborted transaction could never succeed), and its appends are written. The deadlock is
/// made on purpose, with one batch writer: connection X1 holds transaction `z`, so the writer's
/// commit of an append to `z` waits while appends to `a` and `b` queue up behind it; connection
/// X2 holds `b`; X1 lets go, the writer takes `a` and `b` in one commit, locks `a` and waits for
/// `b`; then X2 asks for `a`.
#[tokio::test]
async fn a_deadlocked_batch_is_tried_again_whole() {
    use sqlx::Connection;
    let options = Options {
        batch_writers: 1,
        ..options(Durability::Batched)
    };
    let cleanup = Cleanup(options.schema.clone());
    let store = PostgresStore::connect(options).await.expect("connect");
    let (a, b, z) = (header("dead-a"), header("dead-b"), header("dead-z"));
    for h in [&a, &b, &z] {
        store.create(h, None).await.expect("create");
    }
    let lock = |id: &str| {
        format!(
            "UPDATE \"{}\".transactions SET updated_at = updated_at WHERE transaction_id = '{id}'",
            cleanup.0
        )
    };
    let connect = || async {
        let mut connection = sqlx::PgConnection::connect(&Options::default().url)
            .await
            .expect("connect");
        sqlx::query("BEGIN")
            .execute(&mut connection)
            .await
            .expect("begin");
        connection
    };
    let (mut x1, mut x2) = (connect().await, connect().await);
    sqlx::query(sqlx::AssertSqlSafe(lock("dead-z")))
        .execute(&mut x1)
        .await
        .expect("lock z");
    let append = |key: TransactionKey| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(&key, 1, vec![state(TransactionState::Invoking)])
                .await
        })
    };
    let blocked = append(z.key.clone());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (to_a, to_b) = (append(a.key.clone()), append(b.key.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    sqlx::query(sqlx::AssertSqlSafe(lock("dead-b")))
        .execute(&mut x2)
        .await
        .expect("lock b");
    sqlx::query("COMMIT")
        .execute(&mut x1)
        .await
        .expect("commit");
    blocked.await.expect("task").expect("z is written");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The batch holds `a` and waits for `b`: asking for `a` closes the cycle, and PostgreSQL
    // aborts the side whose wait outlasted `deadlock_timeout` first, the batch.
    let locked_a = sqlx::query(sqlx::AssertSqlSafe(lock("dead-a")))
        .execute(&mut x2)
        .await;
    sqlx::query(if locked_a.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    })
    .execute(&mut x2)
    .await
    .expect("end");
    to_a.await.expect("task").expect("a is written");
    to_b.await.expect("task").expect("b is written");
    let stats = store.stats();
    assert!(locked_a.is_ok(), "the other side went on: {locked_a:?}");
    assert_eq!(
        stats.retries, 1,
        "the batch was tried again once: {stats:?}"
    );
    assert_eq!(
        store
            .load(&a.key)
            .await
            .expect("load")
            .expect("a")
            .records
            .len(),
        1
    );
    store.drop_schema().await.expect("drop");
}
