//! Three worker processes share one store while one of them is killed with SIGKILL every
//! ~200 ms and started again; 500 workflows of mixed shapes must all end as scripted, and no
//! step may run twice unless it was in flight in a killed worker. See the crate docs.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gorgon_crash_tests::{
    Backend, CallLog, WORKFLOW_COUNT, connect_store, engine, expected_state, transaction,
};
use gorgon_orchestration::{RunOptions, TransactionKey};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

const WORKERS: usize = 3;

async fn start(backend: Backend, namespace: &str, worker: &str) -> Child {
    let store = match backend {
        Backend::Postgres => "postgres",
        Backend::Redis => "redis",
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_gorgon-crash-worker"))
        .args([
            "--store",
            store,
            "--namespace",
            namespace,
            "--worker",
            worker,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start a worker");
    // Wait until it is connected, so that kills hit working processes.
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    assert!(
        matches!(ready, Ok(Ok(Some(ref line))) if line == "ready"),
        "worker {worker} did not start: {ready:?}"
    );
    child
}

async fn crash_test(backend: Backend) {
    let namespace = format!("gorgon_crash_{}", uuid::Uuid::new_v4().simple());
    let store = connect_store(backend, &namespace).await.expect("store");
    let call_log = CallLog::connect(backend, &namespace)
        .await
        .expect("call log");
    // The test's own engine only enqueues: it never serves, so it runs nothing.
    let producer = engine(store.clone(), "producer", call_log.clone()).expect("engine");

    let mut slots = Vec::new();
    let mut incarnations = [0_usize; WORKERS];
    for slot in 0..WORKERS {
        slots.push(start(backend, &namespace, &format!("s{slot}-i0")).await);
    }
    for n in 0..WORKFLOW_COUNT {
        let (workflow, id) = transaction(n);
        producer
            .enqueue(
                workflow,
                RunOptions {
                    transaction_id: Some(id),
                    payload: None,
                    ..Default::default()
                },
            )
            .await
            .expect("enqueue");
    }

    // Kill one worker every ~200 ms and start it again, until every transaction has ended.
    let stop = Arc::new(AtomicBool::new(false));
    let killer = tokio::spawn({
        let stop = stop.clone();
        let namespace = namespace.clone();
        async move {
            let mut killed: HashSet<String> = HashSet::new();
            let mut kills = 0_usize;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(150 + (kills * 37 % 100) as u64)).await;
                let slot = kills % WORKERS;
                let victim = format!("s{slot}-i{}", incarnations[slot]);
                slots[slot].start_kill().expect("SIGKILL");
                slots[slot].wait().await.expect("reaped");
                killed.insert(victim);
                kills += 1;
                incarnations[slot] += 1;
                let next = format!("s{slot}-i{}", incarnations[slot]);
                slots[slot] = start(backend, &namespace, &next).await;
            }
            (killed, kills, slots)
        }
    });
    let started = Instant::now();
    let mut pending: Vec<usize> = (0..WORKFLOW_COUNT).collect();
    while !pending.is_empty() && started.elapsed() < Duration::from_secs(240) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut still = Vec::new();
        for n in pending {
            let (workflow, id) = transaction(n);
            let summary = store
                .summary(&TransactionKey::new(workflow, id.as_str()))
                .await
                .expect("summary");
            if !summary.is_some_and(|s| s.state.is_finished()) {
                still.push(n);
            }
        }
        pending = still;
    }
    let finished = WORKFLOW_COUNT - pending.len();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (killed, kills, mut slots) = killer.await.expect("killer");
    for child in &mut slots {
        child.start_kill().ok();
        child.wait().await.ok();
    }
    println!(
        "{backend:?}: {finished}/{WORKFLOW_COUNT} finished in {:.1} s with {kills} kills",
        elapsed.as_secs_f64()
    );

    // Every transaction ended in its scripted state: none lost, none stuck.
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..WORKFLOW_COUNT {
        let (workflow, id) = transaction(n);
        let summary = store
            .summary(&TransactionKey::new(workflow, id.as_str()))
            .await
            .expect("summary")
            .unwrap_or_else(|| panic!("{workflow}:{id} was lost"));
        assert_eq!(
            summary.state,
            expected_state(workflow, &id),
            "{workflow}:{id} ended in the wrong state"
        );
        *states.entry(summary.state.to_string()).or_default() += 1;
    }
    println!("{backend:?}: end states {states:?}");
    assert!(kills >= 5, "the test must actually kill workers ({kills})");
    assert!(
        states.len() == 3,
        "done, reverted and failed all occur: {states:?}"
    );

    // No step ran twice unless the earlier call died with its worker (or was a scripted
    // temporary failure, which is retried by design).
    let calls = call_log.calls().await.expect("calls");
    let mut by_key: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (key, worker, outcome) in &calls {
        by_key.entry(key).or_default().push((worker, outcome));
    }
    let mut repeated_in_flight = 0;
    for (key, calls) in &by_key {
        for (worker, outcome) in &calls[..calls.len() - 1] {
            if *outcome == "retry" {
                continue;
            }
            assert!(
                killed.contains(*worker),
                "{key} ran again after a call by {worker}, which was never killed: {calls:?}"
            );
            repeated_in_flight += 1;
        }
    }
    println!(
        "{backend:?}: {} handler calls over {} keys; {repeated_in_flight} repeated after a kill",
        calls.len(),
        by_key.len()
    );
    assert!(
        by_key.len() >= WORKFLOW_COUNT * 3,
        "the call log holds the steps"
    );

    if let CallLog::Postgres(pool) = &call_log {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{namespace}\" CASCADE"
        )))
        .execute(pool)
        .await
        .ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_every_200ms_on_postgres_lose_nothing_and_rerun_only_steps_in_flight() {
    crash_test(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_every_200ms_on_redis_lose_nothing_and_rerun_only_steps_in_flight() {
    crash_test(Backend::Redis).await;
}
