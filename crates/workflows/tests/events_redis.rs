//! Events emitted from steps on the Redis Streams bus (the real Redis at `REDIS_URL`, default
//! `redis://127.0.0.1:6379`; every test uses its own key prefix and deletes it): the run's group
//! is published on success, dropped on rollback, and a staged group outlives the app and the
//! process that staged it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Journal, JsonStore, note, until};
use gorgon_event_bus::testing::{DELIVERY_TIMEOUT, QUIET_PERIOD, Recorder};
use gorgon_event_bus::{Event, EventBus};
use gorgon_event_bus_redis::{Options, RedisEventBus};
use gorgon_orchestration::{EngineOptions, SystemClock};
use gorgon_workflows::{
    App, HandlerType, IdempotencyKey, RunOptions, Services, Step, StepContext, StepResponse,
    StepResult, TransactionState, Workflow, WorkflowContext,
};
use serde_json::json;

const SUBSCRIBER: &str = "test-subscriber";
/// Set in the child process of `staged_events_survive_the_process_and_are_released_by_group_id`:
/// `<prefix> <group id>`.
const CHILD_ENV: &str = "GORGON_WORKFLOWS_EVENTS_CHILD";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn options(prefix: &str) -> Options {
    Options {
        url: redis_url(),
        prefix: prefix.to_owned(),
        read_block_ms: 200,
        ..Options::default()
    }
}

/// A unique key prefix, whose keys are deleted on drop (also on panic).
struct Prefix(String);

impl Prefix {
    fn new() -> Self {
        Prefix(format!(
            "gorgon-test:workflow-events:{}",
            uuid::Uuid::new_v4().simple()
        ))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{}}}*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL").arg(keys).query::<()>(&mut conn);
        }
    }
}

async fn connect(prefix: &str) -> RedisEventBus {
    RedisEventBus::connect(options(prefix))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to Redis at {} (start redis-server or set REDIS_URL): {e}",
                redis_url()
            )
        })
}

