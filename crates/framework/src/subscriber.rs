//! Subscribers: a function subscribed to an event name (or `prefix*`, or `*`), given the event's
//! data typed and the services it names. Each subscriber is retried on its own with backoff,
//! so one failing subscriber never re-runs the others; after its last attempt the event is
//! kept in `gorgon_dead_letters` (and [`DeadLetters`]) instead of being lost.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use gorgon_data::{Crud, Db, FindConfig, Model};
use gorgon_event_bus::{EventId, HandlerResult, Metadata};
use gorgon_workflows::Requirement;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::context::{Context, Erased, Handler, erase};
use crate::error::BoxError;

/// An event as a subscriber receives it, its data read into `T`.
#[derive(Debug, Clone)]
pub struct Event<T> {
    /// The event's id: the same on every delivery of it, to deduplicate on.
    pub id: EventId,
    /// The event's name (`loyalty.points_added`).
    pub name: String,
    /// Its data.
    pub data: T,
    /// Its metadata (event group, timestamps).
    pub metadata: Metadata,
    /// The delivery attempt, from 1.
    pub attempt: u32,
}

/// A subscriber, ready to register with [`AppBuilder::subscriber`](crate::AppBuilder::subscriber).
///
/// ```ignore
/// async fn milestone(event: Event<PointsAdded>, notifier: Service<Notifier>) -> Result<(), BoxError> { … }
/// Subscriber::new("loyalty-milestone", "loyalty.points_added", milestone).attempts(5)
/// ```
#[derive(Clone)]
pub struct Subscriber {
    pub(crate) id: String,
    pub(crate) pattern: String,
    pub(crate) handler: Erased<gorgon_event_bus::Event>,
    pub(crate) requirements: Vec<Requirement>,
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// The event's data did not fit the subscriber's type: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("the event's data does not fit the subscriber's type: {0}")]
struct Unreadable(String);

impl Subscriber {
    /// Subscribes `handler` under the stable id `id` to `pattern`. The id is what deliveries,
    /// retries and dead letters are tracked by: keep it across deployments. Three attempts,
    /// 100 ms backoff doubling, by default.
    pub fn new<T, Args, H>(id: impl Into<String>, pattern: impl Into<String>, handler: H) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        H: Handler<Event<T>, Args>,
    {
        let typed = erase(handler);
        let handler: Erased<gorgon_event_bus::Event> =
            Arc::new(move |event: gorgon_event_bus::Event, cx| {
                let data = match serde_json::from_value::<T>(event.data) {
                    Ok(data) => data,
                    Err(error) => {
                        let error: BoxError = Box::new(Unreadable(error.to_string()));
                        return Box::pin(async move { Err(error) });
                    }
                };
                typed(
                    Event {
                        id: event.id,
                        name: event.name,
                        data,
                        metadata: event.metadata,
                        attempt: event.attempt,
                    },
                    cx,
                )
            });
        Self {
            id: id.into(),
            pattern: pattern.into(),
            handler,
            requirements: H::requirements(),
            attempts: 3,
            backoff: Duration::from_millis(100),
        }
    }

    /// How many times an event is tried before it is dead-lettered (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The wait before the second attempt, doubled before each next one.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The subscriber's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pattern it listens to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

/// An event a subscriber failed on every attempt, or could not read.
#[derive(Debug, Clone, Serialize, Deserialize, gorgon_data::Model)]
#[model(table = "gorgon_dead_letters", prefix = "dlq")]
pub struct DeadLetter {
    /// Its id.
    pub id: String,
    /// The subscriber that failed.
    pub subscriber: String,
    /// The event's id.
    pub event_id: String,
    /// The event's name.
    pub event_name: String,
    /// The event's data.
    pub data: Json,
    /// The last error.
    pub error: String,
    /// How many attempts were made.
    pub attempts: i64,
    /// When it was dead-lettered.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it was dismissed.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The dead letters of the application's subscribers.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    records: Crud<DeadLetter>,
}

impl DeadLetters {
    pub(crate) fn new(db: Db) -> Self {
        Self {
            records: Crud::new(db),
        }
    }

    /// The dead letters of one subscriber (or all, with `None`), oldest first.
    pub async fn list(
        &self,
        subscriber: Option<&str>,
    ) -> Result<Vec<DeadLetter>, gorgon_data::Error> {
        let filter = match subscriber {
            Some(id) => serde_json::json!({ "subscriber": id }),
            None => Json::Null,
        };
        self.records.list(filter, FindConfig::new()).await
    }

    /// Marks dead letters handled.
    pub async fn dismiss(&self, ids: &[String]) -> Result<(), gorgon_data::Error> {
        self.records.soft_delete(ids).await.map(drop)
    }

    async fn record(
        &self,
        subscriber: &str,
        event: &gorgon_event_bus::Event,
        error: &str,
        attempts: u32,
    ) -> Result<(), gorgon_data::Error> {
        self.records
            .create(serde_json::json!({
                "subscriber": subscriber,
                "event_id": event.id.0.to_string(),
                "event_name": event.name,
                "data": event.data,
                "error": error,
                "attempts": attempts,
            }))
            .await
            .map(drop)
    }
}

/// The bus handler that runs one subscriber with its retries.
pub(crate) struct Delivery {
    pub subscriber: Subscriber,
    pub cx: Context,
    pub dead: DeadLetters,
}

#[async_trait]
impl gorgon_event_bus::Handler for Delivery {
    async fn handle(&self, event: gorgon_event_bus::Event) -> HandlerResult {
        let subscriber = &self.subscriber;
        let mut wait = subscriber.backoff;
        let mut last = String::new();
        let mut attempts = 0;
        for attempt in 1..=subscriber.attempts {
            attempts = attempt;
            let call = (subscriber.handler)(event.clone(), self.cx.clone());
            match AssertUnwindSafe(call).catch_unwind().await {
                Ok(Ok(())) => {
                    tracing::debug!(subscriber = %subscriber.id, event = %event.name, event_id = %event.id.0, attempt, "event handled");
                    return Ok(());
                }
                Ok(Err(error)) => {
                    last = error.to_string();
                    if error.is::<Unreadable>() {
                        break;
                    }
                }
                Err(_) => last = "the subscriber panicked".to_owned(),
            }
            tracing::warn!(subscriber = %subscriber.id, event = %event.name, attempt, error = %last, "subscriber failed");
            if attempt < subscriber.attempts {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
        tracing::error!(subscriber = %subscriber.id, event = %event.name, attempts, error = %last, "event dead-lettered");
        // Not recorded: give the error back, so a bus that redelivers does.
        self.dead
            .record(&subscriber.id, &event, &last, attempts)
            .await?;
        Ok(())
    }
}

/// The model of the dead letters, for Query.
pub(crate) fn dead_letter_meta() -> &'static gorgon_data::ModelMeta {
    DeadLetter::meta()
}
