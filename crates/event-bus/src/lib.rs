//! The event bus: the [`EventBus`] trait, its in-process provider [`LocalEventBus`], and the
//! conformance suite every provider passes ([`testing`], feature `testing`). The Redis Streams
//! provider lives in `gorgon-event-bus-redis`.
//!
//! # Use it
//!
//! 1. Pick a provider from configuration: [`LocalEventBus::new()`] for one process, or
//!    `gorgon_event_bus_redis::RedisEventBus::connect(options)` across processes. Hold it as
//!    `Arc<dyn EventBus>`.
//! 2. Subscribe handlers at startup: `bus.subscribe("order.placed", "send-confirmation",
//!    handler_fn(|event| async move { ...; Ok(()) }))`. Patterns are an exact name, `*`, or a prefix
//!    with a trailing `*` (`order.*`). The subscriber id names the subscriber: it is what delivery,
//!    retries and completion are tracked by, so keep it stable across deployments.
//! 3. Emit: `bus.emit(vec![Message::new("order.placed", json!({"id": id}))])`. `emit` returns once
//!    the events are published (or staged); it does not wait for handlers.
//! 4. In a workflow run, emit through an [`EventGroup`] named by the run's event group id; when the run
//!    succeeds call [`EventGroup::release`], when it is rolled back [`EventGroup::discard`] (a step's
//!    compensation may [`EventGroup::discard_events`] its own event names). A rolled-back run
//!    publishes nothing.
//!
//! ```text
//!  emit(msg) ── group id? ──yes──► staged in group ──release_group──┐
//!                  │ no                      └──clear_group──► dropped
//!                  ▼                                                 ▼
//!              published ◄────────────────────────────────────────────┘
//!                  │  (every subscription whose pattern matches, independently)
//!        ┌─────────┼──────────┐
//!        ▼         ▼          ▼
//!   "order.placed" "order.*"  "*"      one queue per subscriber; a failure stays there
//! ```
//!
//! # Contract
//!
//! | | [`LocalEventBus`] | Redis Streams (`gorgon-event-bus-redis`) |
//! |---|---|---|
//! | Delivery | at most once; a failed or panicking handler is logged, not retried | at least once per subscriber; a failed subscriber is retried alone with backoff, then dead-lettered |
//! | Ordering per subscriber | emission order | emission order on first delivery; a retried event may come after later ones |
//! | Who receives | subscriptions on this bus value | every subscriber id subscribed anywhere on the same stream (each id's deliveries shared among the instances that subscribe it) |
//! | Staged groups | process memory | Redis; survive a restart, expire after a configurable TTL |
//! | After a crash | staged and undelivered events are lost | every event a subscriber had not completed is delivered again to that subscriber only |
//!
//! Common to every provider (checked by [`testing`]): `emit` validates all messages first and emits
//! none if one is invalid; each event gets an [`EventId`] (stable across redeliveries: deduplicate on
//! it) and `metadata.created_at` / `published_at` stamps; grouped events are delivered only after
//! [`EventBus::release_group`], in emission order; releasing or clearing an unknown group returns
//! `Ok(0)`; a subscriber id is unique per pattern ([`Error::DuplicateSubscriber`]); a failing
//! subscriber never blocks the others; bad input is a typed [`Error`], never a panic.

mod bus;
mod error;
mod local;
mod message;
#[cfg(feature = "testing")]
pub mod testing;

pub use bus::{Envelope, EventBus, EventGroup, Handler, HandlerError, HandlerResult, handler_fn};
pub use error::Error;
pub use local::{LocalEventBus, LocalLimits};
pub use message::{
    Event, EventGroupId, EventId, MAX_NAME_LEN, Message, Metadata, Pattern, SubscriberId,
    validate_event_name,
};
