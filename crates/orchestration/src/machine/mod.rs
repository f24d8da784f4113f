//! The transaction state machine: pure decisions, no I/O, no clock of its own.
//!
//! A [`Transaction`] is fed events (begin, "this handler returned", "set step success", cancel,
//! "a timer fired") together with the current time, and changes its state the way Medusa's
//! `TransactionOrchestrator` does. What it asks for in return goes into buffers the caller owns:
//! the handler calls of the next [`Round`], and [`Actions`] (records to append, timers to arm or
//! disarm, events to publish). The [`Engine`](crate::Engine) performs them.
//!
//! ```text
//!        ┌──────────── next_round(now) ─────────────┐
//!        │  scan steps (invoke: depth ascending,      │
//!        │  compensate: depth descending), detect     │
//!        │  timeouts, switch INVOKING → W_T_C →       │
//!        │  COMPENSATING → DONE|REVERTED|FAILED       │
//!        └───────┬────────────────────────┬───────────┘
//!   Next::Run (calls in the Round)     Next::Finished
//!        │ engine calls the handlers (sync ones concurrently, async ones fired)
//!        ▼
//!   complete(step, outcome, now) ── success / failure / skip / expiration ──► next_round …
//! ```

//! The files: `round` (begin, plan a round), `scan` (Medusa's scan over the indexed frontier),
//! `complete` (outcomes, outside completions, cancel), `rules` (bookkeeping and Medusa's
//! predicates), `index` (the frontier indexes), `effect` (what the machine asks for),
//! `buffers` (the thread-local pool), `outcome` and `shared` (what handlers see and return).
//! The durable log format is [`crate::log`]. Medusa's rules scan every step; the indexes make a
//! scan cost the frontier instead, and are checked against a full scan in debug builds.

mod buffers;
mod complete;
mod effect;
mod index;
mod outcome;
mod round;
mod rules;
mod scan;
mod shared;

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

use crate::data::Data;
use crate::error::{Error, Result};
use crate::flow::{Flow, StepIndex};
use crate::state::{HandlerType, SideState, StepRun, StepState, StepStatus, TransactionState};

pub use crate::log::{Record, StepError, Timer, TransactionError, TransactionFields};
use buffers::{Buffers, refill};
pub use effect::{Actions, Dispatch, EventKind, Next, Round, TimerAction};
use index::{CompensateIndex, InvokeIndex};
pub use outcome::StepOutcome;
pub use shared::{Responses, TransactionShared};

/// One transaction: the flow's steps with their states, and the machine that advances them.
pub struct Transaction {
    shared: Arc<TransactionShared>,
    fields: TransactionFields,
    steps: Vec<StepRun>,
    errors: Vec<TransactionError>,
    /// The steps changed since the last batch ended, as flags and in order of change.
    dirty: Vec<bool>,
    dirty_list: Vec<StepIndex>,
    /// The fields as the records handed out so far leave them (replay's view of the log).
    recorded: TransactionFields,
    /// The invoke scan's index (boxed: inline, the indexes made up half of a transaction,
    /// which is moved into the engine's cell).
    index: Option<Box<InvokeIndex>>,
    /// The compensation scan's index, built at its first scan.
    compensate_index: Option<Box<CompensateIndex>>,
    timers: Vec<(Timer, u64)>,
}

/// A transaction being advanced, with the caller's collector for what it asks for: the rules
/// that queue records, timers and events are written on this view.
struct Machine<'a> {
    tx: &'a mut Transaction,
    out: &'a mut Actions,
}

impl Deref for Machine<'_> {
    type Target = Transaction;
    fn deref(&self) -> &Transaction {
        self.tx
    }
}

