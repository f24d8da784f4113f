//! `gorgon-bench [--quick] [--store memory|sqlite|postgres|redis] [--batched] [--workflows N]
//! [--mode serial|concurrent] [shape ...]`: runs the workflow shapes of `shared/bench/FORMAT.md`
//! (`seq10`, `seq100`, `fail10`, `par10`) through Gorgon's public SDK, serially and with 64 in
//! flight, and prints one JSON line per (shape, mode, store), the same lines as
//! `shared/bench/medusa/bench.mjs`.
//!
//! Every step is a no-op that returns its input plus one and registers a no-op compensation, so
//! the figures measure the engine and the SDK, not the steps.
//!
//! Runtime configuration, as a server binary using the SDK would have it: tokio's multi-thread
//! runtime (one worker per core) and mimalloc as the global allocator, as many Rust server
//! binaries have (the default feature `mimalloc`). `--no-default-features` keeps the system
//! allocator (glibc) instead (`docs/performance.md` has what that costs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use gorgon_orchestration::MemoryStore;
use gorgon_workflows::{
    App, EngineOptions, Services, Step, StepContext, StepFailure, StepResponse, StepResult,
    Workflow,
};
use serde_json::json;

/// mimalloc instead of the system allocator (the default feature `mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where checkpoints go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// The in-memory store.
    Memory,
    /// SQLite, in a temporary file.
    Sqlite,
    /// PostgreSQL (`DATABASE_URL`), in a schema of its own, dropped at the end.
    Postgres,
    /// Redis (`REDIS_URL`), under a prefix of its own, cleared at the end.
    Redis,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
            StoreKind::Redis => "redis",
        }
    }
}

/// The store a run uses, and what to clean up afterwards.
struct BenchStore {
    store: Arc<dyn gorgon_orchestration::Store>,
    postgres: Option<gorgon_store_postgres::PostgresStore>,
    redis: Option<gorgon_store_redis::RedisStore>,
    _sqlite_dir: Option<tempfile::TempDir>,
}

async fn open_store(kind: StoreKind, batched: bool) -> anyhow::Result<BenchStore> {
    let unique = format!(
        "{}_{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let mut bench = BenchStore {
        store: Arc::new(MemoryStore::new()),
        postgres: None,
        redis: None,
        _sqlite_dir: None,
    };
    match kind {
        StoreKind::Memory => {}
        StoreKind::Sqlite => {
            let dir = tempfile::tempdir()?;
            let durability = if batched {
                gorgon_store_sqlite::Durability::Batched
            } else {
                gorgon_store_sqlite::Durability::EveryStep
            };
            let options = gorgon_store_sqlite::Options {
                durability,
                ..gorgon_store_sqlite::Options::file(dir.path().join("bench.db"))
            };
            bench.store = Arc::new(gorgon_store_sqlite::SqliteStore::connect(options).await?);
            bench._sqlite_dir = Some(dir);
        }
        StoreKind::Postgres => {
            let durability = if batched {
                gorgon_store_postgres::Durability::Batched
            } else {
                gorgon_store_postgres::Durability::EveryStep
            };
            let options = gorgon_store_postgres::Options {
                schema: format!("gorgon_bench_{unique}"),
                durability,
                ..gorgon_store_postgres::Options::default()
            };
            let store = gorgon_store_postgres::PostgresStore::connect(options).await?;
            bench.postgres = Some(store.clone());
            bench.store = Arc::new(store);
        }
        StoreKind::Redis => {
            let durability = if batched {
                gorgon_store_redis::Durability::Batched
            } else {
                gorgon_store_redis::Durability::EveryStep
            };
            let options = gorgon_store_redis::Options {
                prefix: format!("gorgon:bench:{unique}:"),
                durability,
                ..gorgon_store_redis::Options::default()
            };
            let store = gorgon_store_redis::RedisStore::connect(&options).await?;
            bench.redis = Some(store.clone());
            bench.store = Arc::new(store);
        }
    }
    Ok(bench)
}

