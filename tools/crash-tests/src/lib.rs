//! The crash test of Gorgon's durable engine, shared by its worker binary and its test.
//!
//! Three worker processes (`gorgon-crash-worker`) share one store (PostgreSQL or Redis) and
//! run 500 workflows of mixed shapes, while the test kills one of them with SIGKILL every
//! ~200 ms and starts it again. Every handler call is first written to a **call log** beside
//! the store (a table in PostgreSQL, lists in Redis) with the worker that made it and the
//! outcome it is about to return. Afterwards the test checks that:
//!
//! - every transaction ended, in exactly the state its script says (`done`, `reverted`, or
//!   `failed` where a compensation was scripted to fail): none is lost or stuck;
//! - no step ran twice unless the earlier call was in flight in a worker that was killed (or it
//!   was a scripted temporary failure, which is retried by design).
//!
//! ```text
//!   test ── enqueue 500 ──► store ◄── claim / append / release ── worker 1, 2, 3 (serve loops)
//!     │                                                           ▲ SIGKILL one every ~200 ms,
//!     └──────────────── kill / restart ───────────────────────────┘ then start it again
//! ```
//!
//! The outcome of every step is a pure function of the transaction id and the step, so the
//! expected final state of each transaction is known in advance.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gorgon_orchestration::{
    Engine, EngineOptions, Flow, FlowDefinition, HandlerType, StepCall, StepOutcome, Store,
    TransactionState, WorkerOptions, WorkflowOptions,
};

/// Which store the workers share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// PostgreSQL at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
    Postgres,
    /// Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`).
    Redis,
}

/// The workflows and their shapes: `(name, flow definition)`.
pub const WORKFLOWS: [(&str, &str); 4] = [
    // Five steps in a row; a step scripted to fail permanently reverts the rest.
    (
        "seq",
        r#"{"next":{"action":"a","next":{"action":"b","next":{"action":"c","next":{"action":"d","next":{"action":"e"}}}}}}"#,
    ),
    // A step, then three branches side by side, one of them two deep.
    (
        "par",
        r#"{"next":{"action":"a","next":[{"action":"b"},{"action":"c"},{"action":"d","next":{"action":"e"}}]}}"#,
    ),
    // A step that fails once and is retried after a one-second timer (a durable timer).
    (
        "retry",
        r#"{"next":{"action":"a","next":{"action":"b","maxRetries":2,"retryInterval":1,"next":{"action":"c"}}}}"#,
    ),
    // A last step that may fail permanently while the middle step's compensation fails too.
    (
        "doomed",
        r#"{"next":{"action":"a","next":{"action":"b","next":{"action":"c"}}}}"#,
    ),
];

/// How many workflows the test runs.
pub const WORKFLOW_COUNT: usize = 500;

fn hash(parts: &[&str]) -> u64 {
    // A fixed hasher: the same in every process.
    let mut hasher = std::hash::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// The scripted outcome of one handler call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scripted {
    /// Succeeds.
    Ok,
    /// Fails temporarily: retried by design.
    Retry,
    /// Fails permanently.
    Fail,
}

impl Scripted {
    /// As written in the call log.
    pub fn as_str(self) -> &'static str {
        match self {
            Scripted::Ok => "ok",
            Scripted::Retry => "retry",
            Scripted::Fail => "fail",
        }
    }
}

/// What a handler call is scripted to return.
pub fn script(workflow: &str, id: &str, action: &str, side: HandlerType, attempt: u32) -> Scripted {
    let h = hash(&[workflow, id, action]);
    match (workflow, action, side) {
        ("seq", _, HandlerType::Invoke) if h.is_multiple_of(17) => Scripted::Fail,
        ("par", _, HandlerType::Invoke) if h.is_multiple_of(23) => Scripted::Fail,
        ("retry", "b", HandlerType::Invoke) if attempt == 1 => Scripted::Retry,
        ("doomed", "c", HandlerType::Invoke) if h.is_multiple_of(3) => Scripted::Fail,
        ("doomed", "b", HandlerType::Compensate) => Scripted::Fail,
        _ => Scripted::Ok,
    }
}

/// The state a transaction must end in.
pub fn expected_state(workflow: &str, id: &str) -> TransactionState {
    let fails =
        |action: &str| script(workflow, id, action, HandlerType::Invoke, 2) == Scripted::Fail;
    match workflow {
        "seq" | "par" if ["a", "b", "c", "d", "e"].into_iter().any(fails) => {
            TransactionState::Reverted
        }
        "doomed" if fails("c") => TransactionState::Failed,
        _ => TransactionState::Done,
    }
}

/// Where handler calls are written before they run.
#[derive(Clone)]
pub enum CallLog {
    /// A table `calls` in the PostgreSQL schema of the test.
    Postgres(sqlx::PgPool),
    /// Lists under a key prefix in Redis.
    Redis(redis::aio::ConnectionManager, String),
}

/// One logged call: idempotency key, worker, scripted outcome, in call order per key.
pub type Call = (String, String, String);