impl DerefMut for Machine<'_> {
    fn deref_mut(&mut self) -> &mut Transaction {
        self.tx
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("workflow", &self.shared.workflow)
            .field("id", &self.shared.id)
            .field("state", &self.fields.state)
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// A new transaction, `not_started`.
    pub fn new(flow: Arc<Flow>, id: Arc<str>, run_id: Arc<str>, payload: Data) -> Self {
        let len = flow.steps().len();
        let workflow = flow.workflow_arc().clone();
        let Buffers {
            mut steps,
            mut dirty,
            dirty_list,
        } = Buffers::take();
        refill(&mut steps, len, StepRun::default());
        refill(&mut dirty, len, false);
        Transaction {
            shared: Arc::new(TransactionShared {
                responses: Responses::new(len),
                flow,
                workflow,
                id,
                run_id,
                payload,
                handler_data: OnceLock::new(),
            }),
            fields: TransactionFields::NOT_STARTED,
            recorded: TransactionFields::NOT_STARTED,
            steps,
            errors: Vec::new(),
            dirty,
            dirty_list,
            index: None,
            compensate_index: None,
            timers: Vec::new(),
        }
    }

    /// Rebuilds a transaction from its stored records (the inverse of the batches it handed out).
    pub fn replay(
        flow: Arc<Flow>,
        id: Arc<str>,
        run_id: Arc<str>,
        payload: Data,
        records: &[Record],
    ) -> Result<Self> {
        let mut tx = Transaction::new(flow, id, run_id, payload);
        for record in records {
            match record {
                Record::Transaction(fields) => {
                    tx.fields = *fields;
                    tx.recorded = *fields;
                }
                Record::Step { step, run } => {
                    let run_slot =
                        tx.steps
                            .get_mut(*step)
                            .filter(|_| *step > 0)
                            .ok_or_else(|| Error::Replay {
                                workflow: tx.shared.workflow.to_string(),
                                transaction: tx.shared.id.to_string(),
                                reason: format!("step index {step} is not in the flow"),
                            })?;
                    *run_slot = *run;
                }
                Record::Response {
                    step,
                    handler,
                    data,
                } => {
                    if *step >= tx.steps.len() {
                        return Err(Error::Replay {
                            workflow: tx.shared.workflow.to_string(),
                            transaction: tx.shared.id.to_string(),
                            reason: format!("response of step index {step} is not in the flow"),
                        });
                    }
                    tx.shared.responses.set(*step, *handler, data.clone());
                }
                Record::Error(error) => tx.errors.push(error.clone()),
                Record::Timer { timer, at } => {
                    tx.set_timer(*timer, *at);
                }
            }
        }
        Ok(tx)
    }

    /// What the transaction shares with its handler calls.
    pub fn shared(&self) -> &Arc<TransactionShared> {
        &self.shared
    }
    /// The compiled flow.
    pub fn flow(&self) -> &Flow {
        &self.shared.flow
    }
    /// The transaction state.
    pub fn state(&self) -> TransactionState {
        self.fields.state
    }
    /// The transaction-level fields.
    pub fn fields(&self) -> &TransactionFields {
        &self.fields
    }
    /// Whether the transaction is `done`, `reverted` or `failed`.
    pub fn has_finished(&self) -> bool {
        self.fields.state.is_finished()
    }
    /// The run of one step.
    pub fn step(&self, step: StepIndex) -> &StepRun {
        &self.steps[step]
    }
    /// The runs of every step (index 0, the root, is unused).
    pub fn steps(&self) -> &[StepRun] {
        &self.steps
    }
    /// The errors recorded so far.
    pub fn errors(&self) -> &[TransactionError] {
        &self.errors
    }
    /// Begins a `not_started` transaction, or notes a resume of a running one. Returns `false`
    /// when the transaction has finished and nothing is to be done.
    pub fn begin_or_resume(&mut self, now: u64, out: &mut Actions) -> bool {
        Machine { tx: self, out }.begin_or_resume(now)
    }

    /// Plans the next round at `now`: its handler calls go into `round`, what the planning
    /// changed into `out`.
    pub fn next_round(&mut self, now: u64, round: &mut Round, out: &mut Actions) -> Next {
        Machine { tx: self, out }.next_round(now, round)
    }

    /// Records the outcome of a handler the engine called for `dispatch`. `round` holds the
    /// steps of the round it belongs to (a transaction timeout found now applies to all of
    /// them).
    pub fn complete(
        &mut self,
        dispatch: Dispatch,
        outcome: StepOutcome,
        round: &[StepIndex],
        now: u64,
        out: &mut Actions,
    ) {
        Machine { tx: self, out }.complete(dispatch, outcome, round, now)
    }

    /// `set_step_success` on a waiting (async) step.
    pub fn register_success(
        &mut self,
        step: StepIndex,
        handler: HandlerType,
        response: Option<Data>,
        out: &mut Actions,
    ) -> Result<()> {
        Machine { tx: self, out }.register_success(step, handler, response)
    }

    /// `set_step_failure` on a waiting (async) step; `force_permanent` skips the retries.
    pub fn register_failure(
        &mut self,
        step: StepIndex,
        handler: HandlerType,
        error: StepError,
        force_permanent: bool,
        now: u64,
        out: &mut Actions,
    ) -> Result<()> {
        Machine { tx: self, out }.register_failure(step, handler, error, force_permanent, now)
    }

    /// `retry_step`: invoke a waiting step again on the next round.
    pub fn retry_step(
        &mut self,
        step: StepIndex,
        handler: HandlerType,
        now: u64,
        out: &mut Actions,
    ) -> Result<()> {
        Machine { tx: self, out }.retry_step(step, handler, now)
    }

    /// Ends a batch: each step changed since the last batch goes into `out.records` once, in
    /// its last state, then the transaction's fields if they changed. A batch is appended
    /// whole and a `Step` or `Transaction` record carries every field, so the last state of
    /// each is all a batch needs (a step boundary clears `has_waiting_steps` and the next
    /// round sets it again: no fields record).
    pub fn end_batch(&mut self, out: &mut Actions) {
        for step in self.dirty_list.drain(..) {
            self.dirty[step] = false;
            out.records.push(Record::Step {
                step,
                run: self.steps[step],
            });
        }
        if self.fields != self.recorded {
            self.recorded = self.fields;
            out.records.push(Record::Transaction(self.fields));
        }
    }

    /// The timers armed now, with when each fires (from the log after a replay).
    pub fn timers(&self) -> &[(Timer, u64)] {
        &self.timers
    }

    /// When the earliest armed timer fires: when the transaction wants to be advanced again
    /// if nothing else happens.
    pub fn wake_at(&self) -> Option<u64> {
        self.timers.iter().map(|(_, at)| *at).min()
    }

    /// Notes that a timer fired at `now`, so that it is no longer armed (the change is recorded
    /// with the next batch). A timer that fires before its time (a clock that
    /// stepped back, a sleep that woke early) stays armed and is armed again: a timer the
    /// machine relies on is never dropped unfired. Returns whether the timer was due.
    pub fn timer_fired(&mut self, timer: Timer, now: u64, out: &mut Actions) -> bool {
        match self.timers.iter().find(|(t, _)| *t == timer) {
            Some(&(_, at)) if now < at => {
                out.timers.push(TimerAction::Arm(timer, at));
                false
            }
            Some(_) => {
                self.set_timer(timer, None);
                out.records.push(Record::Timer { timer, at: None });
                true
            }
            None => false,
        }
    }

    /// Why this transaction, unfinished, could stall for good, if it could: a deadline it has
    /// (a step timeout, the transaction timeout, a scheduled retry) without its timer armed, or
    /// nothing to move it at all (no step waiting for a handler or an outside completion, no
    /// timer, no step waiting for a resume). `None` for a finished transaction.
    ///
    /// The invariant the engine keeps whenever it lets a transaction go (checked in debug
    /// builds, and by the property tests): an unfinished transaction always has a running
    /// handler, an armed timer, or waits for an outside completion (an async step, a resume)
    /// with no timeout configured.
    pub fn stall(&self) -> Option<String> {
        if self.has_finished() {
            return None;
        }
        let armed = |timer: Timer| self.timers.iter().any(|(t, _)| *t == timer);
        let flow = self.flow();
        let mut moving = !self.timers.is_empty();
        for (step, run) in self.steps.iter().enumerate().skip(1) {
            let side = run.side();
            let action = &flow.step(step).action;
            // A retry the scan scheduled (an interval after a temporary failure, an awaiting
            // retry) happens only when its timer fires.
            let retry_pending = run.retry_rescheduled_at.is_some()
                && match side.status {
                    StepStatus::TemporaryFailure => run.temporary_failed_at.is_none(),
                    StepStatus::Waiting => {
                        flow.step(step)
                            .options
                            .retry_interval_awaiting_ms()
                            .is_some()
                            && self.within_awaiting_cap(step)
                    }
                    _ => false,
                };
            if retry_pending && !armed(Timer::Retry(step)) {
                return Some(format!(
                    "step `{action}` has a retry scheduled and no retry timer"
                ));
            }
            if side.status == StepStatus::Waiting {
                moving = true;
                if !run.compensating
                    && run.timed_out_at.is_none()
                    && flow.step_timeout_ms(step).is_some()
                    && flow.step(step).options.is_async()
                    && !armed(Timer::StepTimeout(step))
                {
                    return Some(format!(
                        "step `{action}` waits with a timeout and no timeout timer"
                    ));
                }
            }
            if side.status == StepStatus::TemporaryFailure && run.temporary_failed_at.is_some() {
                moving = true; // waits for a resume
            }
        }
        if flow.timeout_ms().is_some()
            && flow.has_async_steps()
            && self.fields.state == TransactionState::Invoking
            && self.fields.started_at.is_some()
            && !armed(Timer::TransactionTimeout)
        {
            return Some("the transaction has a timeout and no timeout timer".to_string());
        }
        if moving {
            None
        } else {
            Some(format!(
                "the transaction is {} with no step waiting, no timer and no resume awaited",
                self.fields.state
            ))
        }
    }

    /// Prepares a transaction taken over from a worker that died, or whose advance was cut
    /// short: every synchronous handler that was running then is made ready to be called again,
    /// with the same idempotency key, and with `background` every `backgroundExecution` async
    /// one too (whose result was the handler's own: leave them when they still run in this
    /// process). Async steps waiting for an outside response keep waiting. Returns how many
    /// were reset.
    pub fn recover_in_flight(&mut self, background: bool) -> usize {
        let mut reset = 0;
        for step in 1..self.steps.len() {
            let run = &self.steps[step];
            if run.side().status != StepStatus::Waiting {
                continue;
            }
            let options = &self.shared.flow.step(step).options;
            let is_async = options.is_async_side(run.handler_type());
            let awaits_outside = is_async && (!options.background_execution() || options.nested());
            if awaits_outside || (is_async && !background) {
                continue;
            }
            let run = self.run_mut(step);
            let side = run.side_mut();
            side.status = StepStatus::Idle;
            side.state = StepState::NotStarted;
            reset += 1;
        }
        if reset > 0 {
            self.drop_index();
            self.drop_compensate_index();
        }
        reset
    }
}

