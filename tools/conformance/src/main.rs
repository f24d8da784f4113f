//! `gorgon-conformance SCENARIO.json`: runs one conformance scenario (see
//! `shared/conformance/FORMAT.md`) through Gorgon's engine and prints the observation as one
//! JSON line, the same shape Medusa's oracle prints.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use gorgon_orchestration::{
    Data, Engine, EngineOptions, Execution, Flow, FlowDefinition, HandlerType, IdempotencyKey,
    MemoryStore, RunOptions, StepCall, StepError, StepOutcome, WorkflowOptions,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Where the engine keeps its transactions.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreKind {
    /// The in-memory store.
    Memory,
    /// Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`), under a key prefix of this run's
    /// own, deleted at the end.
    Redis,
    /// SQLite in a temporary file of this run's own, removed at the end.
    Sqlite,
    /// PostgreSQL at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`), in a
    /// schema of this run's own, dropped at the end.
    Postgres,
}

#[derive(Parser, Debug)]
#[command(
    about = "Runs a conformance scenario through Gorgon's engine and prints what it observed"
)]
struct Args {
    /// The scenario file.
    scenario: PathBuf,
    /// The store the engine uses.
    #[arg(long, value_enum, default_value = "memory")]
    store: StoreKind,
    /// With `--store sqlite|postgres|redis`: batched durability instead of a commit per step.
    #[arg(long)]
    batched: bool,
}

/// The scripted handlers: outcomes per action and handler, and the calls seen.
#[derive(Default)]
struct Script {
    behaviour: HashMap<String, HashMap<String, Vec<Value>>>,
    calls: Mutex<Vec<String>>,
    attempts: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
}

impl Script {
    fn next_behaviour(&self, action: &str, handler: &str) -> Value {
        let list = self.behaviour.get(action).and_then(|h| h.get(handler));
        let key = format!("{handler}:{action}");
        let mut attempts = self.attempts.lock();
        let n = attempts.entry(key).or_insert(0);
        let pick = list.and_then(|l| l.get((*n).min(l.len().saturating_sub(1))).cloned());
        *n += 1;
        pick.unwrap_or_else(|| json!("ok"))
    }
}

async fn act(behaviour: Value, action: &str, handler: &str) -> StepOutcome {
    let mut behaviour = behaviour;
    loop {
        if let Some(ms) = behaviour.get("sleep_ms").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            behaviour = behaviour
                .get("then")
                .cloned()
                .unwrap_or_else(|| json!("ok"));
            continue;
        }
        return match &behaviour {
            Value::String(s) if s == "ok" => {
                StepOutcome::ok(json!({"step": action, "handler": handler}))
            }
            Value::String(s) if s == "fail" => {
                StepOutcome::fail(format!("{action} {handler} failed"))
            }
            Value::String(s) if s == "permanent" => {
                StepOutcome::permanent(format!("{action} {handler} failed permanently"))
            }
            Value::String(s) if s == "skip" => StepOutcome::Skip,
            Value::Object(o) if o.contains_key("ok") => StepOutcome::ok(o["ok"].clone()),
            other => StepOutcome::fail(format!("unknown behaviour {other}")),
        };
    }
}

fn observe(execution: &Execution, calls: Vec<String>) -> Value {
    let mut steps = serde_json::Map::new();
    for (index, step) in execution.flow().steps().iter().enumerate().skip(1) {
        let run = &execution.steps[index];
        steps.insert(
            step.action.clone(),
            json!({"invoke": run.invoke.state.as_str(), "compensate": run.compensate.state.as_str(), "attempts": run.attempts}),
        );
    }
    let errors: Vec<String> = execution
        .errors
        .iter()
        .map(|e| format!("{}:{}", e.handler_type.as_str(), e.action))
        .collect();
    json!({"state": execution.state.as_str(), "calls": calls, "steps": steps, "errors": errors})
}

