//! The crate's error types: [`Error`] for definition, registration and engine operations,
//! [`RunError`] for a run that did not produce its result, [`StepFailure`] for what a step returns.

use gorgon_orchestration::{StepError, TransactionError, TransactionState};

/// Everything that can go wrong defining, registering or driving a workflow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two steps (or a step and a `when` block, or a hook) of one workflow share a name.
    #[error(
        "workflow {workflow}: step {step} is already defined; rename one use with `.named(...)`"
    )]
    DuplicateStep {
        /// The workflow being defined.
        workflow: String,
        /// The name used twice.
        step: String,
    },
    /// A handle of another workflow definition was used.
    #[error("workflow {workflow}: step {step} was given a handle from another workflow definition")]
    ForeignHandle {
        /// The workflow being defined.
        workflow: String,
        /// The step (or transform) that received the handle.
        step: String,
    },
    /// A step inside `parallel` consumes the output of a step of the same `parallel` block.
    #[error(
        "workflow {workflow}: step {step} uses a value produced in the same parallel block; move it after the block"
    )]
    ParallelDependency {
        /// The workflow being defined.
        workflow: String,
        /// The step concerned.
        step: String,
    },
    /// Something that cannot be used inside `parallel` was (a `when` nested in a `when`).
    #[error("workflow {workflow}: `{what}` cannot be used inside `parallel` (at {step})")]
    NotInParallel {
        /// The workflow being defined.
        workflow: String,
        /// What was used.
        what: &'static str,
        /// Its name.
        step: String,
    },
    /// `with_hook` names a hook the workflow does not declare.
    #[error("workflow {workflow} declares no hook {hook}")]
    UnknownHook {
        /// The workflow.
        workflow: String,
        /// The hook name.
        hook: String,
    },
    /// `with_hook` on a hook that already has a handler.
    #[error("cannot define multiple hook handlers for the {hook} hook of workflow {workflow}")]
    HookAlreadyBound {
        /// The workflow.
        workflow: String,
        /// The hook name.
        hook: String,
    },
    /// `with_hook` with a hook of the same name but other types than the declared one.
    #[error("workflow {workflow}: hook {hook} is declared as {declared}")]
    HookType {
        /// The workflow.
        workflow: String,
        /// The hook name.
        hook: String,
        /// The declared hook type.
        declared: &'static str,
    },
    /// A service was asked for (or declared by a step) but is not in the registry.
    #[error("workflow {workflow}, step {step}: no service of type {type_name} is registered")]
    MissingService {
        /// `std::any::type_name` of the service.
        type_name: &'static str,
        /// The workflow concerned.
        workflow: String,
        /// The step that needs it.
        step: String,
    },
    /// The workflow is not registered on this application (or another flow is registered under
    /// its name, e.g. the version without a hook handler).
    #[error("workflow {workflow} is not registered on this app (with this flow)")]
    NotRegistered {
        /// The workflow name.
        workflow: String,
    },
    /// An idempotency key names another workflow than the one given.
    #[error("idempotency key {key} does not belong to workflow {workflow}")]
    KeyMismatch {
        /// The key, as text.
        key: String,
        /// The workflow given.
        workflow: String,
    },
    /// `set_step_success` got a value of another type than the step's output.
    #[error("workflow {workflow}, step {step}: expected an output of type {expected}")]
    WrongOutputType {
        /// The workflow.
        workflow: String,
        /// The step.
        step: String,
        /// The step's output type.
        expected: &'static str,
    },
    /// A saved value (from a store) could not be decoded into the type a step expects.
    #[error("workflow {workflow}: decoding the saved value of {source_name} failed: {reason}")]
    Decode {
        /// The workflow.
        workflow: String,
        /// Where the value comes from: a step name or `input`.
        source_name: String,
        /// The decoder's message.
        reason: String,
    },
    /// The orchestrator refused an operation (invalid flow, unknown transaction, not waiting, ...).
    #[error(transparent)]
    Orchestration(#[from] gorgon_orchestration::Error),
    /// A step emitted an event (or the app was asked to release or discard an event group) but
    /// the app has no event bus: give it one with [`App::with_event_bus`](crate::App::with_event_bus).
    #[error(
        "{operation} in event group {group_id}: the app has no event bus (give it one with App::with_event_bus)"
    )]
    NoEventBus {
        /// The refused operation: `emit`, `discard_events`, `release_events`, ...
        operation: &'static str,
        /// The event group concerned (the run's).
        group_id: String,
    },
    /// The event bus refused or failed an operation on a run's event group (an invalid event
    /// name or group id, a payload that does not serialize, the backend being down).
    #[error("{operation} in event group {group_id}: {source}")]
    EventBus {
        /// The operation: `emit`, `release_events`, `discard_events`.
        operation: &'static str,
        /// The event group concerned.
        group_id: String,
        /// The bus's error.
        #[source]
        source: gorgon_event_bus::Error,
    },
}

