//! Errors as Medusa answers them: `{"type": …, "message": …}` with its type → status table.
//! A 500 sends a generic message; the detail goes to the log with the request id.

use std::borrow::Cow;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Medusa's error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// 404.
    NotFound,
    /// 400: the request's data is wrong.
    InvalidData,
    /// 400: the request is well formed but not allowed now.
    NotAllowed,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 409.
    Conflict,
    /// 422.
    DuplicateError,
    /// 500; the detail is logged, not sent.
    UnknownError,
}

impl ErrorType {
    /// The HTTP status Medusa answers with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::InvalidData | ErrorType::NotAllowed => StatusCode::BAD_REQUEST,
            ErrorType::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorType::Forbidden => StatusCode::FORBIDDEN,
            ErrorType::Conflict => StatusCode::CONFLICT,
            ErrorType::DuplicateError => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::UnknownError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error type.
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// What went wrong, for people.
    pub message: String,
    /// `unknown_error` on 500s, as Medusa.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
}

/// An error a handler returns; it answers with Medusa's body and status.
#[derive(Debug)]
pub struct ApiError {
    kind: ErrorType,
    message: Cow<'static, str>,
    /// What a 500 hides from the caller, logged instead.
    detail: Option<String>,
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorType, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            detail: None,
        }
    }

    /// `not_found` (404).
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorType::NotFound, message)
    }

    /// `invalid_data` (400).
    pub fn invalid_data(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorType::InvalidData, message)
    }

    /// `not_allowed` (400).
    pub fn not_allowed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorType::NotAllowed, message)
    }

    /// `unauthorized` (401), Medusa's `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(ErrorType::Unauthorized, "Unauthorized")
    }

    /// `forbidden` (403).
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorType::Forbidden, message)
    }

    /// `conflict` (409).
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorType::Conflict, message)
    }

    /// A 500: the caller reads "An unknown error occurred.", the log reads `detail`.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self {
            kind: ErrorType::UnknownError,
            message: "An unknown error occurred.".into(),
            detail: Some(detail.to_string()),
        }
    }

    /// The error type.
    pub fn kind(&self) -> ErrorType {
        self.kind
    }

    /// The message sent.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

/// Marks a 500's hidden detail on the response, so that the request's span logs it.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = (self.kind == ErrorType::UnknownError).then_some("unknown_error");
        let body = ErrorBody {
            kind: self.kind,
            message: self.message.into_owned(),
            code,
        };
        let mut response = (self.kind.status(), Json(body)).into_response();
        if let Some(detail) = self.detail {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

impl From<gorgon_data::Error> for ApiError {
    fn from(error: gorgon_data::Error) -> Self {
        use gorgon_data::ErrorKind;
        let kind = match error.kind() {
            ErrorKind::NotFound => ErrorType::NotFound,
            ErrorKind::InvalidData => ErrorType::InvalidData,
            ErrorKind::NotAllowed => ErrorType::NotAllowed,
            ErrorKind::Duplicate => ErrorType::DuplicateError,
            ErrorKind::Conflict => ErrorType::Conflict,
            ErrorKind::Unexpected => return ApiError::internal(error),
        };
        ApiError::new(kind, error.to_string())
    }
}

impl From<gorgon_framework::Error> for ApiError {
    fn from(error: gorgon_framework::Error) -> Self {
        match error {
            gorgon_framework::Error::Data(error) => error.into(),
            gorgon_framework::Error::UnknownEntity { .. } | gorgon_framework::Error::Link(_) => {
                ApiError::invalid_data(error.to_string())
            }
            gorgon_framework::Error::Workflow(error) => error.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<gorgon_orchestration::Error> for ApiError {
    fn from(error: gorgon_orchestration::Error) -> Self {
        use gorgon_orchestration::Error as Engine;
        match &error {
            Engine::UnknownWorkflow { workflow } => {
                ApiError::not_found(format!("Workflow with id \"{workflow}\" not found."))
            }
            Engine::TransactionNotFound { .. } | Engine::UnknownStep { .. } => {
                ApiError::not_found(error.to_string())
            }
            Engine::StepNotWaiting { .. }
            | Engine::WrongHandlerType { .. }
            | Engine::CannotCancel { .. }
            | Engine::AlreadyStarted { .. } => ApiError::not_allowed(error.to_string()),
            Engine::InvalidFilter { .. }
            | Engine::InvalidCursor { .. }
            | Engine::InvalidTransactionId { .. }
            | Engine::InvalidKey { .. }
            | Engine::TooLarge { .. } => ApiError::invalid_data(error.to_string()),
            _ => ApiError::internal(error),
        }
    }
}

impl From<gorgon_workflows::Error> for ApiError {
    fn from(error: gorgon_workflows::Error) -> Self {
        match error {
            gorgon_workflows::Error::Orchestration(engine) => engine.into(),
            // A run its steps refused and rolled back: the first refusal is the answer.
            gorgon_workflows::Error::Failed {
                state: gorgon_orchestration::TransactionState::Reverted,
                errors,
                ..
            } => ApiError::not_allowed(
                errors
                    .first()
                    .map(|e| e.error.message.clone())
                    .unwrap_or_else(|| "the workflow was reverted".into()),
            ),
            other => ApiError::internal(other),
        }
    }
}
