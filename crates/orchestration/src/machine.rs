//! The transaction state machine: pure decisions, no I/O, no clock of its own.
//!
//! A [`Transaction`] is fed events (begin, "this handler returned", "set step success", cancel,
//! "a timer fired") together with the current time, changes its state the way Medusa's
//! `TransactionOrchestrator` does, and queues [`Effect`]s: records to persist, timers to arm or
//! disarm, events to publish. The [`Engine`](crate::Engine) performs those effects and calls the
//! handlers the machine asks for in a [`Round`].
//!
//! ```text
//!        ┌──────────── next_round(now) ─────────────┐
//!        │  scan steps (invoke: depth ascending,      │
//!        │  compensate: depth descending), detect     │
//!        │  timeouts, switch INVOKING → W_T_C →       │
//!        │  COMPENSATING → DONE|REVERTED|FAILED       │
//!        └───────┬────────────────────────┬───────────┘
//!   Round::Run{steps}                 Round::Finished / Round::Idle
//!        │ engine calls the handlers (sync ones concurrently, async ones fired)
//!        ▼
//!   complete(step, outcome, now) ── success / failure / skip / expiration ──► next_round …
//! ```

use std::any::Any;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::error::{Error, Result};
use crate::flow::{Flow, StepIndex};
use crate::state::{HandlerType, SideState, StepRun, StepState, StepStatus, TransactionState};

/// The error a step handler reports, kept on the transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// A human-readable message.
    pub message: String,
    /// A kind name, as `TransactionTimeoutError`, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl StepError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            name: None,
        }
    }
    /// An error with a kind name.
    pub fn named(name: impl Into<String>, message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            name: Some(name.into()),
        }
    }
    fn step_timeout() -> Self {
        StepError::named("TransactionStepTimeoutError", "Step timeout")
    }
    fn transaction_timeout() -> Self {
        StepError::named("TransactionTimeoutError", "Transaction timeout")
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// An error recorded on a transaction: which handler of which step, and what it said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionError {
    /// The step's action.
    pub action: String,
    /// The handler that failed.
    pub handler_type: HandlerType,
    /// The error.
    pub error: StepError,
}

/// What a handler call came to.
#[derive(Clone, Debug)]
pub enum StepOutcome {
    /// The handler succeeded, with its response (saved for later steps unless `saveResponse: false`).
    Success(Option<Data>),
    /// The handler asks for the step to be skipped.
    Skip,
    /// The handler failed.
    Failure {
        /// What went wrong.
        error: StepError,
        /// A permanent failure is never retried.
        permanent: bool,
        /// A response to keep anyway (the compensation input of a permanent failure).
        response: Option<Data>,
    },
}

impl StepOutcome {
    /// A success with a response.
    pub fn ok(response: impl Into<Data>) -> Self {
        StepOutcome::Success(Some(response.into()))
    }
    /// A temporary failure: retried while retries remain.
    pub fn fail(message: impl Into<String>) -> Self {
        StepOutcome::Failure {
            error: StepError::new(message),
            permanent: false,
            response: None,
        }
    }
    /// A permanent failure: never retried.
    pub fn permanent(message: impl Into<String>) -> Self {
        StepOutcome::Failure {
            error: StepError::new(message),
            permanent: true,
            response: None,
        }
    }
}

/// The responses saved so far, one slot per step and side; shared with running handlers.
#[derive(Debug, Default)]
pub struct Responses {
    /// Per step: the invoke's response, then the compensation's (one allocation for both).
    slots: Vec<[Mutex<Option<Data>>; 2]>,
}

impl Responses {
    fn new(len: usize) -> Self {
        Responses {
            slots: (0..len)
                .map(|_| [Mutex::new(None), Mutex::new(None)])
                .collect(),
        }
    }
    fn slot(&self, step: StepIndex, side: HandlerType) -> &Mutex<Option<Data>> {
        let [invoke, compensate] = &self.slots[step];
        match side {
            HandlerType::Invoke => invoke,
            HandlerType::Compensate => compensate,
        }
    }
    /// The saved response of a step's side.
    pub fn get(&self, step: StepIndex, side: HandlerType) -> Option<Data> {
        self.with(step, side, |data| data.cloned())
    }
    /// Reads the saved response of a step's side in place (no reference count taken). `read`
    /// runs under the slot's lock: it must not read the same slot.
    pub fn with<R>(
        &self,
        step: StepIndex,
        side: HandlerType,
        read: impl FnOnce(Option<&Data>) -> R,
    ) -> R {
        read(self.slot(step, side).lock().as_ref())
    }
    fn set(&self, step: StepIndex, side: HandlerType, data: Option<Data>) {
        *self.slot(step, side).lock() = data;
    }
}

