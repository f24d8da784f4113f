//! The Redis Streams provider against the real Redis at `REDIS_URL` (default
//! `redis://127.0.0.1:6379`): the conformance suite, retries, dead letters, and crash recovery
//! across real processes (this test binary re-run as a child; see `child_process`).

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use gorgon_event_bus::testing::{DELIVERY_TIMEOUT, QUIET_PERIOD, Recorder};
use gorgon_event_bus::{EventBus, EventGroupId, Message, handler_fn};
use gorgon_event_bus_redis::{Options, RedisEventBus};
use parking_lot::Mutex;
use serde_json::json;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Options for a test: a unique prefix and fast retries / reclaim.
fn options(prefix: &str) -> Options {
    Options {
        url: redis_url(),
        prefix: prefix.to_owned(),
        max_attempts: 3,
        backoff_initial_ms: 50,
        backoff_max_ms: 200,
        claim_idle_ms: 1_000,
        read_block_ms: 200,
        ..Options::default()
    }
}

/// Deletes every key of the prefixes it was given when dropped (also on panic).
#[derive(Default)]
struct Cleanup(Mutex<Vec<String>>);

impl Cleanup {
    fn prefix(&self) -> String {
        let prefix = format!("gorgon-test:eventbus:{}", uuid::Uuid::new_v4().simple());
        self.0.lock().push(prefix.clone());
        prefix
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        for prefix in self.0.lock().iter() {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{{{prefix}}}*"))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = redis::cmd("DEL").arg(keys).query::<()>(&mut conn);
            }
        }
    }
}

async fn connect(options: Options) -> RedisEventBus {
    RedisEventBus::connect(options).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to Redis at {} (start redis-server or set REDIS_URL): {e}",
            redis_url()
        )
    })
}

async fn raw_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is reachable")
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_bus_passes_the_suite() {
    let cleanup = Cleanup::default();
    gorgon_event_bus::testing::run_all(|| async {
        Arc::new(connect(options(&cleanup.prefix())).await) as Arc<dyn EventBus>
    })
    .await;
}

/// Medusa drops events the emitting instance has no subscriber for (#14526); here an instance
/// without subscribers publishes, and two instances subscribing the same id share the deliveries:
/// each event is handled exactly once between them.
#[tokio::test]
async fn an_instance_without_subscribers_publishes_and_instances_share_a_subscriber() {
    let cleanup = Cleanup::default();
    let prefix = cleanup.prefix();
    let api = connect(options(&prefix)).await;
    let worker_1 = connect(options(&prefix)).await;
    let worker_2 = connect(options(&prefix)).await;
    let rec = Recorder::new();
    for worker in [&worker_1, &worker_2] {
        worker
            .subscribe("order.placed", "mailer", rec.handler("mailer"))
            .await
            .unwrap();
    }
    let messages = (0..20)
        .map(|i| Message::new("order.placed", json!(i)))
        .collect();
    let ids = api.emit(messages).await.unwrap();
    rec.wait_for("mailer", 20, DELIVERY_TIMEOUT).await;
    tokio::time::sleep(QUIET_PERIOD).await;
    let mut delivered: Vec<_> = rec.events_of("mailer").iter().map(|e| e.id).collect();
    delivered.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        delivered, expected,
        "every event exactly once across the instances"
    );
    assert_eq!(api.pending("order.placed", "mailer").await.unwrap(), 0);
}

