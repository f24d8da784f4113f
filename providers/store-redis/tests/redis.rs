//! The Redis store against the real Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`).
//! Every test uses its own key prefix and deletes its keys at the end.

use gorgon_orchestration::{Leases, TransactionLog};
use std::sync::Arc;
use std::time::Instant;

use gorgon_orchestration::machine::TransactionFields;
use gorgon_orchestration::store::{Claim, Lease, TransactionHeader, TransactionKey};
use gorgon_orchestration::{
    Data, Error as EngineError, HandlerType, Record, Store, TransactionState,
};
use gorgon_store_redis::{Durability, Error, ListFilter, ListQuery, Options, RedisStore};
use serde_json::json;

fn options(test: &str, durability: Durability) -> Options {
    Options {
        prefix: format!("gorgon:test:store:{test}:{}:", uuid::Uuid::now_v7()),
        durability,
        ..Options::default()
    }
}

async fn connect(options: &Options) -> RedisStore {
    RedisStore::connect(options)
        .await
        .unwrap_or_else(|e| panic!("Redis must run at {} for these tests: {e}", options.url))
}

fn header(workflow: &str, id: &str, run: &str, created_at: u64) -> TransactionHeader {
    TransactionHeader {
        key: TransactionKey::new(workflow, id),
        run_id: Arc::from(run),
        payload: Data::json(json!({"order": id})),
        created_at,
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

fn response(tx: usize, seq: usize) -> Record {
    Record::Response {
        step: 1,
        handler: HandlerType::Invoke,
        data: Some(Data::json(json!({"tx": tx, "seq": seq}))),
    }
}

#[tokio::test]
async fn every_step_mode_passes_the_store_suite() {
    let options = options("suite-every", Durability::EveryStep);
    let store = connect(&options).await;
    let make = {
        let store = store.clone();
        move || {
            let store = store.clone();
            async move { Arc::new(store) as Arc<dyn Store> }
        }
    };
    gorgon_orchestration::testing::store_suite(make).await;
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    gorgon_orchestration::testing::oversized_values_are_refused(shared).await;
    assert!(store.clear().await.expect("clear") > 0);
}

#[tokio::test]
async fn batched_mode_passes_the_store_suite() {
    let options = options("suite-batched", Durability::Batched);
    let store = connect(&options).await;
    let make = {
        let store = store.clone();
        move || {
            let store = store.clone();
            async move { Arc::new(store) as Arc<dyn Store> }
        }
    };
    gorgon_orchestration::testing::store_suite(make).await;
    assert!(store.stats().appends > 0);
    assert!(store.clear().await.expect("clear") > 0);
}

/// Racers on two stores (two connections, as two processes) and on one store's clone create
/// the same ids at once, in both modes (in batched mode two of them may share one pipeline): for
/// every id exactly one create wins, the others get `AlreadyStarted`, and the stored run is the
/// winner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_id_have_exactly_one_winner() {
    for durability in [Durability::EveryStep, Durability::Batched] {
        let options = options("race", durability);
        let a = connect(&options).await;
        let b = connect(&options).await;
        for round in 0..50 {
            let id = format!("race-{round}");
            let racers = [a.clone(), a.clone(), b.clone()];
            let tasks: Vec<_> = racers
                .into_iter()
                .enumerate()
                .map(|(i, store)| {
                    let h = header("race", &id, &format!("run-{i}"), 1);
                    tokio::spawn(async move { (h.run_id.clone(), store.create(&h, None).await) })
                })
                .collect();
            let mut winners = Vec::new();
            for task in tasks {
                match task.await.expect("task") {
                    (run, Ok(_)) => winners.push(run),
                    (_, Err(EngineError::AlreadyStarted { transaction, .. })) => {
                        assert_eq!(transaction, id)
                    }
                    (_, Err(other)) => panic!("{durability:?} round {round}: {other:?}"),
                }
            }
            assert_eq!(
                winners.len(),
                1,
                "{durability:?} round {round}: {winners:?}"
            );
            let stored = b
                .load(&TransactionKey::new("race", id.as_str()))
                .await
                .expect("load")
                .expect("exists");
            assert_eq!(stored.header.run_id, winners[0]);
        }
        assert!(a.clear().await.expect("clear") > 0);
    }
}

/// 200 transactions append concurrently through the batched writer: every record lands, in
/// order per transaction, in fewer round trips than appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_appends_of_200_transactions_share_round_trips() {
    const TRANSACTIONS: usize = 200;
    const STEPS: usize = 10;
    let options = options("batched", Durability::Batched);
    let store = connect(&options).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for tx in 0..TRANSACTIONS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = TransactionKey::new("batch", format!("tx-{tx}"));
            store
                .create(&header("batch", &key.id, "run", tx as u64), None)
                .await
                .expect("create");
            store
                .append(&key, 1, vec![state(TransactionState::Invoking)])
                .await
                .expect("append");
            for seq in 0..STEPS {
                store
                    .append(&key, 1, vec![response(tx, seq), response(tx, seq + 1000)])
                    .await
                    .expect("append");
            }
            store
                .append(&key, 1, vec![state(TransactionState::Done)])
                .await
                .expect("append");
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let elapsed = started.elapsed();
    let stats = store.stats();
    let appends = (TRANSACTIONS * (STEPS + 2)) as u64;
    assert_eq!(stats.appends, appends);
    assert_eq!(stats.creates, TRANSACTIONS as u64);
    assert!(
        stats.round_trips < (appends + stats.creates) / 4,
        "{} round trips for {appends} appends and {TRANSACTIONS} creates",
        stats.round_trips
    );
    println!(
        "batched: {TRANSACTIONS} creates and {appends} appends in {elapsed:?} ({:.0} appends/s), {} round trips",
        appends as f64 / elapsed.as_secs_f64(),
        stats.round_trips
    );
    for tx in 0..TRANSACTIONS {
        let key = TransactionKey::new("batch", format!("tx-{tx}"));
        let stored = store.load(&key).await.expect("load").expect("exists");
        let mut expected = vec![state(TransactionState::Invoking)];
        for seq in 0..STEPS {
            expected.push(response(tx, seq));
            expected.push(response(tx, seq + 1000));
        }
        expected.push(state(TransactionState::Done));
        assert_eq!(stored.records, expected, "tx-{tx}");
        let summary = store.summary(&key).await.expect("summary").expect("exists");
        assert_eq!(summary.state, TransactionState::Done);
    }
    let done = store
        .list(&ListQuery::new(
            ListFilter::State(TransactionState::Done),
            1000,
        ))
        .await
        .expect("list");
    assert_eq!(done.len(), TRANSACTIONS);
    store.clear().await.expect("clear");
}

