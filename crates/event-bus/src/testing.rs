//! The conformance suite every [`EventBus`] provider runs against itself (feature `testing`).
//!
//! ```text
//! #[tokio::test]
//! async fn local_bus_passes_the_suite() {
//!     gorgon_event_bus::testing::run_all(|| async {
//!         std::sync::Arc::new(gorgon_event_bus::LocalEventBus::new()) as std::sync::Arc<dyn gorgon_event_bus::EventBus>
//!     })
//!     .await;
//! }
//! ```
//!
//! Each case gets a fresh bus from the factory and panics with the case name on failure. The
//! cases only use the [`EventBus`] trait, so they hold for every provider; provider-specific
//! behaviour (retries, dead letters, crashes) is tested in the provider's crate.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;

use crate::{Error, Event, EventBus, EventGroupId, Handler, HandlerResult, Message, handler_fn};

/// How long a case waits for an expected delivery before failing.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a case waits before concluding that an event was *not* delivered.
pub const QUIET_PERIOD: Duration = Duration::from_millis(400);

/// One recorded delivery.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The subscriber that received it.
    pub subscriber: String,
    /// The event it received.
    pub event: Event,
}

/// Records deliveries from the handlers it makes, for tests.
#[derive(Clone, Default)]
pub struct Recorder {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn record(&self, subscriber: &str, event: Event) {
        self.deliveries.lock().push(Delivery {
            subscriber: subscriber.to_owned(),
            event,
        });
    }

    /// A handler that records each event under `subscriber` and succeeds.
    pub fn handler(&self, subscriber: &str) -> Arc<dyn Handler> {
        self.handler_with(subscriber, |_| Ok(()))
    }

    /// A handler that records each event under `subscriber` (before running `outcome`), then returns `outcome(&event)`.
    pub fn handler_with(
        &self,
        subscriber: &str,
        outcome: impl Fn(&Event) -> HandlerResult + Send + Sync + 'static,
    ) -> Arc<dyn Handler> {
        let recorder = self.clone();
        let subscriber = subscriber.to_owned();
        let outcome = Arc::new(outcome);
        handler_fn(move |event: Event| {
            let (recorder, subscriber, outcome) =
                (recorder.clone(), subscriber.clone(), outcome.clone());
            async move {
                recorder.record(&subscriber, event.clone());
                outcome(&event)
            }
        })
    }

    /// A handler that records each event under `subscriber`, then panics.
    pub fn panicking_handler(&self, subscriber: &str) -> Arc<dyn Handler> {
        self.handler_with(subscriber, |_| panic!("subscriber panics on purpose"))
    }

