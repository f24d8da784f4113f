//! Scheduled workflows: a workflow started on a cron expression or an interval, **once per tick
//! across the cluster**, with `concurrency: forbid` enforced across instances.
//!
//! Medusa's scheduled jobs can run on several instances for one tick, and their
//! `concurrency: "forbid"` is not enforced. Here every instance runs the same
//! [`Scheduler`], and they agree through a shared [`Locker`](gorgon_locking::Locker) and the shared
//! workflow store:
//!
//! - **One leader per schedule.** An instance fires a schedule only while it holds that
//!   schedule's leader lease (`<prefix>:leader:<schedule>`), renewed every third of
//!   [`Options::leader_lease`]. The others retry every [`Options::poll_interval`]; when the leader
//!   shuts down it releases the lease at once, when it dies the lease lapses and another instance
//!   takes over.
//! - **A deterministic transaction id per tick**, `<schedule>-<tick unix ms>`: before firing, the
//!   leader looks the id up in the store and skips a tick that was already fired (by a previous
//!   leader, just before a handover).
//! - **Forbid** ([`Concurrency::Forbid`], the default): a run holds the schedule's run lock
//!   (`<prefix>:run:<schedule>`, owner = the tick's transaction id, renewed) from its start to
//!   its end, wherever it runs. A tick whose run lock is taken is skipped and counted
//!   ([`Stats::skipped_busy`]), also after a leader change: the previous run, still going on the
//!   old leader, still holds the lock. [`Concurrency::Allow`] lets runs overlap.
//!
//! # Catch-up policy
//! A scheduler never replays a backlog. When an instance becomes leader, it fires the most recent
//! tick at or before now if that tick is at most [`Options::catch_up`] old and is not in the
//! store yet; older ticks are not fired. When the leader itself falls behind (a stalled process,
//! a run that took long to start), it fires only the most recent due tick and counts the ones
//! it passed over in [`Stats::missed`].
//!
//! # Guarantees and limits
//! - Exactly one instance fires a tick as long as the instances share the locker **and** the
//!   workflow store (the tick's id is looked up there), and a leader is not stalled for longer
//!   than two thirds of its lease between its last renewal and the run's creation (a leader
//!   renews before firing when less than two thirds are left). A paused leader that wakes up
//!   after losing its lease renews first, finds the lease lost, and does not fire.
//! - Ticks are computed on the engine's [`Clock`](gorgon_orchestration::Clock) (a
//!   `ManualClock` drives them in tests); leases are timed by the locking backend in real time.
//! - `Forbid` is enforced by the run lock, which the instance running the run holds. If that
//!   instance dies, the run is left unfinished in the store (nobody drives it until it is
//!   resumed) and its run lock lapses after [`Options::run_lease`]: later ticks fire again.
//! - A tick whose store lookup or run lock fails (backend down) is skipped and counted in
//!   [`Stats::errors`], never fired blind.
//!
//! # How to use it
//! 1. Define and register the workflow with the SDK ([`gorgon_workflows::Workflow`]).
//! 2. Describe each schedule: [`Schedule::every`] or [`Schedule::cron`] (croner syntax, seconds
//!    allowed, UTC), with a function giving the workflow input of a [`Tick`].
//! 3. Build the component: [`Options::build`] with the app, a shared locker and the schedules.
//! 4. Keep a [`Handle`] ([`Scheduler::handle`]) for statistics, and spawn
//!    [`Scheduler::run`] with a shutdown future.
//!
//! ```text
//!  every instance, per schedule:
//!   follower ── acquire leader lease (one attempt) every poll_interval ──┐
//!      ▲                                                               │ taken
//!      │ lease lost                                                    ▼
//!      └──────────────────────────────────────────────────── leader: renew every lease/3
//!                                                               sleep on the Clock until the tick
//!                                                               tick id in the store? ─► skip
//!                                                               forbid: run lock free? ─► no: skip
//!                                                               app.start(<schedule>-<tick ms>)
//!                                                               (the run goes on in its own task)
//! ```
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use gorgon_locking::InMemoryLocker;
//! use gorgon_scheduler::{Options, Schedule, Tick};
//! use gorgon_workflows::{App, Services, Step, StepContext, StepResponse, StepResult, Workflow};
//!
//! async fn sweep(tick_ms: u64, _ctx: StepContext) -> StepResult<u64> {
//!     Ok(StepResponse::new(tick_ms)) // expire carts, send digests, ...
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let sweep = Step::new("sweep-carts", sweep);
//! let workflow = Workflow::define("sweep-carts", |b, tick_ms| b.step(&sweep, tick_ms))?;
//! let app = App::new(Services::new());
//! app.register(&workflow)?;
//!
//! let schedules = vec![
//!     Schedule::every("sweep", Duration::from_millis(50), &workflow, |tick: &Tick| tick.at_ms)?,
//!     Schedule::cron("nightly-sweep", "0 0 3 * * *", &workflow, |tick: &Tick| tick.at_ms)?,
//! ];
//! let scheduler = Options::default().build(app.clone(), Arc::new(InMemoryLocker::new()), schedules)?;
//! let handle = scheduler.handle();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(scheduler.run(async move { stopped.await.ok(); }));
//! tokio::time::sleep(Duration::from_millis(180)).await;
//! stop.send(()).ok();
//! running.await?;
//! assert!(handle.stats("sweep").unwrap().fired >= 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod schedule;
mod scheduler;

pub use schedule::{Concurrency, Schedule, Tick, Trigger};
pub use scheduler::{Handle, Options, Scheduler, Stats};

/// What can go wrong defining schedules or building the scheduler. Every variant names the
/// schedule or the option concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A schedule's name or interval is unusable.
    #[error("schedule {schedule:?}: {reason}")]
    InvalidSchedule {
        /// The schedule's name.
        schedule: String,
        /// What is wrong.
        reason: String,
    },
    /// A cron expression does not parse.
    #[error("schedule {schedule:?}: invalid cron expression {expression:?}: {source}")]
    InvalidCron {
        /// The schedule's name.
        schedule: String,
        /// The expression as given.
        expression: String,
        /// croner's error.
        #[source]
        source: croner::errors::CronError,
    },
    /// Two schedules given to one scheduler have the same name.
    #[error("schedule {schedule:?} is given twice")]
    DuplicateSchedule {
        /// The name given twice.
        schedule: String,
    },
    /// A scheduler option is out of range.
    #[error("invalid scheduler option {field}: {reason}")]
    InvalidOption {
        /// The option's name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The schedule's workflow could not be registered on the app.
    #[error("schedule {schedule:?}: registering workflow {workflow:?} failed: {source}")]
    Register {
        /// The schedule's name.
        schedule: String,
        /// The workflow's name.
        workflow: String,
        /// The SDK's error.
        #[source]
        source: Box<gorgon_workflows::Error>,
    },
}
