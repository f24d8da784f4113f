//! The PostgreSQL store against the real database: the store suite in both durability modes,
//! create races, batching, failures and reopening. Each test uses its own schema and drops it.

use gorgon_orchestration::TransactionLog;
use std::sync::Arc;

use gorgon_orchestration::store::TransactionHeader;
use gorgon_orchestration::{Data, Store, TransactionKey, TransactionState};
use gorgon_store_postgres::{Durability, Error, Options, PostgresStore};
use gorgon_store_sql::testing::{self, state, step};
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
    testing::header("pg-test", id)
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

#[tokio::test]
async fn batched_store_passes_the_batched_suite() {
    let (store, _cleanup) = connect(Durability::Batched).await;
    testing::batched_store_suite(async || store.clone(), PostgresStore::stats).await;
    store.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn concurrent_creates_of_one_id_let_exactly_one_win() {
    let (store, _cleanup) = connect(Durability::EveryStep).await;
    testing::concurrent_creates_of_one_id_let_exactly_one_win(store.clone(), store.clone()).await;
    store.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn a_failed_batch_commit_fails_every_append_in_it() {
    let (store, _cleanup) = connect(Durability::Batched).await;
    let pool = store.pool().clone();
    testing::a_failed_batch_commit_fails_every_append_in_it(
        store.clone(),
        PostgresStore::stats,
        &pool,
    )
    .await;
    store.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn log_rows_are_keyed_by_step_side_and_attempt() {
    let (store, _cleanup) = connect(Durability::EveryStep).await;
    testing::log_rows_are_keyed_by_step_side_and_attempt(store.clone(), store.pool()).await;
    store.drop_schema().await.expect("drop");
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