    /// Every delivery so far, in the order handlers finished.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().clone()
    }

    /// The events `subscriber` received so far.
    pub fn events_of(&self, subscriber: &str) -> Vec<Event> {
        self.deliveries
            .lock()
            .iter()
            .filter(|d| d.subscriber == subscriber)
            .map(|d| d.event.clone())
            .collect()
    }

    /// Waits until `subscriber` has received at least `count` events; panics after `timeout`.
    pub async fn wait_for(&self, subscriber: &str, count: usize, timeout: Duration) -> Vec<Event> {
        self.wait_until(subscriber, timeout, |events| events.len() >= count)
            .await
    }

    /// Waits until the events `subscriber` received satisfy `done`; panics after `timeout`.
    pub async fn wait_until(
        &self,
        subscriber: &str,
        timeout: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events = self.events_of(subscriber);
            if done(&events) {
                return events;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{subscriber}: condition not met within {timeout:?}; received {:?}",
                    events
                        .iter()
                        .map(|e| (&e.name, &e.data, e.attempt))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

fn group(id: &str) -> EventGroupId {
    EventGroupId::new(format!("{id}-{}", uuid::Uuid::new_v4())).expect("valid group id")
}

/// Runs every case, each on a fresh bus from `new_bus`.
pub async fn run_all<F, Fut>(new_bus: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    macro_rules! case {
        ($name:ident) => {
            eprintln!("event bus suite: {}", stringify!($name));
            $name(new_bus().await).await;
        };
    }
    case!(exact_subscriber_receives_the_event_with_its_metadata);
    case!(wildcard_and_prefix_subscribers_receive_matching_events);
    case!(a_subscriber_sees_events_in_emission_order);
    case!(unsubscribe_stops_delivery);
    case!(duplicate_subscriber_id_for_a_pattern_is_a_typed_error);
    case!(invalid_input_is_a_typed_error_and_emits_nothing);
    case!(grouped_events_are_staged_until_released);
    case!(clear_group_drops_staged_events);
    case!(groups_are_independent);
    case!(a_failing_subscriber_does_not_stop_the_others);
}

/// An exact-name subscriber gets the event once, with its id, data, metadata and timestamps; other
/// names are not delivered to it.
pub async fn exact_subscriber_receives_the_event_with_its_metadata(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    bus.subscribe("order.placed", "exact", rec.handler("exact"))
        .await
        .unwrap();
    let mut message = Message::new("order.placed", json!({"id": "order_1"}));
    message
        .metadata
        .extra
        .insert("correlation".into(), json!("c-1"));
    let id = bus.emit_one(message).await.unwrap();
    bus.emit_one(Message::new("order.updated", json!({})))
        .await
        .unwrap();
    let events = rec.wait_for("exact", 1, DELIVERY_TIMEOUT).await;
    let event = &events[0];
    assert_eq!(event.id, id);
    assert_eq!(event.name, "order.placed");
    assert_eq!(event.data, json!({"id": "order_1"}));
    assert_eq!(event.metadata.extra["correlation"], "c-1");
    assert_eq!(event.attempt, 1);
    let created = event.metadata.created_at.expect("created_at stamped");
    let published = event.metadata.published_at.expect("published_at stamped");
    assert!(published >= created);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(rec.events_of("exact").len(), 1, "delivered exactly once");
}

/// `*` receives every event; `order.*` receives the `order.` events only.
pub async fn wildcard_and_prefix_subscribers_receive_matching_events(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    bus.subscribe("*", "all", rec.handler("all")).await.unwrap();
    bus.subscribe("order.*", "orders", rec.handler("orders"))
        .await
        .unwrap();
    bus.emit(vec![
        Message::new("order.placed", json!(1)),
        Message::new("product.created", json!(2)),
        Message::new("order.item.added", json!(3)),
    ])
    .await
    .unwrap();
    let all = rec.wait_for("all", 3, DELIVERY_TIMEOUT).await;
    let orders = rec.wait_for("orders", 2, DELIVERY_TIMEOUT).await;
    assert_eq!(
        names(&all),
        ["order.placed", "product.created", "order.item.added"]
    );
    assert_eq!(names(&orders), ["order.placed", "order.item.added"]);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(rec.events_of("orders").len(), 2);
}

/// One subscriber sees one emitter's events in emission order, within and across `emit` calls.
pub async fn a_subscriber_sees_events_in_emission_order(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    bus.subscribe("seq.*", "ordered", rec.handler("ordered"))
        .await
        .unwrap();
    let batch = (0..10)
        .map(|i| Message::new("seq.step", json!(i)))
        .collect();
    bus.emit(batch).await.unwrap();
    for i in 10..20 {
        bus.emit_one(Message::new("seq.step", json!(i)))
            .await
            .unwrap();
    }
    let events = rec.wait_for("ordered", 20, DELIVERY_TIMEOUT).await;
    let seen: Vec<_> = events.iter().map(|e| e.data.clone()).collect();
    let expected: Vec<_> = (0..20).map(|i| json!(i)).collect();
    assert_eq!(seen, expected);
}

/// After `unsubscribe` returns, new events are not delivered to that subscriber; subscribing the
/// id again works; unsubscribing an unknown subscription returns `false`.
pub async fn unsubscribe_stops_delivery(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    bus.subscribe("cart.updated", "leaver", rec.handler("leaver"))
        .await
        .unwrap();
    bus.subscribe("cart.updated", "stayer", rec.handler("stayer"))
        .await
        .unwrap();
    bus.emit_one(Message::new("cart.updated", json!(1)))
        .await
        .unwrap();
    rec.wait_for("leaver", 1, DELIVERY_TIMEOUT).await;
    assert!(bus.unsubscribe("cart.updated", "leaver").await.unwrap());
    assert!(!bus.unsubscribe("cart.updated", "leaver").await.unwrap());
    assert!(!bus.unsubscribe("cart.*", "stayer").await.unwrap());
    bus.emit_one(Message::new("cart.updated", json!(2)))
        .await
        .unwrap();
    rec.wait_for("stayer", 2, DELIVERY_TIMEOUT).await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(
        rec.events_of("leaver").len(),
        1,
        "no delivery after unsubscribe"
    );

    bus.subscribe("cart.updated", "leaver", rec.handler("leaver"))
        .await
        .expect("an unsubscribed id can subscribe again");
    bus.emit_one(Message::new("cart.updated", json!(3)))
        .await
        .unwrap();
    // A durable provider may first deliver the event emitted while unsubscribed (2); 3 must come.
    rec.wait_until("leaver", DELIVERY_TIMEOUT, |events| {
        events.iter().any(|e| e.data == json!(3))
    })
    .await;
}

/// The same subscriber id twice on one pattern is [`Error::DuplicateSubscriber`]; on another
/// pattern it is allowed, and the first subscription keeps working.
pub async fn duplicate_subscriber_id_for_a_pattern_is_a_typed_error(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    bus.subscribe("user.created", "mailer", rec.handler("mailer"))
        .await
        .unwrap();
    let err = bus
        .subscribe("user.created", "mailer", rec.handler("mailer-2"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateSubscriber { pattern, subscriber_id }
            if pattern == "user.created" && subscriber_id == "mailer"),
        "{err:?}"
    );
    bus.subscribe("user.deleted", "mailer", rec.handler("mailer"))
        .await
        .expect("same id on another pattern");
    bus.emit_one(Message::new("user.created", json!({})))
        .await
        .unwrap();
    rec.wait_for("mailer", 1, DELIVERY_TIMEOUT).await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(rec.events_of("mailer-2").is_empty());
    assert_eq!(rec.events_of("mailer").len(), 1);
}

/// Bad names, patterns and ids are typed errors; an `emit` with one bad message emits none.
pub async fn invalid_input_is_a_typed_error_and_emits_nothing(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    for pattern in ["", "a*b", "has space", "*.x"] {
        let err = bus
            .subscribe(pattern, "s", rec.handler("s"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidPattern { .. }),
            "{pattern:?}: {err:?}"
        );
    }
    for id in ["", "has space", "a|b"] {
        let err = bus.subscribe("x", id, rec.handler("s")).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidSubscriberId { .. }),
            "{id:?}: {err:?}"
        );
    }
    let err = bus.unsubscribe("a**", "s").await.unwrap_err();
    assert!(matches!(err, Error::InvalidPattern { .. }), "{err:?}");

    bus.subscribe("*", "all", rec.handler("all")).await.unwrap();
    let err = bus
        .emit(vec![
            Message::new("valid.name", json!(1)),
            Message::new("bad name*", json!(2)),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidEventName { .. }), "{err:?}");
    let err = bus.emit_one(Message::new("", json!(1))).await.unwrap_err();
    assert!(matches!(err, Error::InvalidEventName { .. }), "{err:?}");
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(rec.events_of("all").is_empty(), "nothing was emitted");
    assert!(bus.emit(Vec::new()).await.unwrap().is_empty());
}

