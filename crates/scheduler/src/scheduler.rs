//! The component: [`Options`] → [`Options::build`] → [`Scheduler::run`], with a cheap [`Handle`].

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gorgon_locking::{LockKey, LockOptions, Locker, LockerExt, OwnerId, duration_ms};
use gorgon_orchestration::{Clock, EventKind, Store, TransactionKey};
use gorgon_workflows::{App, TransactionState};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::schedule::{Concurrency, Schedule, Tick};

/// How the scheduler coordinates with the other instances. Deserializable from configuration:
/// `{ "leader_lease_ms": 10000, "poll_interval_ms": 1000, "run_lease_ms": 30000 }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// This instance's name in lock owners and logs; a random UUID when absent. Two running
    /// instances must not share a name.
    pub instance: Option<String>,
    /// How long a leader keeps a schedule without renewing; it renews every third of it. A dead
    /// leader's schedules are taken over after at most this (plus `poll_interval`). At least
    /// 3 ms. Default 10 s.
    #[serde(rename = "leader_lease_ms", with = "duration_ms")]
    pub leader_lease: Duration,
    /// How often a follower tries to take a schedule's leader lease. At least 1 ms. Default 1 s.
    #[serde(rename = "poll_interval_ms", with = "duration_ms")]
    pub poll_interval: Duration,
    /// The lease of a `Forbid` schedule's run lock, renewed every third of it while the run
    /// goes on; if the instance running it dies, the next tick can fire after at most this.
    /// At least 3 ms. Default 30 s.
    #[serde(rename = "run_lease_ms", with = "duration_ms")]
    pub run_lease: Duration,
    /// How old the most recent tick may be for a new leader to still fire it (see the crate
    /// docs' catch-up policy). Default 60 s.
    #[serde(rename = "catch_up_ms", with = "duration_ms")]
    pub catch_up: Duration,
    /// The prefix of the lock keys (`<prefix>:leader:<schedule>`, `<prefix>:run:<schedule>`).
    /// Instances that must agree use the same prefix. Default `gorgon-scheduler`.
    pub key_prefix: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            instance: None,
            leader_lease: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            run_lease: Duration::from_secs(30),
            catch_up: Duration::from_secs(60),
            key_prefix: "gorgon-scheduler".into(),
        }
    }
}

/// What one instance did for one schedule since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Whether this instance leads the schedule now.
    pub leader: bool,
    /// How many times it became the leader.
    pub leaderships: u64,
    /// Runs it started.
    pub fired: u64,
    /// Ticks it skipped because the previous run was unfinished (`Forbid`).
    pub skipped_busy: u64,
    /// Ticks it skipped because their run was already in the store (fired before a handover).
    pub skipped_fired: u64,
    /// Due ticks it passed over because it fell behind (only the most recent one fires).
    pub missed: u64,
    /// Ticks it could not fire: the store or the locker failed, or the run could not start.
    pub errors: u64,
    /// Runs it started that ended `done`.
    pub done: u64,
    /// Runs it started that ended reverted or failed.
    pub failed: u64,
}

/// One schedule inside the scheduler.
struct Entry {
    schedule: Schedule,
    leader_key: LockKey,
    run_key: LockKey,
    /// The owner of the leader lease: `<instance>/<schedule>`, so releasing it touches nothing
    /// else.
    leader_owner: OwnerId,
    stats: Mutex<Stats>,
}

impl Entry {
    fn count(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut self.stats.lock());
    }
}

struct Shared {
    app: App,
    locker: Arc<dyn Locker>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    options: Options,
    instance: String,
    entries: Vec<Arc<Entry>>,
    /// The runs this instance started, so `run` can wait for them on shutdown.
    runs: TaskTracker,
}

/// The scheduler of one instance, built by [`Options::build`]; [`Scheduler::run`] drives it.
pub struct Scheduler {
    shared: Arc<Shared>,
}

/// A cheap `Clone` handle on a scheduler: its instance name and statistics.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("instance", &self.shared.instance)
            .field("schedules", &self.shared.entries.len())
            .finish()
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("instance", &self.shared.instance)
            .finish()
    }
}

fn check_at_least(field: &'static str, value: Duration, least: Duration) -> Result<(), Error> {
    if value < least {
        return Err(Error::InvalidOption {
            field,
            reason: format!("must be at least {least:?}, got {value:?}"),
        });
    }
    Ok(())
}