/// What stays fixed for a transaction's whole life, shared with every handler call.
pub struct TransactionShared {
    /// The compiled flow.
    pub flow: Arc<Flow>,
    /// The workflow name.
    pub workflow: Arc<str>,
    /// The transaction id.
    pub id: Arc<str>,
    /// The run id (a fresh one each time the id is begun anew).
    pub run_id: Arc<str>,
    /// The workflow input.
    pub payload: Data,
    /// The responses saved so far.
    pub responses: Responses,
    /// What the workflow's handler keeps for this transaction's calls (set once, by the
    /// handler): reading it per call costs a load, where cloning state the handler shares with
    /// every other transaction would make the cores contend for its reference count.
    pub handler_data: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for TransactionShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionShared")
            .field("workflow", &self.workflow)
            .field("id", &self.id)
            .field("run_id", &self.run_id)
            .field("payload", &self.payload)
            .field("responses", &self.responses)
            .finish_non_exhaustive()
    }
}

/// A timer the machine asks the engine to arm; when it fires, the transaction is resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Timer {
    /// Retry (or continue after) a step.
    Retry(StepIndex),
    /// An async step's timeout.
    StepTimeout(StepIndex),
    /// The whole transaction's timeout.
    TransactionTimeout,
}

/// Events published to subscribers (Medusa's `DistributedTransactionEvent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The transaction began.
    Begin,
    /// An existing transaction was resumed.
    Resume,
    /// Compensation began.
    CompensateBegin,
    /// The transaction finished.
    Finish,
    /// A step or the transaction timed out.
    Timeout,
    /// A step's handler is about to be called.
    StepBegin,
    /// A step's invoke succeeded.
    StepSuccess,
    /// A step was skipped.
    StepSkipped,
    /// A step's invoke failed.
    StepFailure,
    /// An async step waits for its response.
    StepAwaiting,
    /// A compensation succeeded.
    CompensateStepSuccess,
    /// A compensation failed.
    CompensateStepFailure,
}

/// A durable change of a transaction: what a store appends, one batch per step event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The transaction-level fields changed.
    Transaction(TransactionFields),
    /// A step's run changed; the whole (small) step record is written.
    Step {
        /// The step's index in the flow.
        step: StepIndex,
        /// The step's run after the change.
        run: StepRun,
    },
    /// A response was saved.
    Response {
        /// The step's index in the flow.
        step: StepIndex,
        /// Which handler produced it.
        handler: HandlerType,
        /// The response (`None` clears it).
        data: Option<Data>,
    },
    /// An error was recorded.
    Error(TransactionError),
    /// A timer was armed (`at` is when it fires) or disarmed or fired (`at` is `None`). Timers
    /// are part of the log so that they survive the process: a worker that takes a transaction
    /// over arms them again.
    Timer {
        /// Which timer.
        timer: Timer,
        /// When it fires, while armed.
        at: Option<u64>,
    },
}

/// The transaction-level fields of a [`Record::Transaction`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionFields {
    /// The transaction state.
    pub state: TransactionState,
    /// When it began.
    pub started_at: Option<u64>,
    /// When it timed out.
    pub timed_out_at: Option<u64>,
    /// When it was cancelled.
    pub cancelled_at: Option<u64>,
    /// Some step failed under continue/skip-on-permanent-failure.
    pub has_failed_steps: bool,
    /// Some step was skipped.
    pub has_skipped_steps: bool,
    /// Some step was skipped because of an ancestor's failure.
    pub has_skipped_on_failure_steps: bool,
    /// Some step waits for a response.
    pub has_waiting_steps: bool,
    /// Some step was reverted.
    pub has_reverted_steps: bool,
}

impl TransactionFields {
    /// The fields of a transaction that has not started.
    pub const NOT_STARTED: TransactionFields = TransactionFields {
        state: TransactionState::NotStarted,
        started_at: None,
        timed_out_at: None,
        cancelled_at: None,
        has_failed_steps: false,
        has_skipped_steps: false,
        has_skipped_on_failure_steps: false,
        has_waiting_steps: false,
        has_reverted_steps: false,
    };
}

/// Something the engine must do for the machine.
#[derive(Clone, Debug)]
pub enum Effect {
    /// Append these records to the store, in order, before anything that follows. The records
    /// of one drain of the effects are in one `Persist`, appended together before the other
    /// effects (timers and events follow what is durable).
    Persist(Vec<Record>),
    /// Arm a timer to fire at this time (replacing one with the same key).
    Arm(Timer, u64),
    /// Disarm a timer.
    Disarm(Timer),
    /// Publish an event (about a step, when one is given).
    Emit(EventKind, Option<StepIndex>),
}

