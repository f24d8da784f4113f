//! The conformance suite every analytics [`Sink`] runs against itself, through the batcher.
//!
//! A provider's test implements [`Target`]: each call to [`Target::fresh`] gives a new sink and
//! a [`Recorder`] reading what its backend received (for PostHog, an HTTP server in the test
//! that records requests), then calls [`run_all`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::{Analytics, BatchOptions, Error, Event, Kind, LocalSink, Sink};

/// One event as the backend received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The event name; `None` for identify.
    pub event: Option<String>,
    /// The actor.
    pub actor_id: String,
    /// Properties (track) or traits (identify).
    pub properties: Value,
}

impl From<&Event> for Recorded {
    fn from(event: &Event) -> Self {
        Self {
            event: match &event.kind {
                Kind::Track { event } => Some(event.clone()),
                Kind::Identify => None,
            },
            actor_id: event.actor_id.clone(),
            properties: Value::Object(event.properties.clone()),
        }
    }
}

/// Reads what a sink's backend received: one inner list per request (batch).
pub trait Recorder: Send + Sync {
    /// Requests so far, oldest first.
    fn requests(&self) -> Vec<Vec<Recorded>>;
}

impl Recorder for LocalSink {
    fn requests(&self) -> Vec<Vec<Recorded>> {
        self.batches()
            .iter()
            .map(|batch| batch.iter().map(Recorded::from).collect())
            .collect()
    }
}

/// Makes a fresh sink and its recorder for each check.
#[async_trait]
pub trait Target: Send + Sync {
    /// A new sink with an empty backend record.
    async fn fresh(&self) -> (Arc<dyn Sink>, Arc<dyn Recorder>);
}

/// Runs every check of the suite.
pub async fn run_all(target: &dyn Target) {
    many_events_go_out_in_few_batches(target).await;
    full_batches_are_sent_without_waiting(target).await;
    partial_batches_are_sent_on_the_interval(target).await;
    flush_sends_everything_accepted_before_it(target).await;
    shutdown_sends_the_buffer_then_refuses(target).await;
    dropping_every_handle_sends_the_buffer(target).await;
    bad_input_is_refused(target).await;
}

fn options(max_batch_size: usize, flush_interval_ms: u64) -> BatchOptions {
    BatchOptions {
        max_batch_size,
        flush_interval_ms,
        ..BatchOptions::default()
    }
}

async fn wait_for(
    recorder: &dyn Recorder,
    requests: usize,
    within: Duration,
) -> Vec<Vec<Recorded>> {
    let deadline = Instant::now() + within;
    while recorder.requests().len() < requests && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    recorder.requests()
}

fn track(i: usize) -> Recorded {
    Recorded {
        event: Some(format!("event.{i}")),
        actor_id: format!("actor_{}", i % 3),
        properties: json!({"i": i, "nested": {"ok": true}}),
    }
}

fn send_tracks(analytics: &Analytics, range: std::ops::Range<usize>) {
    for i in range {
        let expected = track(i);
        analytics
            .track(
                expected.event.as_deref().expect("track"),
                &expected.actor_id,
                expected.properties,
            )
            .expect("track");
    }
}

/// 100 events reach the backend complete and in order, in 5 requests of 20 (max batch size).
pub async fn many_events_go_out_in_few_batches(target: &dyn Target) {
    let (sink, recorder) = target.fresh().await;
    let analytics = Analytics::start(sink, options(20, 60_000)).expect("start");
    send_tracks(&analytics, 0..100);
    analytics.flush().await.expect("flush");
    let requests = recorder.requests();
    assert_eq!(requests.len(), 5, "100 events in 5 requests");
    assert!(requests.iter().all(|r| r.len() == 20));
    let all: Vec<Recorded> = requests.into_iter().flatten().collect();
    assert_eq!(
        all,
        (0..100).map(track).collect::<Vec<_>>(),
        "complete and in order"
    );
    analytics.shutdown().await.expect("shutdown");
}

/// A full batch goes out at once, without a flush or the interval.
pub async fn full_batches_are_sent_without_waiting(target: &dyn Target) {
    let (sink, recorder) = target.fresh().await;
    let analytics = Analytics::start(sink, options(10, 3_600_000)).expect("start");
    send_tracks(&analytics, 0..25);
    let requests = wait_for(recorder.as_ref(), 2, Duration::from_secs(5)).await;
    assert_eq!(
        requests.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10],
        "two full batches, the remaining 5 still buffered"
    );
    analytics.flush().await.expect("flush");
    assert_eq!(recorder.requests().len(), 3);
    assert_eq!(recorder.requests()[2].len(), 5);
    analytics.shutdown().await.expect("shutdown");
}