async fn settle(engine: &Engine, script: &Script, workflow: &str, transaction: &str) {
    for _ in 0..2000 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if script.in_flight.load(Ordering::SeqCst) == 0 && engine.is_quiet(workflow, transaction) {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("reading {}", args.scenario.display()))?;
    let scenario: Value = serde_json::from_str(&text).context("the scenario is not JSON")?;
    let workflow = scenario
        .get("workflow")
        .and_then(Value::as_str)
        .unwrap_or("conformance")
        .to_string();
    let transaction = scenario
        .get("transaction_id")
        .and_then(Value::as_str)
        .unwrap_or("tx-1")
        .to_string();
    let definition =
        FlowDefinition::from_value(scenario.get("flow").cloned().unwrap_or(Value::Null))?;
    let options: WorkflowOptions = match scenario.get("options") {
        Some(o) => WorkflowOptions::from_json(&o.to_string())?,
        None => WorkflowOptions::default(),
    };
    let flow = Flow::compile(workflow.clone(), definition, options)?;
    let script = Arc::new(Script {
        behaviour: serde_json::from_value(scenario.get("behaviour").cloned().unwrap_or(json!({})))
            .context("behaviour must map actions to handler lists")?,
        ..Script::default()
    });

    let mut redis_store = None;
    let (mut sqlite_dir, mut postgres_store) = (None, None);
    let store: Arc<dyn gorgon_orchestration::Store> = match args.store {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Redis => {
            let redis = connect_redis(args.batched).await?;
            redis_store = Some(redis.clone());
            Arc::new(redis)
        }
        StoreKind::Sqlite => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let store = gorgon_store_sqlite::SqliteStore::connect(gorgon_store_sqlite::Options {
                durability: if args.batched {
                    gorgon_store_sqlite::Durability::Batched
                } else {
                    gorgon_store_sqlite::Durability::EveryStep
                },
                ..gorgon_store_sqlite::Options::file(dir.path().join("conformance.db"))
            })
            .await?;
            sqlite_dir = Some(dir);
            Arc::new(store)
        }
        StoreKind::Postgres => {
            let store = connect_postgres(args.batched).await?;
            postgres_store = Some(store.clone());
            Arc::new(store)
        }
    };
    let engine = EngineOptions {
        store,
        ..EngineOptions::default()
    }
    .build();
    let handler_script = script.clone();
    engine.register(flow, move |call: StepCall| {
        let script = handler_script.clone();
        async move {
            let handler = call.handler_type().as_str();
            script
                .calls
                .lock()
                .push(format!("{handler}:{}", call.action()));
            script.in_flight.fetch_add(1, Ordering::SeqCst);
            let behaviour = script.next_behaviour(call.action(), handler);
            let outcome = act(behaviour, call.action(), handler).await;
            script.in_flight.fetch_sub(1, Ordering::SeqCst);
            outcome
        }
    })?;

    let mut stages = Vec::new();
    let payload = scenario.get("payload").cloned().unwrap_or(json!({}));
    let options = RunOptions {
        transaction_id: Some(transaction.clone()),
        payload: Some(Data::json(payload)),
        ..Default::default()
    };
    if let Err(e) = engine.run(&workflow, options).await {
        stages.push(json!({"thrown": e.to_string()}));
    }
    settle(&engine, &script, &workflow, &transaction).await;
    let mut last = observe(
        &engine.get(&workflow, &transaction).await?,
        script.calls.lock().clone(),
    );
    stages.push(json!({"after": "run", "observation": last.clone()}));

    for step in scenario
        .get("drive")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let handler = match step.get("handler").and_then(Value::as_str) {
            Some("compensate") => HandlerType::Compensate,
            _ => HandlerType::Invoke,
        };
        let key = |action: &str| {
            IdempotencyKey::new(workflow.as_str(), transaction.as_str(), action, handler)
        };
        let result = if let Some(action) = step.get("set_step_success").and_then(Value::as_str) {
            let response = step.get("response").cloned().map(Data::json);
            engine
                .set_step_success(&key(action), response)
                .await
                .map(drop)
        } else if let Some(action) = step.get("set_step_failure").and_then(Value::as_str) {
            engine
                .set_step_failure(
                    &key(action),
                    StepError::new(format!("{action} failed")),
                    false,
                )
                .await
                .map(drop)
        } else if step.get("cancel").is_some() {
            engine.cancel(&workflow, &transaction).await.map(drop)
        } else if step.get("resume").is_some() {
            engine.resume(&workflow, &transaction).await.map(drop)
        } else if let Some(ms) = step.get("wait_ms").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        } else {
            bail!("unknown drive step {step}");
        };
        settle(&engine, &script, &workflow, &transaction).await;
        last = observe(
            &engine.get(&workflow, &transaction).await?,
            script.calls.lock().clone(),
        );
        let mut stage = json!({"after": step, "observation": last.clone()});
        if let Err(e) = result {
            stage["refused"] = json!(e.to_string());
        }
        stages.push(stage);
    }

    let mut out = last;
    out["engine"] = json!("gorgon");
    out["scenario"] = scenario.get("name").cloned().unwrap_or(Value::Null);
    out["stages"] = Value::Array(stages);
    println!("{out}");
    if let Some(redis) = redis_store {
        redis
            .clear()
            .await
            .context("removing this run's Redis keys")?;
    }
    if let Some(postgres) = postgres_store {
        postgres
            .drop_schema()
            .await
            .context("dropping this run's PostgreSQL schema")?;
    }
    drop(sqlite_dir);
    Ok(())
}

/// A Redis store under a prefix unique to this process, so concurrent runs never collide.
async fn connect_redis(batched: bool) -> anyhow::Result<gorgon_store_redis::RedisStore> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let options = gorgon_store_redis::Options {
        prefix: format!("gorgon:conformance:{}:{nanos}:", std::process::id()),
        durability: if batched {
            gorgon_store_redis::Durability::Batched
        } else {
            gorgon_store_redis::Durability::EveryStep
        },
        ..gorgon_store_redis::Options::default()
    };
    Ok(gorgon_store_redis::RedisStore::connect(&options).await?)
}

/// A PostgreSQL store in a schema unique to this process, so concurrent runs never collide.
async fn connect_postgres(batched: bool) -> anyhow::Result<gorgon_store_postgres::PostgresStore> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let options = gorgon_store_postgres::Options {
        schema: format!("gorgon_conformance_{}_{nanos}", std::process::id()),
        durability: if batched {
            gorgon_store_postgres::Durability::Batched
        } else {
            gorgon_store_postgres::Durability::EveryStep
        },
        max_connections: 4,
        ..gorgon_store_postgres::Options::default()
    };
    Ok(gorgon_store_postgres::PostgresStore::connect(options).await?)
}