/// A subscriber that fails twice is retried alone, with its attempt number, until it succeeds;
/// the subscriber that succeeded the first time is never re-run.
#[tokio::test]
async fn a_failing_subscriber_is_retried_alone() {
    let cleanup = Cleanup::default();
    let bus = connect(options(&cleanup.prefix())).await;
    let rec = Recorder::new();
    bus.subscribe("payment.captured", "ledger", rec.handler("ledger"))
        .await
        .unwrap();
    bus.subscribe(
        "payment.*",
        "flaky-mailer",
        rec.handler_with("flaky-mailer", |event| {
            if event.attempt < 3 {
                Err(format!("smtp down on attempt {}", event.attempt).into())
            } else {
                Ok(())
            }
        }),
    )
    .await
    .unwrap();
    let id = bus
        .emit_one(Message::new("payment.captured", json!({"amount": 10})))
        .await
        .unwrap();
    let flaky = rec.wait_for("flaky-mailer", 3, DELIVERY_TIMEOUT).await;
    wait_until("flaky-mailer completed", DELIVERY_TIMEOUT, || async {
        bus.pending("payment.*", "flaky-mailer").await.unwrap() == 0
    })
    .await;
    tokio::time::sleep(QUIET_PERIOD).await;
    let flaky_attempts: Vec<_> = rec
        .events_of("flaky-mailer")
        .iter()
        .map(|e| (e.id, e.attempt))
        .collect();
    assert_eq!(flaky_attempts, [(id, 1), (id, 2), (id, 3)]);
    assert_eq!(flaky[2].data, json!({"amount": 10}));
    let ledger = rec.events_of("ledger");
    assert_eq!(ledger.len(), 1, "the succeeding subscriber ran once");
    assert_eq!((ledger[0].id, ledger[0].attempt), (id, 1));
    assert_eq!(bus.pending("payment.captured", "ledger").await.unwrap(), 0);
    assert!(bus.dead_letters(10).await.unwrap().is_empty());
}

/// After `max_attempts` failures the event goes to the dead-letter stream with the subscriber and
/// the last error, is no longer pending, and is not retried again.
#[tokio::test]
async fn a_subscriber_failing_max_attempts_times_is_dead_lettered() {
    let cleanup = Cleanup::default();
    let prefix = cleanup.prefix();
    let bus = connect(options(&prefix)).await;
    let rec = Recorder::new();
    bus.subscribe(
        "stock.*",
        "broken",
        rec.handler_with("broken", |_| Err("warehouse api 500".into())),
    )
    .await
    .unwrap();
    bus.subscribe(
        "stock.reserved",
        "panicky",
        rec.panicking_handler("panicky"),
    )
    .await
    .unwrap();
    bus.subscribe("stock.reserved", "fine", rec.handler("fine"))
        .await
        .unwrap();
    let id = bus
        .emit_one(Message::new("stock.reserved", json!({"sku": "S1"})))
        .await
        .unwrap();
    wait_until("two dead letters", DELIVERY_TIMEOUT, || async {
        bus.dead_letters(10).await.unwrap().len() == 2
    })
    .await;
    tokio::time::sleep(QUIET_PERIOD).await;

    assert_eq!(rec.events_of("broken").len(), 3, "max_attempts = 3");
    assert_eq!(rec.events_of("panicky").len(), 3);
    assert_eq!(rec.events_of("fine").len(), 1);
    let mut dead = bus.dead_letters(10).await.unwrap();
    dead.sort_by(|a, b| a.subscriber_id.cmp(&b.subscriber_id));
    assert_eq!(dead.len(), 2);
    let broken = &dead[0];
    assert_eq!(broken.subscriber_id, "broken");
    assert_eq!(broken.pattern, "stock.*");
    assert_eq!(broken.attempts, 3);
    assert_eq!(broken.error, "warehouse api 500");
    let event = broken.event.as_ref().expect("event kept");
    assert_eq!(event.id, id);
    assert_eq!(event.message.data, json!({"sku": "S1"}));
    assert!(dead[1].error.contains("panic"), "{:?}", dead[1].error);
    for (pattern, subscriber) in [("stock.*", "broken"), ("stock.reserved", "panicky")] {
        assert_eq!(bus.pending(pattern, subscriber).await.unwrap(), 0);
    }
    let attempts_left: i64 = redis::cmd("HLEN")
        .arg(format!("{{{prefix}}}:attempts"))
        .query_async(&mut raw_conn().await)
        .await
        .unwrap();
    assert_eq!(attempts_left, 0, "attempt counters are cleaned up");
}

