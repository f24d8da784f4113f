//! The durable log format: what a store appends for a transaction, one batch per step event,
//! and what a replay folds back into its state. Changing it is a migration of every store.

use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::flow::StepIndex;
use crate::state::{HandlerType, StepRun, TransactionState};

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
    pub(crate) fn step_timeout() -> Self {
        StepError::named("TransactionStepTimeoutError", "Step timeout")
    }
    pub(crate) fn transaction_timeout() -> Self {
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
