//! The [`EventBus`] trait, subscriber [`Handler`]s and the [`EventGroup`] handle a workflow run uses.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::message::validate_event_name;
use crate::{Error, Event, EventGroupId, EventId, Message};

/// What a failing handler returns; it is logged (local) or retried and dead-lettered (Redis).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// The result of one delivery to one subscriber.
pub type HandlerResult = Result<(), HandlerError>;

/// A subscriber's code. Build one from a closure with [`handler_fn`].
///
/// A handler that returns `Err` or panics counts as a failed delivery to this subscriber only; other
/// subscribers of the same event are unaffected.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Handles one event. With an at-least-once provider it may see the same [`Event::id`] again.
    async fn handle(&self, event: Event) -> HandlerResult;
}

struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Event) -> Fut + Send + Sync,
    Fut: Future<Output = HandlerResult> + Send,
{
    async fn handle(&self, event: Event) -> HandlerResult {
        (self.0)(event).await
    }
}

/// Wraps an async closure as a handler: `handler_fn(|event| async move { ...; Ok(()) })`.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn Handler>
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// The event bus: publish events, subscribe handlers to event names, stage events in groups.
///
/// Held as `Arc<dyn EventBus>`; every provider passes [`crate::testing`]'s suite. The contract every
/// provider keeps (the crate docs add what differs per provider):
///
/// - `emit` validates every message first and emits none if one is invalid; it does not wait for
///   handlers. Each message gets an [`EventId`] and `metadata.created_at` (if absent).
/// - A message whose `metadata.event_group_id` is set is **staged**, not delivered, until
///   [`release_group`](Self::release_group) publishes the group or [`clear_group`](Self::clear_group) drops it.
/// - An event is delivered to every subscription whose pattern matches its name, each subscriber
///   independently: a subscriber that fails or panics does not affect the others.
/// - One subscriber sees the events of one bus in emission order, except that a retried event
///   (Redis) can arrive after later ones.
/// - A subscriber id may be used once per pattern per bus; reusing it is [`Error::DuplicateSubscriber`].
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Emits messages: grouped ones are staged, the others published. Returns their ids in order.
    async fn emit(&self, messages: Vec<Message>) -> Result<Vec<EventId>, Error>;

    /// Emits one message; see [`emit`](Self::emit).
    async fn emit_one(&self, message: Message) -> Result<EventId, Error> {
        let ids = self.emit(vec![message]).await?;
        ids.into_iter().next().ok_or(Error::Backend {
            operation: "emit_one",
            source: "provider returned no event id".into(),
        })
    }

    /// Subscribes `handler` under `subscriber_id` to `pattern` (an event name, `*`, or `prefix*`).
    async fn subscribe(
        &self,
        pattern: &str,
        subscriber_id: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<(), Error>;

    /// Stops delivering to `subscriber_id` under `pattern`; `Ok(false)` if it was not subscribed.
    ///
    /// No delivery starts after this returns; one already running may still finish.
    async fn unsubscribe(&self, pattern: &str, subscriber_id: &str) -> Result<bool, Error>;

    /// Publishes every message staged in `group`, in emission order, and forgets the group.
    ///
    /// Returns how many were published; an unknown (or already released or cleared) group is a no-op
    /// returning `Ok(0)`.
    async fn release_group(&self, group: &EventGroupId) -> Result<usize, Error>;

    /// Drops the messages staged in `group` (only those named in `only`, when given) without
    /// publishing them. Returns how many were dropped; an unknown group gives `Ok(0)`.
    async fn clear_group(
        &self,
        group: &EventGroupId,
        only: Option<&[&str]>,
    ) -> Result<usize, Error>;
}

/// An event as providers store it: the message plus the id `emit` assigned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event id.
    pub id: EventId,
    /// The message, `created_at` stamped.
    pub message: Message,
}

impl Envelope {
    /// Validates and stamps messages for `emit`: all or nothing.
    ///
    /// Providers call this first so that every provider refuses the same input.
    pub fn prepare(messages: Vec<Message>) -> Result<Vec<Envelope>, Error> {
        for message in &messages {
            validate_event_name(&message.name)?;
        }
        let now = Utc::now();
        Ok(messages
            .into_iter()
            .map(|mut message| {
                message.metadata.created_at.get_or_insert(now);
                Envelope {
                    id: EventId::new(),
                    message,
                }
            })
            .collect())
    }

    /// The event a handler receives on delivery number `attempt`.
    pub fn into_event(self, attempt: u32) -> Event {
        Event {
            id: self.id,
            name: self.message.name,
            data: self.message.data,
            metadata: self.message.metadata,
            attempt,
        }
    }
}

/// One group of staged events on one bus: what a workflow run holds to emit its events.
///
/// The workflow engine creates one per run with the run's id, hands it to steps, and on the run's
/// outcome calls [`release`](Self::release) (success) or [`discard`](Self::discard) (rolled back). A
/// step's compensation can drop only its own events with [`discard_events`](Self::discard_events).
///
/// ```
/// # async fn demo(bus: std::sync::Arc<dyn gorgon_event_bus::EventBus>) -> Result<(), gorgon_event_bus::Error> {
/// use gorgon_event_bus::{EventGroup, EventGroupId, Message};
/// let group = EventGroup::new(bus, EventGroupId::new("run-42")?);
/// group.emit(vec![Message::new("order.placed", serde_json::json!({"id": "o1"}))]).await?;
/// // ... the run succeeds:
/// group.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventGroup {
    bus: Arc<dyn EventBus>,
    id: EventGroupId,
}

impl EventGroup {
    /// The group `id` on `bus`.
    pub fn new(bus: Arc<dyn EventBus>, id: EventGroupId) -> Self {
        Self { bus, id }
    }

    /// The group's id.
    pub fn id(&self) -> &EventGroupId {
        &self.id
    }

    /// Stages messages in this group (overriding any group id they carry).
    pub async fn emit(&self, messages: Vec<Message>) -> Result<Vec<EventId>, Error> {
        let messages = messages
            .into_iter()
            .map(|m| m.in_group(self.id.clone()))
            .collect();
        self.bus.emit(messages).await
    }

    /// Publishes everything staged in this group; see [`EventBus::release_group`].
    pub async fn release(&self) -> Result<usize, Error> {
        self.bus.release_group(&self.id).await
    }

    /// Drops everything staged in this group; see [`EventBus::clear_group`].
    pub async fn discard(&self) -> Result<usize, Error> {
        self.bus.clear_group(&self.id, None).await
    }

    /// Drops the staged events with these names only.
    pub async fn discard_events(&self, names: &[&str]) -> Result<usize, Error> {
        self.bus.clear_group(&self.id, Some(names)).await
    }
}