/// A run that did not end with its result.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run failed and was compensated (`reverted`) or failed while compensating (`failed`).
    #[error(
        "workflow {workflow} transaction {transaction_id} ended {state}: {}",
        first_error(errors)
    )]
    Failed {
        /// The workflow.
        workflow: String,
        /// The transaction id.
        transaction_id: String,
        /// The final state.
        state: TransactionState,
        /// The errors of the run, in the order they happened.
        errors: Vec<TransactionError>,
    },
    /// The run is waiting (an async step, a retry interval): drive it and read its result later.
    #[error("workflow {workflow} transaction {transaction_id} has not finished (state {state})")]
    NotFinished {
        /// The workflow.
        workflow: String,
        /// The transaction id.
        transaction_id: String,
        /// The current state.
        state: TransactionState,
    },
    /// The run finished but its result is absent (the step producing it was skipped).
    #[error("workflow {workflow} transaction {transaction_id} finished without a result (skipped)")]
    NoResult {
        /// The workflow.
        workflow: String,
        /// The transaction id.
        transaction_id: String,
    },
    /// The run could not be started or driven.
    #[error(transparent)]
    Engine(#[from] Error),
}

fn first_error(errors: &[TransactionError]) -> String {
    match errors.first() {
        Some(e) => format!("{} ({}): {}", e.action, e.handler_type, e.error),
        None => "no error recorded".to_string(),
    }
}

impl From<gorgon_orchestration::Error> for RunError {
    fn from(error: gorgon_orchestration::Error) -> Self {
        RunError::Engine(Error::Orchestration(error))
    }
}

impl RunError {
    /// The state of the transaction, when it was run.
    pub fn state(&self) -> Option<TransactionState> {
        match self {
            RunError::Failed { state, .. } | RunError::NotFinished { state, .. } => Some(*state),
            RunError::NoResult { .. } => Some(TransactionState::Done),
            RunError::Engine(_) => None,
        }
    }
    /// The errors recorded on the run (empty unless it failed).
    pub fn errors(&self) -> &[TransactionError] {
        match self {
            RunError::Failed { errors, .. } => errors,
            _ => &[],
        }
    }
}

/// What a step's invoke or compensation returns on error: temporary (retried while
/// `max_retries` allow) unless made [`permanent`](StepFailure::permanent).
///
/// Any `std::error::Error` converts into it, so `?` works in steps; [`Error`] included (a
/// missing service is then a step failure naming the type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailure {
    pub(crate) error: StepError,
    pub(crate) permanent: bool,
}

impl StepFailure {
    /// A temporary failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        StepFailure {
            error: StepError::new(message),
            permanent: false,
        }
    }
    /// A permanent failure with this message: never retried.
    pub fn permanent(message: impl Into<String>) -> Self {
        StepFailure {
            error: StepError::new(message),
            permanent: true,
        }
    }
    /// A failure with a kind name (kept on the transaction's error).
    pub fn named(name: impl Into<String>, message: impl Into<String>) -> Self {
        StepFailure {
            error: StepError::named(name, message),
            permanent: false,
        }
    }
    /// This failure, made permanent.
    pub fn into_permanent(mut self) -> Self {
        self.permanent = true;
        self
    }
    /// Whether the failure is permanent.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
    /// The error as the transaction records it.
    pub fn error(&self) -> &StepError {
        &self.error
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StepFailure {
    fn from(error: E) -> Self {
        StepFailure::new(error.to_string())
    }
}
