//! What a handler reports back.

use crate::data::Data;
use crate::log::StepError;

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
