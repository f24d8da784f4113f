//! The test harness: a cluster of scheduler instances (one App, engine and scheduler each) on
//! one backend, a workflow that records every execution of its step, and the checks.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gorgon_locking::Locker;
use gorgon_orchestration::{Clock, Store, SystemClock, TransactionKey};
use gorgon_scheduler::{Concurrency, Handle, Options, Schedule, Stats};
use gorgon_workflows::{
    App, EngineOptions, Services, Step, StepContext, StepResponse, StepResult, TransactionState,
    Workflow,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The workflow's input: the tick and how long its step works.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Work {
    pub tick_ms: u64,
    pub hold_ms: u64,
}

/// One execution of the step.
#[derive(Clone, Debug)]
pub struct Execution {
    pub tick_ms: u64,
    pub instance: String,
    pub started: Instant,
    /// Wall-clock start (Unix ms), to compare with the tick.
    pub started_ms: u64,
    pub ended: Option<Instant>,
}

/// Every execution of the step, across the instances of one test.
#[derive(Default)]
pub struct Recorder {
    executions: Mutex<Vec<Execution>>,
}

impl Recorder {
    pub fn executions(&self) -> Vec<Execution> {
        self.executions.lock().clone()
    }

    /// How many times each tick's step ran.
    pub fn per_tick(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for execution in self.executions.lock().iter() {
            *counts.entry(execution.tick_ms).or_insert(0) += 1;
        }
        counts
    }
}

/// Which instance a step runs on (a service of each App).
pub struct InstanceName(pub String);

async fn work(input: Work, ctx: StepContext) -> StepResult<u64> {
    let recorder = ctx.service::<Recorder>()?;
    let instance = ctx.service::<InstanceName>()?.0.clone();
    let index = {
        let mut executions = recorder.executions.lock();
        executions.push(Execution {
            tick_ms: input.tick_ms,
            instance,
            started: Instant::now(),
            started_ms: SystemClock.now_ms(),
            ended: None,
        });
        executions.len() - 1
    };
    if input.hold_ms > 0 {
        tokio::time::sleep(Duration::from_millis(input.hold_ms)).await;
    }
    recorder.executions.lock()[index].ended = Some(Instant::now());
    Ok(StepResponse::new(input.tick_ms))
}

pub fn workflow() -> Workflow<Work, u64> {
    let step = Step::new("scheduled-work", work);
    Workflow::define("scheduled-work", |b, input| b.step(&step, input)).expect("define")
}