/// A partial batch goes out on the flush interval.
pub async fn partial_batches_are_sent_on_the_interval(target: &dyn Target) {
    let (sink, recorder) = target.fresh().await;
    let analytics = Analytics::start(sink, options(1000, 100)).expect("start");
    send_tracks(&analytics, 0..3);
    let requests = wait_for(recorder.as_ref(), 1, Duration::from_secs(5)).await;
    assert_eq!(requests.len(), 1, "one request on the interval");
    assert_eq!(requests[0], (0..3).map(track).collect::<Vec<_>>());
    analytics.shutdown().await.expect("shutdown");
}

/// Nothing leaves before a flush (interval 1 h); the flush sends tracks and identifies in order.
pub async fn flush_sends_everything_accepted_before_it(target: &dyn Target) {
    let (sink, recorder) = target.fresh().await;
    let analytics = Analytics::start(sink, options(1000, 3_600_000)).expect("start");
    send_tracks(&analytics, 0..4);
    analytics
        .identify(
            "actor_1",
            json!({"email": "ada@example.com", "plan": "pro"}),
        )
        .expect("identify");
    analytics
        .identify("actor_2", Value::Null)
        .expect("identify");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(recorder.requests().is_empty(), "buffered until flushed");
    analytics.flush().await.expect("flush");
    let requests = recorder.requests();
    assert_eq!(requests.len(), 1);
    let mut expected: Vec<Recorded> = (0..4).map(track).collect();
    expected.push(Recorded {
        event: None,
        actor_id: "actor_1".into(),
        properties: json!({"email": "ada@example.com", "plan": "pro"}),
    });
    expected.push(Recorded {
        event: None,
        actor_id: "actor_2".into(),
        properties: json!({}),
    });
    assert_eq!(requests[0], expected);
    analytics.flush().await.expect("an empty flush");
    assert_eq!(recorder.requests().len(), 1, "an empty flush sends nothing");
    analytics.shutdown().await.expect("shutdown");
}

/// Shutdown sends the buffer; afterwards every call is refused with `Closed`.
pub async fn shutdown_sends_the_buffer_then_refuses(target: &dyn Target) {
    let (sink, recorder) = target.fresh().await;
    let analytics = Analytics::start(sink, options(1000, 3_600_000)).expect("start");
    send_tracks(&analytics, 0..7);
    analytics.shutdown().await.expect("shutdown");
    assert_eq!(
        recorder.requests(),
        vec![(0..7).map(track).collect::<Vec<_>>()]
    );
    assert!(matches!(
        analytics.track("late", "a", Value::Null),
        Err(Error::Closed)
    ));
    assert!(matches!(analytics.flush().await, Err(Error::Closed)));
    assert!(matches!(analytics.shutdown().await, Err(Error::Closed)));
}

/// When the last handle is dropped the worker sends what it holds.
pub async fn dropping_every_handle_sends_the_buffer(target: &dyn Target) {
    let (sink, recorder) = target.fresh().await;
    let analytics = Analytics::start(sink, options(1000, 3_600_000)).expect("start");
    let clone = analytics.clone();
    send_tracks(&clone, 0..2);
    drop(clone);
    drop(analytics);
    let requests = wait_for(recorder.as_ref(), 1, Duration::from_secs(5)).await;
    assert_eq!(requests, vec![(0..2).map(track).collect::<Vec<_>>()]);
}

/// Blank names, blank actors and non-object properties are typed errors; nothing is sent.
pub async fn bad_input_is_refused(target: &dyn Target) {
    let (sink, recorder) = target.fresh().await;
    let analytics = Analytics::start(sink, options(1000, 3_600_000)).expect("start");
    for result in [
        analytics.track("", "a", Value::Null),
        analytics.track("e", " ", Value::Null),
        analytics.track("e", "a", json!([1, 2])),
        analytics.identify("", json!({})),
        analytics.identify("a", json!("traits")),
    ] {
        assert!(
            matches!(result, Err(Error::InvalidInput { .. })),
            "{result:?}"
        );
    }
    analytics.shutdown().await.expect("shutdown");
    assert!(recorder.requests().is_empty());
}
