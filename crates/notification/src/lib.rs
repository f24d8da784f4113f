//! Notifications: the [`Notifier`] module, the [`Provider`] trait, its local provider and the
//! suite every provider passes.
//!
//! Medusa's Notification module, rebuilt: `send(to, channel, template, data, idempotency_key)`
//! renders a template and hands the message to the one provider registered for the channel.
//! Production providers live in `gorgon-notification-smtp` and `gorgon-notification-sendgrid`.
//!
//! # Use it
//! 1. Deserialize [`NotifierOptions`] (templates and the idempotency retention) from
//!    configuration, and each provider's options (e.g. [`LocalOptions`]).
//! 2. `Notifier::builder(options).provider(Channel::EMAIL, smtp)?.provider(Channel::FEED, local)?.build()`
//!    — one provider per channel; a second one for the same channel is [`Error::DuplicateChannel`].
//! 3. `notifier.send("ada@example.com", &Channel::EMAIL, "order-placed", &data, &key).await?`
//!    with an [`IdempotencyKey`] derived from what caused the message (e.g. `order-placed:<id>`).
//! 4. Keep the returned [`Receipt`]; a repeated call with the same key returns the same receipt.
//!
//! ```text
//!  send(to, channel, template, data, key)
//!    │ channel has a provider? ── no ──▶ Error::NoProvider
//!    │ key already sent? ── same request ──▶ original Receipt (nothing sent)
//!    │                   └─ other request ──▶ Error::IdempotencyConflict
//!    │ render template (Error::MissingVariable …)
//!    └▶ provider.send(message) ──ok──▶ record key → Receipt
//!                              └err──▶ nothing recorded: a retry with the key sends again
//! ```
//!
//! # Contract
//! - **One provider per channel**; routing is by channel only.
//! - **Idempotency, per notifier.** A send with a key that already succeeded sends nothing and
//!   returns the original [`Receipt`]; concurrent sends with one key are serialized, so exactly
//!   one reaches the provider. Reusing a key for a different request (recipient, channel,
//!   template or data) is [`Error::IdempotencyConflict`], not a silent skip. A failed send is
//!   not recorded, so retrying it sends (Medusa re-sends failures too).
//! - **The idempotency record** ([`SentRecord`]) is by default in memory ([`MemoryRecord`]): it
//!   belongs to one [`Notifier`] value (shared by its clones), lasts `idempotency_retention_secs`
//!   (default 24 h), keeps at most 100,000 keys and is lost on restart. Across workers give the
//!   notifier a [`SharedRecord`] ([`NotifierBuilder::record`]) over the application's shared
//!   cache and lock service (Redis, PostgreSQL): the key is held across the cluster while it is
//!   sent and the send is kept for the retention, so a step re-run on another worker after a
//!   takeover does not send again. The record keeps a hash of the request, not the request.
//! - **Delivery** is at-most-once per successful call from this crate's side: the provider call
//!   is not retried here. A provider that times out after the backend accepted the message
//!   reports an error, and a retry may deliver twice.
//! - **Templates** are described on [`Template`]: `{{ dotted.path }}` placeholders, typed
//!   errors for missing variables.

mod local;
mod notifier;
mod record;
mod template;
#[cfg(feature = "testing")]
pub mod testing;

use std::borrow::Cow;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use local::{LocalOptions, LocalProvider};
pub use notifier::{Notifier, NotifierBuilder, NotifierOptions};
pub use record::{Held, Hold, MemoryRecord, SentEntry, SentRecord, SharedRecord};
pub use template::{Content, Template, Templates, render};

/// Boxed error of a provider's backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A delivery channel, e.g. `email`, `sms`, `feed`: lowercase letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Channel(Cow<'static, str>);

impl Channel {
    /// The `email` channel.
    pub const EMAIL: Channel = Channel(Cow::Borrowed("email"));
    /// The `sms` channel.
    pub const SMS: Channel = Channel(Cow::Borrowed("sms"));
    /// The `feed` channel (in-app notifications; Medusa's admin feed).
    pub const FEED: Channel = Channel(Cow::Borrowed("feed"));

    /// Validates a channel name.
    pub fn new(name: &str) -> Result<Self, Error> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            return Err(Error::InvalidInput {
                field: "channel",
                reason: format!("{name:?} is not 1-64 of [a-z0-9_-]"),
            });
        }
        Ok(Self(Cow::Owned(name.to_owned())))
    }

    /// The channel's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Channel {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<Channel> for String {
    fn from(channel: Channel) -> Self {
        channel.0.into_owned()
    }
}

