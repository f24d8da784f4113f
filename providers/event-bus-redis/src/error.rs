//! The crate's one error type.

/// What the Redis provider can fail with besides the bus errors of `gorgon_event_bus::Error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An [`Options`](crate::Options) field is out of range.
    #[error("invalid event bus option `{field}`: {reason}")]
    InvalidOptions {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A Redis command failed.
    #[error("{operation}: redis command failed")]
    Redis {
        /// The bus operation, e.g. `"release_group"`.
        operation: &'static str,
        /// The client error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered something this provider did not write (e.g. a foreign entry on the stream).
    #[error("{operation}: unexpected reply or entry {entry:?}: {reason}")]
    Decode {
        /// The bus operation.
        operation: &'static str,
        /// The stream entry id or key concerned.
        entry: String,
        /// What was wrong.
        reason: String,
    },
    /// A bus-level error (invalid name, pattern, id, ...).
    #[error(transparent)]
    Bus(#[from] gorgon_event_bus::Error),
}

impl Error {
    pub(crate) fn redis(operation: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
        move |source| Error::Redis { operation, source }
    }
}

impl From<Error> for gorgon_event_bus::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Bus(inner) => inner,
            Error::Redis { operation, .. } | Error::Decode { operation, .. } => {
                gorgon_event_bus::Error::Backend {
                    operation,
                    source: Box::new(error),
                }
            }
            Error::InvalidOptions { .. } => gorgon_event_bus::Error::Backend {
                operation: "connect",
                source: Box::new(error),
            },
        }
    }
}