/// A new store instance (as after a restart of the process) reads what another one wrote, and
/// continues the same transaction.
#[tokio::test]
async fn a_new_instance_loads_what_another_wrote() {
    let options = options("restart", Durability::Batched);
    let key = TransactionKey::new("restart", "order-1");
    {
        let first = connect(&options).await;
        first
            .create(&header("restart", "order-1", "run-1", 42), None)
            .await
            .expect("create");
        first
            .append(
                &key,
                1,
                vec![state(TransactionState::Invoking), response(1, 1)],
            )
            .await
            .expect("append");
    }
    let second = connect(&Options {
        durability: Durability::EveryStep,
        ..options.clone()
    })
    .await;
    let stored = second.load(&key).await.expect("load").expect("exists");
    assert_eq!(stored.header.run_id.as_ref(), "run-1");
    assert_eq!(stored.header.created_at, 42);
    assert_eq!(
        stored.header.payload.to_json().expect("json"),
        json!({"order": "order-1"})
    );
    assert_eq!(
        stored.records,
        vec![state(TransactionState::Invoking), response(1, 1)]
    );
    // Unfinished: the restarted process may not start it again, but may continue it.
    assert!(matches!(
        second
            .create(&header("restart", "order-1", "run-2", 43), None)
            .await,
        Err(EngineError::AlreadyStarted { .. })
    ));
    second
        .append(&key, 1, vec![])
        .await
        .expect("an empty append");
    second
        .append(&key, 1, vec![state(TransactionState::Done)])
        .await
        .expect("append");
    assert_eq!(
        second
            .load(&key)
            .await
            .expect("load")
            .expect("exists")
            .records
            .len(),
        3
    );
    second.clear().await.expect("clear");
}

