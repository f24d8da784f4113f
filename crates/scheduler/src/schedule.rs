//! What a schedule is: a stable name, a trigger (cron or interval), a workflow and the input of
//! each tick, and the concurrency rule.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use futures::future::BoxFuture;
use gorgon_workflows::{App, RunOptions, TransactionState, Value, Workflow};

use crate::Error;

/// Whether runs of one schedule may overlap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Concurrency {
    /// A tick is skipped while the previous run of the schedule is unfinished, on any instance
    /// (Medusa's `concurrency: "forbid"`, enforced across the cluster). The default.
    #[default]
    Forbid,
    /// Every tick starts a run, whether or not earlier runs are still going.
    Allow,
}

/// When a schedule fires.
#[derive(Clone)]
pub enum Trigger {
    /// Every `interval`, at the multiples of the interval since the Unix epoch (so every
    /// instance computes the same ticks).
    Every(Duration),
    /// On the occurrences of a cron expression (croner syntax, 5 to 7 fields, seconds allowed),
    /// in UTC.
    Cron(Box<Cron>),
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Every(interval) => f.debug_tuple("Every").field(interval).finish(),
            Trigger::Cron(cron) => f.debug_tuple("Cron").field(&cron.pattern.as_str()).finish(),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn to_utc(ms: u64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(i64::try_from(ms).ok()?).single()
}

fn to_ms(time: DateTime<Utc>) -> Option<u64> {
    u64::try_from(time.timestamp_millis()).ok()
}

impl Trigger {
    /// The first tick strictly after `ms` (Unix milliseconds), if there is one.
    pub fn next_after(&self, ms: u64) -> Option<u64> {
        match self {
            Trigger::Every(interval) => {
                let every = millis(*interval).max(1);
                (ms / every).checked_add(1)?.checked_mul(every)
            }
            Trigger::Cron(cron) => {
                // croner works in whole seconds: search from the second holding `ms`, exclusive.
                let from = to_utc(ms - ms % 1000)?;
                to_ms(cron.find_next_occurrence(&from, false).ok()?)
            }
        }
    }

    /// The last tick at or before `ms`, if there is one.
    pub fn latest_at_or_before(&self, ms: u64) -> Option<u64> {
        match self {
            Trigger::Every(interval) => {
                let every = millis(*interval).max(1);
                Some(ms / every * every)
            }
            Trigger::Cron(cron) => {
                let from = to_utc(ms - ms % 1000)?;
                to_ms(cron.find_previous_occurrence(&from, true).ok()?)
            }
        }
    }

    /// How many ticks lie strictly between `after` and `before` (counted up to `cap`).
    pub(crate) fn ticks_between(&self, after: u64, before: u64, cap: u64) -> u64 {
        match self {
            Trigger::Every(interval) => {
                let every = millis(*interval).max(1);
                (before.saturating_sub(after) / every)
                    .saturating_sub(1)
                    .min(cap)
            }
            Trigger::Cron(_) => {
                let mut count = 0;
                let mut at = after;
                while count < cap {
                    match self.next_after(at) {
                        Some(next) if next < before => {
                            count += 1;
                            at = next;
                        }
                        _ => break,
                    }
                }
                count
            }
        }
    }
}

/// One tick of a schedule, as the input function sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    /// The schedule's name.
    pub schedule: Arc<str>,
    /// When the tick is due (Unix milliseconds, on the scheduler's clock).
    pub at_ms: u64,
    /// The run's transaction id: `<schedule>-<at_ms>`.
    pub transaction_id: String,
}

impl Tick {
    pub(crate) fn new(schedule: Arc<str>, at_ms: u64) -> Self {
        let transaction_id = format!("{schedule}-{at_ms}");
        Tick {
            schedule,
            at_ms,
            transaction_id,
        }
    }
}

/// The workflow side of a schedule, with its input and output types erased.
pub(crate) trait Fire: Send + Sync {
    /// The workflow's name.
    fn workflow(&self) -> &str;
    /// Registers the workflow on the app (a no-op when it is registered already).
    fn register(&self, app: &App) -> Result<(), gorgon_workflows::Error>;
    /// Starts the tick's run and waits until it has finished; returns its final state.
    fn run(
        &self,
        app: App,
        tick: Tick,
    ) -> BoxFuture<'static, Result<TransactionState, gorgon_workflows::Error>>;
}

struct Typed<In, Out, F> {
    workflow: Workflow<In, Out>,
    input: F,
}

impl<In, Out, F> Fire for Typed<In, Out, F>
where
    In: Value,
    Out: Clone + Send + Sync + 'static,
    F: Fn(&Tick) -> In + Send + Sync + 'static,
{
    fn workflow(&self) -> &str {
        self.workflow.name()
    }

    fn register(&self, app: &App) -> Result<(), gorgon_workflows::Error> {
        app.register(&self.workflow)
    }

    fn run(
        &self,
        app: App,
        tick: Tick,
    ) -> BoxFuture<'static, Result<TransactionState, gorgon_workflows::Error>> {
        let workflow = self.workflow.clone();
        let input = (self.input)(&tick);
        Box::pin(async move {
            let id = tick.transaction_id;
            let run = app
                .start(&workflow, input, RunOptions::transaction_id(id.clone()))
                .await?;
            if run.execution().has_finished() {
                return Ok(run.state());
            }
            // Waiting for an async step or a retry interval: the run is still this schedule's.
            Ok(app.wait_until_finished(&workflow, &id).await?.state())
        })
    }
}