#[derive(Parser, Debug)]
#[command(about = "Runs the side-by-side benchmark shapes through Gorgon's SDK")]
struct Args {
    /// Fewer workflows per measurement.
    #[arg(long)]
    quick: bool,
    /// The store the engine checkpoints to.
    #[arg(long, value_enum, default_value = "memory")]
    store: StoreKind,
    /// Group the writes of many transactions into one commit (durable stores).
    #[arg(long)]
    batched: bool,
    /// Workflows kept in flight in the concurrent mode.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Workflows per measurement, overriding the default (a warm-up of a tenth runs first).
    #[arg(long)]
    workflows: Option<usize>,
    /// Only this mode (default: both).
    #[arg(long, value_parser = ["serial", "concurrent"])]
    mode: Option<String>,
    /// The shapes to run (default: all).
    shapes: Vec<String>,
}

async fn add_one(n: u64, _ctx: StepContext) -> StepResult<u64, u64> {
    Ok(StepResponse::new(n + 1).with_compensation(n))
}

async fn undo(_n: Option<u64>, _ctx: StepContext) -> Result<(), StepFailure> {
    Ok(())
}

async fn boom(_n: u64, _ctx: StepContext) -> StepResult<u64> {
    Err(StepFailure::new("boom"))
}

/// The four shapes, each a registered workflow taking and returning numbers.
struct Shapes {
    seq10: Workflow<u64, u64>,
    seq100: Workflow<u64, u64>,
    fail10: Workflow<u64, u64>,
    par10: Workflow<u64, Vec<u64>>,
}

fn shapes() -> anyhow::Result<Shapes> {
    let steps: Vec<Step<u64, u64, u64>> = (0..100)
        .map(|i| Step::new(format!("s{i}"), add_one).compensate(undo))
        .collect();
    let failing = Step::new("boom", boom).compensate(undo);
    let chain = |name: &'static str, n: usize| {
        let steps = steps[..n].to_vec();
        Workflow::define(name, move |b, input| {
            steps.iter().fold(input, |x, step| b.step(step, x))
        })
    };
    let fail_steps = steps[..9].to_vec();
    let par_steps = steps[..10].to_vec();
    Ok(Shapes {
        seq10: chain("seq10", 10)?,
        seq100: chain("seq100", 100)?,
        fail10: Workflow::define("fail10", move |b, input| {
            let x = fail_steps.iter().fold(input, |x, step| b.step(step, x));
            b.step(&failing, x)
        })?,
        par10: Workflow::define("par10", move |b, input| {
            let outputs = b.parallel(|b| {
                par_steps
                    .iter()
                    .map(|step| b.step(step, input))
                    .collect::<Vec<_>>()
            });
            b.transform(outputs, |values| values)
        })?,
    })
}

struct Measurement {
    workflows: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
}

/// One workflow of `shape` through [`App::run`], its result checked.
async fn run_shape(app: &App, shapes: &Shapes, shape: &str) -> anyhow::Result<()> {
    match shape {
        "seq10" => {
            let out = app.run(&shapes.seq10, 0).await?;
            anyhow::ensure!(out == 10, "seq10 returned {out}");
        }
        "seq100" => {
            let out = app.run(&shapes.seq100, 0).await?;
            anyhow::ensure!(out == 100, "seq100 returned {out}");
        }
        "fail10" => {
            let Err(err) = app.run(&shapes.fail10, 0).await else {
                bail!("fail10 succeeded");
            };
            anyhow::ensure!(
                err.state() == Some(gorgon_workflows::TransactionState::Reverted),
                "fail10 ended {:?}",
                err.state()
            );
        }
        _ => {
            let out = app.run(&shapes.par10, 0).await?;
            anyhow::ensure!(
                out.len() == 10 && out.iter().all(|&v| v == 1),
                "par10 returned {out:?}"
            );
        }
    }
    Ok(())
}