impl Options {
    /// Builds the scheduler of this instance: `app` runs the workflows (its engine's store and
    /// clock are the scheduler's), `locker` is shared by every instance, `schedules` are the
    /// same on every instance. Registers each schedule's workflow on the app (a no-op when it
    /// is registered already).
    ///
    /// Errors: [`Error::InvalidOption`], [`Error::DuplicateSchedule`], [`Error::Register`].
    pub fn build(
        self,
        app: App,
        locker: Arc<dyn Locker>,
        schedules: Vec<Schedule>,
    ) -> Result<Scheduler, Error> {
        check_at_least("leader_lease", self.leader_lease, Duration::from_millis(3))?;
        check_at_least("run_lease", self.run_lease, Duration::from_millis(3))?;
        check_at_least(
            "poll_interval",
            self.poll_interval,
            Duration::from_millis(1),
        )?;
        if self.key_prefix.is_empty() {
            return Err(Error::InvalidOption {
                field: "key_prefix",
                reason: "cannot be empty".into(),
            });
        }
        let instance = match &self.instance {
            Some(name) if name.is_empty() => {
                return Err(Error::InvalidOption {
                    field: "instance",
                    reason: "cannot be empty".into(),
                });
            }
            Some(name) => name.clone(),
            None => OwnerId::random().as_str().to_string(),
        };
        let mut names = HashSet::new();
        let mut entries = Vec::with_capacity(schedules.len());
        for schedule in schedules {
            if !names.insert(schedule.name.clone()) {
                return Err(Error::DuplicateSchedule {
                    schedule: schedule.name.to_string(),
                });
            }
            schedule
                .fire
                .register(&app)
                .map_err(|source| Error::Register {
                    schedule: schedule.name.to_string(),
                    workflow: schedule.workflow().to_string(),
                    source: Box::new(source),
                })?;
            let prefix = &self.key_prefix;
            let name = &schedule.name;
            entries.push(Arc::new(Entry {
                leader_key: LockKey::new(format!("{prefix}:leader:{name}")),
                run_key: LockKey::new(format!("{prefix}:run:{name}")),
                leader_owner: OwnerId::new(format!("{instance}/{name}")),
                stats: Mutex::new(Stats::default()),
                schedule,
            }));
        }
        let engine = app.engine();
        Ok(Scheduler {
            shared: Arc::new(Shared {
                clock: engine.clock().clone(),
                store: engine.store().clone(),
                app,
                locker,
                options: self,
                instance,
                entries,
                runs: TaskTracker::new(),
            }),
        })
    }
}

impl Scheduler {
    /// A handle for statistics, usable while [`Scheduler::run`] goes on.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Runs every schedule until `shutdown` completes; then stops firing, releases the leader
    /// leases it holds (another instance takes over at its next poll), and waits for the runs it
    /// started to finish (a `Forbid` run keeps its run lock until then).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (stop, stopped) = watch::channel(false);
        let mut loops = JoinSet::new();
        for entry in &self.shared.entries {
            loops.spawn(schedule_loop(
                self.shared.clone(),
                entry.clone(),
                stopped.clone(),
            ));
        }
        shutdown.await;
        stop.send_replace(true);
        while let Some(joined) = loops.join_next().await {
            if let Err(error) = joined {
                tracing::error!(instance = %self.shared.instance, %error, "a schedule loop panicked");
            }
        }
        self.shared.runs.close();
        self.shared.runs.wait().await;
    }
}

impl Handle {
    /// This instance's name (the prefix of its lock owners).
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// The statistics of a schedule on this instance; `None` for an unknown schedule.
    pub fn stats(&self, schedule: &str) -> Option<Stats> {
        self.entry(schedule).map(|entry| *entry.stats.lock())
    }

    /// Whether this instance leads the schedule now.
    pub fn is_leader(&self, schedule: &str) -> bool {
        self.stats(schedule).is_some_and(|stats| stats.leader)
    }

    fn entry(&self, schedule: &str) -> Option<&Arc<Entry>> {
        self.shared
            .entries
            .iter()
            .find(|entry| &*entry.schedule.name == schedule)
    }
}

