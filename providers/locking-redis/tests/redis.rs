//! The Redis locker against the real server at `REDIS_URL` (default `redis://127.0.0.1:6379`): the
//! locking suite, the two-process counter, and the fenced write of a stalled holder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gorgon_locking::{LockKey, LockOptions, Locker, LockerExt, OwnerId};
use gorgon_locking_redis::{Options, RedisLocker};
use redis::aio::ConnectionManager;

/// Environment variable that turns `counter_child_process` into the second process of the
/// counter test; its value is `<counter key> <lock key>`.
const COUNTER_CHILD: &str = "GORGON_LOCKING_REDIS_COUNTER_CHILD";
const TASKS_PER_PROCESS: i64 = 8;
const INCREMENTS_PER_TASK: i64 = 15;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn options() -> Options {
    Options {
        namespace: "gorgon:lock-test:".into(),
        ..Options::new(redis_url())
    }
}

async fn connect() -> RedisLocker {
    RedisLocker::connect(&options())
        .await
        .expect("Redis must run at REDIS_URL (default redis://127.0.0.1:6379)")
}

async fn locker() -> Arc<dyn Locker> {
    Arc::new(connect().await)
}

gorgon_locking::locker_suite!(locker());

async fn redis() -> ConnectionManager {
    let client = redis::Client::open(redis_url()).unwrap();
    ConnectionManager::new(client)
        .await
        .expect("Redis at REDIS_URL")
}

fn unique(prefix: &str) -> String {
    format!(
        "gorgon:lock-test:{prefix}:{}",
        uuid::Uuid::new_v4().simple()
    )
}

/// Marks this process ready and waits until both processes are, so their tasks really overlap.
async fn rendezvous(connection: &mut ConnectionManager, counter: &str) {
    let ready_key = format!("{counter}:ready");
    let _: i64 = redis::cmd("INCR")
        .arg(&ready_key)
        .query_async(connection)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let ready: i64 = redis::cmd("GET")
            .arg(&ready_key)
            .query_async(connection)
            .await
            .unwrap();
        if ready >= 2 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the other process never became ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 8 tasks, each incrementing the counter key read-modify-write (GET, pause, SET) under the lock.
async fn increment_under_lock(counter: &str, key: &str) {
    let locker = connect().await;
    let mut connection = redis().await;
    rendezvous(&mut connection, counter).await;
    let mut tasks = Vec::new();
    for _ in 0..TASKS_PER_PROCESS {
        let (locker, counter, key) = (locker.clone(), counter.to_owned(), LockKey::new(key));
        let connection = connection.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS_PER_TASK {
                let mut connection = connection.clone();
                let counter = counter.clone();
                locker
                    .with_lock(
                        std::slice::from_ref(&key),
                        &OwnerId::random(),
                        &LockOptions::new(Duration::from_secs(120), Duration::from_secs(10)),
                        |_lease| async move {
                            let value: Option<i64> = redis::cmd("GET")
                                .arg(&counter)
                                .query_async(&mut connection)
                                .await
                                .unwrap();
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            let () = redis::cmd("SET")
                                .arg(&counter)
                                .arg(value.unwrap_or(0) + 1)
                                .query_async(&mut connection)
                                .await
                                .unwrap();
                        },
                    )
                    .await
                    .expect("increment under the lock");
            }
        }));
    }
    for task in tasks {
        task.await.expect("increment task panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_in_each_of_two_processes_count_exactly() {
    let counter = unique("counter");
    let key = unique("counter-lock");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "counter_child_process",
            "--ignored",
            "--nocapture",
        ])
        .env(COUNTER_CHILD, format!("{counter} {key}"))
        .spawn()
        .expect("spawn the second process");
    increment_under_lock(&counter, &key).await;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the second process failed: {status}");

    let mut connection = redis().await;
    let value: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&counter)
        .arg(format!("{counter}:ready"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value, 2 * TASKS_PER_PROCESS * INCREMENTS_PER_TASK);
}

/// The second process of `eight_tasks_in_each_of_two_processes_count_exactly`; does nothing
/// unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run as a child process by eight_tasks_in_each_of_two_processes_count_exactly"]
async fn counter_child_process() {
    let Ok(spec) = std::env::var(COUNTER_CHILD) else {
        return;
    };
    let (counter, key) = spec.split_once(' ').expect("<counter key> <lock key>");
    increment_under_lock(counter, key).await;
}

/// A real protected resource: a Redis hash remembering the highest fencing token it accepted; a
/// write with a lower token changes nothing (checked atomically in Lua).
async fn fenced_write(
    connection: &mut ConnectionManager,
    resource: &str,
    token: u64,
    value: &str,
) -> bool {
    let script = redis::Script::new(
        r"
        local highest = tonumber(redis.call('HGET', KEYS[1], 'highest_token') or '0')
        if tonumber(ARGV[1]) < highest then return 0 end
        redis.call('HSET', KEYS[1], 'highest_token', ARGV[1], 'value', ARGV[2])
        return 1
        ",
    );
    let written: i64 = script
        .key(resource)
        .arg(token)
        .arg(value)
        .invoke_async(connection)
        .await
        .unwrap();
    written == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_holder_loses_the_lock_and_its_fenced_write_to_a_redis_key_is_refused() {
    let locker = connect().await;
    let mut connection = redis().await;
    let resource = unique("fenced");
    let keys = [LockKey::new(unique("stalled"))];

    let stalled_owner = OwnerId::random();
    let stalled = locker
        .acquire(
            &keys,
            &stalled_owner,
            &LockOptions::new(Duration::ZERO, Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let stalled_token = stalled.token(&keys[0]).unwrap().get();
    assert!(
        fenced_write(
            &mut connection,
            &resource,
            stalled_token,
            "before the stall"
        )
        .await
    );

    // The holder stalls (no renewal); its key expires in Redis and another owner takes it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fresh_owner = OwnerId::random();
    let fresh = locker
        .acquire(
            &keys,
            &fresh_owner,
            &LockOptions::new(Duration::ZERO, Duration::from_secs(30)),
        )
        .await
        .expect("the stalled holder's lease has expired");
    let fresh_token = fresh.token(&keys[0]).unwrap().get();
    assert!(fresh_token > stalled_token);
    assert!(fenced_write(&mut connection, &resource, fresh_token, "fresh holder").await);

    // The stalled holder resumes: its renewal fails and its fenced write is refused.
    assert!(
        locker
            .renew(&keys, &stalled_owner, Duration::from_secs(30))
            .await
            .is_err()
    );
    assert!(!fenced_write(&mut connection, &resource, stalled_token, "after the stall").await);
    let value: Option<String> = redis::cmd("HGET")
        .arg(&resource)
        .arg("value")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(locker.release(&keys, &fresh_owner).await.unwrap());
    let _: i64 = redis::cmd("DEL")
        .arg(&resource)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("fresh holder"));
}

#[tokio::test]
async fn options_deserialize_with_defaults_and_a_bad_url_is_a_typed_error() {
    let options: Options =
        serde_json::from_value(serde_json::json!({ "url": redis_url() })).unwrap();
    assert_eq!(options, Options::new(redis_url()));
    match RedisLocker::connect(&Options::new("not a url")).await {
        Err(gorgon_locking::Error::Backend { operation, .. }) => assert_eq!(operation, "connect"),
        Err(other) => panic!("expected a Backend error, got {other}"),
        Ok(_) => panic!("connecting to a bad URL succeeded"),
    }
}
