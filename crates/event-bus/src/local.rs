//! The in-process provider: [`LocalEventBus`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
/// - Needs a Tokio runtime (subscriptions spawn a task). Cloning gives another handle to the same bus.
#[derive(Clone, Default)]
pub struct LocalEventBus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    subscriptions: Mutex<Vec<Subscription>>,
    groups: Mutex<HashMap<EventGroupId, Vec<Envelope>>>,
}

struct Subscription {
    pattern: Pattern,
    subscriber: SubscriberId,
    active: Arc<AtomicBool>,
    queue: mpsc::UnboundedSender<Envelope>,
}

impl LocalEventBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
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
                // A closed queue means the subscription is being removed: nothing to deliver to.
                let _ = sub.queue.send(envelope.clone());
            }
        }
    }
}

async fn deliver(
    subscriber: SubscriberId,
    handler: Arc<dyn Handler>,
    active: Arc<AtomicBool>,
    mut queue: mpsc::UnboundedReceiver<Envelope>,
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
            let mut groups = self.inner.groups.lock();
            for envelope in envelopes {
                match &envelope.message.metadata.event_group_id {
                    Some(group) => groups.entry(group.clone()).or_default().push(envelope),
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
        let (queue, receiver) = mpsc::unbounded_channel();
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
        let staged = self.inner.groups.lock().remove(group).unwrap_or_default();
        let count = staged.len();
        self.publish(staged);
        Ok(count)
    }

    async fn clear_group(
        &self,
        group: &EventGroupId,
        only: Option<&[&str]>,
    ) -> Result<usize, Error> {
        let mut groups = self.inner.groups.lock();
        let Some(names) = only else {
            return Ok(groups.remove(group).map_or(0, |staged| staged.len()));
        };
        let Some(staged) = groups.get_mut(group) else {
            return Ok(0);
        };
        let before = staged.len();
        staged.retain(|e| !names.contains(&e.message.name.as_str()));
        let dropped = before - staged.len();
        if staged.is_empty() {
            groups.remove(group);
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
