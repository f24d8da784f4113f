//! What the machine asks of its caller: handler calls, records to append, timers, events.

use serde::{Deserialize, Serialize};

use crate::flow::StepIndex;
use crate::log::{Record, Timer};
use crate::state::HandlerType;

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

/// A timer change the machine asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Arm the timer to fire at this time (replacing an armed one).
    Arm(Timer, u64),
    /// Disarm the timer.
    Disarm(Timer),
}

/// What the machine asks of its caller, written into buffers the caller owns and reuses: the
/// records to append, then the timers to arm or disarm and the events to publish.
///
/// The machine adds to it at every event it is fed; the caller ends a batch with
/// [`Transaction::end_batch`](super::Transaction::end_batch), appends the records, acts on the
/// timers and events (timers and events follow what is durable), and clears it. A caller that
/// lets a batch wait (nothing could observe it yet) keeps adding the next event's actions to
/// the same collector: the next [`end_batch`](super::Transaction::end_batch) then records each
/// changed step once.
#[derive(Debug)]
pub struct Actions {
    /// Records to append, in order, before acting on anything else here.
    pub records: Vec<Record>,
    /// Timers to arm or disarm, in order.
    pub timers: Vec<TimerAction>,
    /// Events to publish (about a step, when one is given), in order.
    pub events: Vec<(EventKind, Option<StepIndex>)>,
    /// Whether the machine queues events: off while no one would receive them.
    pub events_wanted: bool,
}

impl Default for Actions {
    fn default() -> Self {
        Actions {
            records: Vec::new(),
            timers: Vec::new(),
            events: Vec::new(),
            events_wanted: true,
        }
    }
}

impl Actions {
    /// Forgets every action, keeping the buffers' room.
    pub fn clear(&mut self) {
        self.records.clear();
        self.timers.clear();
        self.events.clear();
    }
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

/// The handler calls of one round, written by
/// [`Transaction::next_round`](super::Transaction::next_round) into a buffer the caller owns
/// and reuses. Sync calls run concurrently and are awaited; async ones are fired after them.
#[derive(Debug, Default)]
pub struct Round {
    pub(super) calls: Vec<Dispatch>,
    pub(super) steps: Vec<StepIndex>,
    pub(super) continue_after: bool,
    /// The scan's list of the steps in flight (the machine's scratch space).
    pub(super) in_flight: Vec<StepIndex>,
}

impl Round {
    /// The calls of this round, in scan order.
    pub fn calls(&self) -> &[Dispatch] {
        &self.calls
    }
    /// The steps prepared in this round (a timeout found while they run applies to them).
    pub fn steps(&self) -> &[StepIndex] {
        &self.steps
    }
    /// Whether another round follows this one once its sync calls returned.
    pub fn continue_after(&self) -> bool {
        self.continue_after
    }
}

/// What the engine should do next with a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Make the calls of the round.
    Run,
    /// The transaction has finished.
    Finished,
}