/// One handler call the machine asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// The step.
    pub step: StepIndex,
    /// Which handler.
    pub handler: HandlerType,
    /// The 1-based attempt of this side.
    pub attempt: u32,
    /// Whether the handler is fire-and-forget.
    pub is_async: bool,
}

/// What the engine should do next with a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// The transaction has finished.
    Finished,
    /// Call these handlers. Sync ones run concurrently and are awaited; async ones are fired
    /// after them. `continue_after` says whether to ask for another round once the sync ones
    /// returned.
    Run {
        /// The calls of this round, in scan order.
        calls: Vec<Dispatch>,
        /// The steps prepared in this round (a timeout found while they run applies to them).
        steps: Vec<StepIndex>,
        /// Whether another round follows this one.
        continue_after: bool,
    },
}

struct Scan {
    current: Vec<StepIndex>,
    next: Vec<StepIndex>,
    remaining: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ScanFlags {
    skipped: bool,
    skipped_on_failure: bool,
    ignored_failure: bool,
    failed: bool,
    waiting: bool,
    reverted: bool,
}

impl ScanFlags {
    fn merge(&mut self, other: &ScanFlags) {
        self.skipped |= other.skipped;
        self.skipped_on_failure |= other.skipped_on_failure;
        self.ignored_failure |= other.ignored_failure;
        self.failed |= other.failed;
        self.waiting |= other.waiting;
        self.reverted |= other.reverted;
    }
}

/// What one scan collects.
struct Pass {
    current: Vec<StepIndex>,
    next: Vec<StepIndex>,
    completed: usize,
    flags: ScanFlags,
}

/// The first millisecond at which `now > start + duration` holds: when a deadline's timer fires.
fn past(start: u64, duration: u64) -> u64 {
    start.saturating_add(duration).saturating_add(1)
}

fn is_forward_complete(state: StepState) -> bool {
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
struct PositionSet(Vec<u64>);

impl PositionSet {
    /// Empties the set, with room for positions below `len`.
    fn reset(&mut self, len: usize) {
        self.0.clear();
        self.0.resize(len.div_ceil(64), 0);
    }
    fn insert(&mut self, position: usize) {
        let word = position / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (position % 64);
    }
    fn remove(&mut self, position: usize) {
        if let Some(word) = self.0.get_mut(position / 64) {
            *word &= !(1 << (position % 64));
        }
    }
    fn contains(&self, position: usize) -> bool {
        self.0
            .get(position / 64)
            .is_some_and(|word| word & (1 << (position % 64)) != 0)
    }
    /// The first position at or after `cursor`.
    fn first_from(&self, cursor: usize) -> Option<usize> {
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
struct InvokeIndex {
    /// Positions in the invoke order of the open, unsettled steps.
    visit: PositionSet,
    /// Per step: its invoke side reached a forward-complete state (counted in its group).
    forward_done: Vec<bool>,
    /// Per step: how many of its children are forward-complete.
    group_done: Vec<usize>,
    /// Per step: settled and removed from `visit`.
    settled: Vec<bool>,
    settled_count: usize,
    settled_flags: ScanFlags,
}

impl InvokeIndex {
    /// The index of `tx`, in the buffers of `reuse` when given.
    fn build(tx: &Transaction, reuse: Option<Box<InvokeIndex>>) -> Box<Self> {
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

    fn settle(&mut self, flow: &Flow, step: StepIndex, flags: &ScanFlags) {
        self.visit.remove(flow.invoke_position(step));
        self.settled[step] = true;
        self.settled_count += 1;
        self.settled_flags.merge(flags);
    }

    /// Settles an open step whose invoke side just ended `done` with status `ok`: the next scan's
    /// visit would conclude nothing else (no timeout can cancel it, nothing is left to call, and
    /// `done` raises no flag), so it is settled now instead of visited once more.
    fn settle_done(&mut self, flow: &Flow, step: StepIndex) {
        if self.visit.contains(flow.invoke_position(step)) {
            self.settle(flow, step, &ScanFlags::default());
        }
    }

    /// Counts a step whose invoke side became forward-complete (called on every such state
    /// change); opens the children of its group once the whole group is.
    fn note_forward(&mut self, flow: &Flow, steps: &[StepRun], step: StepIndex) {
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
    fn check(&self, tx: &Transaction) {
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
fn is_backward_complete(state: StepState) -> bool {
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
struct CompensateIndex {
    /// Positions in the compensation order of the open, unsettled steps.
    visit: PositionSet,
    /// Per step: how many of its children are done with their compensation.
    children_done: Vec<usize>,
    /// Per step: its compensate side is done, counted in its parent's `children_done`.
    counted: Vec<bool>,
    /// Per step: compensated, removed from `visit` and counted in `settled_count`.
    settled: Vec<bool>,
    settled_count: usize,
}

impl CompensateIndex {
    /// The index of `tx`, in the buffers of `reuse` when given.
    fn build(tx: &Transaction, reuse: Option<Box<CompensateIndex>>) -> Box<Self> {
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
    fn compensated(run: &StepRun) -> bool {
        run.compensating
            && run.compensate.state == StepState::Reverted
            && run.compensate.status == StepStatus::Ok
    }

    /// Follows a change of a step's compensate side: counts it in its parent's group once it is
    /// done (opening the parent when the whole group is), and settles it once compensated.
    fn note(&mut self, flow: &Flow, steps: &[StepRun], step: StepIndex) {
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
    fn check(&self, tx: &Transaction) {
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

/// Clears `v` and fills it with `len` copies of `value`, keeping its allocation.
fn refill<T: Clone>(v: &mut Vec<T>, len: usize, value: T) {
    v.clear();
    v.resize(len, value);
}

/// The buffers of a dropped transaction, kept for the next one created on the same thread:
/// a short run (a few dozen records, effects and calls) then allocates almost nothing but its
/// shared part.
#[derive(Default)]
struct Buffers {
    steps: Vec<StepRun>,
    dirty: Vec<bool>,
    dirty_list: Vec<StepIndex>,
    pending: Vec<Record>,
    spare: Vec<Vec<Record>>,
    spare_indices: Vec<Vec<StepIndex>>,
    spare_calls: Vec<Vec<Dispatch>>,
    effects: Vec<Effect>,
    index: Option<Box<InvokeIndex>>,
    compensate_index: Option<Box<CompensateIndex>>,
}

impl Buffers {
    /// How many sets a thread keeps (a worker runs about one transaction at a time; more are
    /// alive at once only when many wait).
    const POOLED: usize = 8;
    /// Flows with more steps than this do not pool their buffers (they would hold memory).
    const MAX_STEPS: usize = 1024;

    thread_local! {
        static POOL: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn take() -> Self {
        Self::POOL
            .try_with(|pool| pool.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn give_back(self) {
        if self.steps.capacity() > Self::MAX_STEPS {
            return;
        }
        let _ = Self::POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < Self::POOLED {
                pool.push(self);
            }
        });
    }
}

/// One transaction: the flow's steps with their states, and the machine that advances them.
pub struct Transaction {
    shared: Arc<TransactionShared>,
    fields: TransactionFields,
    steps: Vec<StepRun>,
    errors: Vec<TransactionError>,
    dirty: Vec<bool>,
    dirty_list: Vec<StepIndex>,
    /// The fields as the records handed out so far leave them (replay's view of the log).
    recorded: TransactionFields,
    pending: Vec<Record>,
    spare: Vec<Vec<Record>>,
    spare_indices: Vec<Vec<StepIndex>>,
    spare_calls: Vec<Vec<Dispatch>>,
    effects: Vec<Effect>,
    /// Whether `effects` holds a timer to arm or disarm (anything but events).
    timer_effects: bool,
    /// Whether transitions queue their events ([`set_events`](Self::set_events)).
    events: bool,
    /// The invoke scan's index. The indexes are boxed (and pooled boxed, with the other
    /// buffers): inline they made up half of a transaction, which is moved into its cell.
    index: Option<Box<InvokeIndex>>,
    /// The buffers of a dropped index, for the next one.
    spare_index: Option<Box<InvokeIndex>>,
    /// The compensation scan's index, built at its first scan.
    compensate_index: Option<Box<CompensateIndex>>,
    /// The buffers of a dropped compensation index, for the next one.
    spare_compensate_index: Option<Box<CompensateIndex>>,
    timers: Vec<(Timer, u64)>,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        let mut buffers = Buffers {
            steps: std::mem::take(&mut self.steps),
            dirty: std::mem::take(&mut self.dirty),
            dirty_list: std::mem::take(&mut self.dirty_list),
            pending: std::mem::take(&mut self.pending),
            spare: std::mem::take(&mut self.spare),
            spare_indices: std::mem::take(&mut self.spare_indices),
            spare_calls: std::mem::take(&mut self.spare_calls),
            effects: std::mem::take(&mut self.effects),
            index: self.index.take().or_else(|| self.spare_index.take()),
            compensate_index: self
                .compensate_index
                .take()
                .or_else(|| self.spare_compensate_index.take()),
        };
        // Nothing that holds data (responses in records and effects) outlives its transaction.
        buffers.pending.clear();
        buffers.effects.clear();
        buffers.dirty_list.clear();
        buffers.give_back();
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
            pending,
            spare,
            spare_indices,
            spare_calls,
            effects,
            index: spare_index,
            compensate_index: spare_compensate_index,
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
            pending,
            spare,
            spare_indices,
            spare_calls,
            effects,
            timer_effects: false,
            events: true,
            index: None,
            compensate_index: None,
            spare_compensate_index,
            timers: Vec::new(),
            spare_index,
        }
    }

    /// Rebuilds a transaction from its stored records (the inverse of the `Persist` effects).
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
    /// Takes the effects queued so far.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.close_batch();
        self.timer_effects = false;
        std::mem::take(&mut self.effects)
    }
    /// Appends the effects queued so far to `out`, keeping the allocation of both. Changes not
    /// yet in a [`Effect::Persist`] are put in one first, so nothing recorded is left behind.
    pub fn drain_effects_into(&mut self, out: &mut Vec<Effect>) {
        self.close_batch();
        self.timer_effects = false;
        if out.is_empty() {
            // The engine hands an empty buffer: trading the two saves copying the effects.
            std::mem::swap(out, &mut self.effects);
        } else {
            out.append(&mut self.effects);
        }
    }

    /// Whether the transitions from now on queue their [`Effect::Emit`]s (on when a transaction
    /// is made). The engine turns them off while no one would receive them: then a transition
    /// costs no event to queue and drop.
    #[inline]
    pub fn set_events(&mut self, on: bool) {
        self.events = on;
    }

    /// Takes back the engine's emptied effects buffer when it has more room than the one the
    /// transaction holds (the buffers traded in [`drain_effects_into`](Self::drain_effects_into)
    /// then keep their room across batches and, pooled, across transactions).
    pub fn recycle_effects(&mut self, buffer: &mut Vec<Effect>) {
        debug_assert!(buffer.is_empty());
        if self.effects.is_empty() && self.effects.capacity() < buffer.capacity() {
            std::mem::swap(&mut self.effects, buffer);
        }
    }

    /// Leaves the batch open for the next one, dropping its events, when it queues nothing but
    /// records and events (no timer to arm or disarm): what the engine does for a volatile
    /// store when nobody listens for events (see [`Store::volatile`](crate::Store::volatile)).
    /// Returns whether it did; the next drain then holds both batches' records, each changed
    /// step once.
    #[inline]
    pub fn defer_batch(&mut self) -> bool {
        debug_assert_eq!(
            self.timer_effects,
            self.effects
                .iter()
                .any(|effect| !matches!(effect, Effect::Emit(..)))
        );
        if self.timer_effects {
            return false;
        }
        self.effects.clear();
        true
    }

    /// Ends the batch the engine is about to take, as one `Persist` ahead of the batch's other
    /// effects: the records queued (responses, errors, timers), each step changed since the
    /// last batch once, and the transaction's fields last, once, if the batch changed them. A
    /// batch is appended whole, and a `Step` or `Transaction` record carries every field, so
    /// the last state of each is all a batch needs; a batch that leaves the fields as they
    /// were has no `Transaction` record (a step boundary clears `has_waiting_steps` and the
    /// next round sets it again).
    fn close_batch(&mut self) {
        let fields_changed = self.fields != self.recorded;
        if self.pending.is_empty() && self.dirty_list.is_empty() && !fields_changed {
            return;
        }
        let spare = self.spare.pop().unwrap_or_default();
        let mut records = std::mem::replace(&mut self.pending, spare);
        for step in self.dirty_list.drain(..) {
            self.dirty[step] = false;
            records.push(Record::Step {
                step,
                run: self.steps[step],
            });
        }
        if fields_changed {
            self.recorded = self.fields;
            records.push(Record::Transaction(self.fields));
        }
        self.effects.insert(0, Effect::Persist(records));
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
    /// with the next batch of effects). A timer that fires before its time (a clock that
    /// stepped back, a sleep that woke early) stays armed and is armed again: a timer the
    /// machine relies on is never dropped unfired. Returns whether the timer was due.
    pub fn timer_fired(&mut self, timer: Timer, now: u64) -> bool {
        match self.timers.iter().find(|(t, _)| *t == timer) {
            Some(&(_, at)) if now < at => {
                self.effects.push(Effect::Arm(timer, at));
                self.timer_effects = true;
                false
            }
            Some(_) => {
                self.set_timer(timer, None);
                self.pending.push(Record::Timer { timer, at: None });
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
    /// Hands back the buffers of a [`Round::Run`] once its calls are done, for reuse.
    pub fn recycle_round(&mut self, mut calls: Vec<Dispatch>, steps: Vec<StepIndex>) {
        if self.spare_calls.len() < 2 {
            calls.clear();
            self.spare_calls.push(calls);
        }
        self.recycle_indices(steps);
    }

    fn recycle_indices(&mut self, mut indices: Vec<StepIndex>) {
        if self.spare_indices.len() < 4 {
            indices.clear();
            self.spare_indices.push(indices);
        }
    }

    fn take_indices(&mut self) -> Vec<StepIndex> {
        self.spare_indices.pop().unwrap_or_default()
    }

    /// Hands back the buffer of a performed [`Effect::Persist`] for reuse.
    pub fn recycle(&mut self, mut records: Vec<Record>) {
        if self.spare.len() < 2 {
            records.clear();
            self.spare.push(records);
        }
    }

    // ---- bookkeeping -------------------------------------------------------------------------

    fn run_mut(&mut self, step: StepIndex) -> &mut StepRun {
        if !self.dirty[step] {
            self.dirty[step] = true;
            self.dirty_list.push(step);
        }
        &mut self.steps[step]
    }

    fn fields_mut(&mut self) -> &mut TransactionFields {
        &mut self.fields
    }

    fn set_tx_state(&mut self, state: TransactionState) {
        self.fields_mut().state = state;
    }

    fn emit(&mut self, kind: EventKind, step: Option<StepIndex>) {
        if self.events {
            self.effects.push(Effect::Emit(kind, step));
        }
    }

    fn set_timer(&mut self, timer: Timer, at: Option<u64>) -> bool {
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

    /// Arms a timer: the engine's effect, and a record so that it survives the process.
    fn arm(&mut self, timer: Timer, at: u64) {
        self.set_timer(timer, Some(at));
        self.pending.push(Record::Timer {
            timer,
            at: Some(at),
        });
        self.effects.push(Effect::Arm(timer, at));
        self.timer_effects = true;
    }

    fn disarm(&mut self, timer: Timer) {
        if self.set_timer(timer, None) {
            self.pending.push(Record::Timer { timer, at: None });
        }
        self.effects.push(Effect::Disarm(timer));
        self.timer_effects = true;
    }

    fn change_state(&mut self, step: StepIndex, to: StepState) -> Result<()> {
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

    fn change_status(&mut self, step: StepIndex, to: StepStatus) {
        debug_assert!(
            self.steps[step].side().status.can_become(to),
            "status {} -> {to} of {}",
            self.steps[step].side().status,
            self.action(step)
        );
        self.run_mut(step).side_mut().status = to;
    }

    fn action(&self, step: StepIndex) -> &str {
        &self.shared.flow.step(step).action
    }

    fn add_response(&mut self, step: StepIndex, handler: HandlerType, data: Option<Data>) {
        self.shared.responses.set(step, handler, data.clone());
        self.pending.push(Record::Response {
            step,
            handler,
            data,
        });
    }

    fn add_error(&mut self, step: StepIndex, handler_type: HandlerType, error: StepError) {
        let error = TransactionError {
            action: self.action(step).to_string(),
            handler_type,
            error,
        };
        self.errors.push(error.clone());
        self.pending.push(Record::Error(error));
    }

    fn schedule_retry(&mut self, step: StepIndex, interval_ms: u64, now: u64) {
        if self.has_finished() {
            return;
        }
        self.arm(Timer::Retry(step), now.saturating_add(interval_ms));
    }

    fn step_is_async(&self, step: StepIndex) -> bool {
        self.flow()
            .step(step)
            .options
            .is_async_side(self.steps[step].handler_type())
    }

    fn clear_step_timers(&mut self, step: StepIndex) {
        if self.steps[step].has_scheduled_retry {
            self.disarm(Timer::Retry(step));
            // The retry is no longer scheduled: the next scan may schedule one again (a stale
            // mark would keep a retried step waiting with no timer).
            self.run_mut(step).retry_rescheduled_at = None;
        }
        let flow = &self.shared.flow;
        if flow.step_timeout_ms(step).is_some()
            && flow.step(step).options.is_async()
            && !self.steps[step].compensating
        {
            self.disarm(Timer::StepTimeout(step));
        }
    }

    // ---- predicates (Medusa's TransactionStep and canMove*) -----------------------------------

    fn can_move_forward(&self, previous: StepIndex) -> bool {
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

    fn can_move_backward(&self, step: StepIndex) -> bool {
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

    fn can_continue(&self, step: StepIndex) -> bool {
        if self.fields.state == TransactionState::Compensating {
            return self.can_move_backward(step);
        }
        match self.flow().step(step).parent {
            Some(0) | None => true,
            Some(parent) => self.can_move_forward(parent),
        }
    }

    fn can_invoke(&self, step: StepIndex) -> bool {
        let run = &self.steps[step];
        let side = run.side();
        (!run.compensating
            && side.state == StepState::NotStarted
            && self.fields.state == TransactionState::Invoking)
            || (side.status == StepStatus::TemporaryFailure && run.temporary_failed_at.is_none())
    }

    fn can_compensate(&self, step: StepIndex) -> bool {
        let run = &self.steps[step];
        run.compensating
            && run.compensate.state == StepState::NotStarted
            && self.fields.state == TransactionState::Compensating
    }

    fn can_cancel(&self, step: StepIndex) -> bool {
        let run = &self.steps[step];
        !run.compensating
            && matches!(
                run.invoke.status,
                StepStatus::Waiting | StepStatus::TemporaryFailure
            )
    }

    fn can_retry(&self, step: StepIndex, now: u64) -> bool {
        match self.flow().step(step).options.retry_interval_ms() {
            None => true,
            Some(interval) => self.steps[step]
                .last_attempt
                .is_some_and(|last| now.saturating_sub(last) >= interval),
        }
    }

    fn can_retry_awaiting(&self, step: StepIndex, now: u64) -> bool {
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
    fn within_awaiting_cap(&self, step: StepIndex) -> bool {
        let run = &self.steps[step];
        match self.flow().step(step).options.max_awaiting_retries {
            None => true,
            Some(max) if run.compensating => run.attempts < max.saturating_mul(2),
            Some(max) => run.attempts < max,
        }
    }

    fn step_expired(&self, step: StepIndex, now: u64) -> bool {
        let run = &self.steps[step];
        match (self.flow().step_timeout_ms(step), run.started_at) {
            (Some(timeout), Some(started)) => {
                !run.compensating && now > started.saturating_add(timeout)
            }
            _ => false,
        }
    }

    fn transaction_expired(&self, now: u64) -> bool {
        match (self.flow().timeout_ms(), self.fields.started_at) {
            (Some(timeout), Some(started)) => {
                self.fields.state != TransactionState::Compensating
                    && now > started.saturating_add(timeout)
            }
            _ => false,
        }
    }

    // ---- the machine ---------------------------------------------------------------------------

    /// Begins a `not_started` transaction, or notes a resume of a running one. Returns `false`
    /// when the transaction has finished and nothing is to be done.
    pub fn begin_or_resume(&mut self, now: u64) -> bool {
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

    /// One iteration of Medusa's `executeNext` up to calling the handlers.
    pub fn next_round(&mut self, now: u64) -> Round {
        loop {
            if self.has_finished() {
                return Round::Finished;
            }
            let mut scan = self.check_all_steps(now);
            let timed_out = self.check_transaction_timeout(&scan.current, now);
            self.recycle_indices(std::mem::take(&mut scan.current));
            if timed_out {
                self.recycle_indices(scan.next);
                continue;
            }
            if scan.remaining == 0 {
                self.recycle_indices(scan.next);
                self.finalize();
                return Round::Finished;
            }
            let mut calls = self.spare_calls.pop().unwrap_or_default();
            let mut has_async = false;
            let mut has_sync = false;
            for &step in &scan.next {
                if self.prepare(step, now) {
                    let run = &self.steps[step];
                    let is_async = self.step_is_async(step);
                    has_async |= is_async;
                    has_sync |= !is_async;
                    calls.push(Dispatch {
                        step,
                        handler: run.handler_type(),
                        attempt: run.attempts,
                        is_async,
                    });
                }
            }
            for call in &calls {
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
            for call in &calls {
                self.emit(EventKind::StepBegin, Some(call.step));
            }
            if !calls.is_empty() && !self.fields.has_waiting_steps {
                // Medusa rescans before each call to refresh its flags; the steps just prepared
                // wait for their handlers, which is all that rescan can change.
                self.fields_mut().has_waiting_steps = true;
            }
            let continue_after = !scan.next.is_empty() && (!has_async || has_sync);
            if calls.is_empty() && continue_after {
                // Only `noCompensation` steps this round: nothing to call, scan again.
                self.recycle_round(calls, scan.next);
                continue;
            }
            return Round::Run {
                calls,
                steps: scan.next,
                continue_after,
            };
        }
    }

    /// Records the outcome of a handler the engine called for `dispatch`. `round` holds the steps
    /// of the round it belongs to (a transaction timeout found now applies to all of them).
    pub fn complete(
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

    fn complete_async(
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
    pub fn register_success(
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
    pub fn register_failure(
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
    pub fn retry_step(&mut self, step: StepIndex, handler: HandlerType, now: u64) -> Result<()> {
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

    fn check_waiting(
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

    fn finalize(&mut self) {
        if self.flow().timeout_ms().is_some() && self.flow().has_async_steps() {
            self.disarm(Timer::TransactionTimeout);
        }
        self.emit(EventKind::Finish, None);
    }

    fn prepare(&mut self, step: StepIndex, now: u64) -> bool {
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

    fn check_all_steps(&mut self, now: u64) -> Scan {
        loop {
            let (scan, flags, completed, total) = self.compute_current_state(now);
            if self.fields.state == TransactionState::WaitingToCompensate
                && scan.next.is_empty()
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

    fn compute_current_state(&mut self, now: u64) -> (Scan, ScanFlags, usize, usize) {
        // The transaction's own `Arc` (not the flow's, which every running transaction of the
        // workflow shares: cloning that one makes the cores fight over its count).
        let shared = Arc::clone(&self.shared);
        let flow = &shared.flow;
        let mut pass = Pass {
            current: self.take_indices(),
            next: self.take_indices(),
            completed: 0,
            flags: ScanFlags::default(),
        };
        if self.fields.state == TransactionState::Compensating {
            // Only the open, uncompensated steps are visited (see `CompensateIndex`). A
            // compensated one counts as `visit` would conclude, without its checks (no timeout
            // applies to a compensation, nothing is left to call); a step compensates only once
            // its children are done with theirs, and they stay done, so `can_continue` holds.
            if self.compensate_index.is_none() {
                let reuse = self.spare_compensate_index.take();
                self.compensate_index = Some(CompensateIndex::build(self, reuse));
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
                let reuse = self.spare_index.take();
                self.index = Some(InvokeIndex::build(self, reuse));
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
        (
            Scan {
                current,
                next,
                remaining: total - completed,
            },
            flags,
            completed,
            total,
        )
    }

    /// Visits, in scan order, the steps the index of the side being scanned holds (the
    /// compensation's or the invoke side's); a visit may change the set as it goes.
    fn visit_indexed<const COMPENSATING: bool>(&mut self, flow: &Flow, now: u64, pass: &mut Pass) {
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
    fn visit(&mut self, flow: &Flow, step: StepIndex, now: u64, pass: &mut Pass, indexed: bool) {
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

    /// Forgets the invoke index (the scan it speeds up is over), keeping its buffers.
    fn drop_index(&mut self) {
        if let Some(index) = self.index.take() {
            self.spare_index = Some(index);
        }
    }

    /// Forgets the compensation index (the steps' flags changed), keeping its buffers.
    fn drop_compensate_index(&mut self) {
        if let Some(index) = self.compensate_index.take() {
            self.spare_compensate_index = Some(index);
        }
    }

    fn flag_steps_to_revert(&mut self) {
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

    fn check_step_timeout(&mut self, step: StepIndex, now: u64) -> bool {
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

    fn check_transaction_timeout(&mut self, current: &[StepIndex], now: u64) -> bool {
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

    fn handle_expiration(&mut self, step: StepIndex, round: &[StepIndex], now: u64) {
        if self.transaction_expired(now) || self.step_expired(step, now) {
            self.check_step_timeout(step, now);
            if round.contains(&step) {
                self.check_transaction_timeout(round, now);
            } else {
                self.check_transaction_timeout(&[step], now);
            }
        }
    }

    fn set_step_timeout(
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
    fn set_step_failure(
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

    fn skip_descendants(&mut self, step: StepIndex) {
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

    fn set_step_success(&mut self, step: StepIndex, response: Option<Data>) {
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

    fn skip_step(&mut self, step: StepIndex) {
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

    fn handle_success(&mut self, step: StepIndex, response: Option<Data>, now: u64) {
        let is_async = self.step_is_async(step);
        // Medusa saves a sync step's response here and again in setStepSuccess; once is enough.
        self.set_step_success(step, response);
        if is_async {
            self.schedule_retry(step, 0, now);
        }
    }

    fn handle_failure(
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

/// The side of a step as seen from outside: a convenience for observers.
pub fn side_of(run: &StepRun, handler: HandlerType) -> SideState {
    match handler {
        HandlerType::Invoke => run.invoke,
        HandlerType::Compensate => run.compensate,
    }
}

#[cfg(test)]
mod position_set_tests {
    use super::PositionSet;

    #[test]
    fn a_position_set_finds_the_next_position_across_words() {
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

#[cfg(test)]
mod counter_tests {
    use std::sync::Arc;

    use super::{Record, Round, Transaction, TransactionFields};
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
        let round = tx.next_round(10);
        assert!(matches!(round, Round::Finished | Round::Run { .. }));
        assert_eq!(tx.step(1).attempts, u32::MAX);
    }
}