/// Completes once the scheduler is told to stop (or its sender is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Follows a schedule, leading it whenever this instance holds its leader lease.
async fn schedule_loop(shared: Arc<Shared>, entry: Arc<Entry>, mut stop: watch::Receiver<bool>) {
    let name = entry.schedule.name.clone();
    let options = LockOptions::new(Duration::ZERO, shared.options.leader_lease);
    let keys = [entry.leader_key.clone()];
    loop {
        if *stop.borrow() {
            break;
        }
        let attempt = Instant::now();
        match shared
            .locker
            .acquire(&keys, &entry.leader_owner, &options)
            .await
        {
            Ok(_) => {
                entry.count(|stats| {
                    stats.leader = true;
                    stats.leaderships += 1;
                });
                tracing::info!(schedule = %name, instance = %shared.instance, "leading the schedule");
                let valid_until = attempt + shared.options.leader_lease;
                let stopped = lead(&shared, &entry, valid_until, &mut stop).await;
                entry.count(|stats| stats.leader = false);
                if stopped {
                    if let Err(error) = shared.locker.release_all(&entry.leader_owner).await {
                        tracing::warn!(schedule = %name, %error, "releasing the leader lease failed; it lapses");
                    }
                    break;
                }
                tracing::warn!(schedule = %name, instance = %shared.instance, "lost the leader lease");
            }
            Err(gorgon_locking::Error::WaitTimeout { .. }) => {}
            Err(error) => {
                tracing::warn!(schedule = %name, %error, "taking the leader lease failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(shared.options.poll_interval) => {}
            () = stop_requested(&mut stop) => break,
        }
    }
}

/// The outcome of a renewal of the leader lease.
enum Renewal {
    /// Renewed: the lease runs until then at least.
    Renewed(Instant),
    /// The backend failed but the lease is still valid: try again soon.
    Failed,
    /// Lost (taken over, or the backend stayed unreachable until the lease ran out).
    Lost,
}

async fn renew(shared: &Shared, entry: &Entry, valid_until: Instant) -> Renewal {
    let lease = shared.options.leader_lease;
    let attempt = Instant::now();
    let keys = [entry.leader_key.clone()];
    let renewed = tokio::time::timeout_at(
        valid_until,
        shared.locker.renew(&keys, &entry.leader_owner, lease),
    )
    .await;
    match renewed {
        Err(_) | Ok(Err(gorgon_locking::Error::LeaseLost { .. })) => Renewal::Lost,
        Ok(Ok(())) => Renewal::Renewed(attempt + lease),
        Ok(Err(error)) => {
            tracing::warn!(schedule = %entry.schedule.name, %error, "renewing the leader lease failed");
            if Instant::now() >= valid_until {
                Renewal::Lost
            } else {
                Renewal::Failed
            }
        }
    }
}

/// Leads a schedule until the lease is lost (`false`) or the scheduler stops (`true`).
async fn lead(
    shared: &Arc<Shared>,
    entry: &Arc<Entry>,
    mut valid_until: Instant,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let lease = shared.options.leader_lease;
    let renew_every = lease / 3;
    let mut next_renewal = Instant::now() + renew_every;
    let trigger = &entry.schedule.trigger;
    let catch_up = u64::try_from(shared.options.catch_up.as_millis()).unwrap_or(u64::MAX);
    let now = shared.clock.now_ms();
    // Catch-up: the most recent tick, if recent enough (already fired ones are found in the
    // store); never the ticks before it.
    let mut next_tick = match trigger.latest_at_or_before(now) {
        Some(latest) if now - latest <= catch_up => Some(latest),
        _ => trigger.next_after(now),
    };
    loop {
        let tick = match next_tick {
            Some(at) => shared.clock.sleep_until(at),
            None => Box::pin(std::future::pending()),
        };
        tokio::select! {
            biased;
            () = stop_requested(stop) => return true,
            () = tokio::time::sleep_until(next_renewal) => {
                match renew(shared, entry, valid_until).await {
                    Renewal::Renewed(until) => {
                        valid_until = until;
                        next_renewal = Instant::now() + renew_every;
                    }
                    Renewal::Failed => next_renewal = Instant::now() + (renew_every / 4),
                    Renewal::Lost => return false,
                }
            }
            () = tick => {
                let Some(due_from) = next_tick else { continue };
                // Fire only with at least two thirds of the lease left, so the run is in the
                // store long before another instance could lead.
                if valid_until.saturating_duration_since(Instant::now()) < lease * 2 / 3 {
                    match renew(shared, entry, valid_until).await {
                        Renewal::Renewed(until) => {
                            valid_until = until;
                            next_renewal = Instant::now() + renew_every;
                        }
                        Renewal::Failed => {
                            // The backend failed: wait a little before trying again.
                            tokio::select! {
                                () = stop_requested(stop) => return true,
                                () = tokio::time::sleep(renew_every / 4) => continue,
                            }
                        }
                        Renewal::Lost => return false,
                    }
                }
                let now = shared.clock.now_ms();
                let due = trigger
                    .latest_at_or_before(now)
                    .filter(|&latest| latest > due_from)
                    .unwrap_or(due_from);
                if due > due_from {
                    let missed = 1 + trigger.ticks_between(due_from, due, 100_000);
                    entry.count(|stats| stats.missed += missed);
                    tracing::warn!(schedule = %entry.schedule.name, missed, "fell behind; firing the most recent tick only");
                }
                fire(shared, entry, due).await;
                next_tick = trigger.next_after(due);
            }
        }
    }
}

/// How a tick's run task ended, as it tells `fire`.
enum Outcome {
    /// `Forbid`: the previous run still holds the run lock.
    Busy,
    /// The run (or the run lock) failed before the run began.
    Failed,
    /// The run began (its transaction is in the store).
    Begun,
}

/// Fires one tick: unless its run is in the store already, starts the run in its own task and
/// returns once the run has begun (its transaction is in the store) or was skipped.
async fn fire(shared: &Arc<Shared>, entry: &Arc<Entry>, at_ms: u64) {
    let tick = Tick::new(entry.schedule.name.clone(), at_ms);
    let key = TransactionKey::new(entry.schedule.workflow(), tick.transaction_id.as_str());
    match shared.store.summary(&key).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            entry.count(|stats| stats.skipped_fired += 1);
            tracing::debug!(transaction = %key, "tick already fired");
            return;
        }
        Err(error) => {
            entry.count(|stats| stats.errors += 1);
            tracing::warn!(transaction = %key, %error, "cannot tell whether the tick fired; skipping it");
            return;
        }
    }
    let events = shared.app.subscribe();
    let (told, outcome) = oneshot::channel();
    shared
        .runs
        .spawn(run_tick(shared.clone(), entry.clone(), tick, told));
    let confirm = async {
        tokio::select! {
            outcome = outcome => outcome.ok(),
            () = begun(shared, events, &key) => Some(Outcome::Begun),
        }
    };
    match tokio::time::timeout(shared.options.leader_lease / 3, confirm).await {
        Ok(Some(Outcome::Begun)) => {
            entry.count(|stats| stats.fired += 1);
            tracing::debug!(transaction = %key, "fired");
        }
        Ok(Some(Outcome::Busy)) => {
            entry.count(|stats| stats.skipped_busy += 1);
            tracing::info!(transaction = %key, "previous run unfinished (concurrency forbid); tick skipped");
        }
        Ok(Some(Outcome::Failed) | None) => entry.count(|stats| stats.errors += 1),
        Err(_) => {
            // Slow to begin; it is on its way (its task runs on).
            entry.count(|stats| stats.fired += 1);
            tracing::warn!(transaction = %key, "run not begun yet; going on");
        }
    }
}

