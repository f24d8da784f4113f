//! Beginning a transaction and planning its next round of handler calls (Medusa's
//! `executeNext` up to calling the handlers).

use crate::flow::StepIndex;
use crate::log::Timer;
use crate::state::{StepState, StepStatus, TransactionState};

use super::effect::{Dispatch, EventKind, Next, Round};
use super::rules::past;
use super::{Machine, Transaction};

impl Machine<'_> {
    /// Begins a `not_started` transaction, or notes a resume of a running one. Returns `false`
    /// when the transaction has finished and nothing is to be done.
    pub(super) fn begin_or_resume(&mut self, now: u64) -> bool {
        if self.has_finished() {
            return false;
        }
        if self.fields.state == TransactionState::NotStarted {
            self.set_tx_state(TransactionState::Invoking);
            self.fields_mut().started_at = Some(now);
            if let Some(timeout) = self.flow().timeout_ms()
                && self.flow().has_async_steps()
            {
                self.arm(Timer::TransactionTimeout, past(now, timeout));
            }
            self.emit(EventKind::Begin, None);
        } else {
            self.emit(EventKind::Resume, None);
        }
        true
    }

    /// One iteration of Medusa's `executeNext` up to calling the handlers: the calls go into
    /// `round`.
    pub(super) fn next_round(&mut self, now: u64, round: &mut Round) -> Next {
        loop {
            round.calls.clear();
            if self.has_finished() {
                return Next::Finished;
            }
            let scan = self.check_all_steps(now, round);
            if self.check_transaction_timeout(&round.in_flight, now) {
                continue;
            }
            if scan.remaining == 0 {
                self.finalize();
                return Next::Finished;
            }
            let mut has_async = false;
            let mut has_sync = false;
            for &step in &round.steps {
                if self.prepare(step, now) {
                    let run = &self.steps[step];
                    let is_async = self.step_is_async(step);
                    has_async |= is_async;
                    has_sync |= !is_async;
                    round.calls.push(Dispatch {
                        step,
                        handler: run.handler_type(),
                        attempt: run.attempts,
                        is_async,
                    });
                }
            }
            for call in &round.calls {
                // An async step's timeout runs from its first start, across its retries (a
                // failure disarms it; Medusa arms it on the first attempt only, so a retried
                // async step could wait past its timeout for good).
                let run = &self.steps[call.step];
                if let Some(timeout) = self.flow().step_timeout_ms(call.step)
                    && run.timed_out_at.is_none()
                    && !run.compensating
                    && self.flow().step(call.step).options.is_async()
                    && !self
                        .timers
                        .iter()
                        .any(|(t, _)| *t == Timer::StepTimeout(call.step))
                {
                    let started = run.started_at.unwrap_or(now);
                    self.arm(Timer::StepTimeout(call.step), past(started, timeout));
                }
            }
            for call in &round.calls {
                self.emit(EventKind::StepBegin, Some(call.step));
            }
            if !round.calls.is_empty() && !self.fields.has_waiting_steps {
                // Medusa rescans before each call to refresh its flags; the steps just prepared
                // wait for their handlers, which is all that rescan can change.
                self.fields_mut().has_waiting_steps = true;
            }
            let continue_after = !round.steps.is_empty() && (!has_async || has_sync);
            if round.calls.is_empty() && continue_after {
                // Only `noCompensation` steps this round: nothing to call, scan again.
                continue;
            }
            round.continue_after = continue_after;
            return Next::Run;
        }
    }

    pub(super) fn finalize(&mut self) {
        if self.flow().timeout_ms().is_some() && self.flow().has_async_steps() {
            self.disarm(Timer::TransactionTimeout);
        }
        self.emit(EventKind::Finish, None);
    }
}

impl Transaction {
    pub(super) fn prepare(&mut self, step: StepIndex, now: u64) -> bool {
        let tx_state = self.fields.state;
        let no_compensation = self.flow().step(step).options.no_compensation();
        let run = self.run_mut(step);
        run.last_attempt = Some(now);
        run.attempts = run.attempts.saturating_add(1);
        if run.side().state == StepState::NotStarted {
            if run.started_at.is_none() {
                run.started_at = Some(now);
            }
            if run.compensating {
                run.compensate.state = StepState::Compensating;
                if no_compensation {
                    run.compensate.state = StepState::Reverted;
                    if let Some(index) = self.compensate_index.as_mut() {
                        index.note(&self.shared.flow, &self.steps, step);
                    }
                    return false;
                }
            } else if tx_state == TransactionState::Invoking {
                run.invoke.state = StepState::Invoking;
            }
        }
        run.side_mut().status = StepStatus::Waiting;
        true
    }
}