/// A handler that runs longer than `claim_idle_ms` on a live instance keeps its delivery: the
/// heartbeat stops the other instance from reclaiming it, so it runs once.
#[tokio::test]
async fn a_slow_handler_on_a_live_instance_is_not_reclaimed() {
    let cleanup = Cleanup::default();
    let prefix = cleanup.prefix();
    let rec = Recorder::new();
    let mut buses = Vec::new();
    for _ in 0..2 {
        let bus = connect(options(&prefix)).await;
        let recorder = rec.clone();
        bus.subscribe(
            "report.requested",
            "slow-report",
            handler_fn(move |event| {
                let recorder = recorder.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(2_500)).await;
                    recorder.handler("slow-report").handle(event).await
                }
            }),
        )
        .await
        .unwrap();
        buses.push(bus);
    }
    buses[0]
        .emit_one(Message::new("report.requested", json!({})))
        .await
        .unwrap();
    rec.wait_for("slow-report", 1, DELIVERY_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(rec.events_of("slow-report").len(), 1, "claim_idle is 1 s");
    assert_eq!(
        buses[1]
            .pending("report.requested", "slow-report")
            .await
            .unwrap(),
        0
    );
}

/// An instance that restarts under the same consumer name resumes its own unfinished deliveries
/// at once, without waiting for `claim_idle_ms`.
#[tokio::test]
async fn a_restart_with_the_same_consumer_name_resumes_its_pending_events() {
    let cleanup = Cleanup::default();
    let prefix = cleanup.prefix();
    let stable = Options {
        consumer_name: Some("pod-1".into()),
        claim_idle_ms: 600_000,
        ..options(&prefix)
    };
    let rec = Recorder::new();
    let before = connect(stable.clone()).await;
    let recorder = rec.clone();
    before
        .subscribe(
            "order.placed",
            "indexer",
            handler_fn(move |event| {
                let recorder = recorder.clone();
                async move {
                    recorder.handler("first-life").handle(event).await?;
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let id = before
        .emit_one(Message::new("order.placed", json!(1)))
        .await
        .unwrap();
    rec.wait_for("first-life", 1, DELIVERY_TIMEOUT).await;
    drop(before); // consumers aborted mid-handler, as in a crash

    let after = connect(stable).await;
    after
        .subscribe("order.placed", "indexer", rec.handler("second-life"))
        .await
        .unwrap();
    let events = rec.wait_for("second-life", 1, Duration::from_secs(5)).await;
    assert_eq!((events[0].id, events[0].attempt), (id, 2));
    wait_until("completed", DELIVERY_TIMEOUT, || async {
        after.pending("order.placed", "indexer").await.unwrap() == 0
    })
    .await;
}

// ---- crash tests with real processes -------------------------------------------------------

const ROLE: &str = "GORGON_EVENT_BUS_TEST_ROLE";
const PREFIX: &str = "GORGON_EVENT_BUS_TEST_PREFIX";
const GROUP: &str = "GORGON_EVENT_BUS_TEST_GROUP";

/// Kills the child process when dropped.
struct ChildProcess(Child);

impl ChildProcess {
    fn spawn(role: &str, prefix: &str, group: Option<&str>) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("test binary path"));
        command
            .args(["--exact", "child_process", "--ignored", "--nocapture"])
            .env(ROLE, role)
            .env(PREFIX, prefix);
        if let Some(group) = group {
            command.env(GROUP, group);
        }
        Self(command.spawn().expect("spawn child test process"))
    }

    /// SIGKILL: no destructor, no graceful shutdown.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_key(prefix: &str) -> String {
    format!("{{{prefix}}}:test-log")
}

async fn log(prefix: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(log_key(prefix))
        .arg(0)
        .arg(-1)
        .query_async(&mut raw_conn().await)
        .await
        .unwrap()
}

/// Not a test on its own: the body of the child processes the crash tests start. Without the
/// role variable it returns at once.
#[tokio::test]
#[ignore = "run as a child process by the crash tests"]
async fn child_process() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let prefix = std::env::var(PREFIX).expect("prefix");
    let bus = connect(options(&prefix)).await;
    match role.as_str() {
        "stage" => {
            let group = EventGroupId::new(std::env::var(GROUP).expect("group")).unwrap();
            bus.emit(vec![
                Message::new("order.placed", json!(1)).in_group(group.clone()),
                Message::new("order.paid", json!(2)).in_group(group),
            ])
            .await
            .unwrap();
            // The process ends here: the staged events must outlive it.
        }
        "subscriber-hangs" | "subscriber" => {
            let hang = role == "subscriber-hangs";
            for subscriber in ["A", "B"] {
                let prefix = prefix.clone();
                let handler = handler_fn(move |event| {
                    let prefix = prefix.clone();
                    async move {
                        let mut conn = raw_conn().await;
                        let entry = |phase: &str| {
                            format!("{subscriber}:{}:{}:{phase}", event.id, event.attempt)
                        };
                        if subscriber == "B" {
                            redis::cmd("RPUSH")
                                .arg(log_key(&prefix))
                                .arg(entry("start"))
                                .query_async::<()>(&mut conn)
                                .await?;
                            if hang {
                                // Killed in here, mid-delivery.
                                std::future::pending::<()>().await;
                            }
                        }
                        redis::cmd("RPUSH")
                            .arg(log_key(&prefix))
                            .arg(entry("done"))
                            .query_async::<()>(&mut conn)
                            .await?;
                        Ok(())
                    }
                });
                bus.subscribe("order.placed", subscriber, handler)
                    .await
                    .unwrap();
            }
            redis::cmd("SET")
                .arg(format!("{{{prefix}}}:test-ready:{role}"))
                .arg(bus.consumer_name())
                .query_async::<()>(&mut raw_conn().await)
                .await
                .unwrap();
            std::future::pending::<()>().await;
        }
        other => panic!("unknown child role {other}"),
    }
}

async fn wait_ready(prefix: &str, role: &str) {
    let key = format!("{{{prefix}}}:test-ready:{role}");
    wait_until(
        &format!("child {role} ready"),
        Duration::from_secs(60),
        || {
            let key = key.clone();
            async move {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<bool>(&mut raw_conn().await)
                    .await
                    .unwrap()
            }
        },
    )
    .await;
}

/// Two subscribers A and B in a child process; A completes the event, B is SIGKILLed in the
/// middle of handling it. A new process (new consumer name) reclaims the pending delivery: B gets
/// the event again (attempt 2) and completes it; A does not run again.
#[tokio::test]
async fn a_killed_subscriber_process_redelivers_only_to_unfinished_subscribers() {
    let cleanup = Cleanup::default();
    let prefix = cleanup.prefix();
    let emitter = connect(options(&prefix)).await;

    let mut first = ChildProcess::spawn("subscriber-hangs", &prefix, None);
    wait_ready(&prefix, "subscriber-hangs").await;
    let id = emitter
        .emit_one(Message::new("order.placed", json!({"id": "order_1"})))
        .await
        .unwrap();
    let (a_done, b_start) = (format!("A:{id}:1:done"), format!("B:{id}:1:start"));
    wait_until("A completed and B started", DELIVERY_TIMEOUT, || async {
        let log = log(&prefix).await;
        log.contains(&a_done)
            && log.contains(&b_start)
            && emitter.pending("order.placed", "A").await.unwrap() == 0
    })
    .await;
    first.kill();
    assert_eq!(emitter.pending("order.placed", "B").await.unwrap(), 1);

    let _second = ChildProcess::spawn("subscriber", &prefix, None);
    wait_ready(&prefix, "subscriber").await;
    let b_done = format!("B:{id}:2:done");
    wait_until(
        "B redelivered after restart",
        Duration::from_secs(30),
        || async { log(&prefix).await.contains(&b_done) },
    )
    .await;
    // Longer than claim_idle: any wrong redelivery to A would have happened by now.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // A and B run concurrently in the first process, so their first two entries may interleave.
    let mut first_life = log(&prefix).await;
    let second_life = first_life.split_off(2);
    first_life.sort();
    assert_eq!(
        (first_life, second_life),
        (
            vec![a_done, b_start],
            vec![format!("B:{id}:2:start"), b_done]
        ),
        "A ran once; B ran again after the restart, to completion, exactly once"
    );
    assert_eq!(emitter.pending("order.placed", "A").await.unwrap(), 0);
    assert_eq!(emitter.pending("order.placed", "B").await.unwrap(), 0);
}

/// Events staged by a process that has ended are released by another process.
#[tokio::test]
async fn grouped_events_survive_the_emitting_process() {
    let cleanup = Cleanup::default();
    let prefix = cleanup.prefix();
    let bus = connect(options(&prefix)).await;
    let rec = Recorder::new();
    bus.subscribe("order.*", "projector", rec.handler("projector"))
        .await
        .unwrap();
    let group = format!("run-{}", uuid::Uuid::new_v4());
    let mut child = ChildProcess::spawn("stage", &prefix, Some(&group));
    let status = child.0.wait().expect("child ran");
    assert!(status.success(), "staging child failed: {status}");
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(
        rec.events_of("projector").is_empty(),
        "staged, not delivered"
    );

    let restarted = connect(options(&prefix)).await;
    let group = EventGroupId::new(group).unwrap();
    assert_eq!(restarted.release_group(&group).await.unwrap(), 2);
    let events = rec.wait_for("projector", 2, DELIVERY_TIMEOUT).await;
    let names: Vec<_> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["order.placed", "order.paid"]);
    assert_eq!(restarted.release_group(&group).await.unwrap(), 0);
}