/// Key under which a send is recorded so it happens once: 1-255 characters, chosen by the
/// caller from what caused the notification (e.g. `order-placed:order_123`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates a key.
    pub fn new(key: impl Into<String>) -> Result<Self, Error> {
        let key = key.into();
        if key.trim().is_empty() || key.chars().count() > 255 {
            return Err(Error::InvalidInput {
                field: "idempotency_key",
                reason: "must be 1-255 characters, not blank".into(),
            });
        }
        Ok(Self(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> Self {
        key.0
    }
}

/// Id of one notification (a UUIDv7, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NotificationId(pub uuid::Uuid);

impl NotificationId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl Default for NotificationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A rendered notification, as handed to a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Id of this notification.
    pub id: NotificationId,
    /// Recipient: an email address, a phone number, a user id… as the channel expects.
    pub to: String,
    /// The channel.
    pub channel: Channel,
    /// Name of the template it was rendered from.
    pub template: String,
    /// The data it was rendered with.
    pub data: Value,
    /// The rendered content.
    pub content: Content,
    /// The idempotency key of the send.
    pub idempotency_key: IdempotencyKey,
}

/// What a provider reports after accepting a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The backend's id of the message (SMTP Message-ID, SendGrid `X-Message-Id`), if any.
    pub external_id: Option<String>,
}

/// A channel's backend: SMTP, SendGrid, the local log…
///
/// Contract: `send` returns `Ok` only once the backend has accepted the message; it does not
/// retry; a permanent refusal (bad address, 4xx) is [`Error::Rejected`], anything else
/// [`Error::Delivery`]. Idempotency is the [`Notifier`]'s job, not the provider's.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// Short name for receipts and logs, e.g. `smtp`.
    fn name(&self) -> &str;

    /// Delivers one message.
    async fn send(&self, message: &Message) -> Result<Delivery, Error>;
}

/// Proof that a notification was sent; a resend with the same key returns the same receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Id of the notification.
    pub notification_id: NotificationId,
    /// The idempotency key it was sent under.
    pub idempotency_key: IdempotencyKey,
    /// The channel.
    pub channel: Channel,
    /// The provider's name.
    pub provider: String,
    /// The backend's id of the message, if it gave one.
    pub external_id: Option<String>,
    /// When the provider accepted it.
    pub sent_at: DateTime<Utc>,
}

/// Everything that can go wrong with notifications.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No template with that name.
    #[error("unknown template `{template}`")]
    UnknownTemplate {
        /// The name asked for.
        template: String,
    },
    /// The data lacks a variable the template uses.
    #[error("template `{template}` uses `{{{{{variable}}}}}` but the data has no value for it")]
    MissingVariable {
        /// The template.
        template: String,
        /// The dotted path of the variable.
        variable: String,
    },
    /// The template is malformed.
    #[error("template `{template}` is malformed at byte {offset}: {reason}")]
    TemplateSyntax {
        /// The template.
        template: String,
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// No provider is registered for the channel.
    #[error("no notification provider for channel `{channel}`")]
    NoProvider {
        /// The channel.
        channel: Channel,
    },
    /// A second provider was registered for a channel.
    #[error("channel `{channel}` already has a provider")]
    DuplicateChannel {
        /// The channel.
        channel: Channel,
    },
    /// The idempotency key was already used for a different request.
    #[error("idempotency key `{key}` was already used for a different notification")]
    IdempotencyConflict {
        /// The key.
        key: IdempotencyKey,
    },
    /// An argument is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The backend refused the message for good (bad address, rejected request).
    #[error("{provider} rejected notification {notification_id}: {reason}")]
    Rejected {
        /// The provider.
        provider: String,
        /// The notification.
        notification_id: NotificationId,
        /// The backend's reason.
        reason: String,
    },
    /// The idempotency record (its cache or its locks) failed: nothing was sent.
    #[error("the notification record failed")]
    Record {
        /// The cache's or the lock service's error.
        #[source]
        source: BoxError,
    },
    /// The backend could not be reached or failed; a retry may succeed.
    #[error("{provider} failed to deliver notification {notification_id}")]
    Delivery {
        /// The provider.
        provider: String,
        /// The notification.
        notification_id: NotificationId,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A provider's options are unusable.
    #[error("invalid {provider} notification options: {reason}")]
    InvalidOptions {
        /// The provider.
        provider: &'static str,
        /// What is wrong.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_keys_are_validated() {
        assert_eq!(Channel::new("email").unwrap(), Channel::EMAIL);
        for bad in ["", "Email", "e mail", "é"] {
            assert!(matches!(Channel::new(bad), Err(Error::InvalidInput { .. })));
        }
        assert!(serde_json::from_str::<Channel>("\"Bad\"").is_err());
        assert!(IdempotencyKey::new(" ").is_err());
        assert!(IdempotencyKey::new("x".repeat(256)).is_err());
        assert_eq!(IdempotencyKey::new("order:1").unwrap().as_str(), "order:1");
    }

    #[test]
    fn missing_variable_message_shows_the_placeholder() {
        let err = Error::MissingVariable {
            template: "t".into(),
            variable: "order.id".into(),
        };
        assert_eq!(
            err.to_string(),
            "template `t` uses `{{order.id}}` but the data has no value for it"
        );
    }
}
