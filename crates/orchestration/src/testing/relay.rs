//! The relay test suite: every [`EventRelay`] implementation runs it against itself.
//!
//! `make` returns a new handle on the same relay (for a real relay: a new connection to the
//! same channel, as another process would open), so publishers and subscribers are apart.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::broadcast;

use crate::relay::{EventRelay, RelayStream, RelayedEvent};
use crate::{
    EngineOptions, EventKind, Flow, FlowDefinition, HandlerType, RunOptions, StepCall, StepOutcome,
    TransactionEvent, TransactionKey, TransactionState, WorkflowOptions,
};

const PATIENCE: Duration = Duration::from_secs(10);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7())
}

fn event(origin: &str, seq: u64, id: &str) -> RelayedEvent {
    RelayedEvent {
        origin: Arc::from(origin),
        seq,
        event: TransactionEvent {
            key: TransactionKey::new("relay-suite", id),
            kind: EventKind::StepSuccess,
            action: Some(Arc::from(format!("step-{seq}"))),
            state: TransactionState::Invoking,
            origin: None,
        },
    }
}

/// Receives from `stream` until `done` says so, failing after [`PATIENCE`].
async fn receive_until(
    stream: &mut RelayStream,
    mut done: impl FnMut(&[RelayedEvent]) -> bool,
) -> Vec<RelayedEvent> {
    let mut got = Vec::new();
    let result = tokio::time::timeout(PATIENCE, async {
        while !done(&got) {
            match stream.next().await {
                Some(event) => got.push(event),
                None => panic!("the subscription ended"),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "timed out after {} events: {got:?}",
        got.len()
    );
    got
}

/// Runs every check of the suite; each `make()` is a new handle on the same relay.
pub async fn relay_suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventRelay>>,
{
    publishing_without_subscribers_succeeds(make().await).await;
    every_subscriber_gets_each_publishers_events_in_order(make().await, make().await, make().await)
        .await;
    a_run_on_one_engine_is_seen_by_another(make().await, make().await).await;
}

/// Publishing when nobody listens is not an error (the events are simply gone).
pub async fn publishing_without_subscribers_succeeds(relay: Arc<dyn EventRelay>) {
    let origin = unique("lonely");
    relay
        .publish(&[event(&origin, 0, "nobody"), event(&origin, 1, "nobody")])
        .await
        .expect("publish without subscribers");
    relay.publish(&[]).await.expect("publish nothing");
}

/// Two subscribers each receive every event of two publishers once, each publisher's in order.
pub async fn every_subscriber_gets_each_publishers_events_in_order(
    first: Arc<dyn EventRelay>,
    second: Arc<dyn EventRelay>,
    listener: Arc<dyn EventRelay>,
) {
    let mut one = listener.subscribe().await.expect("subscribe");
    let mut two = second.subscribe().await.expect("subscribe");
    let (a, b) = (unique("pub-a"), unique("pub-b"));
    let id = unique("ordered");
    let (sent_a, sent_b) = (150_u64, 50_u64);
    let publish_a = async {
        let mut seq = 0;
        for size in [1_u64, 7, 30, 2, 60, 50] {
            let batch: Vec<_> = (seq..seq + size).map(|s| event(&a, s, &id)).collect();
            first.publish(&batch).await.expect("publish a");
            seq += size;
        }
        assert_eq!(seq, sent_a);
    };
    let publish_b = async {
        for s in 0..sent_b {
            second
                .publish(&[event(&b, s, &id)])
                .await
                .expect("publish b");
        }
    };
    futures::join!(publish_a, publish_b);
    let ours = |e: &RelayedEvent| e.origin.as_ref() == a || e.origin.as_ref() == b;
    for stream in [&mut one, &mut two] {
        let total = (sent_a + sent_b) as usize;
        let got = receive_until(stream, |got| {
            got.iter().filter(|e| ours(e)).count() >= total
        })
        .await;
        let got: Vec<_> = got.into_iter().filter(ours).collect();
        for (origin, sent) in [(&a, sent_a), (&b, sent_b)] {
            let seqs: Vec<u64> = got
                .iter()
                .filter(|e| e.origin.as_ref() == origin.as_str())
                .map(|e| e.seq)
                .collect();
            assert_eq!(
                seqs,
                (0..sent).collect::<Vec<_>>(),
                "{origin}: each once, in order"
            );
        }
        let sample = got.iter().find(|e| e.seq == 3).expect("seq 3");
        assert_eq!(sample.event.key.id.as_ref(), id, "the event travels whole");
        assert_eq!(sample.event.action.as_deref(), Some("step-3"));
    }
}

/// A run on engine A is observed by a subscriber of engine B, begin to finish, in order; A's own
/// subscriber sees each of its events exactly once (the relay's copy is dropped by origin).
pub async fn a_run_on_one_engine_is_seen_by_another(
    relay_a: Arc<dyn EventRelay>,
    relay_b: Arc<dyn EventRelay>,
) {
    let a = EngineOptions {
        relay: Some(relay_a),
        ..EngineOptions::default()
    }
    .build();
    let b = EngineOptions {
        relay: Some(relay_b),
        ..EngineOptions::default()
    }
    .build();
    a.relay_ready().await;
    b.relay_ready().await;
    let definition = FlowDefinition::from_json(
        r#"{"next":{"action":"reserve","next":{"action":"charge","next":{"action":"ship"}}}}"#,
    )
    .expect("flow");
    let flow =
        Flow::compile("relay-suite-run", definition, WorkflowOptions::default()).expect("compiles");
    a.register(flow, |call: StepCall| async move {
        match (call.action(), call.handler_type()) {
            ("ship", HandlerType::Invoke) => StepOutcome::permanent("no courier"),
            (action, _) => StepOutcome::ok(json!({ "step": action })),
        }
    })
    .expect("register");
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();
    let id = unique("watched");
    let run = a
        .run(
            "relay-suite-run",
            RunOptions {
                transaction_id: Some(id.clone()),
                payload: None,
                ..Default::default()
            },
        )
        .await
        .expect("run");
    assert_eq!(run.state, TransactionState::Reverted);
    let key = TransactionKey::new("relay-suite-run", id.as_str());
    let local = until_finish(&mut on_a, &key).await;
    let remote = until_finish(&mut on_b, &key).await;
    assert_eq!(local.first().map(|e| e.kind), Some(EventKind::Begin));
    assert!(local.iter().any(|e| e.kind == EventKind::CompensateBegin));
    assert!(local.iter().all(|e| e.origin.is_none()), "A's own events");
    assert!(
        remote
            .iter()
            .all(|e| e.origin.as_deref() == a.relay_origin()),
        "B's copies name A as their origin"
    );
    let stripped: Vec<_> = remote
        .into_iter()
        .map(|e| TransactionEvent { origin: None, ..e })
        .collect();
    assert_eq!(stripped, local, "B sees A's run, every event, in order");
    // Anything more for this run on A would be a duplicate coming back through the relay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    loop {
        match on_a.try_recv() {
            Ok(event) => assert_ne!(event.key, key, "A got its own event twice: {event:?}"),
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(a.relay_stats().dropped, 0);
    assert_ne!(a.relay_origin(), b.relay_origin());
}

/// The events of one transaction from a receiver, up to and including `Finish`.
async fn until_finish(
    receiver: &mut broadcast::Receiver<TransactionEvent>,
    key: &TransactionKey,
) -> Vec<TransactionEvent> {
    let mut got = Vec::new();
    let result = tokio::time::timeout(PATIENCE, async {
        loop {
            match receiver.recv().await {
                Ok(event) if &event.key == key => {
                    let finished = event.kind == EventKind::Finish;
                    got.push(event);
                    if finished {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => panic!("lagged by {n}"),
                Err(broadcast::error::RecvError::Closed) => panic!("closed"),
            }
        }
    })
    .await;
    assert!(result.is_ok(), "no finish for {key} after {got:?}");
    got
}

/// Publishes `n` events one at a time from `publisher`, each awaited by a subscriber of
/// `listener` before the next; returns the round-trip latencies in microseconds, sorted. Every
/// event must arrive, in order (a measurement for the relay providers' tests).
pub async fn relay_latencies(
    publisher: Arc<dyn EventRelay>,
    listener: Arc<dyn EventRelay>,
    n: u64,
) -> Vec<u64> {
    let mut stream = listener.subscribe().await.expect("subscribe");
    let origin = unique("latency");
    let mut latencies = Vec::with_capacity(n as usize);
    for seq in 0..n {
        let started = std::time::Instant::now();
        publisher
            .publish(&[event(&origin, seq, "latency")])
            .await
            .expect("publish");
        let got = receive_until(&mut stream, |got| {
            got.iter().any(|e| e.origin.as_ref() == origin)
        })
        .await;
        let mine: Vec<_> = got.iter().filter(|e| e.origin.as_ref() == origin).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].seq, seq, "in order");
        latencies.push(started.elapsed().as_micros() as u64);
    }
    latencies.sort_unstable();
    latencies
}
