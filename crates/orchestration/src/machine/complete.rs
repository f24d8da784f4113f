//! Recording what happened to a step: a handler's outcome, an outside completion, a retry, a
//! cancel, a timeout.

use std::sync::Arc;

use crate::data::Data;
use crate::error::{Error, Result};
use crate::flow::StepIndex;
use crate::state::{HandlerType, StepState, StepStatus, TransactionState};

use super::effect::{Dispatch, EventKind};
use super::outcome::StepOutcome;
use super::{Machine, Transaction};
use crate::log::StepError;

impl Machine<'_> {
    /// Records the outcome of a handler the engine called for `dispatch`. `round` holds the steps
    /// of the round it belongs to (a transaction timeout found now applies to all of them).
    pub(super) fn complete(
        &mut self,
        dispatch: Dispatch,
        outcome: StepOutcome,
        round: &[StepIndex],
        now: u64,
    ) {
        let step = dispatch.step;
        if dispatch.is_async {
            return self.complete_async(step, outcome, round, now);
        }
        self.handle_expiration(step, round, now);
        match outcome {
            StepOutcome::Skip => self.skip_step(step),
            StepOutcome::Success(response) => self.handle_success(step, response, now),
            StepOutcome::Failure {
                error,
                permanent,
                response,
            } => self.handle_failure(step, error, permanent, response, now),
        }
    }

    pub(super) fn complete_async(
        &mut self,
        step: StepIndex,
        outcome: StepOutcome,
        round: &[StepIndex],
        now: u64,
    ) {
        match outcome {
            StepOutcome::Skip => {
                self.skip_step(step);
                self.schedule_retry(step, 0, now);
            }
            StepOutcome::Success(response) => {
                let options = &self.flow().step(step).options;
                if !options.background_execution() || options.nested() {
                    self.emit(EventKind::StepAwaiting, Some(step));
                    return;
                }
                self.handle_expiration(step, round, now);
                self.handle_success(step, response, now);
            }
            StepOutcome::Failure {
                error,
                permanent,
                response,
            } => self.handle_failure(step, error, permanent, response, now),
        }
    }

    /// `set_step_success` on a waiting (async) step.
    pub(super) fn register_success(
        &mut self,
        step: StepIndex,
        handler: HandlerType,
        response: Option<Data>,
    ) -> Result<()> {
        self.check_waiting(step, handler, "set step success")?;
        self.emit(EventKind::Resume, None);
        self.set_step_success(step, response);
        Ok(())
    }

    /// `set_step_failure` on a waiting (async) step; `force_permanent` skips the retries.
    pub(super) fn register_failure(
        &mut self,
        step: StepIndex,
        handler: HandlerType,
        error: StepError,
        force_permanent: bool,
        now: u64,
    ) -> Result<()> {
        self.check_waiting(step, handler, "set step failure")?;
        self.emit(EventKind::Resume, None);
        let max_retries = if force_permanent {
            0
        } else {
            self.flow().step(step).options.max_retries()
        };
        self.set_step_failure(step, Some(error), max_retries, None, now);
        Ok(())
    }

    /// `retry_step`: invoke a waiting step again on the next round.
    pub(super) fn retry_step(
        &mut self,
        step: StepIndex,
        handler: HandlerType,
        now: u64,
    ) -> Result<()> {
        self.check_waiting(step, handler, "retry step")?;
        self.emit(EventKind::Resume, None);
        let run = self.run_mut(step);
        if run.retry_rescheduled_at.is_none() {
            run.has_scheduled_retry = true;
            run.retry_rescheduled_at = Some(now);
        }
        self.fields_mut().has_waiting_steps = true;
        self.schedule_retry(step, 0, now);
        Ok(())
    }

    pub(super) fn handle_expiration(&mut self, step: StepIndex, round: &[StepIndex], now: u64) {
        if self.transaction_expired(now) || self.step_expired(step, now) {
            self.check_step_timeout(step, now);
            if round.contains(&step) {
                self.check_transaction_timeout(round, now);
            } else {
                self.check_transaction_timeout(&[step], now);
            }
        }
    }

    pub(super) fn set_step_timeout(
        &mut self,
        step: StepIndex,
        error: StepError,
        transaction_timeout: bool,
        now: u64,
    ) {
        let state = self.steps[step].side().state;
        if matches!(
            state,
            StepState::Timeout | StepState::Done | StepState::Reverted
        ) {
            return;
        }
        if self.change_state(step, StepState::Timeout).is_err() {
            // Medusa throws here (a compensating step cannot time out); ignoring keeps the run going.
            tracing::debug!(action = self.action(step), %state, "timeout ignored for a step that cannot time out");
            return;
        }
        self.add_error(step, HandlerType::Invoke, error);
        self.set_step_failure(step, None, 0, Some(transaction_timeout), now);
    }

    /// Medusa's `setStepFailure`. `timeout` is `Some(is_transaction_timeout)` for timeouts.
    pub(super) fn set_step_failure(
        &mut self,
        step: StepIndex,
        error: Option<StepError>,
        max_retries: u32,
        timeout: Option<bool>,
        now: u64,
    ) -> bool {
        let is_timeout = timeout.is_some();
        let run = self.run_mut(step);
        run.failures = run.failures.saturating_add(1);
        if !is_timeout && self.steps[step].side().status != StepStatus::PermanentFailure {
            self.change_status(step, StepStatus::TemporaryFailure);
        }
        let has_timed_out = self.steps[step].side().state == StepState::Timeout;
        let mut stop_execution = false;
        if self.steps[step].failures > max_retries || has_timed_out {
            if !has_timed_out {
                // INVOKING/COMPENSATING -> FAILED is always allowed.
                let _ = self.change_state(step, StepState::Failed);
            }
            self.change_status(step, StepStatus::PermanentFailure);
            let handler = self.steps[step].handler_type();
            if !is_timeout {
                let error = error.unwrap_or_else(|| StepError::new("Unknown error"));
                self.add_error(step, handler, error);
            }
            if !self.steps[step].compensating {
                let options = &self.shared.flow.step(step).options;
                let is_transaction_timeout = timeout == Some(true);
                let continue_on_failure = (options.continue_on_permanent_failure()
                    || options.skips_on_permanent_failure())
                    && !is_transaction_timeout;
                if continue_on_failure {
                    if options.skips_on_permanent_failure() {
                        self.skip_descendants(step);
                    }
                } else {
                    self.set_tx_state(TransactionState::WaitingToCompensate);
                }
            }
        } else if self.steps[step].side().status == StepStatus::TemporaryFailure
            && !self.flow().step(step).options.auto_retry()
            && self.step_is_async(step)
        {
            self.run_mut(step).temporary_failed_at = Some(now);
            stop_execution = true;
        }
        self.clear_step_timers(step);
        if !stop_execution {
            let kind = if self.steps[step].compensating {
                EventKind::CompensateStepFailure
            } else {
                EventKind::StepFailure
            };
            self.emit(kind, Some(step));
        }
        stop_execution
    }

    pub(super) fn set_step_success(&mut self, step: StepIndex, response: Option<Data>) {
        let timed_out = self.steps[step].side().state == StepState::Timeout;
        let handler = self.steps[step].handler_type();
        if self.flow().step(step).options.save_response() {
            self.add_response(step, handler, response);
        }
        if !timed_out {
            self.change_status(step, StepStatus::Ok);
        }
        if self.steps[step].compensating {
            let _ = self.change_state(step, StepState::Reverted);
        } else if !timed_out {
            let _ = self.change_state(step, StepState::Done);
        }
        self.clear_step_timers(step);
        let kind = if self.steps[step].compensating {
            EventKind::CompensateStepSuccess
        } else {
            EventKind::StepSuccess
        };
        self.emit(kind, Some(step));
    }

    pub(super) fn skip_step(&mut self, step: StepIndex) {
        let run = &self.steps[step];
        if run.compensating {
            // A compensation cannot be skipped; asking for it counts as done.
            return self.set_step_success(step, None);
        }
        if run.side().state != StepState::Timeout {
            self.change_status(step, StepStatus::Ok);
            let _ = self.change_state(step, StepState::Skipped);
        }
        self.clear_step_timers(step);
        self.emit(EventKind::StepSkipped, Some(step));
    }

    pub(super) fn handle_success(&mut self, step: StepIndex, response: Option<Data>, now: u64) {
        let is_async = self.step_is_async(step);
        // Medusa saves a sync step's response here and again in setStepSuccess; once is enough.
        self.set_step_success(step, response);
        if is_async {
            self.schedule_retry(step, 0, now);
        }
    }

    pub(super) fn handle_failure(
        &mut self,
        step: StepIndex,
        error: StepError,
        permanent: bool,
        response: Option<Data>,
        now: u64,
    ) {
        let is_async = self.step_is_async(step);
        if response.is_some() && self.flow().step(step).options.save_response() {
            let handler = self.steps[step].handler_type();
            self.add_response(step, handler, response);
        }
        let max_retries = if permanent {
            0
        } else {
            self.flow().step(step).options.max_retries()
        };
        let stop_execution = self.set_step_failure(step, Some(error), max_retries, None, now);
        if is_async && !stop_execution {
            self.schedule_retry(step, 0, now);
        }
    }
}