/// Grouped messages are not delivered until `release_group`, which publishes them in order and
/// returns their count; releasing again, or an unknown group, is `Ok(0)`. Ungrouped messages
/// emitted meanwhile are delivered at once.
pub async fn grouped_events_are_staged_until_released(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    bus.subscribe("*", "all", rec.handler("all")).await.unwrap();
    let run = group("run");
    let ids = bus
        .emit(vec![
            Message::new("order.placed", json!(1)).in_group(run.clone()),
            Message::new("payment.captured", json!(2)).in_group(run.clone()),
            Message::new("audit.logged", json!(3)),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    let events = rec.wait_for("all", 1, DELIVERY_TIMEOUT).await;
    assert_eq!(names(&events), ["audit.logged"]);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(rec.events_of("all").len(), 1, "grouped events are staged");

    assert_eq!(bus.release_group(&run).await.unwrap(), 2);
    let events = rec.wait_for("all", 3, DELIVERY_TIMEOUT).await;
    assert_eq!(
        names(&events[1..]),
        ["order.placed", "payment.captured"],
        "released in emission order"
    );
    assert_eq!(events[1].id, ids[0]);
    assert_eq!(
        events[1].metadata.event_group_id.as_ref(),
        Some(&run),
        "group id kept in metadata"
    );
    assert!(events[1].metadata.published_at.is_some());

    assert_eq!(
        bus.release_group(&run).await.unwrap(),
        0,
        "already released"
    );
    assert_eq!(bus.release_group(&group("unknown")).await.unwrap(), 0);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(rec.events_of("all").len(), 3, "no event published twice");
}

/// `clear_group` drops a whole group, or only the named events of it; dropped events are never
/// delivered.
pub async fn clear_group_drops_staged_events(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    bus.subscribe("*", "all", rec.handler("all")).await.unwrap();

    let rolled_back = group("rolled-back");
    bus.emit(vec![
        Message::new("order.placed", json!(1)).in_group(rolled_back.clone()),
        Message::new("order.updated", json!(2)).in_group(rolled_back.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(bus.clear_group(&rolled_back, None).await.unwrap(), 2);
    assert_eq!(bus.release_group(&rolled_back).await.unwrap(), 0);

    let partial = group("partial");
    bus.emit(vec![
        Message::new("stock.reserved", json!(1)).in_group(partial.clone()),
        Message::new("order.placed", json!(2)).in_group(partial.clone()),
        Message::new("stock.reserved", json!(3)).in_group(partial.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(
        bus.clear_group(&partial, Some(&["stock.reserved", "not.staged"]))
            .await
            .unwrap(),
        2
    );
    assert_eq!(bus.clear_group(&group("unknown"), None).await.unwrap(), 0);
    assert_eq!(bus.release_group(&partial).await.unwrap(), 1);
    let events = rec.wait_for("all", 1, DELIVERY_TIMEOUT).await;
    assert_eq!(names(&events), ["order.placed"]);
    assert_eq!(events[0].data, json!(2));
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(
        rec.events_of("all").len(),
        1,
        "cleared events never delivered"
    );
}

/// Releasing or clearing one group leaves the others staged.
pub async fn groups_are_independent(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    bus.subscribe("*", "all", rec.handler("all")).await.unwrap();
    let (first, second, third) = (group("first"), group("second"), group("third"));
    for (g, name) in [
        (&first, "e.first"),
        (&second, "e.second"),
        (&third, "e.third"),
    ] {
        bus.emit_one(Message::new(name, json!(null)).in_group(g.clone()))
            .await
            .unwrap();
    }
    assert_eq!(bus.release_group(&first).await.unwrap(), 1);
    assert_eq!(bus.clear_group(&third, None).await.unwrap(), 1);
    rec.wait_for("all", 1, DELIVERY_TIMEOUT).await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(names(&rec.events_of("all")), ["e.first"]);
    assert_eq!(bus.release_group(&second).await.unwrap(), 1);
    let events = rec.wait_for("all", 2, DELIVERY_TIMEOUT).await;
    assert_eq!(names(&events), ["e.first", "e.second"]);
}

/// A subscriber that returns an error, and one that panics, do not prevent the others from
/// receiving the event, nor later events.
pub async fn a_failing_subscriber_does_not_stop_the_others(bus: Arc<dyn EventBus>) {
    let rec = Recorder::new();
    bus.subscribe(
        "invoice.*",
        "failing",
        rec.handler_with("failing", |_| Err("subscriber fails on purpose".into())),
    )
    .await
    .unwrap();
    bus.subscribe("invoice.*", "panicking", rec.panicking_handler("panicking"))
        .await
        .unwrap();
    bus.subscribe("invoice.*", "healthy", rec.handler("healthy"))
        .await
        .unwrap();
    bus.emit_one(Message::new("invoice.created", json!(1)))
        .await
        .unwrap();
    bus.emit_one(Message::new("invoice.paid", json!(2)))
        .await
        .unwrap();
    let events = rec.wait_for("healthy", 2, DELIVERY_TIMEOUT).await;
    assert_eq!(names(&events), ["invoice.created", "invoice.paid"]);
    rec.wait_for("failing", 1, DELIVERY_TIMEOUT).await;
}
