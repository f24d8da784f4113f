//! Three scheduler instances on PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): each with its own store and locker connections to
//! one test's schema and lock table, which the test drops at its end.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::Backend;
use gorgon_locking::Locker;
use gorgon_locking_postgres::PostgresLocker;
use gorgon_orchestration::Store;
use gorgon_store_postgres::PostgresStore;

fn database_url() -> String {
    gorgon_store_postgres::Options::default().url
}

/// One test's schema (store) and lock table (locker).
struct Postgres {
    schema: String,
    table: String,
}

impl Postgres {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Postgres {
            schema: format!("sched_test_{id}"),
            table: format!("sched_locks_{id}"),
        }
    }
}

/// Drops the schema and the lock table when the test ends, even by a panic (on its own
/// connection, since the test's runtime may be gone).
impl Drop for Postgres {
    fn drop(&mut self) {
        let statements = [
            format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema),
            format!("DROP TABLE IF EXISTS {} CASCADE", self.table),
            format!("DROP SEQUENCE IF EXISTS {}_fencing", self.table),
        ];
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&database_url()).await?;
                for sql in statements {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut connection)
                        .await?;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
    }
}

impl Backend for Postgres {
    fn store(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
        Box::pin(async {
            let options = gorgon_store_postgres::Options {
                schema: self.schema.clone(),
                max_connections: 2,
                ..gorgon_store_postgres::Options::default()
            };
            let store = PostgresStore::connect(options).await.expect(
                "PostgreSQL must run at DATABASE_URL or postgres://postgres@127.0.0.1:5432/test",
            );
            Arc::new(store) as Arc<dyn Store>
        })
    }
    fn locker(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Locker>> + Send + '_>> {
        Box::pin(async {
            let options = gorgon_locking_postgres::Options {
                table: self.table.clone(),
                max_connections: 2,
                listen: false,
                ..gorgon_locking_postgres::Options::new(database_url())
            };
            let locker = PostgresLocker::connect(&options).await.expect("locker");
            Arc::new(locker) as Arc<dyn Locker>
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_tick_fires_once_and_a_follower_takes_over() {
    common::every_tick_once_across_a_handover(&Postgres::new(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_crashed_leader_is_replaced_after_its_lease() {
    common::every_tick_once_across_a_handover(&Postgres::new(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_forbid_never_overlaps_runs() {
    common::forbid_holds_across_instances_and_a_leader_change(&Postgres::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_allow_overlaps_runs() {
    common::allow_lets_runs_overlap(&Postgres::new()).await;
}

/// Environment variable that turns `postgres_scheduler_child_process` into one instance of the
/// multi-process test; its value is `<schema> <lock table> <execution table> <instance> <key prefix>`.
const CHILD: &str = "GORGON_SCHEDULER_PG_CHILD";
const CHILD_SCHEDULE: &str = "tick";
const CHILD_INTERVAL_MS: u64 = 150;

/// The table a child's step writes each execution into (the test reads it back).
struct ExecutionLog {
    pool: sqlx::PgPool,
    table: String,
    instance: String,
}

async fn log_execution(
    tick_ms: u64,
    ctx: gorgon_workflows::StepContext,
) -> gorgon_workflows::StepResult<u64> {
    let log = ctx.service::<ExecutionLog>()?;
    let sql = format!(
        "INSERT INTO {} (tick, instance, started_at) VALUES ($1, $2, clock_timestamp())",
        log.table
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tick_ms as i64)
        .bind(&log.instance)
        .execute(&log.pool)
        .await?;
    Ok(gorgon_workflows::StepResponse::new(tick_ms))
}

/// One instance of the multi-process test when `CHILD` is set (it runs until it is killed or
/// for 4 s); without it, there is nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scheduler_child_process() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let [schema, table, executions, instance, prefix]: [String; 5] = spec
        .split(' ')
        .map(str::to_string)
        .collect::<Vec<_>>()
        .try_into()
        .expect("five arguments");
    let backend = Postgres {
        schema,
        table: table.clone(),
    };
    let pool = sqlx::PgPool::connect(&database_url()).await.expect("pool");
    let step = gorgon_workflows::Step::new("log-execution", log_execution);
    let workflow =
        gorgon_workflows::Workflow::define("log-execution", |b, tick_ms| b.step(&step, tick_ms))
            .expect("define");
    let services = gorgon_workflows::Services::new().with(Arc::new(ExecutionLog {
        pool,
        table: executions,
        instance: instance.clone(),
    }));
    let engine = gorgon_workflows::EngineOptions {
        store: backend.store().await,
        clock: Arc::new(gorgon_orchestration::SystemClock),
        ..gorgon_workflows::EngineOptions::default()
    };
    let app = gorgon_workflows::App::with_options(engine, services);
    let schedule = gorgon_scheduler::Schedule::every(
        CHILD_SCHEDULE,
        std::time::Duration::from_millis(CHILD_INTERVAL_MS),
        &workflow,
        |tick| tick.at_ms,
    )
    .expect("schedule")
    .with_concurrency(gorgon_scheduler::Concurrency::Allow);
    let scheduler = gorgon_scheduler::Options {
        instance: Some(instance),
        leader_lease: std::time::Duration::from_millis(600),
        poll_interval: std::time::Duration::from_millis(25),
        key_prefix: prefix,
        ..gorgon_scheduler::Options::default()
    }
    .build(app, backend.locker().await, vec![schedule])
    .expect("build");
    scheduler
        .run(tokio::time::sleep(std::time::Duration::from_secs(4)))
        .await;
    // The parent owns the schema and the tables.
    std::mem::forget(backend);
}

/// Three processes share one schema and lock table; the leader process is killed (SIGKILL)
/// mid-way. Every tick ran exactly once across the processes, one of the others took over, and
/// the only gap is the dead leader's lease lapsing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_processes_fire_each_tick_once_and_survive_a_killed_leader() {
    let backend = Postgres::new();
    let executions = format!("{}_runs", backend.table);
    let prefix = format!("sched-mp-{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&database_url()).await.expect("pool");
    let run = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("sql")
        }
    };
    run(format!(
        "CREATE TABLE {executions} (tick BIGINT NOT NULL, instance TEXT NOT NULL, \
         started_at TIMESTAMPTZ NOT NULL)"
    ))
    .await;
    // Create the schema and the lock table once, before the children race for them.
    drop(backend.store().await);
    drop(backend.locker().await);

    let mut children: Vec<(String, std::process::Child)> = (0..3)
        .map(|i| {
            let instance = format!("proc-{i}");
            let spec = format!(
                "{} {} {executions} {instance} {prefix}",
                backend.schema, backend.table
            );
            let child = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(["--exact", "postgres_scheduler_child_process", "--nocapture"])
                .env(CHILD, spec)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn a child");
            (instance, child)
        })
        .collect();

    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let leader_key = format!("{prefix}:leader:{CHILD_SCHEDULE}");
    let owner: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT owner FROM {} WHERE key = $1 AND expires_at > clock_timestamp()",
        backend.table
    )))
    .bind(&leader_key)
    .fetch_one(&pool)
    .await
    .expect("a leader holds the lease");
    let killed = owner
        .strip_suffix(&format!("/{CHILD_SCHEDULE}"))
        .expect("owner <instance>/<schedule>")
        .to_string();
    let killed_at_ms = gorgon_orchestration::Clock::now_ms(&gorgon_orchestration::SystemClock);
    let (_, leader) = children
        .iter_mut()
        .find(|(name, _)| *name == killed)
        .expect("the leader is a child");
    leader.kill().expect("kill the leader");
    leader.wait().expect("reap");
    for (name, child) in &mut children {
        if *name != killed {
            assert!(child.wait().expect("child").success(), "{name} failed");
        }
    }

    let rows: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tick, instance FROM {executions} ORDER BY tick"
    )))
    .fetch_all(&pool)
    .await
    .expect("executions");
    run(format!("DROP TABLE {executions}")).await;
    let mut per_tick = std::collections::BTreeMap::<i64, Vec<String>>::new();
    for (tick, instance) in &rows {
        per_tick.entry(*tick).or_default().push(instance.clone());
    }
    let duplicates: Vec<_> = per_tick.iter().filter(|(_, runs)| runs.len() > 1).collect();
    assert!(duplicates.is_empty(), "ticks ran twice: {duplicates:?}");
    let ticks: Vec<i64> = per_tick.keys().copied().collect();
    assert!(ticks.len() >= 15, "only {} ticks in ~4 s", ticks.len());
    let gaps: Vec<i64> = ticks
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .filter(|&gap| gap != CHILD_INTERVAL_MS as i64)
        .collect();
    // The children start a few ms apart and stop a few ms apart: no gap but the lapse of the
    // killed leader's lease (600 ms).
    assert!(gaps.len() <= 1, "gaps {gaps:?}");
    assert!(gaps.iter().all(|&gap| gap <= 1_100), "gaps {gaps:?}");
    let after: Vec<&String> = rows
        .iter()
        .filter(|(tick, _)| *tick as u64 > killed_at_ms + CHILD_INTERVAL_MS)
        .map(|(_, instance)| instance)
        .collect();
    assert!(after.len() >= 5, "{} ticks after the kill", after.len());
    assert!(after.iter().all(|instance| **instance != killed));
    eprintln!(
        "three processes: {} ticks, leader {killed} killed, gaps {gaps:?} ms",
        ticks.len()
    );
}
