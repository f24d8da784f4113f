//! The SQLite store on real files: the store suite in both durability modes and in memory,
//! create races (one file, two stores), batching, failures, and a log surviving its process.

use std::sync::Arc;
use std::time::Instant;

use gorgon_orchestration::machine::TransactionFields;
use gorgon_orchestration::store::{Claim, Lease, TransactionHeader};
use gorgon_orchestration::{
    Data, Error as StoreError, HandlerType, Record, StepError, StepRun, Store, TransactionError,
    TransactionKey, TransactionState,
};
use gorgon_store_sqlite::{Durability, Error, Options, SqliteStore};
use serde_json::json;
use tempfile::TempDir;

/// A store on a new file in a temporary directory (removed when the directory is dropped).
async fn connect(durability: Durability) -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::connect(Options {
        durability,
        ..Options::file(dir.path().join("gorgon.db"))
    })
    .await
    .expect("open");
    (store, dir)
}

fn header(id: &str) -> TransactionHeader {
    TransactionHeader {
        key: TransactionKey::new("sqlite-test", id),
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

async fn suite(store: SqliteStore) {
    let shared: Arc<dyn Store> = Arc::new(store);
    gorgon_orchestration::testing::store_suite(|| {
        let shared = shared.clone();
        async move { shared }
    })
    .await;
    gorgon_orchestration::testing::oversized_values_are_refused(shared).await;
}

#[tokio::test]
async fn every_step_store_passes_the_suite() {
    let (store, _dir) = connect(Durability::EveryStep).await;
    suite(store).await;
}

#[tokio::test]
async fn batched_store_passes_the_suite() {
    let (store, _dir) = connect(Durability::Batched).await;
    suite(store).await;
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    let store = SqliteStore::connect(Options::in_memory())
        .await
        .expect("open");
    suite(store).await;
}

/// Sixteen creates of one id at once, from two stores on one file (as two processes would):
/// exactly one wins, the others are `AlreadyStarted`; the same once that run finished.
#[tokio::test]
async fn concurrent_creates_of_one_id_let_exactly_one_win() {
    let (first, dir) = connect(Durability::EveryStep).await;
    let second = SqliteStore::connect(Options::file(dir.path().join("gorgon.db")))
        .await
        .expect("second store on the same file");
    let id = "race";
    let key = TransactionKey::new("sqlite-test", id);
    for round in 0..2 {
        let attempts = (0..16).map(|i| {
            let store = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            let h = header(id);
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
                    matches!(e, StoreError::AlreadyStarted { .. }),
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

/// 200 transactions append 10 times each, concurrently, on a batched store: every record is
/// stored, in order per transaction, and the appends shared far fewer commits.
#[tokio::test]
async fn batched_appends_of_200_transactions_share_commits() {
    let (store, _dir) = connect(Durability::Batched).await;
    let ids: Vec<String> = (0..200).map(|i| format!("batch-{i}")).collect();
    for id in &ids {
        store.create(&header(id), None).await.expect("create");
    }
    let started = Instant::now();
    let tasks = ids.iter().map(|id| {
        let store = store.clone();
        let key = TransactionKey::new("sqlite-test", id.as_str());
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
        let key = TransactionKey::new("sqlite-test", id.as_str());
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
#[tokio::test]
async fn a_missing_transaction_fails_only_its_own_append_in_a_batch() {
    let (store, _dir) = connect(Durability::Batched).await;
    let ids: Vec<String> = (0..20).map(|i| format!("mixed-{i}")).collect();
    for id in &ids {
        store.create(&header(id), None).await.expect("create");
    }
    let ghost = TransactionKey::new("sqlite-test", "ghost");
    let appends = ids
        .iter()
        .map(|id| TransactionKey::new("sqlite-test", id.as_str()))
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
}

/// When the commit fails, every append of the batch gets the error (none is acknowledged).
#[tokio::test]
async fn a_failed_batch_commit_fails_every_append_in_it() {
    let (store, _dir) = connect(Durability::Batched).await;
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
        let key = TransactionKey::new("sqlite-test", id.as_str());
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
    // Nothing of the failed batch was kept: the summaries were rolled back with the log rows.
    let summary = store
        .summary(&TransactionKey::new("sqlite-test", "doomed-0"))
        .await
        .expect("summary")
        .expect("exists");
    assert_eq!(summary.state, TransactionState::NotStarted);
}

fn lease(owner: &str, ms: u64) -> Lease {
    Lease {
        owner: Arc::from(owner),
        ms,
    }
}

/// In a batch, an append with a stale epoch (its lease was taken over) fails alone with
/// `Fenced` and writes nothing; the others of the batch, the new holder's included, are written.
#[tokio::test]
async fn a_stale_epoch_fails_only_its_own_append_in_a_batch() {
    let (store, _dir) = connect(Durability::Batched).await;
    let ids: Vec<String> = (0..20).map(|i| format!("fenced-{i}")).collect();
    for id in &ids {
        let epoch = store
            .create(&header(id), Some(&lease("old", 100)))
            .await
            .expect("create");
        assert_eq!(epoch, 1);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let taken = TransactionKey::new("sqlite-test", "fenced-0");
    let Claim::Granted { epoch: current } = store
        .claim(&taken, &lease("new", 60_000))
        .await
        .expect("claim")
    else {
        panic!("a lapsed lease is granted");
    };
    assert_eq!(current, 2);
    let stale = ids.iter().map(|id| {
        let store = store.clone();
        let key = TransactionKey::new("sqlite-test", id.as_str());
        tokio::spawn(async move { (store.append(&key, 1, vec![step(1)]).await, key, 1) })
    });
    let fresh = {
        let store = store.clone();
        let key = taken.clone();
        tokio::spawn(async move {
            (
                store.append(&key, current, vec![step(2)]).await,
                key,
                current,
            )
        })
    };
    let before = store.stats();
    for result in futures::future::join_all(stale.chain(std::iter::once(fresh))).await {
        let (result, key, epoch) = result.expect("task");
        if key == taken && epoch == 1 {
            match result {
                Err(StoreError::Fenced { epoch, .. }) => assert_eq!(epoch, 1),
                other => panic!("expected Fenced, got {other:?}"),
            }
        } else {
            result.expect("the others are written");
        }
    }
    let after = store.stats();
    println!(
        "21 appends (one fenced) in {} commits",
        after.commits - before.commits
    );
    assert_eq!(after.appends - before.appends, 20);
    let stored = store.load(&taken).await.expect("load").expect("exists");
    assert_eq!(
        stored.records,
        vec![step(2)],
        "the stale append wrote nothing"
    );
    for id in &ids[1..] {
        let key = TransactionKey::new("sqlite-test", id.as_str());
        let stored = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(stored.records, vec![step(1)]);
    }
}

/// Two stores on one file (as two processes) claim due transactions at once: each is claimed
/// exactly once, at epoch 2, and then belongs to its claimer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_file_never_claim_a_transaction_twice() {
    let (first, dir) = connect(Durability::EveryStep).await;
    let second = SqliteStore::connect(Options::file(dir.path().join("gorgon.db")))
        .await
        .expect("second store on the same file");
    let workflows: Vec<Arc<str>> = vec![Arc::from("sqlite-test")];
    for i in 0..100 {
        first
            .create(&header(&format!("due-{i}")), None)
            .await
            .expect("create");
    }
    let workers = [("w1", first.clone()), ("w2", second.clone())].map(|(owner, store)| {
        let workflows = workflows.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            loop {
                let batch = store
                    .claim_due(&workflows, &lease(owner, 60_000), 7)
                    .await
                    .expect("claim_due");
                if batch.is_empty() {
                    return claimed;
                }
                assert!(batch.len() <= 7, "the limit holds");
                claimed.extend(batch.into_iter().map(|c| (c, owner)));
            }
        })
    });
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("worker"));
    }
    assert_eq!(all.len(), 100, "every transaction is claimed once");
    all.sort();
    all.dedup_by(|a, b| a.0.0 == b.0.0);
    assert_eq!(all.len(), 100, "no transaction is claimed twice");
    for ((key, epoch), owner) in &all {
        assert_eq!(*epoch, 2);
        assert_eq!(
            second
                .claim(key, &lease("thief", 60_000))
                .await
                .expect("claim"),
            Claim::Leased {
                owner: owner.to_string()
            }
        );
    }
    let keys: Vec<TransactionKey> = all.iter().map(|((key, _), _)| key.clone()).collect();
    let held = first
        .renew(&lease("w1", 30_000), &keys)
        .await
        .expect("renew")
        + second
            .renew(&lease("w2", 30_000), &keys)
            .await
            .expect("renew");
    assert_eq!(held, 100);
}

/// A log row's seq, kind, step, side and attempt.
type LogRow = (i64, String, Option<i64>, Option<String>, Option<i64>);

/// Each log row carries the record's kind, step, side and attempt beside the JSON, in seq order.
#[tokio::test]
async fn log_rows_are_keyed_by_step_side_and_attempt() {
    let (store, _dir) = connect(Durability::EveryStep).await;
    let h = header("columns");
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
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT seq, kind, CAST(step AS BIGINT), side, CAST(attempt AS BIGINT) FROM transaction_log \
         WHERE workflow = ?1 AND transaction_id = ?2 ORDER BY seq",
    )
    .bind("sqlite-test")
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

const CHILD_ENV: &str = "GORGON_SQLITE_CHILD";

/// The child half of `a_log_survives_the_process_that_wrote_it`: writes, then exits at once
/// (no close, no destructors) as soon as the appends returned.
#[tokio::test]
#[ignore = "run by a_log_survives_the_process_that_wrote_it in a child process"]
async fn child_writes_then_exits() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, path) = spec.split_once('=').expect("mode=path");
    let durability = if mode == "batched" {
        Durability::Batched
    } else {
        Durability::EveryStep
    };
    let store = SqliteStore::connect(Options {
        durability,
        ..Options::file(path)
    })
    .await
    .expect("open");
    let h = TransactionHeader {
        run_id: Arc::from(mode),
        ..header(mode)
    };
    let epoch = store.create(&h, None).await.expect("create");
    store
        .append(
            &h.key,
            epoch,
            vec![state(TransactionState::Invoking), step(1)],
        )
        .await
        .expect("append");
    store
        .append(&h.key, epoch, vec![step(2)])
        .await
        .expect("append");
    std::process::exit(0);
}

/// A process writes and exits without closing anything; a new process opens the file and
/// loads the same log, in both durability modes.
#[tokio::test]
async fn a_log_survives_the_process_that_wrote_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("restart.db");
    for mode in ["every_step", "batched"] {
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "child_writes_then_exits",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, format!("{mode}={}", path.display()))
            .status()
            .expect("spawn the child");
        assert!(status.success(), "{mode}: the child failed: {status}");
    }
    let store = SqliteStore::connect(Options::file(&path))
        .await
        .expect("reopen");
    for mode in ["every_step", "batched"] {
        let key = TransactionKey::new("sqlite-test", mode);
        let stored = store
            .load(&key)
            .await
            .expect("load")
            .expect("{mode}: exists");
        assert_eq!(stored.header.run_id.as_ref(), mode);
        assert_eq!(
            stored.header.payload.to_json().expect("json"),
            json!({"id": mode})
        );
        assert_eq!(
            stored.records,
            vec![state(TransactionState::Invoking), step(1), step(2)],
            "{mode}"
        );
        let summary = store.summary(&key).await.expect("summary").expect("exists");
        assert_eq!(summary.state, TransactionState::Invoking);
    }
}

#[tokio::test]
async fn bad_options_are_typed_errors() {
    assert!(matches!(
        SqliteStore::connect(Options::file("")).await,
        Err(Error::InvalidOptions { field: "path", .. })
    ));
    assert!(matches!(
        SqliteStore::connect(Options::file("/nonexistent-dir/x/gorgon.db")).await,
        Err(Error::Open { .. })
    ));
    let parsed: Options =
        serde_json::from_value(json!({"path": "a.db", "durability": "batched"})).expect("options");
    assert_eq!(parsed.durability, Durability::Batched);
    assert_eq!(parsed.path, "a.db");
    assert!(serde_json::from_value::<Options>(json!({"durability": "sometimes"})).is_err());
}
