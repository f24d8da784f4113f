//! The scan's bookkeeping: what one scan collects, and the indexes that make a scan cost the
//! frontier rather than the whole flow.

use crate::flow::{Flow, StepIndex};
use crate::state::{StepRun, StepState, StepStatus};

use super::Transaction;
use super::buffers::refill;

/// What a scan concludes; the steps it found in flight and ready to call are in the round.
pub(super) struct Scan {
    /// The steps not yet settled.
    pub(super) remaining: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ScanFlags {
    pub(super) skipped: bool,
    pub(super) skipped_on_failure: bool,
    pub(super) ignored_failure: bool,
    pub(super) failed: bool,
    pub(super) waiting: bool,
    pub(super) reverted: bool,
}

impl ScanFlags {
    pub(super) fn merge(&mut self, other: &ScanFlags) {
        self.skipped |= other.skipped;
        self.skipped_on_failure |= other.skipped_on_failure;
        self.ignored_failure |= other.ignored_failure;
        self.failed |= other.failed;
        self.waiting |= other.waiting;
        self.reverted |= other.reverted;
    }
}

/// What one scan collects.
pub(super) struct Pass {
    pub(super) current: Vec<StepIndex>,
    pub(super) next: Vec<StepIndex>,
    pub(super) completed: usize,
    pub(super) flags: ScanFlags,
}

pub(super) fn is_forward_complete(state: StepState) -> bool {
    matches!(
        state,
        StepState::Done
            | StepState::Failed
            | StepState::Timeout
            | StepState::Skipped
            | StepState::SkippedFailure
    )
}

/// A set of positions in one of a flow's scan orders, one bit each: inserting and removing cost a
/// word, and finding the next position from a cursor scans a word per 64 positions (a sorted
/// `Vec` shifted its tail on every removal, and the frontier's steps leave it in order).
#[derive(Debug, Default)]
pub(super) struct PositionSet(Vec<u64>);

impl PositionSet {
    /// Empties the set, with room for positions below `len`.
    pub(super) fn reset(&mut self, len: usize) {
        self.0.clear();
        self.0.resize(len.div_ceil(64), 0);
    }
    pub(super) fn insert(&mut self, position: usize) {
        let word = position / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (position % 64);
    }
    pub(super) fn remove(&mut self, position: usize) {
        if let Some(word) = self.0.get_mut(position / 64) {
            *word &= !(1 << (position % 64));
        }
    }
    pub(super) fn contains(&self, position: usize) -> bool {
        self.0
            .get(position / 64)
            .is_some_and(|word| word & (1 << (position % 64)) != 0)
    }
    /// The first position at or after `cursor`.
    pub(super) fn first_from(&self, cursor: usize) -> Option<usize> {
        let mut word = cursor / 64;
        let mut bits = self.0.get(word)? & (u64::MAX << (cursor % 64));
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
            bits = *self.0.get(word)?;
        }
    }
}

/// Makes a scan of the invoke side cost the frontier, not the whole flow.
///
/// Medusa scans every step each round; on the invoke side a step the scan skips (its parent's
/// group has not finished) has no effect, and a step in a final state counts the same way every
/// time. So only *open* steps (the scan would not skip them) that are not *settled* are visited;
/// settled ones are summed once. A step opens when its parent's whole group of siblings reaches
/// a forward-complete state (or at once, under the root or a `noWait` parent). Debug builds
/// check the index against a full scan after every use.
#[derive(Debug, Default)]
pub(super) struct InvokeIndex {
    /// Positions in the invoke order of the open, unsettled steps.
    pub(super) visit: PositionSet,
    /// Per step: its invoke side reached a forward-complete state (counted in its group).
    pub(super) forward_done: Vec<bool>,
    /// Per step: how many of its children are forward-complete.
    pub(super) group_done: Vec<usize>,
    /// Per step: settled and removed from `visit`.
    pub(super) settled: Vec<bool>,
    pub(super) settled_count: usize,
    pub(super) settled_flags: ScanFlags,
}

