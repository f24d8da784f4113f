//! What a transaction shares with its running handlers: its identity, payload and responses.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::data::Data;
use crate::flow::{Flow, StepIndex};
use crate::state::HandlerType;

/// The responses saved so far, one slot per step and side; shared with running handlers.
#[derive(Debug, Default)]
pub struct Responses {
    /// Per step: the invoke's response, then the compensation's (one allocation for both).
    slots: Vec<[Mutex<Option<Data>>; 2]>,
}

impl Responses {
    pub(super) fn new(len: usize) -> Self {
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
    pub(super) fn set(&self, step: StepIndex, side: HandlerType, data: Option<Data>) {
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
