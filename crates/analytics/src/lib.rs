//! Analytics: the batching [`Analytics`] handle, the [`Sink`] trait, its local provider and the
//! suite every provider passes.
//!
//! Medusa's Analytics module, rebuilt: `track(event, actor_id, properties)` and
//! `identify(actor_id, properties)`, buffered and sent in batches. The PostHog sink lives in
//! `gorgon-analytics-posthog`.
//!
//! # Use it
//! 1. Deserialize a provider's options ([`LocalOptions`] or `PosthogOptions`); each carries the
//!    [`BatchOptions`] (batch size, flush interval, queue bound, retries).
//! 2. `let analytics = Analytics::start(Arc::new(sink), options.batch)?;` inside a Tokio runtime.
//!    Clone the handle freely.
//! 3. `analytics.track("order.placed", "cus_1", json!({"total": 12}))?` — returns at once.
//! 4. On graceful shutdown call `analytics.shutdown().await` so the buffer is sent.
//!
//! ```text
//!  track / identify ──try_send──▶ bounded queue ──▶ worker task: buffer
//!                                                     │ len == max_batch_size ─┐
//!                                                     │ every flush_interval ──┼─▶ sink.send_batch(≤ max_batch_size)
//!                                                     │ flush() / shutdown() ──┘      (retried on Delivery errors)
//! ```
//!
//! # Contract
//! - **Non-blocking.** `track` and `identify` never wait: when `max_queued` events are waiting
//!   they return [`Error::QueueFull`] and the event is dropped.
//! - **Batched.** Events go out in batches of at most `max_batch_size`, when a batch is full,
//!   every `flush_interval_ms`, on [`Analytics::flush`], on [`Analytics::shutdown`] and when the
//!   last handle is dropped.
//! - **Ordered.** One worker sends events in the order they were accepted.
//! - **At most once, best effort.** A failing batch is retried `max_attempts` times with
//!   exponential backoff on [`Error::Delivery`] (not on [`Error::Rejected`]), then dropped and
//!   logged; `flush` and `shutdown` report that error. Buffered events are in memory only: a
//!   crash loses them. Analytics must never take the shop down with it.

mod local;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

pub use local::{LocalOptions, LocalSink};

/// Boxed error of a sink's backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What an event records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    /// Something the actor did, e.g. `order.placed`.
    Track {
        /// The event name.
        event: String,
    },
    /// Traits of the actor (`$set` in PostHog).
    Identify,
}

/// One tracked or identify event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (UUIDv7), for deduplication by the backend.
    pub id: uuid::Uuid,
    /// Track or identify.
    pub kind: Kind,
    /// Who: a customer id, a user id, an anonymous id.
    pub actor_id: String,
    /// Event properties (track) or actor traits (identify).
    pub properties: Map<String, Value>,
    /// When it was recorded.
    pub timestamp: DateTime<Utc>,
}

/// A backend receiving batches of events: the local log, PostHog…
///
/// Contract: `send_batch` returns `Ok` once the backend accepted the whole batch. A permanent
/// refusal is [`Error::Rejected`] (not retried); anything else [`Error::Delivery`] (retried by
/// the batcher).
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// Short name for logs, e.g. `posthog`.
    fn name(&self) -> &str;

    /// Sends one batch, in order.
    async fn send_batch(&self, batch: &[Event]) -> Result<(), Error>;
}

/// How events are batched; part of every provider's options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchOptions {
    /// Most events per batch; a full batch is sent at once. Default 100.
    pub max_batch_size: usize,
    /// A non-empty buffer is sent at least this often, in milliseconds. Default 1000.
    pub flush_interval_ms: u64,
    /// Most events waiting for the worker before `track` returns `QueueFull`. Default 10 000.
    pub max_queued: usize,
    /// Attempts per batch on delivery errors. Default 3.
    pub max_attempts: u32,
    /// Wait before the first retry, doubled each time, in milliseconds. Default 200.
    pub retry_backoff_ms: u64,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_batch_size: 100,
            flush_interval_ms: 1000,
            max_queued: 10_000,
            max_attempts: 3,
            retry_backoff_ms: 200,
        }
    }
}

/// Everything that can go wrong with analytics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The queue is full; the event was dropped.
    #[error("analytics queue is full ({capacity} events waiting); event dropped")]
    QueueFull {
        /// The queue bound.
        capacity: usize,
    },
    /// The batcher was shut down.
    #[error("analytics was shut down")]
    Closed,
    /// The backend refused a batch for good.
    #[error("{sink} rejected a batch of {events} events: {reason}")]
    Rejected {
        /// The sink.
        sink: String,
        /// Events in the batch.
        events: usize,
        /// The backend's reason.
        reason: String,
    },
    /// The backend could not be reached or failed.
    #[error("{sink} failed to take a batch of {events} events")]
    Delivery {
        /// The sink.
        sink: String,
        /// Events in the batch.
        events: usize,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// Options are unusable.
    #[error("invalid {provider} analytics options: {reason}")]
    InvalidOptions {
        /// The provider, or `batch`.
        provider: &'static str,
        /// What is wrong.
        reason: String,
    },
}

