//! What survives a crash of Redis itself: a private `redis-server` (started by the test on a free
//! port, with `appendonly yes` and `appendfsync always`) is killed with SIGKILL after batched
//! appends were acknowledged, and restarted on the same directory.

use gorgon_orchestration::{Leases, TransactionLog};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gorgon_orchestration::machine::TransactionFields;
use gorgon_orchestration::store::{TransactionHeader, TransactionKey};
use gorgon_orchestration::{Data, HandlerType, Record, TransactionState};
use gorgon_store_redis::{Durability, Options, RedisStore};
use serde_json::json;

/// A `redis-server` child process, killed (SIGKILL) on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(dir: &std::path::Path, port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("this test needs `redis-server` on PATH (apt-get install redis-server)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(server.url()).expect("url");
        loop {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_redis_kill_with_aof_always() {
    const TRANSACTIONS: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = RedisServer::start(dir.path(), port);
    let options = Options {
        url: server.url(),
        prefix: "crash:".into(),
        durability: Durability::Batched,
        ..Options::default()
    };
    let store = RedisStore::connect(&options).await.expect("connect");
    let mut tasks = Vec::new();
    for tx in 0..TRANSACTIONS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = TransactionKey::new("crash", format!("tx-{tx}"));
            store
                .create(
                    &TransactionHeader {
                        key: key.clone(),
                        run_id: Arc::from("run"),
                        payload: Data::json(json!(tx)),
                        created_at: tx as u64,
                        keep: Default::default(),
                    },
                    None,
                )
                .await
                .expect("create");
            for seq in 0..5 {
                store
                    .append(&key, 1, vec![response(tx, seq)])
                    .await
                    .expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }

    // SIGKILL: no shutdown save; only the fsynced AOF remains.
    server.kill();
    let server = RedisServer::start(dir.path(), port);

    // A fresh instance, as after a restart of the process, finds every acknowledged record.
    let fresh = RedisStore::connect(&Options {
        durability: Durability::EveryStep,
        ..options.clone()
    })
    .await
    .expect("connect after restart");
    for tx in 0..TRANSACTIONS {
        let key = TransactionKey::new("crash", format!("tx-{tx}"));
        let stored = fresh.load(&key).await.expect("load").expect("survived");
        let expected: Vec<Record> = (0..5).map(|seq| response(tx, seq)).collect();
        assert_eq!(stored.records, expected, "tx-{tx}");
    }

    // The old instance reconnects by itself. The restarted Redis lost its script cache, which
    // costs nothing (scripts go whole with EVAL): a state change (a Lua script) lands once.
    let key = TransactionKey::new("crash", "tx-0");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store
            .append(
                &key,
                1,
                vec![state(TransactionState::Invoking), response(0, 99)],
            )
            .await
        {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "never reconnected: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let stored = fresh.load(&key).await.expect("load").expect("exists");
    assert_eq!(stored.records.len(), 7);
    assert_eq!(stored.records[6], response(0, 99));

    // Scripts flushed under a live connection: still one round trip, and the append lands once.
    let client = redis::Client::open(server.url()).expect("url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .expect("flush");
    let before = store.stats().round_trips;
    store
        .append(
            &key,
            1,
            vec![state(TransactionState::Done), response(0, 100)],
        )
        .await
        .expect("append after SCRIPT FLUSH");
    assert_eq!(store.stats().round_trips - before, 1);
    let stored = fresh.load(&key).await.expect("load").expect("exists");
    assert_eq!(stored.records.len(), 9);
    assert_eq!(stored.records[8], response(0, 100));
    let summary = fresh.summary(&key).await.expect("summary").expect("exists");
    assert_eq!(summary.state, TransactionState::Done);
    drop(server);
}

/// The env var that makes [`child_writer`] run, carrying the key prefix.
const CHILD_PREFIX: &str = "GORGON_STORE_REDIS_CHILD_PREFIX";
const CHILD_TRANSACTIONS: usize = 20;

/// A writer process killed with SIGKILL in the middle of batched appends loses none it had seen
/// acknowledged: every log is exactly the rounds 0..n in order, with n covering every round the
/// child reported done (the round in flight at the kill may or may not have landed, whole per
/// transaction).
#[tokio::test]
async fn a_killed_writer_process_loses_no_acknowledged_append() {
    use std::io::{BufRead, BufReader};

    let prefix = format!("gorgon:test:store:killed:{}:", uuid::Uuid::now_v7());
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_writer", "--ignored", "--nocapture"])
        .env(CHILD_PREFIX, &prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child writer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acked: Option<usize> = None;
    while acked.is_none_or(|r| r < 30) {
        assert!(Instant::now() < deadline, "the child made no progress");
        let line = lines.next().expect("child output").expect("utf-8");
        if let Some(round) = line.strip_prefix("acked ") {
            acked = Some(round.parse().expect("round"));
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Lines the child wrote before dying but we had not read yet.
    for line in lines.map_while(Result::ok) {
        if let Some(round) = line.strip_prefix("acked ") {
            acked = Some(round.parse().expect("round"));
        }
    }
    let acked = acked.expect("some round acknowledged");

    let store = RedisStore::connect(&Options {
        prefix,
        ..Options::default()
    })
    .await
    .expect("connect");
    for tx in 0..CHILD_TRANSACTIONS {
        let key = TransactionKey::new("killed", format!("tx-{tx}"));
        let stored = store.load(&key).await.expect("load").expect("exists");
        let n = stored.records.len();
        assert!(
            n > acked && n <= acked + 2,
            "tx-{tx}: {n} records, {acked} rounds acknowledged"
        );
        for (seq, record) in stored.records.iter().enumerate() {
            assert_eq!(record, &response(tx, seq), "tx-{tx} record {seq}");
        }
    }
    assert!(store.clear().await.expect("clear") > 0);
}

/// The child of [`a_killed_writer_process_loses_no_acknowledged_append`]: appends round after
/// round to its transactions in batched mode and prints each round once every append of it was
/// acknowledged. Does nothing unless run by that test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by a_killed_writer_process_loses_no_acknowledged_append"]
async fn child_writer() {
    use std::io::Write;

    let Ok(prefix) = std::env::var(CHILD_PREFIX) else {
        return;
    };
    let store = RedisStore::connect(&Options {
        prefix,
        durability: Durability::Batched,
        ..Options::default()
    })
    .await
    .expect("connect");
    for tx in 0..CHILD_TRANSACTIONS {
        store
            .create(
                &TransactionHeader {
                    key: TransactionKey::new("killed", format!("tx-{tx}")),
                    run_id: Arc::from("run"),
                    payload: Data::null(),
                    created_at: tx as u64,
                    keep: Default::default(),
                },
                None,
            )
            .await
            .expect("create");
    }
    for round in 0.. {
        let tasks: Vec<_> = (0..CHILD_TRANSACTIONS)
            .map(|tx| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = TransactionKey::new("killed", format!("tx-{tx}"));
                    store.append(&key, 1, vec![response(tx, round)]).await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("append");
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "acked {round}").expect("stdout");
        out.flush().expect("flush");
    }
}