impl Transaction {
    /// Cancels a running or finished transaction: everything done so far is compensated.
    pub fn cancel(&mut self, now: u64) -> Result<()> {
        match self.fields.state {
            TransactionState::Failed
            | TransactionState::Compensating
            | TransactionState::WaitingToCompensate => {
                return Err(Error::CannotCancel {
                    transaction: self.shared.id.to_string(),
                    state: self.fields.state,
                });
            }
            _ => {}
        }
        self.set_tx_state(TransactionState::WaitingToCompensate);
        self.fields_mut().cancelled_at = Some(now);
        self.drop_index();
        Ok(())
    }

    pub(super) fn check_waiting(
        &self,
        step: StepIndex,
        handler: HandlerType,
        operation: &'static str,
    ) -> Result<()> {
        let run = &self.steps[step];
        if run.handler_type() != handler {
            return Err(Error::WrongHandlerType {
                action: self.action(step).to_string(),
                handler,
            });
        }
        if run.side().status != StepStatus::Waiting {
            return Err(Error::StepNotWaiting {
                operation,
                action: self.action(step).to_string(),
                status: run.side().status,
            });
        }
        Ok(())
    }

    pub(super) fn skip_descendants(&mut self, step: StepIndex) {
        // The transaction's own `Arc` (not the flow's, which every running transaction of the
        // workflow shares: cloning that one makes the cores fight over its count).
        let shared = Arc::clone(&self.shared);
        let flow = &shared.flow;
        let until = flow.step(step).options.skip_until();
        let mut queue: std::collections::VecDeque<StepIndex> =
            flow.step(step).next.iter().copied().collect();
        while let Some(current) = queue.pop_front() {
            if until.is_some_and(|u| flow.step(current).action == u) {
                break;
            }
            if self
                .change_state(current, StepState::SkippedFailure)
                .is_err()
            {
                // A `noWait` descendant may already run; it is left to finish.
                tracing::debug!(
                    action = flow.step(current).action,
                    "descendant already started, not skipped"
                );
            }
            queue.extend(flow.step(current).next.iter().copied());
        }
    }
}
