//! The data layer's one error type, and the Medusa error type each variant maps to.

use std::borrow::Cow;

/// What can go wrong reading or writing module data. Every variant that comes from input names
/// the entity, field or operator at fault, so an HTTP layer can answer with a 4xx that says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No record of that entity has that id (or it is soft-deleted).
    #[error("{entity} with id: {id} was not found")]
    NotFound {
        /// The entity's type name, as Medusa writes it (`Brand`).
        entity: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A filter, selection, order or write names a field the entity does not have.
    #[error("{entity} has no field `{field}`{help}")]
    UnknownField {
        /// The entity's type name.
        entity: &'static str,
        /// The field as given (a dotted path for nested fields).
        field: String,
        /// A hint (the known fields or relations), starting with `; `, or empty.
        help: String,
    },
    /// A filter uses an operator this layer does not know.
    #[error(
        "unknown operator `{operator}` on `{field}`; the operators are $eq $ne $in $nin $lt $lte $gt $gte $like $ilike $exists $and $or"
    )]
    UnknownOperator {
        /// The field the operator was applied to.
        field: String,
        /// The operator as given.
        operator: String,
    },
    /// A value does not fit the field (a string where a number belongs, a malformed timestamp…).
    #[error("invalid value for `{field}`: {reason}")]
    InvalidValue {
        /// The field (dotted for nested filters).
        field: String,
        /// What was expected.
        reason: Cow<'static, str>,
    },
    /// A create leaves out a field that has no default and cannot be null.
    #[error("{entity}: `{field}` is required")]
    MissingField {
        /// The entity's type name.
        entity: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A write would break a unique constraint (Medusa's `duplicate_error`).
    #[error("{entity} already exists with that {detail}")]
    Duplicate {
        /// The entity's type name.
        entity: &'static str,
        /// The constraint or columns, as the database names them.
        detail: String,
    },
    /// A write would break a foreign key or another constraint (Medusa's `not_allowed`).
    #[error("{entity} cannot be written: {detail}")]
    Constraint {
        /// The entity's type name.
        entity: &'static str,
        /// The constraint, as the database names it.
        detail: String,
    },
    /// Two transactions collided (a deadlock or a serialization failure); retrying may succeed.
    #[error("the write conflicted with a concurrent transaction; retry it")]
    Conflict,
    /// A row could not be read into the requested type.
    #[error("a {entity} read from the database does not fit its type: {source}")]
    Decode {
        /// The entity's type name.
        entity: &'static str,
        /// Serde's explanation, with the field's path.
        #[source]
        source: serde_json::Error,
    },
    /// A migration could not be planned or applied.
    #[error("migration `{name}` of module `{module}`: {reason}")]
    Migration {
        /// The module the migration belongs to.
        module: String,
        /// The migration's name (its file name without `.sql`).
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The database URL names a database this layer does not support.
    #[error("unsupported database URL `{0}`; use postgres://… or sqlite:…")]
    UnsupportedUrl(String),
    /// A statement was issued through a transaction that had already ended.
    #[error("the transaction has already ended")]
    TransactionClosed,
    /// Any other database failure (connection lost, SQL rejected). The text is logged, not sent
    /// to clients.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

/// The Medusa error type a data error answers with over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `not_found` (404).
    NotFound,
    /// `invalid_data` (400).
    InvalidData,
    /// `not_allowed` (400).
    NotAllowed,
    /// `duplicate_error` (422).
    Duplicate,
    /// `conflict` (409).
    Conflict,
    /// `unexpected_state` / `db_error` (500).
    Unexpected,
}

impl Error {
    /// The Medusa error type this error answers with.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::UnknownField { .. }
            | Error::UnknownOperator { .. }
            | Error::InvalidValue { .. }
            | Error::MissingField { .. } => ErrorKind::InvalidData,
            Error::Constraint { .. } => ErrorKind::NotAllowed,
            Error::Duplicate { .. } => ErrorKind::Duplicate,
            Error::Conflict => ErrorKind::Conflict,
            Error::Decode { .. }
            | Error::Migration { .. }
            | Error::UnsupportedUrl(_)
            | Error::TransactionClosed
            | Error::Database(_) => ErrorKind::Unexpected,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<Cow<'static, str>>) -> Self {
        Error::InvalidValue {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Reads a database error into a typed one where the database says what broke.
    pub(crate) fn from_sqlx(entity: &'static str, error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            let code = db.code().unwrap_or_default();
            let detail = db
                .constraint()
                .map(str::to_owned)
                .unwrap_or_else(|| db.message().to_owned());
            match code.as_ref() {
                // PostgreSQL: unique_violation; SQLite: SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY.
                "23505" | "2067" | "1555" => return Error::Duplicate { entity, detail },
                // PostgreSQL: foreign_key, check, not_null; SQLite: _FOREIGNKEY, _CHECK, _NOTNULL.
                "23503" | "23514" | "23502" | "787" | "275" | "1299" => {
                    return Error::Constraint { entity, detail };
                }
                // PostgreSQL: serialization_failure, deadlock_detected; SQLite: BUSY, LOCKED.
                "40001" | "40P01" | "5" | "6" | "517" | "262" => return Error::Conflict,
                _ => {}
            }
        }
        tracing::debug!(%error, entity, "database error");
        Error::Database(error)
    }
}

/// The result type of the data layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
