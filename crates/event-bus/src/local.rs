//! The in-process provider: [`LocalEventBus`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::{
    Envelope, Error, EventBus, EventGroupId, EventId, Handler, Message, Pattern, SubscriberId,
};

/// The in-process event bus: the default for development, tests and single-process deployments.
///
/// - **Delivery:** at most once. Each subscription has its own queue and task, so a subscriber sees
///   events in emission order and a slow or failing subscriber never delays the others. A handler
///   error or panic is logged and the event is dropped for that subscriber (no retry).
/// - **Crash:** everything is in memory: staged groups and undelivered events are lost with the
///   process.
/// - **Bounds** ([`LocalLimits`]): each subscriber's queue holds at most `queue_capacity`
///   events (a subscriber that falls further behind loses the newest, counted in
///   [`dropped`](Self::dropped) and logged); at most `max_staged_events` wait in unsettled
///   groups (an `emit` that would pass it is [`Error::StagedFull`]); a group left unsettled for
///   `group_ttl` (its run's process died) is dropped, logged, counted in
///   [`expired`](Self::expired).
/// - Needs a Tokio runtime (subscriptions spawn a task). Cloning gives another handle to the same bus.
#[derive(Clone, Default)]
pub struct LocalEventBus {
    inner: Arc<Inner>,
}

/// What a [`LocalEventBus`] keeps at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalLimits {
    /// Events waiting for one subscriber. Default 10,000.
    pub queue_capacity: usize,
    /// Events staged in unsettled groups, all groups together. Default 100,000.
    pub max_staged_events: usize,
    /// How long a group may stay unsettled. Default one hour.
    pub group_ttl: Duration,
}

impl Default for LocalLimits {
    fn default() -> Self {
        LocalLimits {
            queue_capacity: 10_000,
            max_staged_events: 100_000,
            group_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Default)]
struct Inner {
    limits: LocalLimits,
    subscriptions: Mutex<Vec<Subscription>>,
    groups: Mutex<Staged>,
    dropped: AtomicU64,
    expired: AtomicU64,
}

/// The staged groups, with their total of events and when each was opened.
#[derive(Default)]
struct Staged {
    groups: HashMap<EventGroupId, (Instant, Vec<Envelope>)>,
    events: usize,
    swept: Option<Instant>,
}

impl Staged {
    fn remove(&mut self, group: &EventGroupId) -> Vec<Envelope> {
        let staged = self.groups.remove(group).map(|(_, events)| events);
        let staged = staged.unwrap_or_default();
        self.events -= staged.len();
        staged
    }

    /// Drops the groups older than `ttl` (at most once a second); returns how many events.
    fn expire(&mut self, ttl: Duration, now: Instant) -> usize {
        if self
            .swept
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return 0;
        }
        self.swept = Some(now);
        let before = self.events;
        self.groups.retain(|group, (since, events)| {
            let keep = now.duration_since(*since) < ttl;
            if !keep {
                tracing::warn!(%group, events = events.len(), "an event group stayed unsettled past its time; its events are dropped");
            }
            keep
        });
        self.events = self.groups.values().map(|(_, events)| events.len()).sum();
        before - self.events
    }
}

struct Subscription {
    pattern: Pattern,
    subscriber: SubscriberId,
    active: Arc<AtomicBool>,
    queue: mpsc::Sender<Envelope>,
}

impl LocalEventBus {
    /// An empty bus with the default [`LocalLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty bus with these limits.
    pub fn with_limits(limits: LocalLimits) -> Self {
        LocalEventBus {
            inner: Arc::new(Inner {
                limits,
                subscriptions: Mutex::default(),
                groups: Mutex::default(),
                dropped: AtomicU64::new(0),
                expired: AtomicU64::new(0),
            }),
        }
    }

    /// Events a subscriber lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Staged events dropped with a group that stayed unsettled past its time.
    pub fn expired(&self) -> u64 {
        self.inner.expired.load(Ordering::Relaxed)
    }