/// A workflow started on a trigger. Build it with [`Schedule::every`] or [`Schedule::cron`].
#[derive(Clone)]
pub struct Schedule {
    pub(crate) name: Arc<str>,
    pub(crate) trigger: Trigger,
    pub(crate) concurrency: Concurrency,
    pub(crate) fire: Arc<dyn Fire>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("trigger", &self.trigger)
            .field("concurrency", &self.concurrency)
            .field("workflow", &self.fire.workflow())
            .finish()
    }
}

/// A schedule name is part of transaction ids and lock keys: non-empty, no `:`, no whitespace.
fn check_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "a schedule name cannot be empty"
    } else if name.contains(':') {
        "a schedule name cannot contain `:` (it is part of transaction ids)"
    } else if name.chars().any(char::is_whitespace) {
        "a schedule name cannot contain whitespace"
    } else {
        return Ok(());
    };
    Err(Error::InvalidSchedule {
        schedule: name.to_string(),
        reason: reason.to_string(),
    })
}

impl Schedule {
    /// A schedule firing `workflow` every `interval` (at least 1 ms), at the multiples of the
    /// interval since the Unix epoch; `input` gives the run's input for each tick.
    ///
    /// Errors: [`Error::InvalidSchedule`] for an empty name, a name with `:` or whitespace, or a
    /// zero interval.
    pub fn every<In, Out, F>(
        name: impl Into<String>,
        interval: Duration,
        workflow: &Workflow<In, Out>,
        input: F,
    ) -> Result<Self, Error>
    where
        In: Value,
        Out: Clone + Send + Sync + 'static,
        F: Fn(&Tick) -> In + Send + Sync + 'static,
    {
        let name = name.into();
        check_name(&name)?;
        if interval < Duration::from_millis(1) {
            return Err(Error::InvalidSchedule {
                schedule: name,
                reason: format!("the interval must be at least 1 ms, got {interval:?}"),
            });
        }
        Ok(Self::new(name, Trigger::Every(interval), workflow, input))
    }

    /// A schedule firing `workflow` on a cron expression (croner syntax: 5 fields, or 6/7 with
    /// seconds and year; `L`, `W`, `#`, `@hourly`; UTC); `input` gives the run's input for each
    /// tick.
    ///
    /// Errors: [`Error::InvalidCron`] naming the schedule and the expression when it does not
    /// parse; [`Error::InvalidSchedule`] for a bad name.
    pub fn cron<In, Out, F>(
        name: impl Into<String>,
        expression: &str,
        workflow: &Workflow<In, Out>,
        input: F,
    ) -> Result<Self, Error>
    where
        In: Value,
        Out: Clone + Send + Sync + 'static,
        F: Fn(&Tick) -> In + Send + Sync + 'static,
    {
        let name = name.into();
        check_name(&name)?;
        let cron = Cron::from_str(expression).map_err(|source| Error::InvalidCron {
            schedule: name.clone(),
            expression: expression.to_string(),
            source,
        })?;
        Ok(Self::new(
            name,
            Trigger::Cron(Box::new(cron)),
            workflow,
            input,
        ))
    }

    fn new<In, Out, F>(
        name: String,
        trigger: Trigger,
        workflow: &Workflow<In, Out>,
        input: F,
    ) -> Self
    where
        In: Value,
        Out: Clone + Send + Sync + 'static,
        F: Fn(&Tick) -> In + Send + Sync + 'static,
    {
        Schedule {
            name: name.into(),
            trigger,
            concurrency: Concurrency::default(),
            fire: Arc::new(Typed {
                workflow: workflow.clone(),
                input,
            }),
        }
    }

    /// The same schedule with this concurrency rule (default [`Concurrency::Forbid`]).
    pub fn with_concurrency(mut self, concurrency: Concurrency) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When it fires.
    pub fn trigger(&self) -> &Trigger {
        &self.trigger
    }

    /// Its concurrency rule.
    pub fn concurrency(&self) -> Concurrency {
        self.concurrency
    }

    /// The name of the workflow it starts.
    pub fn workflow(&self) -> &str {
        self.fire.workflow()
    }

    /// The transaction id of the run of the tick due at `at_ms`: `<schedule>-<at_ms>`.
    pub fn transaction_id(&self, at_ms: u64) -> String {
        Tick::new(self.name.clone(), at_ms).transaction_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expression: &str) -> Trigger {
        Trigger::Cron(Box::new(Cron::from_str(expression).unwrap()))
    }

    #[test]
    fn interval_ticks_are_multiples_of_the_interval() {
        let every = Trigger::Every(Duration::from_millis(150));
        assert_eq!(every.next_after(1_000), Some(1_050));
        assert_eq!(every.next_after(1_050), Some(1_200));
        assert_eq!(every.latest_at_or_before(1_049), Some(900));
        assert_eq!(every.latest_at_or_before(1_050), Some(1_050));
        assert_eq!(every.ticks_between(900, 1_500, 100), 3); // 1050, 1200, 1350
    }

    #[test]
    fn cron_ticks_follow_the_expression_in_utc() {
        // Every 5 seconds; 2026-01-01T00:00:07.250Z.
        let start = to_ms(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 7).unwrap()).unwrap() + 250;
        let five = cron("*/5 * * * * *");
        let next = five.next_after(start).unwrap();
        assert_eq!(next, start - 7_250 + 10_000);
        assert_eq!(five.next_after(next), Some(next + 5_000));
        assert_eq!(five.latest_at_or_before(start), Some(start - 2_250));
        assert_eq!(five.latest_at_or_before(next), Some(next));
        assert_eq!(five.ticks_between(next, next + 20_000, 100), 3);
        // Five fields: minutes. 03:00 every day.
        let nightly = cron("0 3 * * *");
        let at = nightly.next_after(start).unwrap();
        assert_eq!(
            to_utc(at).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap()
        );
    }
}
