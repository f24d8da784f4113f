//! Cron schedules on a manual clock (no waiting for wall-clock seconds), the catch-up policy,
//! and the typed errors of bad definitions.

mod common;

use gorgon_orchestration::Leases;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::{InstanceName, Recorder, Work};
use gorgon_locking::{InMemoryLocker, Locker};
use gorgon_orchestration::{Clock, ManualClock, MemoryStore, Store, TransactionKey};
use gorgon_scheduler::{Error, Handle, Options, Schedule, Tick};
use gorgon_workflows::{App, EngineOptions, Services, TransactionState};
use tokio::sync::oneshot;

fn utc_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .unwrap()
        .timestamp_millis() as u64
}

fn work(tick: &Tick) -> Work {
    Work {
        tick_ms: tick.at_ms,
        hold_ms: 0,
    }
}

/// `count` instances on one manual clock, one memory store and one in-memory locker.
struct Cluster {
    name: String,
    clock: Arc<ManualClock>,
    store: Arc<MemoryStore>,
    recorder: Arc<Recorder>,
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    fn start(start_ms: u64, name: &str, expression: &str, count: usize) -> Self {
        let clock = Arc::new(ManualClock::new(start_ms));
        let store = Arc::new(MemoryStore::new());
        let locker: Arc<dyn Locker> = Arc::new(InMemoryLocker::new());
        let recorder = Arc::new(Recorder::default());
        let workflow = common::workflow();
        let mut cluster = Cluster {
            name: name.to_string(),
            clock: clock.clone(),
            store: store.clone(),
            recorder: recorder.clone(),
            handles: Vec::new(),
            stops: Vec::new(),
            tasks: Vec::new(),
        };
        for i in 0..count {
            let engine = EngineOptions {
                store: store.clone() as Arc<dyn Store>,
                clock: clock.clone() as Arc<dyn Clock>,
                ..EngineOptions::default()
            };
            let services = Services::new()
                .with(recorder.clone())
                .with(Arc::new(InstanceName(format!("node-{i}"))));
            let app = App::with_options(engine, services);
            let schedule = Schedule::cron(name, expression, &workflow, work).expect("cron");
            let scheduler = Options {
                poll_interval: Duration::from_millis(10),
                ..Options::default()
            }
            .build(app, locker.clone(), vec![schedule])
            .expect("build");
            cluster.handles.push(scheduler.handle());
            let (stop, stopped) = oneshot::channel::<()>();
            cluster.stops.push(stop);
            cluster.tasks.push(tokio::spawn(scheduler.run(async move {
                let _ = stopped.await;
            })));
        }
        cluster
    }

    /// Waits (in real time, briefly) until exactly the ticks in `expected` have run and their
    /// runs have ended (so a `Forbid` run lock is free again before the clock moves on).
    async fn expect_ran(&self, expected: &[u64]) {
        let recorder = self.recorder.clone();
        let handles = self.handles.clone();
        let done = || -> u64 {
            handles
                .iter()
                .filter_map(|handle| handle.stats(&self.name))
                .map(|stats| stats.done)
                .sum()
        };
        common::wait_for(
            &format!("ticks {expected:?}"),
            Duration::from_secs(5),
            || {
                recorder.per_tick().keys().copied().collect::<Vec<_>>() == expected
                    && done() == expected.len() as u64
            },
        )
        .await;
    }

