//! The [`EventRelay`]: transaction events across processes.
//!
//! [`Engine::subscribe`](crate::Engine::subscribe) hands out the events of the engine's own
//! transactions. With a relay in [`EngineOptions::relay`](crate::EngineOptions::relay), every
//! event the engine emits is also published to the relay, and the engine's subscribers receive
//! the events other engines (other processes) published there too, each once.
//!
//! ```text
//!   engine A                                   relay                        engine B
//!   an event     ─► local subscribers                                       local subscribers ◄─┐
//!        └─► bounded queue ─► publisher task ─► publish(batch) ─► subscription ─► pump task ─┘
//!            (full: dropped, counted)                                    (drops A's own events
//!                                                                          by origin when they
//!                                                                          come back to A)
//! ```
//!
//! # Delivery contract
//!
//! Every relay keeps this contract (and `testing::relay_suite`, feature `testing`,
//! checks it):
//! - **at most once**: a subscriber receives an event once or not at all; nothing is redelivered;
//! - **best effort**: events published while a subscriber is not connected (before
//!   [`subscribe`](EventRelay::subscribe) returned, during a reconnect, after it fell behind) are
//!   lost, and so is an event the publisher could not hand to the relay;
//! - **ordered per publisher**: the events of one publisher (one [`RelayedEvent::origin`]) that a
//!   subscriber receives arrive in the order they were published ([`RelayedEvent::seq`] grows);
//!   events of different publishers interleave in any order.
//!
//! So a relay is for watching runs (dashboards, waiting for a result in another process), never
//! for the truth: that is the [`Store`](crate::Store).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::engine::TransactionEvent;
use crate::error::{Error, Result};

/// An event as it travels through a relay: the event plus who published it, in which order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayedEvent {
    /// The publishing engine's id (a UUID per engine), so an engine drops its own events.
    pub origin: Arc<str>,
    /// The publisher's sequence number, from 0, one per event it emitted (a gap means events
    /// were dropped before reaching the relay).
    pub seq: u64,
    /// The event.
    pub event: TransactionEvent,
}

/// The events a subscription delivers, in the order the relay received them.
pub type RelayStream = Pin<Box<dyn Stream<Item = RelayedEvent> + Send>>;

/// Carries [`RelayedEvent`]s between engines. Object-safe; held as `Arc<dyn EventRelay>`.
///
/// Delivery is at most once, best effort, ordered per publisher (see the
/// [module docs](self)).
#[async_trait]
pub trait EventRelay: Send + Sync + 'static {
    /// Publishes events, in order. `Ok` means the relay took them, not that anyone received them.
    async fn publish(&self, events: &[RelayedEvent]) -> Result<()>;
    /// Subscribes to every event published from now on (by any publisher, this one included).
    /// Returns once the subscription is in place: an event published after this returned is
    /// delivered unless the connection is lost. Dropping the stream ends the subscription.
    async fn subscribe(&self) -> Result<RelayStream>;
}

/// The in-memory relay: one broadcast channel; clones share it. Engines of one process given
/// the same relay see each other's events, as engines of several processes do through a real one.
///
/// A subscriber that falls more than `capacity` events behind loses the oldest ones.
#[derive(Clone, Debug)]
pub struct MemoryRelay {
    sender: broadcast::Sender<RelayedEvent>,
}

impl MemoryRelay {
    /// A relay whose subscribers may fall 4,096 events behind.
    pub fn new() -> Self {
        Self::with_capacity(4096)
    }
    /// A relay whose subscribers may fall `capacity` (at least 1) events behind.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryRelay {
            sender: broadcast::channel(capacity.max(1)).0,
        }
    }
}

impl Default for MemoryRelay {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl EventRelay for MemoryRelay {
    async fn publish(&self, events: &[RelayedEvent]) -> Result<()> {
        for event in events {
            let _ = self.sender.send(event.clone()); // no subscriber: dropped, as promised
        }
        Ok(())
    }

