//! The crate's one error type.

/// Everything an [`EventBus`](crate::EventBus) operation can fail with.
///
/// Variants carry the offending id and the operation, so a log line alone says what went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An event name is empty, too long, or contains a character outside `[A-Za-z0-9._:/-]`.
    #[error("invalid event name {name:?}: {reason}")]
    InvalidEventName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A subscription pattern is not an event name, `*`, or a name prefix followed by one trailing `*`.
    #[error("invalid subscription pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A subscriber id is empty, too long, or contains a character outside `[A-Za-z0-9._:/-]`.
    #[error("invalid subscriber id {subscriber_id:?}: {reason}")]
    InvalidSubscriberId {
        /// The id as given.
        subscriber_id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An event group id is empty, too long, or contains whitespace or control characters.
    #[error("invalid event group id {group_id:?}: {reason}")]
    InvalidGroupId {
        /// The id as given.
        group_id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// `subscribe` was called twice with the same subscriber id for the same pattern on one bus.
    #[error("subscriber {subscriber_id:?} is already subscribed to {pattern:?}")]
    DuplicateSubscriber {
        /// The pattern of the existing subscription.
        pattern: String,
        /// The id used twice.
        subscriber_id: String,
    },
    /// A message could not be encoded or a stored event could not be decoded.
    #[error("{operation}: cannot (de)serialize event {event_name:?}")]
    Serialization {
        /// The bus operation, e.g. `"emit"`.
        operation: &'static str,
        /// The event concerned, if known.
        event_name: String,
        /// The underlying serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The provider's backend (Redis, ...) failed.
    #[error("{operation}: event bus backend failed")]
    Backend {
        /// The bus operation, e.g. `"release_group"`.
        operation: &'static str,
        /// The backend error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Staging these events would pass the bus's bound on staged events (groups of runs that
    /// have not finished); nothing was staged.
    #[error(
        "emit: {staged} events are staged in unsettled groups, the bus's bound; the run's events are refused"
    )]
    StagedFull {
        /// How many events are staged.
        staged: usize,
    },
    /// The bus was shut down; it accepts no more subscriptions.
    #[error("{operation}: the event bus is shut down")]
    ShutDown {
        /// The refused operation.
        operation: &'static str,
    },
}