impl CallLog {
    /// Connects to the call log of a namespace (creating the table on PostgreSQL).
    pub async fn connect(backend: Backend, namespace: &str) -> anyhow::Result<Self> {
        match backend {
            Backend::Postgres => {
                let options: sqlx::postgres::PgConnectOptions = database_url().parse()?;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect_with(options.options([("search_path", namespace)]))
                    .await
                    .context("connecting the call log")?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{namespace}\""
                )))
                .execute(&pool)
                .await
                .ok();
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS calls (n BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, worker TEXT NOT NULL, outcome TEXT NOT NULL)",
                )
                .execute(&pool)
                .await
                .context("creating the call log")?;
                Ok(CallLog::Postgres(pool))
            }
            Backend::Redis => {
                let client = redis::Client::open(redis_url())?;
                let manager = redis::aio::ConnectionManager::new(client).await?;
                Ok(CallLog::Redis(manager, format!("{namespace}:calls:")))
            }
        }
    }

    /// Writes one call (durably, before the handler does its work).
    pub async fn record(&self, key: &str, worker: &str, outcome: Scripted) -> anyhow::Result<()> {
        match self {
            CallLog::Postgres(pool) => {
                sqlx::query("INSERT INTO calls (key, worker, outcome) VALUES ($1, $2, $3)")
                    .bind(key)
                    .bind(worker)
                    .bind(outcome.as_str())
                    .execute(pool)
                    .await?;
            }
            CallLog::Redis(manager, prefix) => {
                let mut manager = manager.clone();
                let entry = format!("{worker}|{}", outcome.as_str());
                redis::pipe()
                    .atomic()
                    .rpush(format!("{prefix}{key}"), entry)
                    .sadd(format!("{prefix}keys"), key)
                    .exec_async(&mut manager)
                    .await?;
            }
        }
        Ok(())
    }

    /// Every call, grouped by key in call order.
    pub async fn calls(&self) -> anyhow::Result<Vec<Call>> {
        match self {
            CallLog::Postgres(pool) => Ok(sqlx::query_as(
                "SELECT key, worker, outcome FROM calls ORDER BY key, n",
            )
            .fetch_all(pool)
            .await?),
            CallLog::Redis(manager, prefix) => {
                let mut manager = manager.clone();
                let mut keys: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(format!("{prefix}keys"))
                    .query_async(&mut manager)
                    .await?;
                keys.sort();
                let mut calls = Vec::new();
                for key in keys {
                    let entries: Vec<String> = redis::cmd("LRANGE")
                        .arg(format!("{prefix}{key}"))
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut manager)
                        .await?;
                    for entry in entries {
                        let (worker, outcome) = entry.split_once('|').unwrap_or((&entry, ""));
                        calls.push((key.clone(), worker.to_string(), outcome.to_string()));
                    }
                }
                Ok(calls)
            }
        }
    }
}

/// `DATABASE_URL`, else the local test database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| gorgon_store_postgres::DEFAULT_URL.to_string())
}

/// `REDIS_URL`, else the local Redis.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// Connects the store of a namespace (a PostgreSQL schema, or a Redis key prefix), every step
/// durable.
pub async fn connect_store(backend: Backend, namespace: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match backend {
        Backend::Postgres => Arc::new(
            gorgon_store_postgres::PostgresStore::connect(gorgon_store_postgres::Options {
                schema: namespace.to_string(),
                max_connections: 16,
                ..Default::default()
            })
            .await?,
        ),
        #[cfg(feature = "redis-store")]
        Backend::Redis => Arc::new(
            gorgon_store_redis::RedisStore::connect(&gorgon_store_redis::Options {
                prefix: format!("{namespace}:store:"),
                ..Default::default()
            })
            .await?,
        ),
        #[cfg(not(feature = "redis-store"))]
        Backend::Redis => anyhow::bail!("built without the `redis-store` feature"),
    })
}

/// The lease workers hold, in milliseconds: a killed worker's transactions are taken over
/// about this long after it died.
pub const LEASE_MS: u64 = 1_000;

/// An engine with the test's workflows registered. Its handlers log each call, then take a
/// few milliseconds (so that kills find steps in flight) and return their scripted outcome.
pub fn engine(store: Arc<dyn Store>, worker: &str, calls: CallLog) -> anyhow::Result<Engine> {
    let engine = EngineOptions {
        store,
        worker: WorkerOptions {
            id: Arc::from(worker),
            lease_ms: LEASE_MS,
            poll_ms: 100,
            claim_batch: 8,
        },
        ..EngineOptions::default()
    }
    .build();
    let worker: Arc<str> = Arc::from(worker);
    for (name, definition) in WORKFLOWS {
        let flow = Flow::compile(
            name,
            FlowDefinition::from_json(definition)?,
            WorkflowOptions::default(),
        )?;
        let calls = calls.clone();
        let worker = worker.clone();
        engine.register(flow, move |call: StepCall| {
            let calls = calls.clone();
            let worker = worker.clone();
            async move {
                let outcome = script(
                    call.workflow(),
                    call.transaction_id(),
                    call.action(),
                    call.handler_type(),
                    call.attempt(),
                );
                let key = call.idempotency_key().to_string();
                if let Err(error) = calls.record(&key, &worker, outcome).await {
                    // Not logged, so not done: a temporary failure, retried.
                    return StepOutcome::fail(format!("call log: {error}"));
                }
                let pause = 5 + hash(&[&key, &call.attempt().to_string()]) % 30;
                tokio::time::sleep(Duration::from_millis(1 + pause)).await;
                match outcome {
                    Scripted::Ok => StepOutcome::ok(serde_json::json!({ "by": &*worker })),
                    Scripted::Retry => StepOutcome::fail("scripted: try again"),
                    Scripted::Fail => StepOutcome::permanent("scripted: give up"),
                }
            }
        })?;
    }
    Ok(engine)
}

/// The workflow and id of the `n`th transaction.
pub fn transaction(n: usize) -> (&'static str, String) {
    (WORKFLOWS[n % WORKFLOWS.len()].0, format!("t{n}"))
}