impl InvokeIndex {
    /// The index of `tx`, in the buffers of `reuse` when given.
    pub(super) fn build(tx: &Transaction, reuse: Option<Box<InvokeIndex>>) -> Box<Self> {
        let flow = tx.flow();
        let len = flow.steps().len();
        let mut index = reuse.unwrap_or_default();
        refill(&mut index.forward_done, len, false);
        refill(&mut index.group_done, len, 0);
        refill(&mut index.settled, len, false);
        index.settled_count = 0;
        index.settled_flags = ScanFlags::default();
        index.visit.reset(flow.invoke_order().len());
        for step in 1..len {
            if is_forward_complete(tx.steps[step].invoke.state) {
                index.forward_done[step] = true;
                index.group_done[flow.step(step).parent.unwrap_or(0)] += 1;
            }
        }
        for (position, &step) in flow.invoke_order().iter().enumerate() {
            if tx.can_continue(step) {
                index.visit.insert(position);
            }
        }
        index
    }

    pub(super) fn settle(&mut self, flow: &Flow, step: StepIndex, flags: &ScanFlags) {
        self.visit.remove(flow.invoke_position(step));
        self.settled[step] = true;
        self.settled_count += 1;
        self.settled_flags.merge(flags);
    }

    /// Settles an open step whose invoke side just ended `done` with status `ok`: the next scan's
    /// visit would conclude nothing else (no timeout can cancel it, nothing is left to call, and
    /// `done` raises no flag), so it is settled now instead of visited once more.
    pub(super) fn settle_done(&mut self, flow: &Flow, step: StepIndex) {
        if self.visit.contains(flow.invoke_position(step)) {
            self.settle(flow, step, &ScanFlags::default());
        }
    }

    /// Counts a step whose invoke side became forward-complete (called on every such state
    /// change); opens the children of its group once the whole group is.
    pub(super) fn note_forward(&mut self, flow: &Flow, steps: &[StepRun], step: StepIndex) {
        if self.forward_done[step] || !is_forward_complete(steps[step].invoke.state) {
            return;
        }
        self.forward_done[step] = true;
        let parent = flow.step(step).parent.unwrap_or(0);
        self.group_done[parent] += 1;
        if self.group_done[parent] == flow.step(parent).next.len() {
            for &member in &flow.step(parent).next {
                if flow.step(member).options.no_wait() {
                    continue; // its children were open from the start
                }
                for &child in &flow.step(member).next {
                    if !self.settled[child] {
                        self.visit.insert(flow.invoke_position(child));
                    }
                }
            }
        }
    }

    /// Debug builds: the index agrees with what a full scan would visit.
    #[cfg(debug_assertions)]
    pub(super) fn check(&self, tx: &Transaction) {
        let flow = tx.flow();
        for (position, &step) in flow.invoke_order().iter().enumerate() {
            let open = tx.can_continue(step);
            let indexed = self.visit.contains(position) || self.settled[step];
            debug_assert_eq!(
                open,
                indexed,
                "step {} open={open} indexed={indexed}",
                flow.step(step).action
            );
            if self.settled[step] {
                debug_assert!(
                    is_forward_complete(tx.steps[step].side().state),
                    "settled step {} moved to {}",
                    flow.step(step).action,
                    tx.steps[step].side().state
                );
            }
        }
    }
}

/// Whether a compensate state lets the parent's compensation go on (`can_move_backward`).
pub(super) fn is_backward_complete(state: StepState) -> bool {
    matches!(
        state,
        StepState::Done
            | StepState::Reverted
            | StepState::Failed
            | StepState::Dormant
            | StepState::Skipped
    )
}

/// Makes a scan of the compensation cost its frontier, as [`InvokeIndex`] does for the invoke
/// side.
///
/// While compensating, Medusa's scan counts a compensated step (reverted, `ok`) without a visit
/// and visits any other step only once its children are done with their compensation. Once the
/// steps are flagged for compensation (the index is built after that), a child that is done with
/// its compensation stays done: a step opens once, when its last child is done, and a compensated
/// step is settled once. So only open, unsettled steps are visited, in the compensation order.
/// Debug builds check the index against a full scan after every use.
#[derive(Debug, Default)]
pub(super) struct CompensateIndex {
    /// Positions in the compensation order of the open, unsettled steps.
    pub(super) visit: PositionSet,
    /// Per step: how many of its children are done with their compensation.
    pub(super) children_done: Vec<usize>,
    /// Per step: its compensate side is done, counted in its parent's `children_done`.
    pub(super) counted: Vec<bool>,
    /// Per step: compensated, removed from `visit` and counted in `settled_count`.
    pub(super) settled: Vec<bool>,
    pub(super) settled_count: usize,
}