/// The indexes list by workflow and by state, ordered by creation, with time range and paging;
/// a new run of a finished id moves between state indexes and keeps one entry per index.
#[tokio::test]
async fn listings_follow_the_indexes() {
    let options = options("list", Durability::EveryStep);
    let store = connect(&options).await;
    for i in 0..5u64 {
        store
            .create(&header("list:a", &format!("t{i}"), "r", 100 + i), None)
            .await
            .expect("create");
    }
    store
        .create(&header("list:b", "t0", "r", 50), None)
        .await
        .expect("create");
    let key = TransactionKey::new("list:a", "t1");
    store
        .append(&key, 1, vec![state(TransactionState::Invoking)])
        .await
        .expect("append");
    store
        .append(&key, 1, vec![state(TransactionState::Reverted)])
        .await
        .expect("append");

    let all_a = store
        .list(&ListQuery::new(ListFilter::Workflow("list:a".into()), 10))
        .await
        .expect("list");
    let ids: Vec<&str> = all_a.iter().map(|s| s.key.id.as_ref()).collect();
    assert_eq!(ids, ["t0", "t1", "t2", "t3", "t4"]);
    assert!(all_a.iter().all(|s| s.key.workflow.as_ref() == "list:a"));

    let page = store
        .list(&ListQuery {
            filter: ListFilter::Workflow("list:a".into()),
            created_from: Some(101),
            created_to: Some(104),
            offset: 1,
            limit: 2,
        })
        .await
        .expect("list");
    let ids: Vec<&str> = page.iter().map(|s| s.key.id.as_ref()).collect();
    assert_eq!(ids, ["t2", "t3"]);

    let reverted = store
        .list(&ListQuery::new(
            ListFilter::State(TransactionState::Reverted),
            10,
        ))
        .await
        .expect("list");
    assert_eq!(reverted.len(), 1);
    assert_eq!(reverted[0].key, key);
    let not_started = store
        .list(&ListQuery::new(
            ListFilter::State(TransactionState::NotStarted),
            10,
        ))
        .await
        .expect("list");
    assert_eq!(not_started.len(), 5);
    assert_eq!(not_started[0].key, TransactionKey::new("list:b", "t0"));

    // A new run of the finished t1 is listed once, as not started.
    store
        .create(&header("list:a", "t1", "r2", 200), None)
        .await
        .expect("rerun");
    let all_a = store
        .list(&ListQuery::new(ListFilter::Workflow("list:a".into()), 10))
        .await
        .expect("list");
    assert_eq!(all_a.len(), 5);
    assert_eq!(all_a[4].key, key);
    assert_eq!(all_a[4].run_id.as_ref(), "r2");
    assert!(
        store
            .list(&ListQuery::new(
                ListFilter::State(TransactionState::Reverted),
                10
            ))
            .await
            .expect("list")
            .is_empty()
    );
    store.clear().await.expect("clear");
}

fn lease(owner: &str, ms: u64) -> Lease {
    Lease {
        owner: Arc::from(owner),
        ms,
    }
}

/// Whether an index score is `ms` from now on Redis's clock (within a second).
fn from_now(score: Option<f64>, ms: u64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    score.is_some_and(|s| (s - (now + ms as f64)).abs() < 1_000.0)
}

