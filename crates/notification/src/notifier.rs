//! The notification module: routing by channel and the idempotency record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::record::{Held, MemoryRecord, SentEntry, SentRecord};
use crate::{
    Channel, Error, IdempotencyKey, Message, NotificationId, Provider, Receipt, Templates,
};

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Configuration of a [`Notifier`].
///
/// ```json
/// { "idempotency_retention_secs": 86400,
///   "templates": { "order-placed": { "subject": "Order {{order.id}}", "text": "Thanks, {{name}}!" } } }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierOptions {
    /// How long a successful send's key is remembered, in seconds. Default 24 h.
    pub idempotency_retention_secs: u64,
    /// The templates messages are rendered from.
    pub templates: Templates,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        Self {
            idempotency_retention_secs: 24 * 3600,
            templates: Templates::default(),
        }
    }
}

/// Builds a [`Notifier`]: one provider per channel, and where sent keys are remembered.
#[derive(Debug)]
pub struct NotifierBuilder {
    options: NotifierOptions,
    providers: HashMap<Channel, Arc<dyn Provider>>,
    record: Option<Arc<dyn SentRecord>>,
}

impl NotifierBuilder {
    /// Routes `channel` to `provider`; [`Error::DuplicateChannel`] if it already has one.
    pub fn provider(
        mut self,
        channel: Channel,
        provider: Arc<dyn Provider>,
    ) -> Result<Self, Error> {
        if self.providers.contains_key(&channel) {
            return Err(Error::DuplicateChannel { channel });
        }
        self.providers.insert(channel, provider);
        Ok(self)
    }

    /// Remembers sent keys in `record` (a [`SharedRecord`](crate::SharedRecord) across the
    /// workers of a cluster) instead of this process's memory.
    pub fn record(mut self, record: Arc<dyn SentRecord>) -> Self {
        self.record = Some(record);
        self
    }

    /// The notifier.
    pub fn build(self) -> Notifier {
        let retention = Duration::from_secs(self.options.idempotency_retention_secs);
        Notifier {
            inner: Arc::new(Inner {
                providers: self.providers,
                templates: self.options.templates,
                record: self
                    .record
                    .unwrap_or_else(|| Arc::new(MemoryRecord::new(retention))),
            }),
        }
    }
}

/// The notification module: renders templates, routes by channel, sends each idempotency key
/// once. Cheap to clone; clones share the idempotency record ([`SentRecord`]). See the crate
/// docs for the contract.
#[derive(Debug, Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    providers: HashMap<Channel, Arc<dyn Provider>>,
    templates: Templates,
    record: Arc<dyn SentRecord>,
}

impl Notifier {
    /// Starts building a notifier.
    pub fn builder(options: NotifierOptions) -> NotifierBuilder {
        NotifierBuilder {
            options,
            providers: HashMap::new(),
            record: None,
        }
    }

    /// The channels that have a provider.
    pub fn channels(&self) -> Vec<Channel> {
        let mut channels: Vec<_> = self.inner.providers.keys().cloned().collect();
        channels.sort();
        channels
    }

    /// Renders `template` with `data` and sends it to `to` through `channel`'s provider, once per
    /// `idempotency_key`.
    ///
    /// Returns the original [`Receipt`] without sending if the key already succeeded with the
    /// same request. Errors: [`Error::NoProvider`], [`Error::IdempotencyConflict`],
    /// [`Error::UnknownTemplate`], [`Error::MissingVariable`], [`Error::TemplateSyntax`],
    /// [`Error::InvalidInput`] (empty recipient) and the provider's [`Error::Rejected`] /
    /// [`Error::Delivery`].
    pub async fn send(
        &self,
        to: &str,
        channel: &Channel,
        template: &str,
        data: &Value,
        idempotency_key: &IdempotencyKey,
    ) -> Result<Receipt, Error> {
        if to.trim().is_empty() {
            return Err(Error::InvalidInput {
                field: "to",
                reason: "the recipient is empty".into(),
            });
        }
        let provider =
            self.inner
                .providers
                .get(channel)
                .cloned()
                .ok_or_else(|| Error::NoProvider {
                    channel: channel.clone(),
                })?;
        let request = serde_json::to_string(&(to, channel, template, data))
            .expect("strings and JSON values serialize");
        let request_hash = hex(&Sha256::digest(request.as_bytes()));
        // Held across the provider call: a concurrent send with this key waits, then replays.
        let hold = match self.inner.record.hold(idempotency_key).await? {
            Held::Sent(previous) if previous.request_hash != request_hash => {
                return Err(Error::IdempotencyConflict {
                    key: idempotency_key.clone(),
                });
            }
            Held::Sent(previous) => {
                tracing::debug!(key = %idempotency_key, "notification already sent, replaying receipt");
                return Ok(previous.receipt);
            }
            Held::Free(hold) => hold,
        };
        let content = self.inner.templates.render(template, data)?;
        let message = Message {
            id: NotificationId::new(),
            to: to.to_owned(),
            channel: channel.clone(),
            template: template.to_owned(),
            data: data.clone(),
            content,
            idempotency_key: idempotency_key.clone(),
        };
        let delivery = provider.send(&message).await.inspect_err(|error| {
            tracing::warn!(
                notification_id = %message.id, channel = %channel, provider = provider.name(),
                %error, "notification failed"
            );
        })?;
        let receipt = Receipt {
            notification_id: message.id,
            idempotency_key: idempotency_key.clone(),
            channel: channel.clone(),
            provider: provider.name().to_owned(),
            external_id: delivery.external_id,
            sent_at: chrono::Utc::now(),
        };
        hold.sent(SentEntry {
            receipt: receipt.clone(),
            request_hash,
        })
        .await?;
        Ok(receipt)
    }
}
