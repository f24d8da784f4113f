//! The PostgreSQL locker against the real database at `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`): the locking suite, the two-process counter,
//! the fenced write of a stalled holder, and waiters that do not pin pooled connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gorgon_locking::{LockKey, LockOptions, Locker, LockerExt, OwnerId};
use gorgon_locking_postgres::{Options, PostgresLocker};
use sqlx::{AssertSqlSafe, PgPool};

/// Environment variable that turns `counter_child_process` into the second process of the
/// counter test; its value is `<table> <lock key>`.
const COUNTER_CHILD: &str = "GORGON_LOCKING_PG_COUNTER_CHILD";
const TASKS_PER_PROCESS: i64 = 8;
const INCREMENTS_PER_TASK: i64 = 15;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn options() -> Options {
    Options {
        table: "gorgon_locks_test".into(),
        max_connections: 3,
        ..Options::new(database_url())
    }
}

async fn connect() -> PostgresLocker {
    PostgresLocker::connect(&options()).await.expect(
        "PostgreSQL must run at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)",
    )
}

async fn locker() -> Arc<dyn Locker> {
    Arc::new(connect().await)
}

gorgon_locking::locker_suite!(locker());

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

async fn execute(pool: &PgPool, sql: String) {
    sqlx::query(AssertSqlSafe(sql.clone()))
        .execute(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

/// Marks this process ready and waits until both processes are, so their tasks really overlap.
async fn rendezvous(pool: &PgPool, table: &str) {
    execute(
        pool,
        format!("UPDATE {table} SET ready = ready + 1 WHERE id = 1"),
    )
    .await;
    let started = Instant::now();
    loop {
        let ready: i32 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT ready FROM {table} WHERE id = 1"
        )))
        .fetch_one(pool)
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

/// 8 tasks, each incrementing the counter row read-modify-write (two statements, a pause between)
/// under the lock.
async fn increment_under_lock(table: &str, key: &str) {
    // A pool large enough that the holder's job is not queued behind the waiters' attempts.
    let locker = PostgresLocker::connect(&Options {
        max_connections: 10,
        ..options()
    })
    .await
    .expect("PostgreSQL must run at DATABASE_URL");
    rendezvous(locker.pool(), table).await;
    let mut tasks = Vec::new();
    for _ in 0..TASKS_PER_PROCESS {
        let (locker, table, key) = (locker.clone(), table.to_owned(), LockKey::new(key));
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS_PER_TASK {
                let pool = locker.pool().clone();
                let table = table.clone();
                locker
                    .with_lock(
                        std::slice::from_ref(&key),
                        &OwnerId::random(),
                        &LockOptions::new(Duration::from_secs(120), Duration::from_secs(10)),
                        |_lease| async move {
                            let value: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                                "SELECT value FROM {table} WHERE id = 1"
                            )))
                            .fetch_one(&pool)
                            .await
                            .unwrap();
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            sqlx::query(AssertSqlSafe(format!(
                                "UPDATE {table} SET value = $1 WHERE id = 1"
                            )))
                            .bind(value + 1)
                            .execute(&pool)
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
    let admin = connect().await;
    let table = unique("lock_counter");
    let key = unique("counter");
    execute(
        admin.pool(),
        format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, value bigint NOT NULL, ready int NOT NULL)"
        ),
    )
    .await;
    execute(
        admin.pool(),
        format!("INSERT INTO {table} VALUES (1, 0, 0)"),
    )
    .await;

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "counter_child_process",
            "--ignored",
            "--nocapture",
        ])
        .env(COUNTER_CHILD, format!("{table} {key}"))
        .spawn()
        .expect("spawn the second process");
    increment_under_lock(&table, &key).await;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the second process failed: {status}");

    let value: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT value FROM {table} WHERE id = 1"
    )))
    .fetch_one(admin.pool())
    .await
    .unwrap();
    execute(admin.pool(), format!("DROP TABLE {table}")).await;
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
    let (table, key) = spec.split_once(' ').expect("<table> <key>");
    increment_under_lock(table, key).await;
}