/// In one pipeline, an append with a stale epoch (its lease was taken over) fails alone with
/// `Fenced` and writes nothing; the others, the new holder's included, are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_fails_only_its_own_append_in_a_pipeline() {
    let options = options("fenced", Durability::Batched);
    let store = connect(&options).await;
    for i in 0..20 {
        let epoch = store
            .create(
                &header("fenced", &format!("t{i}"), "r", i as u64),
                Some(&lease("old", 100)),
            )
            .await
            .expect("create");
        assert_eq!(epoch, 1);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let taken = TransactionKey::new("fenced", "t0");
    let Claim::Granted { epoch: current } = store
        .claim(&taken, &lease("new", 60_000))
        .await
        .expect("claim")
    else {
        panic!("a lapsed lease is granted");
    };
    assert_eq!(current, 2);
    let before = store.stats();
    let mut tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let key = TransactionKey::new("fenced", format!("t{i}"));
            tokio::spawn(async move { (store.append(&key, 1, vec![response(i, 1)]).await, key, 1) })
        })
        .collect();
    tasks.push({
        let store = store.clone();
        let key = taken.clone();
        tokio::spawn(async move {
            (
                store.append(&key, current, vec![response(0, 2)]).await,
                key,
                current,
            )
        })
    });
    for task in tasks {
        let (result, key, epoch) = task.await.expect("task");
        if key == taken && epoch == 1 {
            match result {
                Err(EngineError::Fenced { epoch, .. }) => assert_eq!(epoch, 1),
                other => panic!("expected Fenced, got {other:?}"),
            }
        } else {
            result.expect("the others are written");
        }
    }
    let after = store.stats();
    println!(
        "21 appends (one fenced) in {} round trips",
        after.round_trips - before.round_trips
    );
    let stored = store.load(&taken).await.expect("load").expect("exists");
    assert_eq!(
        stored.records,
        vec![response(0, 2)],
        "the stale append wrote nothing"
    );
    for i in 1..20 {
        let key = TransactionKey::new("fenced", format!("t{i}"));
        let stored = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(stored.records, vec![response(i, 1)]);
    }
    store.clear().await.expect("clear");
}

/// Two stores (as two processes) claim due transactions at once: each is claimed exactly once,
/// at epoch 2, and then belongs to its claimer, whose `renew` finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_claim_a_transaction_twice() {
    let options = options("claim-race", Durability::EveryStep);
    let first = connect(&options).await;
    let second = connect(&options).await;
    let workflows: Vec<Arc<str>> = vec![Arc::from("due"), Arc::from("other")];
    for i in 0..100 {
        let workflow = if i % 2 == 0 { "due" } else { "other" };
        first
            .create(&header(workflow, &format!("t{i}"), "r", i), None)
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
    first.clear().await.expect("clear");
}

