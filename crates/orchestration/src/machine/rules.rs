//! Bookkeeping and Medusa's predicates (`TransactionStep`, `canMove*`): which step may be
//! invoked, compensated, retried or continued, and when a deadline has passed.

use crate::data::Data;
use crate::error::{Error, Result};
use crate::flow::StepIndex;
use crate::log::{Record, Timer, TransactionFields};
use crate::state::{HandlerType, StepRun, StepState, StepStatus, TransactionState};

use super::effect::{EventKind, TimerAction};
use super::index::is_forward_complete;
use super::{Machine, Transaction};
use crate::log::{StepError, TransactionError};

/// The first millisecond at which `now > start + duration` holds: when a deadline's timer fires.
pub(super) fn past(start: u64, duration: u64) -> u64 {
    start.saturating_add(duration).saturating_add(1)
}

impl Transaction {
    pub(super) fn run_mut(&mut self, step: StepIndex) -> &mut StepRun {
        if !self.dirty[step] {
            self.dirty[step] = true;
            self.dirty_list.push(step);
        }
        &mut self.steps[step]
    }

    pub(super) fn fields_mut(&mut self) -> &mut TransactionFields {
        &mut self.fields
    }

    pub(super) fn set_tx_state(&mut self, state: TransactionState) {
        self.fields_mut().state = state;
    }

    pub(super) fn set_timer(&mut self, timer: Timer, at: Option<u64>) -> bool {
        let slot = self.timers.iter().position(|(t, _)| *t == timer);
        match (slot, at) {
            (Some(i), Some(at)) => self.timers[i].1 = at,
            (None, Some(at)) => self.timers.push((timer, at)),
            (Some(i), None) => {
                self.timers.swap_remove(i);
            }
            (None, None) => return false,
        }
        true
    }

    pub(super) fn change_state(&mut self, step: StepIndex, to: StepState) -> Result<()> {
        let from = self.steps[step].side().state;
        if !from.can_become(to) {
            return Err(Error::InvalidTransition {
                action: self.action(step).to_string(),
                from,
                to,
            });
        }
        self.run_mut(step).side_mut().state = to;
        if !self.steps[step].compensating
            && is_forward_complete(to)
            && let Some(index) = self.index.as_mut()
        {
            index.note_forward(&self.shared.flow, &self.steps, step);
            if to == StepState::Done && self.steps[step].invoke.status == StepStatus::Ok {
                index.settle_done(&self.shared.flow, step);
            }
        } else if self.steps[step].compensating
            && let Some(index) = self.compensate_index.as_mut()
        {
            index.note(&self.shared.flow, &self.steps, step);
        }
        Ok(())
    }

    pub(super) fn change_status(&mut self, step: StepIndex, to: StepStatus) {
        debug_assert!(
            self.steps[step].side().status.can_become(to),
            "status {} -> {to} of {}",
            self.steps[step].side().status,
            self.action(step)
        );
        self.run_mut(step).side_mut().status = to;
    }

    pub(super) fn action(&self, step: StepIndex) -> &str {
        &self.shared.flow.step(step).action
    }

    pub(super) fn step_is_async(&self, step: StepIndex) -> bool {
        self.flow()
            .step(step)
            .options
            .is_async_side(self.steps[step].handler_type())
    }

    pub(super) fn can_move_forward(&self, previous: StepIndex) -> bool {
        let flow = self.flow();
        if flow.step(previous).options.no_wait() {
            return true;
        }
        let parent = flow.step(previous).parent.expect("a step has a parent");
        flow.step(parent).next.iter().all(|&sibling| {
            matches!(
                self.steps[sibling].invoke.state,
                StepState::Done
                    | StepState::Failed
                    | StepState::Timeout
                    | StepState::Skipped
                    | StepState::SkippedFailure
            )
        })
    }

    pub(super) fn can_move_backward(&self, step: StepIndex) -> bool {
        self.flow().step(step).next.iter().all(|&child| {
            matches!(
                self.steps[child].compensate.state,
                StepState::Done
                    | StepState::Reverted
                    | StepState::Failed
                    | StepState::Dormant
                    | StepState::Skipped
            )
        })
    }

    pub(super) fn can_continue(&self, step: StepIndex) -> bool {
        if self.fields.state == TransactionState::Compensating {
            return self.can_move_backward(step);
        }
        match self.flow().step(step).parent {
            Some(0) | None => true,
            Some(parent) => self.can_move_forward(parent),
        }
    }

    pub(super) fn can_invoke(&self, step: StepIndex) -> bool {
        let run = &self.steps[step];
        let side = run.side();
        (!run.compensating
            && side.state == StepState::NotStarted
            && self.fields.state == TransactionState::Invoking)
            || (side.status == StepStatus::TemporaryFailure && run.temporary_failed_at.is_none())
    }