async fn stream_length(prefix: &str, stream: &str) -> u64 {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("XLEN")
        .arg(format!("{{{prefix}}}:{stream}"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Events every subscriber acknowledged are trimmed from the stream; one a subscriber still
/// holds (pending) is kept, with everything after it.
#[tokio::test]
async fn acknowledged_events_are_trimmed_and_pending_ones_kept() {
    let cleanup = Cleanup::default();
    let prefix = cleanup.prefix();
    let bus = connect(Options {
        trim_interval_ms: 0, // trimmed by hand below
        ..options(&prefix)
    })
    .await;
    let rec = Recorder::new();
    bus.subscribe("order.*", "fast", rec.handler("fast"))
        .await
        .unwrap();
    for i in 0..20 {
        bus.emit_one(Message::new("order.placed", json!(i)))
            .await
            .unwrap();
    }
    wait_until("20 delivered", DELIVERY_TIMEOUT, || async {
        rec.events_of("fast").len() == 20
    })
    .await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(bus.trim_acknowledged().await.unwrap(), 20);
    assert_eq!(stream_length(&prefix, "stream").await, 0);

    // A subscriber that holds its first event: nothing from there on is trimmed.
    let held = Arc::new(tokio::sync::Notify::new());
    let holding = held.clone();
    bus.subscribe(
        "order.*",
        "slow",
        handler_fn(move |_event| {
            let holding = holding.clone();
            async move {
                holding.notified().await;
                Ok(())
            }
        }),
    )
    .await
    .unwrap();
    for i in 0..5 {
        bus.emit_one(Message::new("order.placed", json!(i)))
            .await
            .unwrap();
    }
    wait_until(
        "5 more delivered to the fast one",
        DELIVERY_TIMEOUT,
        || async { rec.events_of("fast").len() == 25 },
    )
    .await;
    tokio::time::sleep(QUIET_PERIOD).await;
    bus.trim_acknowledged().await.unwrap();
    assert_eq!(
        stream_length(&prefix, "stream").await,
        5,
        "the slow one holds them"
    );
    held.notify_waiters();
}

/// The dead-letter stream keeps the newest `dead_letter_max_len` dead letters.
#[tokio::test]
async fn the_dead_letter_stream_is_capped() {
    let cleanup = Cleanup::default();
    let prefix = cleanup.prefix();
    let bus = connect(Options {
        max_attempts: 1,
        dead_letter_max_len: 3,
        ..options(&prefix)
    })
    .await;
    let rec = Recorder::new();
    bus.subscribe(
        "stock.*",
        "broken",
        rec.handler_with("broken", |_| Err("down".into())),
    )
    .await
    .unwrap();
    for i in 0..6 {
        bus.emit_one(Message::new("stock.reserved", json!(i)))
            .await
            .unwrap();
    }
    wait_until("6 attempts", DELIVERY_TIMEOUT, || async {
        rec.events_of("broken").len() == 6
    })
    .await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(stream_length(&prefix, "dead").await, 3);
}
