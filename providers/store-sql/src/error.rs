//! The errors store operations report, and what callers are told of a database failure.

use gorgon_orchestration::{Error as StoreError, TransactionKey};

/// The error of an operation on one transaction.
pub fn store_error(
    operation: &'static str,
    key: &TransactionKey,
    reason: impl Reason,
) -> StoreError {
    StoreError::Store {
        operation,
        transaction: key.to_string(),
        reason: reason.reason(operation),
    }
}

/// The error of a query over many transactions (a listing, a purge).
pub fn query_error(operation: &'static str, error: impl Reason) -> StoreError {
    StoreError::StoreQuery {
        operation,
        reason: error.reason(operation),
    }
}

/// The error of a create whose id an unfinished run holds.
pub fn already_started(key: &TransactionKey) -> StoreError {
    StoreError::AlreadyStarted {
        workflow: key.workflow.to_string(),
        transaction: key.id.to_string(),
    }
}

/// What a caller is told about a failure. The database's own text (which may quote data or
/// internals) goes to the log; callers get its kind and, for a refusal, the SQLSTATE code.
pub trait Reason {
    /// The text for the caller of `operation`.
    fn reason(self, operation: &'static str) -> String;
}

impl Reason for &str {
    fn reason(self, _: &'static str) -> String {
        self.to_string()
    }
}

impl Reason for String {
    fn reason(self, _: &'static str) -> String {
        self
    }
}

impl Reason for sqlx::Error {
    fn reason(self, operation: &'static str) -> String {
        tracing::warn!(operation, error = %self, "a database operation failed");
        coarse(&self)
    }
}

/// The kind of a database error, without its text.
fn coarse(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => match e.code() {
            Some(code) => format!("the database refused it (code {code})"),
            None => "the database refused it".to_string(),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed => "the database could not be reached".to_string(),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => "a stored value could not be read".to_string(),
        _ => "the database operation failed".to_string(),
    }
}