/// Completes when the engine announces that the run of `key` began (or resumed).
async fn begun(
    shared: &Shared,
    mut events: broadcast::Receiver<gorgon_workflows::TransactionEvent>,
    key: &TransactionKey,
) {
    loop {
        match events.recv().await {
            Ok(event)
                if event.key == *key
                    && matches!(event.kind, EventKind::Begin | EventKind::Resume) =>
            {
                return;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if let Ok(Some(_)) = shared.store.summary(key).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// The task of one tick's run: under the run lock for `Forbid`; tells `fire` how it went.
async fn run_tick(
    shared: Arc<Shared>,
    entry: Arc<Entry>,
    tick: Tick,
    told: oneshot::Sender<Outcome>,
) {
    let id = tick.transaction_id.clone();
    let ran = match entry.schedule.concurrency {
        Concurrency::Allow => Ok(run_to_end(&shared, &entry, tick).await),
        Concurrency::Forbid => {
            // The run's own owner (not the instance), so a second run on the same instance is
            // refused too.
            let owner = OwnerId::new(id.clone());
            let options = LockOptions::new(Duration::ZERO, shared.options.run_lease);
            let keys = [entry.run_key.clone()];
            shared
                .locker
                .with_lock(&keys, &owner, &options, |_lease| {
                    run_to_end(&shared, &entry, tick)
                })
                .await
        }
    };
    let outcome = match ran {
        Ok(Ok(state)) => {
            entry.count(|stats| match state {
                TransactionState::Done => stats.done += 1,
                _ => stats.failed += 1,
            });
            Outcome::Begun
        }
        Ok(Err(error)) => {
            entry.count(|stats| stats.failed += 1);
            tracing::warn!(transaction = %id, %error, "scheduled run failed to run");
            Outcome::Failed
        }
        Err(gorgon_locking::Error::WaitTimeout { .. }) => Outcome::Busy,
        Err(error @ gorgon_locking::Error::LeaseLost { .. }) => {
            // The run goes on in its own task, no longer covered by the run lock.
            tracing::error!(transaction = %id, %error, "run lock lost while the run went on");
            Outcome::Failed
        }
        Err(error) => {
            tracing::warn!(transaction = %id, %error, "taking the run lock failed; tick skipped");
            Outcome::Failed
        }
    };
    let _ = told.send(outcome);
}

/// Runs the tick's workflow to its end in a task of its own (so losing the run lock does not
/// cancel it halfway) and returns its final state.
async fn run_to_end(
    shared: &Arc<Shared>,
    entry: &Arc<Entry>,
    tick: Tick,
) -> Result<TransactionState, String> {
    let run = entry.schedule.fire.run(shared.app.clone(), tick);
    match shared.runs.spawn(run).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(error) => Err(format!("the run's task ended abnormally: {error}")),
    }
}
