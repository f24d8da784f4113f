//! Events emitted from steps, on the in-process bus: staged in the run's event group, published
//! when the run finishes done, dropped when it is rolled back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Journal, note, until};
use gorgon_event_bus::testing::{DELIVERY_TIMEOUT, QUIET_PERIOD, Recorder};
use gorgon_event_bus::{Event, EventBus, LocalEventBus, Message};
use gorgon_workflows::{
    App, Error, HandlerType, IdempotencyKey, RunOptions, Services, Step, StepContext, StepFailure,
    StepResponse, StepResult, TransactionState, Workflow, WorkflowContext,
};
use serde_json::json;

const SUBSCRIBER: &str = "test-subscriber";

/// An app with a journal and a local bus, and a recorder subscribed to every event.
async fn app_with_bus() -> anyhow::Result<(App, Arc<Journal>, Recorder)> {
    let journal = Arc::new(Journal::default());
    let bus: Arc<dyn EventBus> = Arc::new(LocalEventBus::new());
    let recorder = Recorder::new();
    bus.subscribe("*", SUBSCRIBER, recorder.handler(SUBSCRIBER))
        .await?;
    let app = App::new(Services::new().with(journal.clone())).with_event_bus(bus);
    Ok((app, journal, recorder))
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// Waits for `count` events and checks that no more come.
async fn exactly(recorder: &Recorder, count: usize) -> Vec<Event> {
    recorder.wait_for(SUBSCRIBER, count, DELIVERY_TIMEOUT).await;
    tokio::time::sleep(QUIET_PERIOD).await;
    recorder.events_of(SUBSCRIBER)
}

/// Emits `order.created`, then two `order.line` events in one call.
async fn place(id: u32, ctx: StepContext) -> StepResult<u32> {
    ctx.emit("order.created", json!({ "id": id })).await?;
    ctx.emit_many(vec![
        Message::new("order.line", json!({ "order": id, "line": 1 })),
        Message::new("order.line", json!({ "order": id, "line": 2 })),
    ])
    .await?;
    Ok(StepResponse::new(id))
}

#[tokio::test]
async fn a_successful_run_publishes_its_events_only_once_it_has_finished() -> anyhow::Result<()> {
    let (app, journal, recorder) = app_with_bus().await?;
    let probe = recorder.clone();
    // The second step looks, while the run is still running, at what subscribers got.
    let observe = Step::new("observe", move |id: u32, ctx: StepContext| {
        let probe = probe.clone();
        async move {
            tokio::time::sleep(QUIET_PERIOD).await;
            note(
                &ctx,
                format!("seen while running: {}", probe.events_of(SUBSCRIBER).len()),
            )?;
            Ok(StepResponse::new(id))
        }
    });
    let place = Step::new("place", place);
    let wf = Workflow::define("place-order", |b, input| {
        let id = b.step(&place, input);
        b.step(&observe, id)
    })?;
    app.register(&wf)?;

    let run = app
        .start(&wf, 7, RunOptions::transaction_id("ok-1"))
        .await?;
    assert_eq!(run.state(), TransactionState::Done);
    assert_eq!(journal.entries(), ["seen while running: 0"]);

    let events = exactly(&recorder, 3).await;
    assert_eq!(
        names(&events),
        ["order.created", "order.line", "order.line"]
    );
    assert_eq!(events[0].data, json!({ "id": 7 }));
    assert_eq!(events[2].data["line"], 2);
    // Grouped under the run's event group id: the run id, as no context gave one.
    let run_id = run.execution().run_id();
    for event in &events {
        let group = event.metadata.event_group_id.as_ref().expect("grouped");
        assert_eq!(group.as_str(), run_id);
        assert!(event.metadata.published_at.is_some());
    }
    // Settled: nothing is left in the group.
    assert_eq!(app.release_events(run_id).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_run_publishes_none_of_its_events() -> anyhow::Result<()> {
    let (app, journal, recorder) = app_with_bus().await?;
    async fn unplace(id: Option<u32>, ctx: StepContext) -> Result<(), StepFailure> {
        // A compensation may drop its own staged events (the whole group goes anyway), and
        // announce the rollback outside the group, on the bus itself.
        let dropped = ctx.discard_events(&["order.created"]).await?;
        note(&ctx, format!("unplace {id:?}, dropped {dropped}"))?;
        ctx.event_bus()?
            .emit_one(Message::new("order.rolled-back", json!({ "id": id })))
            .await?;
        Ok(())
    }
    async fn charge(_id: u32, ctx: StepContext) -> StepResult<u32> {
        ctx.emit("payment.captured", json!({})).await?;
        Ok(StepResponse::permanent_failure("card declined"))
    }
    let place = Step::new("place", place).compensate(unplace);
    let charge = Step::new("charge", charge);
    let wf = Workflow::define("declined-order", |b, input| {
        let id = b.step(&place, input);
        b.step(&charge, id)
    })?;
    app.register(&wf)?;

    let context = WorkflowContext {
        event_group_id: "request-42".into(),
        ..WorkflowContext::default()
    };
    let run = app
        .start(
            &wf,
            9,
            RunOptions::transaction_id("declined-1").with_context(context),
        )
        .await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    assert_eq!(journal.entries(), ["unplace Some(9), dropped 1"]);

    // Only the ungrouped announcement: none of the run's four staged events.
    let events = exactly(&recorder, 1).await;
    assert_eq!(names(&events), ["order.rolled-back"]);
    assert!(events[0].metadata.event_group_id.is_none());
    // The group was discarded, not left staged.
    assert_eq!(app.release_events("request-42").await?, 0);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(recorder.events_of(SUBSCRIBER).len(), 1);
    Ok(())
}

async fn await_confirmation(id: u32, ctx: StepContext) -> StepResult<u32> {
    note(&ctx, format!("waiting {id}"))?;
    Ok(StepResponse::wait())
}

#[tokio::test]
async fn an_async_run_publishes_when_set_step_success_finishes_it() -> anyhow::Result<()> {
    let (app, journal, recorder) = app_with_bus().await?;
    let place = Step::new("place", place);
    let confirm = Step::new("confirm", await_confirmation).asynchronous();
    let wf = Workflow::define("async-order", |b, input| {
        let id = b.step(&place, input);
        b.step(&confirm, id)
    })?;
    app.register(&wf)?;

    let run = app
        .start(&wf, 3, RunOptions::transaction_id("async-1"))
        .await?;
    assert!(!run.state().is_finished());
    until(|| journal.count("waiting 3") == 1).await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(recorder.events_of(SUBSCRIBER).is_empty(), "published early");

    let key = IdempotencyKey::new("async-order", "async-1", "confirm", HandlerType::Invoke);
    let run = app.set_step_success(&wf, &key, 3u32).await?;
    assert_eq!(run.state(), TransactionState::Done);
    let events = exactly(&recorder, 3).await;
    assert_eq!(
        names(&events),
        ["order.created", "order.line", "order.line"]
    );

    // The same, declined from outside: nothing is published.
    app.start(&wf, 4, RunOptions::transaction_id("async-2"))
        .await?;
    until(|| journal.count("waiting 4") == 1).await;
    let key = IdempotencyKey::new("async-order", "async-2", "confirm", HandlerType::Invoke);
    let run = app
        .set_step_failure(&wf, &key, StepFailure::permanent("no"))
        .await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(recorder.events_of(SUBSCRIBER).len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_run_finished_by_a_retry_timer_publishes_in_the_background() -> anyhow::Result<()> {
    let (app, journal, recorder) = app_with_bus().await?;
    async fn flaky(id: u32, ctx: StepContext) -> StepResult<u32> {
        note(&ctx, format!("attempt {}", ctx.attempt()))?;
        if ctx.attempt() == 1 {
            return Err(StepFailure::new("try again"));
        }
        ctx.emit("stock.reserved", json!({ "id": id })).await?;
        Ok(StepResponse::new(id))
    }
    let flaky = Step::new("flaky", flaky)
        .max_retries(1)
        .retry_interval(Duration::from_millis(200));
    let wf = Workflow::define("retried", |b, input| b.step(&flaky, input))?;
    app.register(&wf)?;

    let run = app
        .start(&wf, 5, RunOptions::transaction_id("retried-1"))
        .await?;
    assert!(!run.state().is_finished(), "{:?}", run.state());
    // Nobody calls the app again: the timer retries, the run finishes, its group is released.
    let events = exactly(&recorder, 1).await;
    assert_eq!(names(&events), ["stock.reserved"]);
    assert_eq!(journal.entries(), ["attempt 1", "attempt 2"]);
    Ok(())
}

#[tokio::test]
async fn a_nested_runs_events_are_released_with_its_parent() -> anyhow::Result<()> {
    let (app, journal, recorder) = app_with_bus().await?;
    async fn pay(amount: u32, ctx: StepContext) -> StepResult<u32> {
        ctx.emit("payment.authorized", json!({ "amount": amount }))
            .await?;
        note(&ctx, format!("child group {}", ctx.event_group_id()))?;
        Ok(StepResponse::wait())
    }
    let pay = Step::new("pay", pay).asynchronous();
    let child = Workflow::define("payment", |b, input| b.step(&pay, input))?;
    let place = Step::new("place", place);
    let confirm = Step::new("confirm", await_confirmation).asynchronous();
    let parent = Workflow::define("checkout", |b, input| {
        let id = b.step(&place, input);
        let paid = b.subflow(&child, id);
        b.step(&confirm, paid)
    })?;
    app.register(&parent)?;

    let run = app
        .start(&parent, 2, RunOptions::transaction_id("checkout-1"))
        .await?;
    let parent_run_id = run.execution().run_id().to_string();
    until(|| journal.count("child group") == 1).await;
    assert_eq!(
        journal.entries(),
        [format!("child group {parent_run_id}")],
        "the child stages in the parent's group"
    );

    // The child finishes done: its events wait for the parent.
    let key = IdempotencyKey::new(
        "payment",
        "payment-as-step-checkout-1",
        "pay",
        HandlerType::Invoke,
    );
    let child_run = app.set_step_success(&child, &key, 20u32).await?;
    assert_eq!(child_run.state(), TransactionState::Done);
    until(|| journal.count("waiting 20") == 1).await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(
        recorder.events_of(SUBSCRIBER).is_empty(),
        "a child's success released the parent's group"
    );

    // The parent finishes: the parent's and the child's events are published together.
    let key = IdempotencyKey::new("checkout", "checkout-1", "confirm", HandlerType::Invoke);
    let run = app.set_step_success(&parent, &key, 20u32).await?;
    assert_eq!(run.state(), TransactionState::Done);
    let events = exactly(&recorder, 4).await;
    assert_eq!(
        names(&events),
        [
            "order.created",
            "order.line",
            "order.line",
            "payment.authorized"
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.metadata.event_group_id.as_ref().unwrap().as_str() == parent_run_id)
    );

    // A parent rolled back after its child succeeded publishes neither's events.
    app.start(&parent, 6, RunOptions::transaction_id("checkout-2"))
        .await?;
    until(|| journal.count("child group") == 2).await;
    let key = IdempotencyKey::new(
        "payment",
        "payment-as-step-checkout-2",
        "pay",
        HandlerType::Invoke,
    );
    app.set_step_success(&child, &key, 60u32).await?;
    until(|| journal.count("waiting 60") == 1).await;
    let key = IdempotencyKey::new("checkout", "checkout-2", "confirm", HandlerType::Invoke);
    let run = app
        .set_step_failure(&parent, &key, StepFailure::permanent("out of stock"))
        .await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(recorder.events_of(SUBSCRIBER).len(), 4);
    Ok(())
}

#[tokio::test]
async fn cancelling_a_finished_run_cannot_recall_its_published_events() -> anyhow::Result<()> {
    let (app, journal, recorder) = app_with_bus().await?;
    async fn unplace(id: Option<u32>, ctx: StepContext) -> Result<(), StepFailure> {
        note(&ctx, format!("unplace {id:?}"))?;
        // Staged in the run's group, which the rollback discards: never published.
        ctx.emit("order.staged-in-compensation", json!({})).await?;
        // Published at once.
        ctx.event_bus()?
            .emit_one(Message::new("order.cancelled", json!({ "id": id })))
            .await?;
        Ok(())
    }
    let place = Step::new("place", place).compensate(unplace);
    let wf = Workflow::define("cancellable", |b, input| b.step(&place, input))?;
    app.register(&wf)?;

    // Cancelled as soon as it is done: the release already happened.
    app.start(&wf, 1, RunOptions::transaction_id("cancel-1"))
        .await?;
    let run = app.cancel(&wf, "cancel-1").await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    assert_eq!(journal.entries(), ["unplace Some(1)"]);
    let events = exactly(&recorder, 4).await;
    assert_eq!(
        names(&events),
        [
            "order.created",
            "order.line",
            "order.line",
            "order.cancelled"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_run_holding_its_events_leaves_them_to_the_caller() -> anyhow::Result<()> {
    let (app, _journal, recorder) = app_with_bus().await?;
    let place = Step::new("place", place);
    let wf = Workflow::define("held", |b, input| b.step(&place, input))?;
    app.register(&wf)?;
    let context = WorkflowContext {
        event_group_id: "unit-of-work-1".into(),
        ..WorkflowContext::default()
    };
    let run = app
        .start(
            &wf,
            8,
            RunOptions::transaction_id("held-1")
                .with_context(context)
                .hold_events(),
        )
        .await?;
    assert_eq!(run.state(), TransactionState::Done);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(recorder.events_of(SUBSCRIBER).is_empty());
    assert_eq!(app.release_events("unit-of-work-1").await?, 3);
    exactly(&recorder, 3).await;
    Ok(())
}

#[tokio::test]
async fn emitting_without_an_event_bus_is_a_typed_error() -> anyhow::Result<()> {
    let journal = Arc::new(Journal::default());
    let app = App::new(Services::new().with(journal.clone()));
    assert!(app.event_bus().is_none());
    async fn announce(id: u32, ctx: StepContext) -> StepResult<u32> {
        match ctx.emit("order.created", json!({ "id": id })).await {
            Err(Error::NoEventBus {
                operation,
                group_id,
            }) => {
                note(&ctx, format!("{operation}: no bus for {group_id}"))?;
            }
            other => note(&ctx, format!("unexpected {other:?}"))?,
        }
        ctx.emit("order.created", json!({ "id": id })).await?;
        Ok(StepResponse::new(id))
    }
    let announce = Step::new("announce", announce);
    let wf = Workflow::define("no-bus", |b, input| b.step(&announce, input))?;
    app.register(&wf)?;
    let context = WorkflowContext {
        event_group_id: "g-1".into(),
        ..WorkflowContext::default()
    };
    let run = app
        .start(
            &wf,
            1,
            RunOptions::transaction_id("no-bus-1").with_context(context),
        )
        .await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    assert_eq!(journal.entries(), ["emit: no bus for g-1"]);
    assert!(
        run.errors()[0].error.message.contains("no event bus"),
        "{:?}",
        run.errors()
    );
    assert!(matches!(
        app.release_events("g-1").await,
        Err(Error::NoEventBus {
            operation: "release_events",
            ..
        })
    ));

    // With a bus, a bad event name is a typed error too, and stages nothing.
    let (app, journal, recorder) = app_with_bus().await?;
    async fn misnamed(id: u32, ctx: StepContext) -> StepResult<u32> {
        let staged = ctx.emit("order.created", json!({ "id": id })).await;
        let refused = ctx
            .emit_many(vec![
                Message::new("fine", json!(1)),
                Message::new("not fine", json!(2)),
            ])
            .await;
        note(
            &ctx,
            format!(
                "{} {}",
                staged.is_ok(),
                matches!(
                    refused,
                    Err(Error::EventBus {
                        operation: "emit",
                        source: gorgon_event_bus::Error::InvalidEventName { .. },
                        ..
                    })
                )
            ),
        )?;
        Ok(StepResponse::new(id))
    }
    let misnamed = Step::new("misnamed", misnamed);
    let wf = Workflow::define("misnamed", |b, input| b.step(&misnamed, input))?;
    app.register(&wf)?;
    app.run(&wf, 2).await?;
    assert_eq!(journal.entries(), ["true true"]);
    let events = exactly(&recorder, 1).await;
    assert_eq!(names(&events), ["order.created"]);
    Ok(())
}

#[tokio::test]
async fn fan_out_elements_stage_in_the_parents_group() -> anyhow::Result<()> {
    let (app, journal, recorder) = app_with_bus().await?;
    async fn reserve(item: u32, ctx: StepContext) -> StepResult<u32> {
        if item == 0 {
            return Ok(StepResponse::permanent_failure("nothing to reserve"));
        }
        ctx.emit("item.reserved", json!({ "item": item })).await?;
        Ok(StepResponse::new(item))
    }
    async fn total(items: Vec<u32>, _ctx: StepContext) -> StepResult<u32> {
        Ok(StepResponse::new(items.iter().sum()))
    }
    let reserve = Step::new("reserve", reserve);
    let total = Step::new("total", total);
    let confirm = Step::new("confirm", await_confirmation).asynchronous();
    let wf = Workflow::define("reserve-all", |b, input| {
        let reserved = b.for_each(&reserve, input);
        let sum = b.step(&total, reserved);
        b.step(&confirm, sum)
    })?;
    app.register(&wf)?;

    app.start(&wf, vec![1, 2, 3], RunOptions::transaction_id("fan-1"))
        .await?;
    until(|| journal.count("waiting 6") == 1).await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(
        recorder.events_of(SUBSCRIBER).is_empty(),
        "finished elements released the parent's group"
    );
    let key = IdempotencyKey::new("reserve-all", "fan-1", "confirm", HandlerType::Invoke);
    app.set_step_success(&wf, &key, 6u32).await?;
    let events = exactly(&recorder, 3).await;
    let mut items: Vec<u64> = events
        .iter()
        .map(|e| e.data["item"].as_u64().unwrap())
        .collect();
    items.sort_unstable();
    assert_eq!(items, [1, 2, 3]);

    // One element fails: the run is rolled back, the others' events are never published.
    let run = app
        .start(&wf, vec![4, 0, 5], RunOptions::transaction_id("fan-2"))
        .await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(recorder.events_of(SUBSCRIBER).len(), 3);
    Ok(())
}
