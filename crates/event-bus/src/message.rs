//! What travels on the bus: messages, the events handlers receive, and the ids and patterns that name them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Error;

/// Longest accepted event name, pattern, subscriber id or group id, in bytes.
pub const MAX_NAME_LEN: usize = 256;

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')
}

/// Checks an event name: 1..=256 characters from `[A-Za-z0-9._:/-]` (so never `*`).
pub fn validate_event_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 256 bytes"
    } else if !name.chars().all(name_char) {
        "only ASCII letters, digits and . _ - : / are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidEventName {
        name: name.to_owned(),
        reason,
    })
}

/// A message to emit: an event name, a JSON payload and metadata.
///
/// ```
/// use gorgon_event_bus::{EventGroupId, Message};
/// let group = EventGroupId::new("run-42").unwrap();
/// let msg = Message::new("order.placed", serde_json::json!({"id": "order_1"})).in_group(group);
/// assert!(msg.metadata.event_group_id.is_some());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The event name, e.g. `order.placed`.
    pub name: String,
    /// The payload.
    pub data: Value,
    /// Group id, timestamps and free-form entries.
    #[serde(default)]
    pub metadata: Metadata,
}

impl Message {
    /// A message with empty metadata.
    pub fn new(name: impl Into<String>, data: Value) -> Self {
        Self {
            name: name.into(),
            data,
            metadata: Metadata::default(),
        }
    }

    /// The same message, staged under `group` when emitted (see [`EventBus::release_group`](crate::EventBus::release_group)).
    #[must_use]
    pub fn in_group(mut self, group: EventGroupId) -> Self {
        self.metadata.event_group_id = Some(group);
        self
    }
}

/// Metadata of a message. Unknown keys are kept in [`Metadata::extra`] and delivered unchanged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// When set, `emit` stages the message in this group instead of delivering it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_group_id: Option<EventGroupId>,
    /// Stamped by `emit` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Stamped when the event is published (at `emit`, or at `release_group` for grouped events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
    /// Any other entries, e.g. a correlation id.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// The id of one emitted event, assigned by `emit`; stable across retries and redeliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a handler receives: the message as published, plus its id and the attempt number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned at emit; the same on every redelivery, so handlers can deduplicate on it.
    pub id: EventId,
    /// The event name.
    pub name: String,
    /// The payload.
    pub data: Value,
    /// Metadata, with `created_at` and `published_at` stamped.
    pub metadata: Metadata,
    /// 1 on first delivery to this subscriber, 2 on its first retry, and so on.
    pub attempt: u32,
}

/// The id of an event group: usually the id of the workflow run that emits the events.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventGroupId(String);

impl EventGroupId {
    /// Validates `id`: 1..=256 bytes, no whitespace or control characters.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        let reason = if id.is_empty() {
            "empty"
        } else if id.len() > MAX_NAME_LEN {
            "longer than 256 bytes"
        } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            "contains whitespace or control characters"
        } else {
            return Ok(Self(id));
        };
        Err(Error::InvalidGroupId {
            group_id: id,
            reason,
        })
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventGroupId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        Self::new(value)
    }
}

impl From<EventGroupId> for String {
    fn from(value: EventGroupId) -> Self {
        value.0
    }
}

impl fmt::Display for EventGroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a subscriber, e.g. `send-order-confirmation`: the unit of delivery, retry and completion.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubscriberId(String);

impl SubscriberId {
    /// Validates `id`: 1..=256 characters from `[A-Za-z0-9._:/-]`.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        match validate_event_name(&id) {
            Ok(()) => Ok(Self(id)),
            Err(Error::InvalidEventName { reason, .. }) => Err(Error::InvalidSubscriberId {
                subscriber_id: id,
                reason,
            }),
            Err(other) => Err(other),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SubscriberId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        Self::new(value)
    }
}

impl From<SubscriberId> for String {
    fn from(value: SubscriberId) -> Self {
        value.0
    }
}

impl fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which event names a subscription receives.
///
/// - `order.placed`: exactly that name;
/// - `*`: every name;
/// - `order.*` (any prefix followed by one trailing `*`): every name starting with `order.`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    kind: PatternKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PatternKind {
    Exact,
    All,
    Prefix(usize),
}

impl Pattern {
    /// Parses a pattern; `*` is allowed only as the last character.
    pub fn parse(pattern: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(invalid("empty"));
        }
        if pattern.len() > MAX_NAME_LEN {
            return Err(invalid("longer than 256 bytes"));
        }
        let (body, kind) = match pattern.strip_suffix('*') {
            Some("") => ("", PatternKind::All),
            Some(prefix) => (prefix, PatternKind::Prefix(prefix.len())),
            None => (pattern, PatternKind::Exact),
        };
        if body.contains('*') {
            return Err(invalid("`*` is only allowed as the last character"));
        }
        if !body.chars().all(name_char) {
            return Err(invalid(
                "only ASCII letters, digits, . _ - : / and a trailing * are allowed",
            ));
        }
        Ok(Self {
            text: pattern.to_owned(),
            kind,
        })
    }

    /// Whether an event called `name` is delivered to this pattern.
    pub fn matches(&self, name: &str) -> bool {
        match self.kind {
            PatternKind::Exact => self.text == name,
            PatternKind::All => true,
            PatternKind::Prefix(len) => name.starts_with(&self.text[..len]),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_all_and_prefix() {
        let exact = Pattern::parse("order.placed").unwrap();
        assert!(exact.matches("order.placed"));
        assert!(!exact.matches("order.placed.x"));
        let all = Pattern::parse("*").unwrap();
        assert!(all.matches("anything"));
        let prefix = Pattern::parse("order.*").unwrap();
        assert!(prefix.matches("order.placed"));
        assert!(prefix.matches("order.item.added"));
        assert!(!prefix.matches("orders.placed"));
        assert!(!prefix.matches("product.created"));
    }

    #[test]
    fn bad_patterns_and_names_are_typed_errors() {
        for bad in ["", "a*b", "**", "order *", "a|b"] {
            assert!(
                matches!(Pattern::parse(bad), Err(Error::InvalidPattern { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            validate_event_name("a*"),
            Err(Error::InvalidEventName { .. })
        ));
        assert!(matches!(
            SubscriberId::new(""),
            Err(Error::InvalidSubscriberId { .. })
        ));
        assert!(matches!(
            EventGroupId::new("a b"),
            Err(Error::InvalidGroupId { .. })
        ));
    }

    #[test]
    fn metadata_keeps_unknown_entries() {
        let json = serde_json::json!({
            "name": "a.b",
            "data": 1,
            "metadata": {"event_group_id": "g1", "correlation": "c-1"}
        });
        let msg: Message = serde_json::from_value(json).unwrap();
        assert_eq!(msg.metadata.event_group_id.as_ref().unwrap().as_str(), "g1");
        assert_eq!(msg.metadata.extra["correlation"], "c-1");
        let back = serde_json::to_value(&msg).unwrap();
        assert_eq!(back["metadata"]["correlation"], "c-1");
    }
}