/// Builds, per instance, the store and the locker it talks to (for the durable backends, each
/// instance has its own connections to the same schema / prefix / table).
pub trait Backend: Send + Sync {
    fn store(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>>;
    fn locker(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Locker>> + Send + '_>>;
}

/// One scheduler instance.
pub struct Node {
    pub name: String,
    pub app: App,
    pub handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Node {
    /// Graceful shutdown: stops firing, releases its leases, waits for its runs.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("scheduler task");
        }
    }

    /// A crash: the scheduler is dropped mid-flight; its leases are not released, they lapse.
    pub async fn crash(&mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn stats(&self, schedule: &str) -> Stats {
        self.handle.stats(schedule).expect("known schedule")
    }
}

/// What a cluster test sets up.
pub struct Setup {
    pub schedule: &'static str,
    pub interval: Duration,
    pub hold: Duration,
    pub concurrency: Concurrency,
    pub options: Options,
}

impl Setup {
    pub fn new(schedule: &'static str, interval: Duration, concurrency: Concurrency) -> Self {
        Setup {
            schedule,
            interval,
            hold: Duration::ZERO,
            concurrency,
            options: Options {
                leader_lease: Duration::from_millis(600),
                poll_interval: Duration::from_millis(25),
                run_lease: Duration::from_millis(600),
                key_prefix: format!("sched-test-{}", uuid::Uuid::new_v4().simple()),
                ..Options::default()
            },
        }
    }
}

/// Starts `count` instances; instance `i` is named `node-i`.
pub async fn start_cluster(
    backend: &dyn Backend,
    setup: &Setup,
    recorder: &Arc<Recorder>,
    count: usize,
) -> Vec<Node> {
    let workflow = workflow();
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("node-{i}");
        let engine = EngineOptions {
            store: backend.store().await,
            clock: Arc::new(SystemClock) as Arc<dyn Clock>,
            ..EngineOptions::default()
        };
        let services = Services::new()
            .with(recorder.clone())
            .with(Arc::new(InstanceName(name.clone())));
        let app = App::with_options(engine, services);
        let hold_ms = setup.hold.as_millis() as u64;
        let schedule = Schedule::every(setup.schedule, setup.interval, &workflow, move |tick| {
            Work {
                tick_ms: tick.at_ms,
                hold_ms,
            }
        })
        .expect("schedule")
        .with_concurrency(setup.concurrency);
        let options = Options {
            instance: Some(name.clone()),
            ..setup.options.clone()
        };
        let scheduler = options
            .build(app.clone(), backend.locker().await, vec![schedule])
            .expect("build");
        let handle = scheduler.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(scheduler.run(async move {
            let _ = stopped.await;
        }));
        nodes.push(Node {
            name,
            app,
            handle,
            stop: Some(stop),
            task: Some(task),
        });
    }
    nodes
}

/// Waits until `check` holds, polling; panics naming `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The index of the node leading `schedule` (waits for one).
pub async fn leader(nodes: &[Node], schedule: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let leaders: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].task.is_some() && nodes[i].handle.is_leader(schedule))
            .collect();
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        if let Some(&leader) = leaders.first() {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader for {schedule}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The sum of a statistic over the nodes.
pub fn total(nodes: &[Node], schedule: &str, field: impl Fn(&Stats) -> u64) -> u64 {
    nodes.iter().map(|node| field(&node.stats(schedule))).sum()
}

/// The largest number of executions in progress at one instant.
pub fn max_overlap(executions: &[Execution]) -> usize {
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    for execution in executions {
        edges.push((execution.started, 1));
        edges.push((execution.ended.expect("finished"), -1));
    }
    // Ends before starts at the same instant: touching runs do not overlap.
    edges.sort_by_key(|&(at, delta)| (at, delta));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

/// The store summary state of every tick's transaction, through one node's store.
pub async fn states(node: &Node, schedule: &str, ticks: &[u64]) -> Vec<TransactionState> {
    let store = node.app.engine().store().clone();
    let mut states = Vec::new();
    for tick in ticks {
        let key = TransactionKey::new("scheduled-work", format!("{schedule}-{tick}"));
        let summary = store.summary(&key).await.expect("summary");
        states.push(
            summary
                .unwrap_or_else(|| panic!("{key} not in the store"))
                .state,
        );
    }
    states
}

/// Three instances fire an interval schedule; the leader leaves mid-way (shut down, or crashed
/// when `crash`) and another instance takes over. Every tick runs exactly once; with a graceful
/// shutdown there is no gap at all; after a crash there is one gap (the lease lapsing) and the
/// new leader fires the most recent tick, not the backlog.
pub async fn every_tick_once_across_a_handover(backend: &dyn Backend, crash: bool) {
    const SCHEDULE: &str = "tick";
    const INTERVAL_MS: u64 = 150;
    let recorder = Arc::new(Recorder::default());
    let setup = Setup::new(
        SCHEDULE,
        Duration::from_millis(INTERVAL_MS),
        Concurrency::Allow,
    );
    let mut nodes = start_cluster(backend, &setup, &recorder, 3).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let first = leader(&nodes, SCHEDULE).await;
    let ran_before = recorder.per_tick().len();
    assert!(ran_before >= 5, "only {ran_before} ticks ran in 1.2 s");
    let handover = Instant::now();
    let handover_ms = SystemClock.now_ms();
    if crash {
        nodes[first].crash().await;
    } else {
        nodes[first].shut_down().await;
    }
    let second = leader(&nodes, SCHEDULE).await;
    assert_ne!(second, first);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for node in &mut nodes {
        node.shut_down().await;
    }

    let per_tick = recorder.per_tick();
    for (tick, runs) in &per_tick {
        assert_eq!(*runs, 1, "tick {tick} ran {runs} times: {per_tick:?}");
    }
    let ticks: Vec<u64> = per_tick.keys().copied().collect();
    assert!(ticks.len() >= 12, "only {} ticks ran in 2.4 s", ticks.len());
    assert!(ticks.iter().all(|tick| tick % INTERVAL_MS == 0));
    let gaps: Vec<u64> = ticks
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .filter(|&gap| gap != INTERVAL_MS)
        .collect();
    let missed = total(&nodes, SCHEDULE, |s| s.missed);
    eprintln!(
        "handover (crash: {crash}): {} ticks, gaps {gaps:?} ms, skipped as already fired {}",
        ticks.len(),
        total(&nodes, SCHEDULE, |s| s.skipped_fired)
    );
    if crash {
        // The crashed leader's lease (600 ms) lapses; then the next leader fires the most
        // recent tick at once and goes on.
        assert!(gaps.len() <= 1, "gaps {gaps:?} in {ticks:?}");
        let lapse = 600 + 25 + INTERVAL_MS + 250;
        assert!(
            gaps.iter().all(|&gap| gap <= lapse),
            "gap {gaps:?} > {lapse} ms"
        );
    } else {
        assert!(gaps.is_empty(), "gaps {gaps:?} in {ticks:?}");
    }
    assert_eq!(missed, 0, "a leader fell behind");

    let executions = recorder.executions();
    let (old, new) = (&nodes[first].name, &nodes[second].name);
    assert!(
        executions
            .iter()
            .all(|e| &e.instance != old || e.tick_ms <= handover_ms),
        "{old} fired a tick due after it left"
    );
    let taken_over: Vec<&Execution> = executions
        .iter()
        .filter(|e| &e.instance == new && e.started > handover)
        .collect();
    assert!(
        taken_over.len() >= 5,
        "{new} fired {} ticks",
        taken_over.len()
    );
    // Every run started within one interval (plus slack) of its tick: the new leader's first
    // run is the most recent tick, never an older one replayed.
    for execution in &executions {
        let late = execution.started_ms.saturating_sub(execution.tick_ms);
        assert!(
            late < INTERVAL_MS + 100,
            "tick {} started {late} ms late",
            execution.tick_ms
        );
    }
    let fired = total(&nodes, SCHEDULE, |s| s.fired);
    let runs = ticks.len() as u64;
    if crash {
        // The crashed leader counts a tick as fired once its run has begun; a run it began in
        // the instant before it died ran, but was never counted.
        assert!(
            fired == runs || fired + 1 == runs,
            "fired counters {fired} vs runs {runs}"
        );
    } else {
        assert_eq!(fired, runs, "fired counters vs runs");
    }
    let states = states(&nodes[second], SCHEDULE, &ticks).await;
    assert!(states.iter().all(|state| *state == TransactionState::Done));
}

/// `Forbid`: a run lasting three ticks; three instances; the leader is shut down while its run
/// goes on. Runs never overlap, across instances and across the leader change, and the ticks in
/// between are skipped and counted.
pub async fn forbid_holds_across_instances_and_a_leader_change(backend: &dyn Backend) {
    const SCHEDULE: &str = "forbid";
    let recorder = Arc::new(Recorder::default());
    let mut setup = Setup::new(SCHEDULE, Duration::from_millis(150), Concurrency::Forbid);
    setup.hold = Duration::from_millis(450);
    let mut nodes = start_cluster(backend, &setup, &recorder, 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let first = leader(&nodes, SCHEDULE).await;
    let old = nodes[first].name.clone();
    // Leave while a run of the leader is under way.
    wait_for(
        "a run of the leader under way",
        Duration::from_secs(3),
        || {
            recorder
                .executions()
                .iter()
                .any(|e| e.instance == old && e.ended.is_none())
        },
    )
    .await;
    let running = recorder
        .executions()
        .iter()
        .position(|e| e.instance == old && e.ended.is_none())
        .expect("a run under way");
    nodes[first].shut_down().await; // returns once its run ended
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for node in &mut nodes {
        node.shut_down().await;
    }

    let executions = recorder.executions();
    assert_eq!(
        max_overlap(&executions),
        1,
        "runs overlapped: {executions:#?}"
    );
    let per_tick = recorder.per_tick();
    assert!(per_tick.values().all(|&runs| runs == 1), "{per_tick:?}");
    let after: Vec<&Execution> = executions[running + 1..].iter().collect();
    assert!(!after.is_empty(), "nothing ran after the leader change");
    assert!(after.iter().all(|e| e.instance != old));
    assert!(after[0].started >= executions[running].ended.expect("ended"));
    let skipped_by_others: u64 = (0..nodes.len())
        .filter(|&i| i != first)
        .map(|i| nodes[i].stats(SCHEDULE).skipped_busy)
        .sum();
    assert!(
        skipped_by_others >= 1,
        "the new leader did not wait for the old leader's run"
    );
    let skipped = total(&nodes, SCHEDULE, |s| s.skipped_busy);
    eprintln!(
        "forbid: {} runs, {skipped} ticks skipped ({skipped_by_others} by the new leader)",
        executions.len()
    );
    // Each 450 ms run spans about three 150 ms ticks: about two skipped per run.
    assert!(
        skipped as usize >= executions.len(),
        "{skipped} skipped for {} runs",
        executions.len()
    );
    assert_eq!(
        total(&nodes, SCHEDULE, |s| s.fired),
        executions.len() as u64
    );
}

/// `Allow`: the same three-tick runs overlap, and every tick still runs once.
pub async fn allow_lets_runs_overlap(backend: &dyn Backend) {
    const SCHEDULE: &str = "allow";
    let recorder = Arc::new(Recorder::default());
    let mut setup = Setup::new(SCHEDULE, Duration::from_millis(150), Concurrency::Allow);
    setup.hold = Duration::from_millis(450);
    let mut nodes = start_cluster(backend, &setup, &recorder, 3).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    for node in &mut nodes {
        node.shut_down().await;
    }
    let executions = recorder.executions();
    assert!(executions.len() >= 10, "{} runs in 2 s", executions.len());
    let overlap = max_overlap(&executions);
    eprintln!("allow: {} runs, up to {overlap} at once", executions.len());
    assert!(overlap >= 2, "runs did not overlap");
    let per_tick = recorder.per_tick();
    assert!(per_tick.values().all(|&runs| runs == 1), "{per_tick:?}");
    assert_eq!(total(&nodes, SCHEDULE, |s| s.skipped_busy), 0);
}
