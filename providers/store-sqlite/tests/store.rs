//! The SQLite store on real files: the store suite in both durability modes and in memory,
//! create races (one file, two stores), batching, failures, and a log surviving its process.

use gorgon_orchestration::{Leases, TransactionLog};
use std::sync::Arc;

use gorgon_orchestration::store::{Claim, Lease, TransactionHeader};
use gorgon_orchestration::{Error as StoreError, Store, TransactionKey, TransactionState};
use gorgon_store_sql::testing::{self, state, step};
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
    testing::header("sqlite-test", id)
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
async fn batched_store_passes_the_batched_suite() {
    let (store, _dir) = connect(Durability::Batched).await;
    testing::batched_store_suite(async || store.clone(), SqliteStore::stats).await;
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    let store = SqliteStore::connect(Options::in_memory())
        .await
        .expect("open");
    suite(store).await;
}

/// Sixteen creates of one id at once, from two stores on one file (as two processes would).
#[tokio::test]
async fn concurrent_creates_of_one_id_let_exactly_one_win() {
    let (first, dir) = connect(Durability::EveryStep).await;
    let second = SqliteStore::connect(Options::file(dir.path().join("gorgon.db")))
        .await
        .expect("second store on the same file");
    testing::concurrent_creates_of_one_id_let_exactly_one_win(first, second).await;
}

#[tokio::test]
async fn a_failed_batch_commit_fails_every_append_in_it() {
    let (store, _dir) = connect(Durability::Batched).await;
    let pool = store.pool().clone();
    testing::a_failed_batch_commit_fails_every_append_in_it(store, SqliteStore::stats, &pool).await;
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

#[tokio::test]
async fn log_rows_are_keyed_by_step_side_and_attempt() {
    let (store, _dir) = connect(Durability::EveryStep).await;
    let pool = store.pool().clone();
    testing::log_rows_are_keyed_by_step_side_and_attempt(store, &pool).await;
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