/// A real protected resource: a row remembering the highest fencing token it accepted; a write
/// with a lower token changes nothing.
async fn fenced_write(pool: &PgPool, table: &str, token: u64, value: &str) -> bool {
    let token = i64::try_from(token).unwrap();
    let done = sqlx::query(AssertSqlSafe(format!(
        "UPDATE {table} SET highest_token = $1, value = $2 WHERE id = 1 AND highest_token <= $1"
    )))
    .bind(token)
    .bind(value)
    .execute(pool)
    .await
    .unwrap();
    done.rows_affected() == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_holder_loses_the_lock_and_its_fenced_write_to_a_table_is_refused() {
    let locker = connect().await;
    let pool = locker.pool().clone();
    let table = unique("fenced");
    execute(
        &pool,
        format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, highest_token bigint NOT NULL, value text)"
        ),
    )
    .await;
    execute(&pool, format!("INSERT INTO {table} VALUES (1, 0, NULL)")).await;
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
    assert!(fenced_write(&pool, &table, stalled_token, "before the stall").await);

    // The holder stalls (no renewal); its lease runs out on the database clock and a second
    // process-like owner takes the key, then writes.
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
    assert!(fenced_write(&pool, &table, fresh_token, "fresh holder").await);

    // The stalled holder resumes: its renewal fails and its fenced write is refused.
    assert!(
        locker
            .renew(&keys, &stalled_owner, Duration::from_secs(30))
            .await
            .is_err()
    );
    assert!(!fenced_write(&pool, &table, stalled_token, "after the stall").await);
    let value: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT value FROM {table} WHERE id = 1"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(locker.release(&keys, &fresh_owner).await.unwrap());
    execute(&pool, format!("DROP TABLE {table}")).await;
    assert_eq!(value.as_deref(), Some("fresh holder"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_do_not_pin_pooled_connections() {
    let locker = PostgresLocker::connect(&Options {
        max_connections: 2,
        ..options()
    })
    .await
    .unwrap();
    let key = LockKey::new(unique("pinning"));
    let holder = OwnerId::random();
    locker
        .acquire(
            std::slice::from_ref(&key),
            &holder,
            &LockOptions::new(Duration::ZERO, Duration::from_secs(30)),
        )
        .await
        .unwrap();

    let mut waiters = Vec::new();
    for _ in 0..16 {
        let (locker, key) = (locker.clone(), key.clone());
        waiters.push(tokio::spawn(async move {
            let owner = OwnerId::random();
            locker
                .with_lock(
                    &[key],
                    &owner,
                    &LockOptions::new(Duration::from_secs(60), Duration::from_secs(10)),
                    |_| async {},
                )
                .await
        }));
    }
    // 16 waiters on a pool of 2: the pool still serves other queries at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(locker.pool())
            .await
            .expect("the pool is not exhausted by waiters");
        assert_eq!(one, 1);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(locker.pool().size() <= 2);
    }
    assert!(locker.release(&[key], &holder).await.unwrap());
    for waiter in waiters {
        waiter
            .await
            .unwrap()
            .expect("every waiter gets the lock in turn");
    }
}

#[tokio::test]
async fn options_deserialize_with_defaults_and_bad_table_names_are_rejected() {
    let options: Options =
        serde_json::from_value(serde_json::json!({ "url": database_url() })).unwrap();
    assert_eq!(options, Options::new(database_url()));
    for table in ["", "1abc", "locks; DROP TABLE x", "a-b"] {
        let bad = Options {
            table: table.into(),
            ..Options::new(database_url())
        };
        match PostgresLocker::connect(&bad).await {
            Err(gorgon_locking::Error::InvalidRequest { operation, .. }) => {
                assert_eq!(operation, "connect")
            }
            Err(other) => panic!("expected InvalidRequest for {table:?}, got {other}"),
            Ok(_) => panic!("expected InvalidRequest for {table:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_listen_a_waiter_still_gets_a_released_key_by_polling() {
    let locker = PostgresLocker::connect(&Options {
        listen: false,
        ..options()
    })
    .await
    .unwrap();
    let keys = [LockKey::new(unique("polling"))];
    let holder = OwnerId::random();
    locker
        .acquire(
            &keys,
            &holder,
            &LockOptions::new(Duration::ZERO, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let waiter = {
        let (locker, keys) = (locker.clone(), keys.clone());
        tokio::spawn(async move {
            let owner = OwnerId::random();
            locker
                .acquire(
                    &keys,
                    &owner,
                    &LockOptions::new(Duration::from_secs(10), Duration::from_secs(30)),
                )
                .await
                .map(|_| owner)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the key was still held");
    assert!(locker.release(&keys, &holder).await.unwrap());
    let owner = waiter
        .await
        .unwrap()
        .expect("the waiter polls and gets the key");
    assert!(locker.release(&keys, &owner).await.unwrap());
}