    pub(super) fn can_compensate(&self, step: StepIndex) -> bool {
        let run = &self.steps[step];
        run.compensating
            && run.compensate.state == StepState::NotStarted
            && self.fields.state == TransactionState::Compensating
    }

    pub(super) fn can_cancel(&self, step: StepIndex) -> bool {
        let run = &self.steps[step];
        !run.compensating
            && matches!(
                run.invoke.status,
                StepStatus::Waiting | StepStatus::TemporaryFailure
            )
    }

    pub(super) fn can_retry(&self, step: StepIndex, now: u64) -> bool {
        match self.flow().step(step).options.retry_interval_ms() {
            None => true,
            Some(interval) => self.steps[step]
                .last_attempt
                .is_some_and(|last| now.saturating_sub(last) >= interval),
        }
    }

    pub(super) fn can_retry_awaiting(&self, step: StepIndex, now: u64) -> bool {
        let options = &self.flow().step(step).options;
        let run = &self.steps[step];
        let Some(interval) = options.retry_interval_awaiting_ms() else {
            return false;
        };
        run.last_attempt
            .is_some_and(|last| now.saturating_sub(last) > interval)
            && self.within_awaiting_cap(step)
    }

    /// Whether a waiting step may still be invoked again by its awaiting retries.
    pub(super) fn within_awaiting_cap(&self, step: StepIndex) -> bool {
        let run = &self.steps[step];
        match self.flow().step(step).options.max_awaiting_retries {
            None => true,
            Some(max) if run.compensating => run.attempts < max.saturating_mul(2),
            Some(max) => run.attempts < max,
        }
    }

    pub(super) fn step_expired(&self, step: StepIndex, now: u64) -> bool {
        let run = &self.steps[step];
        match (self.flow().step_timeout_ms(step), run.started_at) {
            (Some(timeout), Some(started)) => {
                !run.compensating && now > started.saturating_add(timeout)
            }
            _ => false,
        }
    }

    pub(super) fn transaction_expired(&self, now: u64) -> bool {
        match (self.flow().timeout_ms(), self.fields.started_at) {
            (Some(timeout), Some(started)) => {
                self.fields.state != TransactionState::Compensating
                    && now > started.saturating_add(timeout)
            }
            _ => false,
        }
    }
}

impl Machine<'_> {
    pub(super) fn emit(&mut self, kind: EventKind, step: Option<StepIndex>) {
        if self.out.events_wanted {
            self.out.events.push((kind, step));
        }
    }

    /// Arms a timer: the engine's effect, and a record so that it survives the process.
    pub(super) fn arm(&mut self, timer: Timer, at: u64) {
        self.set_timer(timer, Some(at));
        self.out.records.push(Record::Timer {
            timer,
            at: Some(at),
        });
        self.out.timers.push(TimerAction::Arm(timer, at));
    }

    pub(super) fn disarm(&mut self, timer: Timer) {
        if self.set_timer(timer, None) {
            self.out.records.push(Record::Timer { timer, at: None });
        }
        self.out.timers.push(TimerAction::Disarm(timer));
    }

    pub(super) fn add_response(
        &mut self,
        step: StepIndex,
        handler: HandlerType,
        data: Option<Data>,
    ) {
        self.shared.responses.set(step, handler, data.clone());
        self.out.records.push(Record::Response {
            step,
            handler,
            data,
        });
    }

    pub(super) fn add_error(
        &mut self,
        step: StepIndex,
        handler_type: HandlerType,
        error: StepError,
    ) {
        let error = TransactionError {
            action: self.action(step).to_string(),
            handler_type,
            error,
        };
        self.errors.push(error.clone());
        self.out.records.push(Record::Error(error));
    }

    pub(super) fn schedule_retry(&mut self, step: StepIndex, interval_ms: u64, now: u64) {
        if self.has_finished() {
            return;
        }
        self.arm(Timer::Retry(step), now.saturating_add(interval_ms));
    }

    pub(super) fn clear_step_timers(&mut self, step: StepIndex) {
        if self.steps[step].has_scheduled_retry {
            self.disarm(Timer::Retry(step));
            // The retry is no longer scheduled: the next scan may schedule one again (a stale
            // mark would keep a retried step waiting with no timer).
            self.run_mut(step).retry_rescheduled_at = None;
        }
        let flow = &self.tx.shared.flow;
        if flow.step_timeout_ms(step).is_some()
            && flow.step(step).options.is_async()
            && !self.steps[step].compensating
        {
            self.disarm(Timer::StepTimeout(step));
        }
    }
}
