//! The local provider passes the conformance suite.

use std::sync::Arc;

use gorgon_event_bus::{
    Error, EventBus, EventGroupId, LocalEventBus, LocalLimits, Message, handler_fn,
};

#[tokio::test]
async fn local_bus_passes_the_suite() {
    gorgon_event_bus::testing::run_all(|| async {
        Arc::new(LocalEventBus::new()) as Arc<dyn EventBus>
    })
    .await;
}

/// A subscriber that never keeps up loses what overflows its queue, counted; the others and
/// the publisher are not held up.
#[tokio::test]
async fn a_full_subscriber_queue_drops_and_counts() {
    let bus = LocalEventBus::with_limits(LocalLimits {
        queue_capacity: 2,
        ..LocalLimits::default()
    });
    let stuck = Arc::new(tokio::sync::Notify::new());
    let waiting = stuck.clone();
    bus.subscribe(
        "slow.*",
        "stuck",
        handler_fn(move |_event| {
            let waiting = waiting.clone();
            async move {
                waiting.notified().await;
                Ok(())
            }
        }),
    )
    .await
    .unwrap();
    for i in 0..10 {
        bus.emit_one(Message::new("slow.event", serde_json::json!(i)))
            .await
            .unwrap();
    }
    // One in the handler, two queued: the rest dropped.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(bus.dropped() >= 7, "dropped {}", bus.dropped());
    stuck.notify_waiters();
}

/// Staged events are bounded: an emit that would pass the bound is refused and stages nothing;
/// a group left unsettled past its time is dropped.
#[tokio::test]
async fn staged_events_are_bounded_and_expire() {
    let bus = LocalEventBus::with_limits(LocalLimits {
        max_staged_events: 3,
        group_ttl: std::time::Duration::from_millis(50),
        ..LocalLimits::default()
    });
    let group = EventGroupId::new("run-1").unwrap();
    let staged = |n: usize| {
        (0..n)
            .map(|i| Message::new("order.placed", serde_json::json!(i)).in_group(group.clone()))
            .collect::<Vec<_>>()
    };
    bus.emit(staged(2)).await.unwrap();
    assert!(matches!(
        bus.emit(staged(2)).await,
        Err(Error::StagedFull { staged: 2 })
    ));
    // Past the group's time (and the once-a-second sweep), it is dropped at the next emit.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let other = EventGroupId::new("run-2").unwrap();
    bus.emit(vec![
        Message::new("order.placed", serde_json::json!(0)).in_group(other),
    ])
    .await
    .unwrap();
    assert_eq!(bus.expired(), 2);
    assert_eq!(bus.release_group(&group).await.unwrap(), 0);
}
