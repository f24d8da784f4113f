//! The crate's error type.

use crate::state::{HandlerType, StepState, StepStatus, TransactionState};

/// Everything that can go wrong in the orchestration crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flow definition or workflow option is malformed; `path` names the field.
    #[error("invalid flow at {path}: {reason}")]
    InvalidFlow {
        /// The path of the offending field, as `next.next[1].maxRetries`.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A workflow with this name is already registered with a different flow.
    #[error("workflow {workflow} is already registered with a different flow")]
    DuplicateWorkflow {
        /// The workflow name.
        workflow: String,
    },
    /// No workflow with this name is registered.
    #[error("workflow {workflow} is not registered")]
    UnknownWorkflow {
        /// The workflow name.
        workflow: String,
    },
    /// No transaction with this id exists for this workflow.
    #[error("transaction {transaction} of workflow {workflow} could not be found")]
    TransactionNotFound {
        /// The workflow name.
        workflow: String,
        /// The transaction id.
        transaction: String,
    },
    /// A transaction with this id is running already.
    #[error("transaction {transaction} of workflow {workflow} is already started")]
    AlreadyStarted {
        /// The workflow name.
        workflow: String,
        /// The transaction id.
        transaction: String,
    },
    /// Another worker holds this transaction's lease (it is advancing it now).
    #[error("transaction {transaction} of workflow {workflow} is being advanced by worker {owner}")]
    Leased {
        /// The workflow name.
        workflow: String,
        /// The transaction id.
        transaction: String,
        /// The worker holding the lease.
        owner: String,
    },
    /// A write was refused because the writer's lease was taken over (its epoch is stale).
    #[error(
        "transaction {transaction} of workflow {workflow}: epoch {epoch} is no longer current (the lease was taken over)"
    )]
    Fenced {
        /// The workflow name.
        workflow: String,
        /// The transaction id.
        transaction: String,
        /// The writer's stale epoch.
        epoch: u64,
    },
    /// An idempotency key does not have the form `workflow:transaction:action:invoke|compensate`.
    #[error("invalid idempotency key `{key}`: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value larger than a durable store holds ([`MAX_VALUE_BYTES`](crate::store::MAX_VALUE_BYTES)):
    /// a workflow input or a step's response.
    #[error(
        "{transaction}: the {what} is {bytes} bytes of JSON, more than the {limit} a store holds"
    )]
    TooLarge {
        /// What was too large: `payload` or `record`.
        what: &'static str,
        /// The transaction (`workflow:id`).
        transaction: String,
        /// Its size as JSON.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A transaction id is empty or contains `:`.
    #[error("invalid transaction id `{transaction}`: {reason}")]
    InvalidTransactionId {
        /// The id as given.
        transaction: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key names a step the workflow does not have.
    #[error("workflow {workflow} has no step {action}")]
    UnknownStep {
        /// The workflow name.
        workflow: String,
        /// The action named by the key.
        action: String,
    },
    /// The key names the invoke side of a compensating step, or the reverse.
    #[error("step {action} is not running its {handler} handler")]
    WrongHandlerType {
        /// The step's action.
        action: String,
        /// The handler type named by the key.
        handler: HandlerType,
    },
    /// `set_step_success`, `set_step_failure` or `retry_step` on a step that is not waiting.
    #[error("cannot {operation} of step {action} when its status is {status}")]
    StepNotWaiting {
        /// What was asked.
        operation: &'static str,
        /// The step's action.
        action: String,
        /// The step's current status.
        status: StepStatus,
    },
    /// A cancel of a transaction that failed for good or is already compensating.
    #[error("cannot cancel transaction {transaction} in state {state}")]
    CannotCancel {
        /// The transaction id.
        transaction: String,
        /// Its state.
        state: TransactionState,
    },
    /// The state machine was asked for a transition Medusa does not allow.
    #[error("step {action}: updating state from {from} to {to} is not allowed")]
    InvalidTransition {
        /// The step's action.
        action: String,
        /// The current state.
        from: StepState,
        /// The requested state.
        to: StepState,
    },
    /// A store operation failed.
    #[error("store {operation} failed for {transaction}: {reason}")]
    Store {
        /// What the store was doing.
        operation: &'static str,
        /// The transaction concerned.
        transaction: String,
        /// The store's own message.
        reason: String,
    },
    /// A store operation over many transactions (a listing, a purge) failed.
    #[error("store {operation} failed: {reason}")]
    StoreQuery {
        /// What the store was doing.
        operation: &'static str,
        /// The store's own message.
        reason: String,
    },
    /// A listing filter is out of range.
    #[error("invalid listing filter {field}: {reason}")]
    InvalidFilter {
        /// The filter's field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A listing cursor is not one this store handed out.
    #[error("invalid listing cursor `{cursor}`: {reason}")]
    InvalidCursor {
        /// The cursor as given.
        cursor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An event relay operation failed.
    #[error("event relay {operation} failed: {reason}")]
    Relay {
        /// What the relay was doing.
        operation: &'static str,
        /// The relay's own message.
        reason: String,
    },
    /// A stored log cannot be replayed onto the registered flow (a step was renamed or removed).
    #[error("stored transaction {transaction} does not match workflow {workflow}: {reason}")]
    Replay {
        /// The workflow name.
        workflow: String,
        /// The transaction id.
        transaction: String,
        /// What does not match.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether a store operation failed or was refused: a write may or may not have happened,
    /// so an in-memory copy of the transaction can no longer be trusted.
    pub fn is_store_failure(&self) -> bool {
        matches!(self, Error::Store { .. } | Error::Fenced { .. })
    }
}