/// The lease indexes follow the transaction: owned ones are in `leased:<wf>` (by lease end)
/// and their owner's set, renewed in place; a released one is in `parked:<wf>` (by wake-up
/// time); a finished one is in none.
#[tokio::test]
async fn the_lease_indexes_follow_the_transaction() {
    let options = options("indexes", Durability::EveryStep);
    let store = connect(&options).await;
    let client = redis::Client::open(options.url.as_str()).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let p = options.prefix.clone();
    let member = "idx:t";
    let key = TransactionKey::new("idx", "t");
    let scores = raw.clone();
    let score = |index: &str| {
        let index = format!("{p}{index}");
        let mut raw = scores.clone();
        async move {
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(index)
                .arg(member)
                .query_async(&mut raw)
                .await
                .expect("zscore");
            score
        }
    };
    let epoch = store
        .create(&header("idx", "t", "r", 7), Some(&lease("w", 100_000)))
        .await
        .expect("create");
    assert!(from_now(score("leased:idx").await, 100_000));
    assert_eq!(score("parked:idx").await, None);
    assert_eq!(
        store
            .renew(&lease("w", 250_000), std::slice::from_ref(&key))
            .await
            .expect("renew"),
        1
    );
    assert!(from_now(score("leased:idx").await, 250_000));
    let owned: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{p}owned:w"))
        .query_async(&mut raw)
        .await
        .expect("smembers");
    assert_eq!(owned, [member]);
    store
        .append(&key, epoch, vec![state(TransactionState::Invoking)])
        .await
        .expect("append");
    store
        .release(&key, epoch, Some(400_000))
        .await
        .expect("release");
    assert_eq!(score("leased:idx").await, None);
    assert!(from_now(score("parked:idx").await, 400_000));
    assert_eq!(
        store
            .renew(&lease("w", 300), std::slice::from_ref(&key))
            .await
            .expect("renew"),
        0
    );
    let Claim::Granted { epoch } = store
        .claim(&key, &lease("v", 900_000))
        .await
        .expect("claim")
    else {
        panic!("a released transaction is granted");
    };
    assert_eq!(score("parked:idx").await, None);
    assert!(from_now(score("leased:idx").await, 900_000));
    store
        .append(&key, epoch, vec![state(TransactionState::Done)])
        .await
        .expect("append");
    assert_eq!(score("leased:idx").await, None);
    assert_eq!(score("parked:idx").await, None);
    assert_eq!(
        store
            .renew(&lease("v", 1_000), std::slice::from_ref(&key))
            .await
            .expect("renew"),
        0
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{p}owned:v"))
        .query_async(&mut raw)
        .await
        .expect("exists");
    assert_eq!(exists, 0, "a finished transaction leaves its owner's set");
    store.clear().await.expect("clear");
}

/// Bad configuration, an unreachable server and a corrupt log are typed errors, not panics.
#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let empty_prefix = Options {
        prefix: String::new(),
        ..Options::default()
    };
    assert!(matches!(
        RedisStore::connect(&empty_prefix).await,
        Err(Error::InvalidOptions {
            field: "prefix",
            ..
        })
    ));
    let malformed = Options {
        url: "not a url".into(),
        ..Options::default()
    };
    assert!(matches!(
        RedisStore::connect(&malformed).await,
        Err(Error::Connect { .. })
    ));
    let unreachable = Options {
        url: "redis://:hunter2@127.0.0.1:1".into(),
        ..Options::default()
    };
    match RedisStore::connect(&unreachable).await {
        Err(e @ Error::Connect { .. }) => assert!(!e.to_string().contains("hunter2"), "{e}"),
        other => panic!("expected a connect error, got {other:?}"),
    }

    let options = options("corrupt", Durability::EveryStep);
    let store = connect(&options).await;
    store
        .create(&header("corrupt", "t", "r", 1), None)
        .await
        .expect("create");
    let client = redis::Client::open(options.url.as_str()).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("RPUSH")
        .arg(format!("{}log:corrupt:t", options.prefix))
        .arg("{not a record")
        .query_async(&mut raw)
        .await
        .expect("rpush");
    assert!(matches!(
        store.load(&TransactionKey::new("corrupt", "t")).await,
        Err(EngineError::Store {
            operation: "load",
            ..
        })
    ));
    // A log whose marker names another run is refused too.
    let _: () = redis::cmd("LSET")
        .arg(format!("{}log:corrupt:t", options.prefix))
        .arg(0)
        .arg("another-run")
        .query_async(&mut raw)
        .await
        .expect("lset");
    let _: () = redis::cmd("LTRIM")
        .arg(format!("{}log:corrupt:t", options.prefix))
        .arg(0)
        .arg(0)
        .query_async(&mut raw)
        .await
        .expect("ltrim");
    match store.load(&TransactionKey::new("corrupt", "t")).await {
        Err(EngineError::Store { reason, .. }) => assert!(reason.contains("marker"), "{reason}"),
        other => panic!("expected a store error, got {other:?}"),
    }
    assert_eq!(store.clear().await.expect("clear"), 5);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", options.prefix))
        .query_async(&mut raw)
        .await
        .expect("keys");
    assert!(left.is_empty(), "{left:?}");
}