/// Runs `total` workflows of `shape` with `concurrency` in flight, after `warmup` unmeasured
/// ones. Each in-flight slot is a task holding its own `App` handle, as a server's request
/// handlers would (the handle is not cloned per run). The warm-up runs in those tasks too,
/// shared out between them, so that it warms the worker threads (and their allocator's
/// caches) that are measured; the clock starts once every task has warmed up.
///
/// Each run's latency (from the CPU's counter, through `quanta`) goes to the slot of its number
/// in one array, written through before the clock starts, so that no page is first touched
/// while the clock runs.
async fn measure(
    app: &App,
    shapes: &Arc<Shapes>,
    shape: &str,
    total: usize,
    concurrency: usize,
    warmup: usize,
) -> anyhow::Result<Measurement> {
    let next = Arc::new(AtomicUsize::new(0));
    let latencies: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let warmed = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    // Latencies are read off the CPU's counter (a system clock read costs about as much as a
    // tenth of a short run).
    let clock = quanta::Clock::new();
    let workers: Vec<_> = (0..concurrency)
        .map(|slot| {
            let (app, shapes, shape, next, latencies, warmed, clock) = (
                app.clone(),
                shapes.clone(),
                shape.to_string(),
                next.clone(),
                latencies.clone(),
                warmed.clone(),
                clock.clone(),
            );
            let warmup = warmup / concurrency + usize::from(slot < warmup % concurrency);
            tokio::spawn(async move {
                let warmed_up = async {
                    for _ in 0..warmup {
                        run_shape(&app, &shapes, &shape).await?;
                    }
                    anyhow::Ok(())
                }
                .await;
                // Every task reaches the barrier, a failed warm-up too (then it stops).
                warmed.wait().await;
                warmed_up?;
                loop {
                    let run = next.fetch_add(1, Ordering::Relaxed);
                    let Some(latency) = latencies.get(run) else {
                        break;
                    };
                    let t = clock.raw();
                    run_shape(&app, &shapes, &shape).await?;
                    let nanos = clock.delta_as_nanos(t, clock.raw());
                    latency.store(nanos / 1000, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    warmed.wait().await;
    let started = Instant::now();
    for worker in workers {
        worker.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies_us: Vec<u64> = latencies
        .iter()
        .map(|l| l.load(Ordering::Relaxed))
        .collect();
    latencies_us.sort_unstable();
    Ok(Measurement {
        workflows: latencies_us.len(),
        seconds,
        latencies_us,
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn report(store: &str, shape: &str, mode: &str, concurrency: usize, m: &Measurement) {
    let line = json!({
        "engine": "gorgon", "store": store, "shape": shape, "mode": mode, "concurrency": concurrency,
        "workflows": m.workflows, "seconds": (m.seconds * 1000.0).round() / 1000.0,
        "wf_per_s": ((m.workflows as f64 / m.seconds) * 10.0).round() / 10.0,
        "p50_us": percentile(&m.latencies_us, 0.5), "p99_us": percentile(&m.latencies_us, 0.99),
    });
    println!("{line}");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let all = ["seq10", "seq100", "fail10", "par10"];
    let wanted: Vec<String> = if args.shapes.is_empty() {
        all.map(String::from).to_vec()
    } else {
        args.shapes.clone()
    };
    for shape in &wanted {
        if !all.contains(&shape.as_str()) {
            bail!("unknown shape {shape}: expected one of {all:?}");
        }
    }
    let shapes = Arc::new(shapes()?);
    let bench_store = open_store(args.store, args.batched).await?;
    let app = App::with_options(
        EngineOptions {
            store: bench_store.store.clone(),
            ..EngineOptions::default()
        },
        Services::new(),
    );
    app.register(&shapes.seq10)?;
    app.register(&shapes.seq100)?;
    app.register(&shapes.fail10)?;
    app.register(&shapes.par10)?;

    for shape in &wanted {
        let big = shape == "seq100";
        let mut total = match (args.quick, big) {
            (true, true) => 2_000,
            (true, false) => 20_000,
            (false, true) => 20_000,
            (false, false) => 200_000,
        };
        if args.store != StoreKind::Memory {
            total /= 10; // durable stores are slower; the rate is what is compared
        }
        if let Some(workflows) = args.workflows {
            total = workflows;
        }
        let warmup = total / 10;
        for (mode, concurrency) in [("serial", 1), ("concurrent", args.concurrency)] {
            if args.mode.as_ref().is_some_and(|m| m != mode) {
                continue;
            }
            let m = measure(&app, &shapes, shape, total, concurrency, warmup)
                .await
                .with_context(|| format!("{shape} {mode}"))?;
            let store = if args.batched {
                format!("{}-batched", args.store.name())
            } else {
                args.store.name().to_string()
            };
            report(&store, shape, mode, concurrency, &m);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if let Some(postgres) = bench_store.postgres {
        postgres.drop_schema().await?;
    }
    if let Some(redis) = bench_store.redis {
        redis.clear().await?;
    }
    Ok(())
}
