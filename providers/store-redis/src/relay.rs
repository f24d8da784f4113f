//! [`RedisRelay`]: transaction events across processes through Redis pub/sub.
//!
//! Engines configured with the same Redis and key prefix share the channel `<prefix>events`, so
//! the engines of one deployment see each other's runs and those of another prefix do not.
//!
//! ```text
//!  publish(batch) ─► one pipeline of PUBLISH <prefix>events <envelope JSON>, in order
//!  subscribe()    ─► its own pub/sub connection SUBSCRIBEd to the channel (confirmed before
//!                    it returns) ─► a task forwarding each message, decoded, to the stream;
//!                    a lost connection is re-established and re-subscribed (messages sent
//!                    meanwhile are missed)
//! ```
//!
//! The contract is [`EventRelay`]'s: at most once, best effort, ordered per publisher (one
//! connection's commands are applied in order, and Redis delivers to each subscriber in the
//! order it published).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use gorgon_orchestration::relay::{EventRelay, RelayStream, RelayedEvent, relay_error};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use tokio::sync::mpsc;

use crate::{Error, Options, redact};

/// Events a subscription may hold before new ones are dropped.
const SUBSCRIPTION_BUFFER: usize = 4096;

/// An [`EventRelay`] over Redis pub/sub. Cheap to clone.
#[derive(Clone)]
pub struct RedisRelay {
    client: redis::Client,
    connection: ConnectionManager,
    channel: Arc<str>,
}

impl std::fmt::Debug for RedisRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRelay")
            .field("channel", &self.channel)
            .finish()
    }
}

impl RedisRelay {
    /// Connects to `options.url`; the channel is `<options.prefix>events`.
    pub async fn connect(options: &Options) -> Result<Self, Error> {
        if options.prefix.is_empty() {
            return Err(Error::InvalidOptions {
                field: "prefix",
                reason: "must not be empty".into(),
            });
        }
        let fail = |error: redis::RedisError| Error::Connect {
            url: redact(&options.url),
            reason: error.to_string(),
        };
        let client = redis::Client::open(options.url.as_str()).map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(options.connect_retries)
            .set_response_timeout(Some(Duration::from_millis(options.response_timeout_ms)));
        let connection = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(fail)?;
        Ok(RedisRelay {
            client,
            connection,
            channel: Arc::from(format!("{}events", options.prefix)),
        })
    }

    /// The pub/sub channel events go through.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    async fn subscribed(&self) -> redis::RedisResult<PubSub> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.channel.as_ref()).await?;
        Ok(pubsub)
    }
}

#[async_trait]
impl EventRelay for RedisRelay {
    async fn publish(&self, events: &[RelayedEvent]) -> gorgon_orchestration::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for event in events {
            let payload = serde_json::to_string(event).map_err(|e| relay_error("publish", e))?;
            pipe.publish(self.channel.as_ref(), payload).ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|e| relay_error("publish", e))
    }

    async fn subscribe(&self) -> gorgon_orchestration::Result<RelayStream> {
        let pubsub = self
            .subscribed()
            .await
            .map_err(|e| relay_error("subscribe", e))?;
        let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER);
        tokio::spawn(forward(self.clone(), pubsub, sender));
        Ok(Box::pin(futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|event| (event, receiver)) },
        )))
    }
}

/// Forwards messages until the subscription stream is dropped, re-subscribing after a loss.
async fn forward(relay: RedisRelay, pubsub: PubSub, sender: mpsc::Sender<RelayedEvent>) {
    let channel = relay.channel.clone();
    let mut messages = pubsub.into_on_message();
    loop {
        let message = tokio::select! {
            _ = sender.closed() => return,
            message = messages.next() => message,
        };
        match message {
            Some(message) => {
                let decoded = message
                    .get_payload::<String>()
                    .map_err(|e| e.to_string())
                    .and_then(|p| {
                        serde_json::from_str::<RelayedEvent>(&p).map_err(|e| e.to_string())
                    });
                match decoded {
                    Ok(event) => {
                        if sender.try_send(event).is_err() {
                            if sender.is_closed() {
                                return;
                            }
                            tracing::warn!(%channel, "a relay subscriber is behind: event dropped");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%channel, %error, "a message is not a relayed event")
                    }
                }
            }
            None => {
                tracing::warn!(%channel, "the relay subscription lost its connection");
                let mut backoff = Duration::from_millis(100);
                messages = loop {
                    tokio::select! {
                        _ = sender.closed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    match relay.subscribed().await {
                        Ok(pubsub) => break pubsub.into_on_message(),
                        Err(error) => {
                            tracing::warn!(%channel, %error, "re-subscribing failed; retrying");
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                };
            }
        }
    }
}
