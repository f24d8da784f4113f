//! The local provider: records and logs notifications instead of delivering them.

use async_trait::async_trait;
use serde::Deserialize;

use crate::{Channel, Delivery, Error, Message, Provider};

/// Configuration of [`LocalProvider`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalOptions {
    /// The channel the composition root registers it for. Default `feed`.
    pub channel: Channel,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            channel: Channel::FEED,
        }
    }
}

/// Records every message in memory and logs it at `info` through `tracing`.
///
/// For development, tests and the in-app feed (what Medusa's admin shows). Nothing survives a
/// restart. The external id is the notification id.
#[derive(Debug, Default)]
pub struct LocalProvider {
    sent: parking_lot::Mutex<Vec<Message>>,
}

impl LocalProvider {
    /// A provider with an empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message sent so far, oldest first.
    pub fn sent(&self) -> Vec<Message> {
        self.sent.lock().clone()
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    async fn send(&self, message: &Message) -> Result<Delivery, Error> {
        tracing::info!(
            notification_id = %message.id,
            to = %message.to,
            channel = %message.channel,
            template = %message.template,
            subject = %message.content.subject,
            text = %message.content.text,
            "notification (local provider)"
        );
        self.sent.lock().push(message.clone());
        Ok(Delivery {
            external_id: Some(message.id.to_string()),
        })
    }
}