/// The side of a step as seen from outside: a convenience for observers.
pub fn side_of(run: &StepRun, handler: HandlerType) -> SideState {
    match handler {
        HandlerType::Invoke => run.invoke,
        HandlerType::Compensate => run.compensate,
    }
}

#[cfg(test)]
mod counter_tests {
    use std::sync::Arc;

    use super::{Actions, Record, Round, Transaction, TransactionFields};
    use crate::data::Data;
    use crate::flow::{Flow, FlowDefinition, WorkflowOptions};
    use crate::state::{StepRun, StepState, StepStatus, TransactionState};

    /// A record edited by hand to the largest attempt and failure counts: preparing the step
    /// again saturates instead of overflowing.
    #[test]
    fn counts_read_from_a_record_saturate() {
        let definition =
            FlowDefinition::from_json(r#"{"next":{"action":"a","maxRetries":5}}"#).unwrap();
        let flow = Arc::new(Flow::compile("w", definition, WorkflowOptions::default()).unwrap());
        let mut run = StepRun {
            attempts: u32::MAX,
            failures: u32::MAX,
            ..StepRun::default()
        };
        run.invoke.state = StepState::Invoking;
        run.invoke.status = StepStatus::TemporaryFailure;
        let records = [
            Record::Transaction(TransactionFields {
                state: TransactionState::Invoking,
                started_at: Some(1),
                ..TransactionFields::NOT_STARTED
            }),
            Record::Step { step: 1, run },
        ];
        let mut tx = Transaction::replay(flow, "t".into(), "r".into(), Data::null(), &records)
            .expect("replays");
        tx.next_round(10, &mut Round::default(), &mut Actions::default());
        assert_eq!(tx.step(1).attempts, u32::MAX);
    }
}