impl CompensateIndex {
    /// The index of `tx`, in the buffers of `reuse` when given.
    pub(super) fn build(tx: &Transaction, reuse: Option<Box<CompensateIndex>>) -> Box<Self> {
        let flow = tx.flow();
        let len = flow.steps().len();
        let mut index = reuse.unwrap_or_default();
        refill(&mut index.children_done, len, 0);
        refill(&mut index.counted, len, false);
        refill(&mut index.settled, len, false);
        index.settled_count = 0;
        index.visit.reset(flow.compensate_order().len());
        for step in 1..len {
            if is_backward_complete(tx.steps[step].compensate.state) {
                index.counted[step] = true;
                index.children_done[flow.step(step).parent.unwrap_or(0)] += 1;
            }
        }
        for (position, &step) in flow.compensate_order().iter().enumerate() {
            if Self::compensated(&tx.steps[step]) {
                index.settled[step] = true;
                index.settled_count += 1;
            } else if tx.can_move_backward(step) {
                index.visit.insert(position);
            }
        }
        index
    }

    /// What the scan counts without a visit.
    pub(super) fn compensated(run: &StepRun) -> bool {
        run.compensating
            && run.compensate.state == StepState::Reverted
            && run.compensate.status == StepStatus::Ok
    }

    /// Follows a change of a step's compensate side: counts it in its parent's group once it is
    /// done (opening the parent when the whole group is), and settles it once compensated.
    pub(super) fn note(&mut self, flow: &Flow, steps: &[StepRun], step: StepIndex) {
        let run = &steps[step];
        if !self.counted[step] && is_backward_complete(run.compensate.state) {
            self.counted[step] = true;
            let parent = flow.step(step).parent.unwrap_or(0);
            self.children_done[parent] += 1;
            if parent != 0
                && !self.settled[parent]
                && self.children_done[parent] == flow.step(parent).next.len()
            {
                self.visit.insert(flow.compensate_position(parent));
            }
        }
        if !self.settled[step] && Self::compensated(run) {
            self.settled[step] = true;
            self.settled_count += 1;
            self.visit.remove(flow.compensate_position(step));
        }
    }

    /// Debug builds: the index agrees with what a full scan would count and visit.
    #[cfg(debug_assertions)]
    pub(super) fn check(&self, tx: &Transaction) {
        let flow = tx.flow();
        for (position, &step) in flow.compensate_order().iter().enumerate() {
            let compensated = Self::compensated(&tx.steps[step]);
            debug_assert_eq!(
                compensated,
                self.settled[step],
                "step {} compensated={compensated}",
                flow.step(step).action
            );
            let open = !compensated && tx.can_move_backward(step);
            debug_assert_eq!(
                open,
                self.visit.contains(position),
                "step {} open={open}",
                flow.step(step).action
            );
        }
    }
}

#[cfg(test)]
mod position_set_tests {
    use super::PositionSet;

    #[test]
    pub(super) fn a_position_set_finds_the_next_position_across_words() {
        let mut set = PositionSet::default();
        set.reset(130);
        for position in [0, 63, 64, 129] {
            set.insert(position);
        }
        assert_eq!(set.first_from(0), Some(0));
        assert_eq!(set.first_from(1), Some(63));
        assert_eq!(set.first_from(64), Some(64));
        assert_eq!(set.first_from(65), Some(129));
        assert_eq!(set.first_from(130), None);
        set.remove(63);
        set.remove(64);
        assert!(!set.contains(63));
        assert_eq!(set.first_from(1), Some(129));
        // Beyond the room it was reset with, it grows.
        set.insert(200);
        assert_eq!(set.first_from(130), Some(200));
        set.reset(10);
        assert_eq!(set.first_from(0), None);
    }
}
