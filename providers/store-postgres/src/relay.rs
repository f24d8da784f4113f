//! [`PostgresRelay`]: transaction events across processes through PostgreSQL `LISTEN/NOTIFY`.
//!
//! Engines whose stores share a schema share a channel, named after the schema
//! ([`PostgresRelay::channel`]), so the engines of one deployment see each other's runs and
//! those of another schema (another deployment, another test) do not.
//!
//! ```text
//!  publish(batch) ─► SELECT pg_notify(channel, envelope) FROM unnest(batch) WITH ORDINALITY
//!                    (one statement, one commit: the batch is delivered in order, together)
//!  subscribe()    ─► a PgListener (its own connection) LISTENing on the channel ─► a task
//!                    forwarding each notification, decoded, to the subscription stream
//! ```
//!
//! The contract is [`EventRelay`]'s: at most once, best effort, ordered per publisher. What
//! PostgreSQL adds: a notification is delivered only to sessions listening when it commits;
//! an envelope over 8,000 bytes (PostgreSQL's payload limit; a very long transaction id) is
//! not published (logged, counted in [`PostgresRelay::oversized`]); while the listener's
//! connection is re-established after a loss, notifications are missed. Each subscription holds
//! one connection of the store's pool for its life (size the pool for it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use gorgon_orchestration::relay::{EventRelay, RelayStream, RelayedEvent, relay_error};
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

use crate::PostgresStore;

/// PostgreSQL's largest `NOTIFY` payload, in bytes (less than 8,000).
pub const MAX_PAYLOAD: usize = 7999;

/// The longest channel name PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_CHANNEL: usize = 63;

/// Events subscribers may hold before the oldest undelivered ones are dropped.
const SUBSCRIPTION_BUFFER: usize = 4096;

/// An [`EventRelay`] over PostgreSQL `LISTEN/NOTIFY`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresRelay {
    pool: PgPool,
    channel: Arc<str>,
    oversized: Arc<AtomicU64>,
}

/// The channel of a schema: `<schema>_events`, or, when that is longer than PostgreSQL keeps,
/// the schema's first 46 bytes, `_`, and a 16-digit hash of the whole schema.
pub fn channel_of(schema: &str) -> String {
    let plain = format!("{schema}_events");
    if plain.len() <= MAX_CHANNEL {
        return plain;
    }
    // FNV-1a: stable across builds and processes (std's hasher is not).
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let head: String = schema.chars().take(46).collect();
    format!("{head}_{hash:016x}")
}

impl PostgresRelay {
    /// A relay on the store's pool, on the channel of the store's schema.
    pub fn new(store: &PostgresStore) -> Self {
        Self::on_pool(store.pool().clone(), store.schema())
    }

    /// A relay on any pool, on the channel of `schema` ([`channel_of`]).
    pub fn on_pool(pool: PgPool, schema: &str) -> Self {
        PostgresRelay {
            pool,
            channel: Arc::from(channel_of(schema)),
            oversized: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The channel name notifications go through.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Events not published because their envelope exceeded [`MAX_PAYLOAD`].
    pub fn oversized(&self) -> u64 {
        self.oversized.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl EventRelay for PostgresRelay {
    async fn publish(&self, events: &[RelayedEvent]) -> gorgon_orchestration::Result<()> {
        let mut payloads = Vec::with_capacity(events.len());
        for event in events {
            let payload = serde_json::to_string(event).map_err(|e| relay_error("publish", e))?;
            if payload.len() > MAX_PAYLOAD {
                self.oversized.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(transaction = %event.event.key, bytes = payload.len(),
                    "an event is too large for NOTIFY: not relayed");
                continue;
            }
            payloads.push(payload);
        }
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n",
        )
        .bind(self.channel.as_ref())
        .bind(&payloads)
        .execute(&self.pool)
        .await
        .map_err(|e| relay_error("publish", e))?;
        Ok(())
    }

    async fn subscribe(&self) -> gorgon_orchestration::Result<RelayStream> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(|e| relay_error("subscribe", e))?;
        listener
            .listen(&self.channel)
            .await
            .map_err(|e| relay_error("subscribe", e))?;
        let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER);
        tokio::spawn(forward(listener, sender, self.channel.clone()));
        Ok(Box::pin(futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|event| (event, receiver)) },
        )))
    }
}

/// Forwards notifications until the subscription stream is dropped. A lost connection is
/// re-established by the listener (it LISTENs again); what was sent meanwhile is missed.
async fn forward(mut listener: PgListener, sender: mpsc::Sender<RelayedEvent>, channel: Arc<str>) {
    loop {
        let notification = tokio::select! {
            _ = sender.closed() => return,
            received = listener.try_recv() => received,
        };
        match notification {
            Ok(Some(notification)) => {
                match serde_json::from_str::<RelayedEvent>(notification.payload()) {
                    Ok(event) => {
                        if sender.try_send(event).is_err() {
                            if sender.is_closed() {
                                return;
                            }
                            tracing::warn!(%channel, "a relay subscriber is behind: event dropped");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%channel, %error, "a notification is not a relayed event")
                    }
                }
            }
            Ok(None) => tracing::warn!(%channel, "the relay listener lost its connection"),
            Err(error) => {
                tracing::warn!(%channel, %error, "the relay listener failed; retrying");
                tokio::select! {
                    _ = sender.closed() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::channel_of;

    #[test]
    fn channels_fit_postgres_names() {
        assert_eq!(channel_of("gorgon"), "gorgon_events");
        let long = "s".repeat(63);
        let channel = channel_of(&long);
        assert!(channel.len() <= 63, "{channel}");
        assert_ne!(channel, channel_of(&format!("{}t", "s".repeat(62))));
        assert_eq!(channel, channel_of(&long), "stable");
    }
}