    fn publish(&self, envelopes: Vec<Envelope>) {
        let now = Utc::now();
        let subscriptions = self.inner.subscriptions.lock();
        for mut envelope in envelopes {
            envelope.message.metadata.published_at = Some(now);
            for sub in subscriptions
                .iter()
                .filter(|s| s.pattern.matches(&envelope.message.name))
            {
                match sub.queue.try_send(envelope.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(subscriber = %sub.subscriber, event = %envelope.message.name,
                            capacity = self.inner.limits.queue_capacity,
                            "a subscriber's queue is full; the event is dropped for it");
                    }
                    // Closed: the subscription is being removed, nothing to deliver to.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }
}

async fn deliver(
    subscriber: SubscriberId,
    handler: Arc<dyn Handler>,
    active: Arc<AtomicBool>,
    mut queue: mpsc::Receiver<Envelope>,
) {
    while let Some(envelope) = queue.recv().await {
        if !active.load(Ordering::Acquire) {
            return;
        }
        let (id, name) = (envelope.id, envelope.message.name.clone());
        let outcome = AssertUnwindSafe(handler.handle(envelope.into_event(1)))
            .catch_unwind()
            .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                %subscriber, event_id = %id, event = %name, error = %error,
                "subscriber failed; the local bus does not retry"
            ),
            Err(_) => tracing::error!(
                %subscriber, event_id = %id, event = %name,
                "subscriber panicked; the local bus does not retry"
            ),
        }
    }
}

#[async_trait]
impl EventBus for LocalEventBus {
    async fn emit(&self, messages: Vec<Message>) -> Result<Vec<EventId>, Error> {
        let envelopes = Envelope::prepare(messages)?;
        let ids = envelopes.iter().map(|e| e.id).collect();
        let mut direct = Vec::new();
        {
            let limits = &self.inner.limits;
            let mut staged = self.inner.groups.lock();
            let now = Instant::now();
            let expired = staged.expire(limits.group_ttl, now);
            self.inner
                .expired
                .fetch_add(expired as u64, Ordering::Relaxed);
            let staging = envelopes
                .iter()
                .filter(|e| e.message.metadata.event_group_id.is_some())
                .count();
            if staged.events + staging > limits.max_staged_events {
                return Err(Error::StagedFull {
                    staged: staged.events,
                });
            }
            for envelope in envelopes {
                match &envelope.message.metadata.event_group_id {
                    Some(group) => {
                        let group = group.clone();
                        staged.events += 1;
                        staged
                            .groups
                            .entry(group)
                            .or_insert_with(|| (now, Vec::new()))
                            .1
                            .push(envelope);
                    }
                    None => direct.push(envelope),
                }
            }
        }
        self.publish(direct);
        Ok(ids)
    }

    async fn subscribe(
        &self,
        pattern: &str,
        subscriber_id: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<(), Error> {
        let pattern = Pattern::parse(pattern)?;
        let subscriber = SubscriberId::new(subscriber_id)?;
        let mut subscriptions = self.inner.subscriptions.lock();
        if subscriptions
            .iter()
            .any(|s| s.pattern == pattern && s.subscriber == subscriber)
        {
            return Err(Error::DuplicateSubscriber {
                pattern: pattern.as_str().to_owned(),
                subscriber_id: subscriber.as_str().to_owned(),
            });
        }
        let (queue, receiver) = mpsc::channel(self.inner.limits.queue_capacity.max(1));
        let active = Arc::new(AtomicBool::new(true));
        tokio::spawn(deliver(
            subscriber.clone(),
            handler,
            active.clone(),
            receiver,
        ));
        subscriptions.push(Subscription {
            pattern,
            subscriber,
            active,
            queue,
        });
        Ok(())
    }

    async fn unsubscribe(&self, pattern: &str, subscriber_id: &str) -> Result<bool, Error> {
        let pattern = Pattern::parse(pattern)?;
        let subscriber = SubscriberId::new(subscriber_id)?;
        let mut subscriptions = self.inner.subscriptions.lock();
        let Some(index) = subscriptions
            .iter()
            .position(|s| s.pattern == pattern && s.subscriber == subscriber)
        else {
            return Ok(false);
        };
        let removed = subscriptions.remove(index);
        removed.active.store(false, Ordering::Release);
        Ok(true)
    }

    async fn release_group(&self, group: &EventGroupId) -> Result<usize, Error> {
        let staged = self.inner.groups.lock().remove(group);
        let count = staged.len();
        self.publish(staged);
        Ok(count)
    }

    async fn clear_group(
        &self,
        group: &EventGroupId,
        only: Option<&[&str]>,
    ) -> Result<usize, Error> {
        let mut staged = self.inner.groups.lock();
        let Some(names) = only else {
            return Ok(staged.remove(group).len());
        };
        let Some((_, events)) = staged.groups.get_mut(group) else {
            return Ok(0);
        };
        let before = events.len();
        events.retain(|e| !names.contains(&e.message.name.as_str()));
        let dropped = before - events.len();
        let empty = events.is_empty();
        staged.events -= dropped;
        if empty {
            staged.remove(group);
        }
        Ok(dropped)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for sub in self.subscriptions.get_mut().iter() {
            sub.active.store(false, Ordering::Release);
        }
    }
}
