//! The crate's error types: [`Error`] for everything a caller of the SDK meets (definition,
//! registration, a run that did not produce its result, the engine), [`StepFailure`] for what
//! a step returns.

use gorgon_orchestration::{HandlerType, StepError, TransactionError, TransactionState};

/// Everything that can go wrong defining, registering, running or driving a workflow: one type
/// for the caller. [`state`](Error::state) and [`errors`](Error::errors) read a run's end.
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
    /// A hook binding names a hook the workflow does not declare.
    #[error("workflow {workflow} declares no hook {hook}")]
    UnknownHook {
        /// The workflow.
        workflow: String,
        /// The hook name.
        hook: String,
    },
    /// A hook bound on an app after its workflow was registered there.
    #[error(
        "workflow {workflow}: bind hook {hook} before registering the workflow (its flow includes the handler's step)"
    )]
    HookAfterRegistration {
        /// The workflow.
        workflow: String,
        /// The hook name.
        hook: String,
    },
    /// A second handler for a hook that already has one.
    #[error("cannot define multiple hook handlers for the {hook} hook of workflow {workflow}")]
    HookAlreadyBound {
        /// The workflow.
        workflow: String,
        /// The hook name.
        hook: String,
    },
    /// A hook binding with a hook of the same name but other types than the declared one.
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
    /// The run failed and was compensated (`reverted`), or failed while compensating
    /// (`failed`: a compensation failed for good, so work done by the run may still be in
    /// place; the message leads with it).
    #[error(
        "workflow {workflow} transaction {transaction_id} ended {state}: {}",
        describe_end(state, errors)
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
    /// The run waits for the outside: an async step for
    /// [`App::set_step_success`](crate::App::set_step_success) / `set_step_failure`, or a
    /// step for [`App::resume`](crate::App::resume). Read its result later, for example with
    /// [`App::wait_until_finished`](crate::App::wait_until_finished).
    #[error(
        "workflow {workflow} transaction {transaction_id} has not finished (state {state}){}",
        if waiting_on.is_empty() { String::new() } else { format!(": it waits on {}", waiting_on.join(", ")) }
    )]
    NotFinished {
        /// The workflow.
        workflow: String,
        /// The transaction id.
        transaction_id: String,
        /// The current state.
        state: TransactionState,
        /// What it waits on, one entry per step: ``step `charge` (set_step_success)``.
        waiting_on: Vec<String>,
    },
    /// The run finished but its result is absent (the step producing it was skipped).
    #[error("workflow {workflow} transaction {transaction_id} finished without a result (skipped)")]
    NoResult {
        /// The workflow.
        workflow: String,
        /// The transaction id.
        transaction_id: String,
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

fn describe_end(state: &TransactionState, errors: &[TransactionError]) -> String {
    let step_error =
        |e: &TransactionError| format!("step `{}` ({}): {}", e.action, e.handler_type, e.error);
    let compensations: Vec<String> = errors
        .iter()
        .filter(|e| e.handler_type == HandlerType::Compensate)
        .map(step_error)
        .collect();
    let cause = errors
        .iter()
        .find(|e| e.handler_type == HandlerType::Invoke)
        .map(step_error);
    match (compensations.is_empty(), cause) {
        (true, Some(cause)) if errors.len() > 1 => {
            format!("{cause} (and {} more errors)", errors.len() - 1)
        }
        (true, Some(cause)) => cause,
        (true, None) if *state == TransactionState::Reverted => "cancelled".to_string(),
        (true, None) => "no error recorded".to_string(),
        // A failed compensation leaves done work in place: it leads, for an operator to act on.
        (false, cause) => format!(
            "compensation failed, done work was not undone: {}{}",
            compensations.join("; "),
            cause
                .map(|c| format!("; the run failed at {c}"))
                .unwrap_or_default()
        ),
    }
}

impl Error {
    /// The state of the transaction, when the error is about a run's end.
    pub fn state(&self) -> Option<TransactionState> {
        match self {
            Error::Failed { state, .. } | Error::NotFinished { state, .. } => Some(*state),
            Error::NoResult { .. } => Some(TransactionState::Done),
            _ => None,
        }
    }
    /// The errors recorded on the run (empty unless it failed).
    pub fn errors(&self) -> &[TransactionError] {
        match self {
            Error::Failed { errors, .. } => errors,
            _ => &[],
        }
    }
    /// The step errors of compensations that failed for good: work the run did that may
    /// still be in place (empty unless the run ended `failed`).
    pub fn failed_compensations(&self) -> impl Iterator<Item = &TransactionError> {
        self.errors()
            .iter()
            .filter(|e| e.handler_type == HandlerType::Compensate)
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
    /// A temporary failure with the error's message; a missing service
    /// ([`Error::MissingService`]) is a configuration error, which no retry can mend: it is
    /// permanent.
    fn from(error: E) -> Self {
        let any: &dyn std::any::Any = &error;
        let permanent = matches!(
            any.downcast_ref::<Error>(),
            Some(Error::MissingService { .. })
        );
        StepFailure {
            error: StepError::new(error.to_string()),
            permanent,
        }
    }
}