    async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            task.await.expect("scheduler");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_fire_once_each_on_the_engine_clock_and_a_jump_fires_only_the_latest() {
    let t0 = utc_ms(2026, 1, 1, 0, 0, 0);
    // Every two seconds; the instances start half a second after a tick.
    let cluster = Cluster::start(t0 + 500, "every-2s", "*/2 * * * * *", 3);
    // Catch-up: the tick 500 ms ago fires at once.
    let mut expected = vec![t0];
    cluster.expect_ran(&expected).await;
    for step in 1..=20u64 {
        cluster.clock.advance(Duration::from_millis(500));
        let now = t0 + 500 + step * 500;
        if now.is_multiple_of(2_000) {
            expected.push(now);
        }
        cluster.expect_ran(&expected).await;
    }
    // 10.5 s on the clock: ticks at 0, 2, 4, 6, 8 and 10 s, each once.
    assert_eq!(expected.len(), 6);
    let per_tick = cluster.recorder.per_tick();
    assert!(per_tick.values().all(|&runs| runs == 1), "{per_tick:?}");
    for tick in &expected {
        let key = TransactionKey::new("scheduled-work", format!("every-2s-{tick}"));
        let summary = cluster.store.summary(&key).await.unwrap();
        assert_eq!(summary.expect("in the store").state, TransactionState::Done);
    }
    let fired: u64 = cluster
        .handles
        .iter()
        .map(|handle| handle.stats("every-2s").unwrap().fired)
        .sum();
    assert_eq!(fired, 6);
    let skipped: u64 = cluster
        .handles
        .iter()
        .map(|handle| handle.stats("every-2s").unwrap().skipped_busy)
        .sum();
    assert_eq!(skipped, 0, "each run ended before the next tick");
    // The clock jumps 10 s (a stalled process): only the most recent due tick fires, the four
    // before it are counted as missed, not replayed.
    cluster.clock.advance(Duration::from_secs(10));
    expected.push(t0 + 20_000);
    cluster.expect_ran(&expected).await;
    let missed: u64 = cluster
        .handles
        .iter()
        .map(|handle| handle.stats("every-2s").unwrap().missed)
        .sum();
    assert_eq!(missed, 4);
    let leaders = cluster
        .handles
        .iter()
        .filter(|handle| handle.is_leader("every-2s"))
        .count();
    assert_eq!(leaders, 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_older_than_the_catch_up_window_is_not_replayed() {
    // Daily at 03:00 (five fields); the cluster starts at 03:30, 30 minutes after the tick.
    let cluster = Cluster::start(utc_ms(2026, 3, 10, 3, 30, 0), "nightly", "0 3 * * *", 2);
    let handle = cluster.handles[0].clone();
    let other = cluster.handles[1].clone();
    common::wait_for("a leader", Duration::from_secs(5), || {
        handle.is_leader("nightly") || other.is_leader("nightly")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        cluster.recorder.per_tick().is_empty(),
        "the 03:00 tick was replayed"
    );
    // The next day's 03:00 fires.
    cluster
        .clock
        .advance(Duration::from_secs(23 * 3600 + 30 * 60));
    cluster.expect_ran(&[utc_ms(2026, 3, 11, 3, 0, 0)]).await;
    cluster.stop().await;
}

#[test]
fn a_bad_cron_expression_is_a_typed_error_naming_the_schedule_and_the_expression() {
    let workflow = common::workflow();
    for expression in ["61 * * * *", "not a cron", "* * * *", ""] {
        let error = Schedule::cron("nightly-digest", expression, &workflow, work).unwrap_err();
        match &error {
            Error::InvalidCron {
                schedule,
                expression: given,
                ..
            } => {
                assert_eq!(schedule, "nightly-digest");
                assert_eq!(given, expression);
            }
            other => panic!("{expression:?}: expected InvalidCron, got {other:?}"),
        }
        let message = error.to_string();
        assert!(
            message.contains("nightly-digest") && message.contains(expression),
            "{message}"
        );
    }
    // Seconds and the year field are accepted.
    let seconds = Schedule::cron("s", "*/15 * * * * *", &workflow, work).unwrap();
    assert_eq!(seconds.transaction_id(1_000), "s-1000");
    Schedule::cron("y", "0 0 0 1 1 * 2030", &workflow, work).unwrap();
}

#[tokio::test]
async fn bad_names_intervals_options_and_duplicates_are_typed_errors() {
    let workflow = common::workflow();
    for name in ["", "a:b", "two words"] {
        match Schedule::every(name, Duration::from_secs(1), &workflow, work) {
            Err(Error::InvalidSchedule { schedule, .. }) => assert_eq!(schedule, name),
            other => panic!("{name:?}: {other:?}"),
        }
    }
    match Schedule::every("zero", Duration::ZERO, &workflow, work) {
        Err(Error::InvalidSchedule { schedule, reason }) => {
            assert_eq!(schedule, "zero");
            assert!(reason.contains("interval"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let app = App::new(Services::new());
    let locker: Arc<dyn Locker> = Arc::new(InMemoryLocker::new());
    let schedule = || Schedule::every("sweep", Duration::from_secs(1), &workflow, work).unwrap();
    match Options::default().build(app.clone(), locker.clone(), vec![schedule(), schedule()]) {
        Err(Error::DuplicateSchedule { schedule }) => assert_eq!(schedule, "sweep"),
        other => panic!("{other:?}"),
    }
    let short = Options {
        leader_lease: Duration::from_millis(1),
        ..Options::default()
    };
    match short.build(app.clone(), locker.clone(), vec![schedule()]) {
        Err(Error::InvalidOption { field, .. }) => assert_eq!(field, "leader_lease"),
        other => panic!("{other:?}"),
    }
    let options: Options =
        serde_json::from_str(r#"{ "leader_lease_ms": 5000, "poll_interval_ms": 250 }"#).unwrap();
    assert_eq!(options.leader_lease, Duration::from_secs(5));
    assert_eq!(options.poll_interval, Duration::from_millis(250));
    assert!(serde_json::from_str::<Options>(r#"{ "lease": 1 }"#).is_err());
    // Building registers the workflow on the app.
    options
        .build(app.clone(), locker, vec![schedule()])
        .unwrap();
    assert!(
        app.get(&workflow, "sweep-0").await.is_err_and(|error| {
            !matches!(error, gorgon_workflows::Error::NotRegistered { .. })
        })
    );
}
