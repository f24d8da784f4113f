//! The scan: Medusa's `checkAllSteps` and `computeCurrentTransactionState` over the indexed
//! frontier, and the timeouts it finds.

use std::sync::Arc;

use crate::flow::{Flow, StepIndex};
use crate::log::Timer;
use crate::state::{StepState, StepStatus, TransactionState};

use super::effect::EventKind;
use super::effect::Round;
use super::index::{CompensateIndex, InvokeIndex, Pass, Scan, ScanFlags, is_forward_complete};
use super::{Machine, Transaction, buffers};
use crate::log::StepError;

impl Machine<'_> {
    /// Scans the steps: those in flight go to `round.in_flight`, those to call next to
    /// `round.steps`.
    pub(super) fn check_all_steps(&mut self, now: u64, round: &mut Round) -> Scan {
        loop {
            let (scan, flags, completed, total) = self.compute_current_state(now, round);
            if self.fields.state == TransactionState::WaitingToCompensate
                && round.steps.is_empty()
                && !self.fields.has_waiting_steps
            {
                self.set_tx_state(TransactionState::Compensating);
                self.flag_steps_to_revert();
                self.emit(EventKind::CompensateBegin, None);
                continue;
            }
            if completed == total {
                let fields = self.fields_mut();
                fields.has_skipped_on_failure_steps |= flags.skipped_on_failure;
                fields.has_skipped_steps |= flags.skipped;
                fields.has_failed_steps |= flags.ignored_failure;
                fields.state = if flags.failed {
                    TransactionState::Failed
                } else if flags.reverted {
                    TransactionState::Reverted
                } else {
                    TransactionState::Done
                };
            }
            return scan;
        }
    }

    pub(super) fn compute_current_state(
        &mut self,
        now: u64,
        round: &mut Round,
    ) -> (Scan, ScanFlags, usize, usize) {
        // The transaction's own `Arc` (not the flow's, which every running transaction of the
        // workflow shares: cloning that one makes the cores fight over its count).
        let shared = Arc::clone(&self.shared);
        let flow = &shared.flow;
        round.in_flight.clear();
        round.steps.clear();
        let mut pass = Pass {
            current: std::mem::take(&mut round.in_flight),
            next: std::mem::take(&mut round.steps),
            completed: 0,
            flags: ScanFlags::default(),
        };
        if self.fields.state == TransactionState::Compensating {
            // Only the open, uncompensated steps are visited (see `CompensateIndex`). A
            // compensated one counts as `visit` would conclude, without its checks (no timeout
            // applies to a compensation, nothing is left to call); a step compensates only once
            // its children are done with theirs, and they stay done, so `can_continue` holds.
            if self.compensate_index.is_none() {
                self.compensate_index =
                    Some(CompensateIndex::build(self, buffers::compensate_index()));
            }
            self.visit_indexed::<true>(flow, now, &mut pass);
            if let Some(index) = &self.compensate_index {
                pass.completed += index.settled_count;
                pass.flags.reverted |= index.settled_count > 0;
                #[cfg(debug_assertions)]
                index.check(self);
            }
        } else {
            // Invoke side: only the open, unsettled steps are visited (see `InvokeIndex`).
            if self.index.is_none() {
                self.index = Some(InvokeIndex::build(self, buffers::invoke_index()));
            }
            self.visit_indexed::<false>(flow, now, &mut pass);
            if let Some(index) = &self.index {
                pass.completed += index.settled_count;
                pass.flags.merge(&index.settled_flags);
                #[cfg(debug_assertions)]
                index.check(self);
            }
        }
        let Pass {
            current,
            next,
            completed,
            flags,
        } = pass;
        let total = flow.len();
        if self.fields.has_waiting_steps != flags.waiting
            || self.fields.has_reverted_steps != flags.reverted
        {
            let fields = self.fields_mut();
            fields.has_waiting_steps = flags.waiting;
            fields.has_reverted_steps = flags.reverted;
        }
        round.in_flight = current;
        round.steps = next;
        (
            Scan {
                remaining: total - completed,
            },
            flags,
            completed,
            total,
        )
    }

    /// Visits, in scan order, the steps the index of the side being scanned holds (the
    /// compensation's or the invoke side's); a visit may change the set as it goes.
    pub(super) fn visit_indexed<const COMPENSATING: bool>(
        &mut self,
        flow: &Flow,
        now: u64,
        pass: &mut Pass,
    ) {
        let order = if COMPENSATING {
            flow.compensate_order()
        } else {
            flow.invoke_order()
        };
        let mut cursor = 0;
        loop {
            let set = if COMPENSATING {
                self.compensate_index.as_ref().map(|index| &index.visit)
            } else {
                self.index.as_ref().map(|index| &index.visit)
            };
            let Some(position) = set.and_then(|set| set.first_from(cursor)) else {
                return;
            };
            cursor = position + 1;
            self.visit(flow, order[position], now, pass, !COMPENSATING);
        }
    }

    /// One step of Medusa's `computeCurrentTransactionState` loop, for a step that can continue.
    /// `flow` is the transaction's (borrowed through the scan's hold on the shared part, so that
    /// a visit takes no reference count of its own).
    pub(super) fn visit(
        &mut self,
        flow: &Flow,
        step: StepIndex,
        now: u64,
        pass: &mut Pass,
        indexed: bool,
    ) {
        if self.check_step_timeout(step, now) {
            return;
        }
        let options = &flow.step(step).options;
        let side = *self.steps[step].side();
        if side.status == StepStatus::Waiting {
            pass.current.push(step);
            pass.flags.waiting = true;
            if let Some(interval) = options.retry_interval_awaiting_ms() {
                if self.can_retry_awaiting(step, now) {
                    self.run_mut(step).retry_rescheduled_at = None;
                    pass.next.push(step);
                } else if self.steps[step].retry_rescheduled_at.is_none() {
                    let run = self.run_mut(step);
                    run.has_scheduled_retry = true;
                    run.retry_rescheduled_at = Some(now);
                    // Due once more than `interval` has passed since the last attempt.
                    self.schedule_retry(step, interval.saturating_add(1), now);
                }
            } else if self.steps[step].retry_rescheduled_at.is_some() {
                // Not configured for awaiting retries, but forced by `retry_step`.
                self.run_mut(step).retry_rescheduled_at = None;
                pass.next.push(step);
            }
            return;
        } else if side.status == StepStatus::TemporaryFailure {
            if self.steps[step].temporary_failed_at.is_none() && !options.auto_retry() {
                self.run_mut(step).temporary_failed_at = Some(now);
                return;
            }
            if self.steps[step].temporary_failed_at.is_some() {
                self.run_mut(step).temporary_failed_at = None;
            }
            pass.current.push(step);
            if !self.can_retry(step, now) {
                if let Some(interval) = options.retry_interval_ms()
                    && self.steps[step].retry_rescheduled_at.is_none()
                {
                    let run = self.run_mut(step);
                    run.has_scheduled_retry = true;
                    run.retry_rescheduled_at = Some(now);
                    self.schedule_retry(step, interval, now);
                }
                return;
            }
            if self.steps[step].retry_rescheduled_at.is_some() {
                self.run_mut(step).retry_rescheduled_at = None;
            }
        }
        if self.can_invoke(step) || self.can_compensate(step) {
            pass.next.push(step);
            return;
        }
        let mut flags = ScanFlags::default();
        match side.state {
            StepState::SkippedFailure => flags.skipped_on_failure = true,
            StepState::Skipped => flags.skipped = true,
            StepState::Reverted => flags.reverted = true,
            StepState::Failed | StepState::Timeout => {
                // Medusa ignores the compensation failure of a continue/skip step and reports
                // `reverted`; a failed compensation always fails the transaction here.
                let compensation_failed = self.steps[step].compensating;
                if !compensation_failed
                    && (options.continue_on_permanent_failure()
                        || options.skips_on_permanent_failure())
                {
                    flags.ignored_failure = true;
                } else {
                    flags.failed = true;
                }
            }
            _ => {}
        }
        match self.index.as_mut() {
            Some(index) if indexed && is_forward_complete(side.state) => {
                // Settled: it counts the same way in every later scan of the invoke side.
                index.settle(flow, step, &flags);
            }
            _ => {
                pass.completed += 1;
                pass.flags.merge(&flags);
            }
        }
    }

    pub(super) fn check_step_timeout(&mut self, step: StepIndex, now: u64) -> bool {
        // The cheapest test first (no timeout: not expired); all three are pure.
        if self.step_expired(step, now)
            && self.steps[step].timed_out_at.is_none()
            && self.can_cancel(step)
        {
            self.run_mut(step).timed_out_at = Some(now);
            self.set_step_timeout(step, StepError::step_timeout(), false, now);
            self.emit(EventKind::Timeout, Some(step));
            return true;
        }
        false
    }

    pub(super) fn check_transaction_timeout(&mut self, current: &[StepIndex], now: u64) -> bool {
        if self.fields.timed_out_at.is_none() && self.transaction_expired(now) {
            self.fields_mut().timed_out_at = Some(now);
            if self.flow().has_async_steps() {
                self.disarm(Timer::TransactionTimeout);
            }
            for &step in current {
                self.set_step_timeout(step, StepError::transaction_timeout(), true, now);
            }
            // A step parked after a temporary failure (waiting for a resume or a retry) is not
            // among the scan's current steps, yet it is the run's work in flight: it times out
            // too. (Medusa times out the current steps only, so a run whose only step in flight
            // was parked spent its timeout without failing and could wait for good.)
            let parked: Vec<StepIndex> = (1..self.steps.len())
                .filter(|&step| {
                    let run = &self.steps[step];
                    !run.compensating
                        && run.invoke.state == StepState::Invoking
                        && run.invoke.status == StepStatus::TemporaryFailure
                        && !current.contains(&step)
                })
                .collect();
            for step in parked {
                self.set_step_timeout(step, StepError::transaction_timeout(), true, now);
            }
            self.emit(EventKind::Timeout, None);
            return true;
        }
        false
    }
}

impl Transaction {
    /// Forgets the invoke index (the scan it speeds up is over), keeping its buffers.
    pub(super) fn drop_index(&mut self) {
        if let Some(index) = self.index.take() {
            buffers::give_invoke_index(index);
        }
    }

    /// Forgets the compensation index (the steps' flags changed), keeping its buffers.
    pub(super) fn drop_compensate_index(&mut self) {
        if let Some(index) = self.compensate_index.take() {
            buffers::give_compensate_index(index);
        }
    }

    pub(super) fn flag_steps_to_revert(&mut self) {
        self.drop_index();
        self.drop_compensate_index();
        for step in 1..self.steps.len() {
            let side = *self.steps[step].side();
            if matches!(side.state, StepState::Done | StepState::Timeout)
                || side.status == StepStatus::PermanentFailure
            {
                let run = self.run_mut(step);
                run.begin_compensation();
                if run.compensate.state.can_become(StepState::NotStarted) {
                    run.compensate.state = StepState::NotStarted;
                }
            }
        }
    }
}