    async fn subscribe(&self) -> Result<RelayStream> {
        let receiver = self.sender.subscribe();
        Ok(Box::pin(futures::stream::unfold(
            receiver,
            |mut receiver| async move {
                loop {
                    match receiver.recv().await {
                        Ok(event) => return Some((event, receiver)),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(lost = n, "a relay subscriber fell behind");
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )))
    }
}

/// Most events the engine's publisher task holds before it drops new ones.
pub(crate) const PUBLISH_QUEUE: usize = 4096;
/// Most events one `publish` call carries.
const PUBLISH_BATCH: usize = 256;

/// An engine's connection to its relay: the publisher task's queue and the subscription pump.
/// Dropping it (with the engine) stops both tasks.
pub(crate) struct RelayLink {
    origin: Arc<str>,
    seq: AtomicU64,
    queue: mpsc::Sender<RelayedEvent>,
    counters: Arc<RelayCounters>,
    ready: watch::Receiver<bool>,
    _stop: oneshot::Sender<()>,
}

/// What a relay link counts.
#[derive(Debug, Default)]
struct RelayCounters {
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// Counters of an engine's relay since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Events dropped because the publisher queue was full.
    pub dropped: u64,
    /// Events lost because `publish` failed.
    pub failed: u64,
}

impl RelayLink {
    /// Starts the publisher task and the pump feeding remote events into `local`. Needs a tokio
    /// runtime.
    pub(crate) fn start(
        relay: Arc<dyn EventRelay>,
        local: broadcast::Sender<TransactionEvent>,
    ) -> Self {
        let origin: Arc<str> = Arc::from(uuid::Uuid::now_v7().to_string());
        let counters = Arc::new(RelayCounters::default());
        let (queue, receiver) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publish_loop(relay.clone(), receiver, counters.clone()));
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready) = watch::channel(false);
        tokio::spawn(pump(relay, origin.clone(), local, ready_tx, stopped));
        RelayLink {
            origin,
            seq: AtomicU64::new(0),
            queue,
            counters,
            ready,
            _stop: stop,
        }
    }

    /// Hands an event to the publisher task without waiting; a full queue drops it (counted).
    pub(crate) fn publish(&self, event: TransactionEvent) {
        let relayed = RelayedEvent {
            origin: self.origin.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            event,
        };
        if self.queue.try_send(relayed).is_err() {
            let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "the event relay queue is full: events dropped");
            }
        }
    }

    /// Resolves once the subscription to the relay is in place (or failed for good).
    pub(crate) async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The engine's id in the relay.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn stats(&self) -> RelayStats {
        RelayStats {
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }
}

async fn publish_loop(
    relay: Arc<dyn EventRelay>,
    mut receiver: mpsc::Receiver<RelayedEvent>,
    counters: Arc<RelayCounters>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while receiver.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        if let Err(error) = relay.publish(&batch).await {
            counters
                .failed
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::warn!(%error, events = batch.len(), "publishing events to the relay failed");
        }
        batch.clear();
    }
}

/// Subscribes (retrying with backoff while it fails) and forwards other engines' events to the
/// local subscribers, until the link is dropped.
async fn pump(
    relay: Arc<dyn EventRelay>,
    origin: Arc<str>,
    local: broadcast::Sender<TransactionEvent>,
    ready: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    use futures::StreamExt;
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        let mut stream = tokio::select! {
            _ = &mut stop => return,
            subscribed = relay.subscribe() => match subscribed {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "subscribing to the event relay failed; retrying");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = std::time::Duration::from_millis(50);
        let _ = ready.send(true);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                next = stream.next() => match next {
                    Some(relayed) if relayed.origin != origin => {
                        let mut event = relayed.event;
                        event.origin = Some(relayed.origin);
                        let _ = local.send(event);
                    }
                    Some(_) => {} // our own event: local subscribers had it already
                    None => break,
                },
            }
        }
        tracing::warn!("the event relay subscription ended; subscribing again");
    }
}

/// A relay error (for relay implementations): `operation` is what was attempted.
pub fn relay_error(operation: &'static str, reason: impl ToString) -> Error {
    Error::Relay {
        operation,
        reason: reason.to_string(),
    }
}