enum Command {
    Event(Event),
    Flush(oneshot::Sender<Result<(), Error>>),
    Shutdown(oneshot::Sender<Result<(), Error>>),
}

/// Handle to the batcher: cheap to clone; the worker stops (after sending its buffer) on
/// [`Analytics::shutdown`] or when the last handle is dropped.
#[derive(Clone)]
pub struct Analytics {
    tx: mpsc::Sender<Command>,
    capacity: usize,
}

impl fmt::Debug for Analytics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Analytics")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn object(field: &'static str, properties: Value) -> Result<Map<String, Value>, Error> {
    match properties {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(Error::InvalidInput {
            field,
            reason: format!("must be a JSON object or null, not {other}"),
        }),
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() || value.len() > 200 {
        return Err(Error::InvalidInput {
            field,
            reason: "must be 1-200 bytes, not blank".into(),
        });
    }
    Ok(())
}

impl Analytics {
    /// Starts the worker task sending to `sink`. Must run inside a Tokio runtime.
    pub fn start(sink: Arc<dyn Sink>, options: BatchOptions) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidOptions {
            provider: "batch",
            reason: reason.into(),
        };
        if options.max_batch_size == 0 || options.max_queued == 0 || options.max_attempts == 0 {
            return Err(invalid(
                "max_batch_size, max_queued and max_attempts must be positive",
            ));
        }
        if options.flush_interval_ms == 0 {
            return Err(invalid("flush_interval_ms must be positive"));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| invalid("Analytics::start must run inside a Tokio runtime"))?;
        let (tx, rx) = mpsc::channel(options.max_queued);
        let capacity = options.max_queued;
        runtime.spawn(Worker { sink, options }.run(rx));
        Ok(Self { tx, capacity })
    }

    fn enqueue(&self, event: Event) -> Result<(), Error> {
        self.tx
            .try_send(Command::Event(event))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::QueueFull {
                    capacity: self.capacity,
                },
                mpsc::error::TrySendError::Closed(_) => Error::Closed,
            })
    }

    /// Records that `actor_id` did `event`, with `properties` (a JSON object or null).
    pub fn track(&self, event: &str, actor_id: &str, properties: Value) -> Result<(), Error> {
        non_empty("event", event)?;
        non_empty("actor_id", actor_id)?;
        self.enqueue(Event {
            id: uuid::Uuid::now_v7(),
            kind: Kind::Track {
                event: event.to_owned(),
            },
            actor_id: actor_id.to_owned(),
            properties: object("properties", properties)?,
            timestamp: Utc::now(),
        })
    }

    /// Records traits of `actor_id` (a JSON object or null).
    pub fn identify(&self, actor_id: &str, properties: Value) -> Result<(), Error> {
        non_empty("actor_id", actor_id)?;
        self.enqueue(Event {
            id: uuid::Uuid::now_v7(),
            kind: Kind::Identify,
            actor_id: actor_id.to_owned(),
            properties: object("properties", properties)?,
            timestamp: Utc::now(),
        })
    }

    async fn call(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), Error>>) -> Command,
    ) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Sends every event accepted before this call; returns the first batch error, if any.
    pub async fn flush(&self) -> Result<(), Error> {
        self.call(Command::Flush).await
    }

    /// Sends every buffered event and stops the worker; later calls get [`Error::Closed`].
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.call(Command::Shutdown).await
    }
}

struct Worker {
    sink: Arc<dyn Sink>,
    options: BatchOptions,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Command>) {
        let mut buffer: Vec<Event> = Vec::new();
        let period = Duration::from_millis(self.options.flush_interval_ms);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(Command::Event(event)) => {
                        buffer.push(event);
                        if buffer.len() >= self.options.max_batch_size {
                            let _ = self.drain(&mut buffer).await;
                        }
                    }
                    Some(Command::Flush(reply)) => {
                        let _ = reply.send(self.drain(&mut buffer).await);
                    }
                    Some(Command::Shutdown(reply)) => {
                        let result = self.drain(&mut buffer).await;
                        rx.close();
                        let _ = reply.send(result);
                        break;
                    }
                    None => {
                        let _ = self.drain(&mut buffer).await;
                        break;
                    }
                },
                _ = ticker.tick() => {
                    let _ = self.drain(&mut buffer).await;
                }
            }
        }
        tracing::debug!(sink = self.sink.name(), "analytics worker stopped");
    }

    /// Sends the whole buffer in batches; failed batches are dropped after their retries.
    async fn drain(&self, buffer: &mut Vec<Event>) -> Result<(), Error> {
        let mut first_error = None;
        for batch in std::mem::take(buffer).chunks(self.options.max_batch_size) {
            if let Err(error) = self.send(batch).await {
                tracing::warn!(sink = self.sink.name(), events = batch.len(), %error, "analytics batch dropped");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn send(&self, batch: &[Event]) -> Result<(), Error> {
        let mut backoff = Duration::from_millis(self.options.retry_backoff_ms);
        let mut attempt = 1;
        loop {
            match self.sink.send_batch(batch).await {
                Err(Error::Delivery { .. }) if attempt < self.options.max_attempts => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}