/// How many events are staged in Redis for `group` (the provider's documented layout).
async fn staged_in_redis(prefix: &str, group: &str) -> usize {
    let mut conn = redis::Client::open(redis_url())
        .expect("valid REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is reachable");
    redis::cmd("LLEN")
        .arg(format!("{{{prefix}}}:group:{group}"))
        .query_async(&mut conn)
        .await
        .expect("LLEN")
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

async fn place(id: u32, ctx: StepContext) -> StepResult<u32> {
    ctx.emit("order.created", json!({ "id": id })).await?;
    ctx.emit("order.line", json!({ "order": id })).await?;
    Ok(StepResponse::new(id))
}

async fn decide(id: u32, _ctx: StepContext) -> StepResult<u32> {
    if id >= 100 {
        return Ok(StepResponse::permanent_failure("too large"));
    }
    Ok(StepResponse::new(id))
}

async fn await_confirmation(id: u32, ctx: StepContext) -> StepResult<u32> {
    note(&ctx, format!("waiting {id}"))?;
    Ok(StepResponse::wait())
}

/// A workflow that emits two events, then waits for a confirmation.
fn confirmed_order() -> anyhow::Result<Workflow<u32, u32>> {
    let place = Step::new("place", place);
    let confirm = Step::new("confirm", await_confirmation).asynchronous();
    Ok(Workflow::define("confirmed-order", |b, input| {
        let id = b.step(&place, input);
        b.step(&confirm, id)
    })?)
}

fn group_context(group: &str) -> WorkflowContext {
    WorkflowContext {
        event_group_id: group.to_string(),
        ..WorkflowContext::default()
    }
}

#[tokio::test]
async fn on_redis_a_successful_run_publishes_and_a_rolled_back_one_does_not() -> anyhow::Result<()>
{
    let prefix = Prefix::new();
    let bus: Arc<dyn EventBus> = Arc::new(connect(&prefix.0).await);
    let recorder = Recorder::new();
    bus.subscribe("order.*", SUBSCRIBER, recorder.handler(SUBSCRIBER))
        .await?;
    let app = App::new(Services::new()).with_event_bus(bus);
    let place = Step::new("place", place);
    let decide = Step::new("decide", decide);
    let wf = Workflow::define("redis-order", |b, input| {
        let id = b.step(&place, input);
        b.step(&decide, id)
    })?;
    app.register(&wf)?;

    let err = app.run(&wf, 500).await.unwrap_err();
    assert_eq!(err.state(), Some(TransactionState::Reverted));
    assert_eq!(app.run(&wf, 5).await?, 5);
    recorder.wait_for(SUBSCRIBER, 2, DELIVERY_TIMEOUT).await;
    tokio::time::sleep(QUIET_PERIOD).await;
    let events = recorder.events_of(SUBSCRIBER);
    assert_eq!(names(&events), ["order.created", "order.line"]);
    assert_eq!(
        events[0].data,
        json!({ "id": 5 }),
        "only the successful run's"
    );
    Ok(())
}

/// A run stages its events in Redis, its app and bus go away (a restart), and another app on the
/// same run store and Redis finishes the run: the events staged before the restart are published.
#[tokio::test]
async fn staged_events_survive_a_restart_and_are_published_when_the_run_finishes()
-> anyhow::Result<()> {
    let prefix = Prefix::new();
    let group = format!("restart-{}", uuid::Uuid::new_v4().simple());
    let wf = confirmed_order()?;
    let store = Arc::new(JsonStore::default());
    let journal = Arc::new(Journal::default());
    let new_app = |bus: Arc<dyn EventBus>| {
        App::with_options(
            EngineOptions {
                store: store.clone(),
                clock: Arc::new(SystemClock),
                ..EngineOptions::default()
            },
            Services::new().with(journal.clone()),
        )
        .with_event_bus(bus)
    };

    let first_bus = connect(&prefix.0).await;
    let first = new_app(Arc::new(first_bus.clone()));
    first.register(&wf)?;
    let run = first
        .start(
            &wf,
            11,
            RunOptions::transaction_id("restart-1").with_context(group_context(&group)),
        )
        .await?;
    assert!(!run.state().is_finished());
    until(|| journal.count("waiting 11") == 1).await;
    assert_eq!(staged_in_redis(&prefix.0, &group).await, 2);
    first_bus.shutdown().await;
    drop(first);
    drop(first_bus);

    // The restart: a new bus and a new app; the staged group is still in Redis.
    let bus = connect(&prefix.0).await;
    let recorder = Recorder::new();
    bus.subscribe("*", SUBSCRIBER, recorder.handler(SUBSCRIBER))
        .await?;
    let second = new_app(Arc::new(bus));
    second.register(&wf)?;
    assert_eq!(staged_in_redis(&prefix.0, &group).await, 2);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(recorder.events_of(SUBSCRIBER).is_empty());

    let key = IdempotencyKey::new(
        "confirmed-order",
        "restart-1",
        "confirm",
        HandlerType::Invoke,
    );
    let run = second.set_step_success(&wf, &key, 11u32).await?;
    assert_eq!(run.state(), TransactionState::Done);
    let events = recorder.wait_for(SUBSCRIBER, 2, DELIVERY_TIMEOUT).await;
    assert_eq!(names(&events), ["order.created", "order.line"]);
    assert_eq!(events[0].data, json!({ "id": 11 }));
    assert_eq!(
        events[0].metadata.event_group_id.as_ref().unwrap().as_str(),
        group
    );
    assert_eq!(staged_in_redis(&prefix.0, &group).await, 0);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(recorder.events_of(SUBSCRIBER).len(), 2);
    Ok(())
}

/// Another OS process stages a run's events and dies mid-run. The run itself lived in that
/// process's memory (no durable run store here), but its staged group is in Redis: this process
/// finds it there and releases it by group id.
#[tokio::test]
async fn staged_events_survive_the_process_and_are_released_by_group_id() -> anyhow::Result<()> {
    let prefix = Prefix::new();
    let group = format!("crashed-{}", uuid::Uuid::new_v4().simple());
    let status = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "child_stages_events_and_exits",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, format!("{} {group}", prefix.0))
        .status()?;
    assert!(status.success(), "the child process failed: {status}");
    assert_eq!(
        staged_in_redis(&prefix.0, &group).await,
        2,
        "the dead process's events are still staged"
    );

    let bus: Arc<dyn EventBus> = Arc::new(connect(&prefix.0).await);
    let recorder = Recorder::new();
    bus.subscribe("*", SUBSCRIBER, recorder.handler(SUBSCRIBER))
        .await?;
    let app = App::new(Services::new()).with_event_bus(bus);
    assert_eq!(app.release_events(&group).await?, 2);
    let events = recorder.wait_for(SUBSCRIBER, 2, DELIVERY_TIMEOUT).await;
    assert_eq!(names(&events), ["order.created", "order.line"]);
    assert_eq!(events[0].data, json!({ "id": 13 }));
    assert_eq!(app.release_events(&group).await?, 0);
    Ok(())
}

/// The child of the test above: starts a run that stages two events and waits, then exits
/// without finishing it (the process dies with the run in memory).
#[tokio::test]
#[ignore = "run as a child process by staged_events_survive_the_process_and_are_released_by_group_id"]
async fn child_stages_events_and_exits() -> anyhow::Result<()> {
    let Ok(params) = std::env::var(CHILD_ENV) else {
        return Ok(());
    };
    let (prefix, group) = params
        .split_once(' ')
        .ok_or_else(|| anyhow::anyhow!("{CHILD_ENV} must be `<prefix> <group>`"))?;
    let journal = Arc::new(Journal::default());
    let bus: Arc<dyn EventBus> = Arc::new(connect(prefix).await);
    let app = App::new(Services::new().with(journal.clone())).with_event_bus(bus);
    let wf = confirmed_order()?;
    app.register(&wf)?;
    let run = app
        .start(
            &wf,
            13,
            RunOptions::transaction_id("crashing-1").with_context(group_context(group)),
        )
        .await?;
    assert!(!run.state().is_finished());
    until(|| journal.count("waiting 13") == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::process::exit(0);
}
