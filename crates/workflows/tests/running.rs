//! Running a workflow as a user does: `app.run(&wf, input)` with options, waiting through the
//! engine's own timers; hooks bound on the app; what the caller reads when a run fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Journal, app, note};
use gorgon_workflows::{
    App, Error, Hook, Service, Services, Step, StepContext, StepFailure, StepResponse, StepResult,
    TransactionState, Workflow, WorkflowContext, WorkflowOptions,
};

/// Fails its first `n` attempts, then doubles its input.
fn flaky(
    fails: u32,
) -> impl Fn(u32, StepContext) -> futures::future::BoxFuture<'static, StepResult<u32>> {
    let calls = Arc::new(AtomicU32::new(0));
    move |n, ctx| {
        let calls = calls.clone();
        Box::pin(async move {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            note(&ctx, format!("attempt {}", call + 1))?;
            if call < fails {
                return Err(StepFailure::new("not yet"));
            }
            Ok(StepResponse::new(n * 2))
        })
    }
}

#[tokio::test]
async fn run_waits_through_a_retry_interval() -> anyhow::Result<()> {
    let step = Step::new("flaky", flaky(2))
        .max_retries(3)
        .retry_interval(Duration::from_millis(30));
    let wf = Workflow::define("retried", |b, n| b.step(&step, n))?;
    let (app, journal) = app();
    app.register(&wf)?;
    assert_eq!(app.run(&wf, 21).await?, 42);
    assert_eq!(journal.entries(), ["attempt 1", "attempt 2", "attempt 3"]);
    Ok(())
}

#[tokio::test]
async fn run_waits_for_a_background_step_and_through_its_timeout() -> anyhow::Result<()> {
    async fn slow(ms: u64, _ctx: StepContext) -> StepResult<u64> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(StepResponse::new(ms))
    }
    let step = Step::new("slow", slow)
        .background_execution()
        .timeout(Duration::from_millis(200));
    let wf = Workflow::define("background", |b, ms| b.step(&step, ms))?;
    let (app, _) = app();
    app.register(&wf)?;
    // The step completes by itself: the run's result comes back.
    assert_eq!(app.run(&wf, 20).await?, 20);
    // Too slow: the timeout fires, and the run is rolled back.
    let err = app.run(&wf, 2_000).await.unwrap_err();
    assert_eq!(err.state(), Some(TransactionState::Reverted));
    assert!(err.to_string().contains("timeout"), "{err}");
    Ok(())
}

#[tokio::test]
async fn run_returns_not_finished_only_for_the_outside() -> anyhow::Result<()> {
    async fn charge(amount: u32, ctx: StepContext) -> StepResult<u32> {
        note(&ctx, format!("charging {amount}"))?;
        Ok(StepResponse::wait())
    }
    let charge = Step::new("charge", charge).asynchronous();
    let wf = Workflow::define("pay", |b, amount| b.step(&charge, amount))?;
    let (app, _) = app();
    app.register(&wf)?;
    let err = app.run(&wf, 30).transaction_id("pay-1").await.unwrap_err();
    let Error::NotFinished {
        transaction_id,
        state,
        waiting_on,
        ..
    } = &err
    else {
        panic!("expected NotFinished, got {err:?}");
    };
    assert_eq!(
        (transaction_id.as_str(), *state),
        ("pay-1", TransactionState::Invoking)
    );
    assert_eq!(
        waiting_on,
        &["step `charge` (invoke: set_step_success / set_step_failure)"]
    );
    assert!(
        err.to_string().contains("it waits on step `charge`"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn run_takes_a_transaction_id_a_context_and_idempotency() -> anyhow::Result<()> {
    async fn count(n: u32, ctx: StepContext) -> StepResult<String> {
        note(&ctx, format!("ran {n}"))?;
        let group = ctx.event_group_id();
        let who = ctx
            .workflow_context()
            .request
            .actor_id
            .clone()
            .unwrap_or_default();
        Ok(StepResponse::new(format!(
            "{} {group} {who}",
            ctx.transaction_id()
        )))
    }
    let step = Step::new("count", count);
    let wf = Workflow::define("counted", |b, n| b.step(&step, n))?;
    let (app, journal) = app();
    app.register(&wf)?;

    let mut context = WorkflowContext::default();
    context.request.actor_id = Some("ada".into());
    let first = app
        .run(&wf, 1)
        .transaction_id("cart-1")
        .context(context)
        .event_group("group-1")
        .await?;
    assert_eq!(first, "cart-1 group-1 ada");

    // This workflow is not idempotent: the same id runs again. Made idempotent for one run,
    // the stored result answers and the step does not run.
    app.run(&wf, 2).transaction_id("cart-2").await?;
    let again = app
        .run(&wf, 99)
        .transaction_id("cart-2")
        .idempotent(true)
        .await?;
    assert!(again.starts_with("cart-2 "), "{again}");
    let reran = app.run(&wf, 3).transaction_id("cart-2").await?;
    assert!(reran.starts_with("cart-2 "));
    assert_eq!(journal.entries(), ["ran 1", "ran 2", "ran 3"]);
    Ok(())
}

#[tokio::test]
async fn an_idempotent_run_is_found_after_many_others() -> anyhow::Result<()> {
    async fn make(n: u32, ctx: StepContext) -> StepResult<u32> {
        note(&ctx, format!("made {n}"))?;
        Ok(StepResponse::new(n))
    }
    let make = Step::new("make", make);
    let idempotent = WorkflowOptions {
        idempotent: Some(true),
        ..WorkflowOptions::default()
    };
    let wf = Workflow::define_with("made-once", idempotent, |b, n| b.step(&make, n))?;
    let other = Workflow::define("made-often", |b, n| b.step(&make, n))?;
    let (app, journal) = app();
    app.register(&wf)?;
    app.register(&other)?;
    assert_eq!(app.run(&wf, 7).transaction_id("once").await?, 7);
    for n in 1_000..1_300 {
        app.run(&other, n).await?;
    }
    // The idempotent run is still there: its result answers, its step does not run again.
    assert_eq!(app.run(&wf, 8).transaction_id("once").await?, 7);
    let entries = journal.entries();
    assert_eq!(entries.iter().filter(|e| *e == "made 7").count(), 1);
    assert!(!entries.iter().any(|e| e == "made 8"));
    Ok(())
}

#[tokio::test]
async fn a_hook_bound_on_the_app_runs_in_every_use_nested_ones_included() -> anyhow::Result<()> {
    let created: Hook<u32, String> = Hook::new("product-created");
    async fn create(n: u32, ctx: StepContext) -> StepResult<u32> {
        note(&ctx, format!("create {n}"))?;
        Ok(StepResponse::new(n))
    }
    let create = Step::new("create", create);
    let products = Workflow::define("create-products", |b, n| {
        let id = b.step(&create, n);
        b.hook(&created, id);
        id
    })?;
    // The parent is defined before the hook is bound, and nests the child.
    let wrap = Step::new("wrap", |n: u32, _ctx: StepContext| async move {
        Ok(StepResponse::new(n + 100))
    });
    let parent = Workflow::define("import-products", |b, n| {
        let created = b.subflow(&products, n);
        b.step(&wrap, created)
    })?;
    async fn on_created(id: u32, ctx: StepContext) -> StepResult<String> {
        note(&ctx, format!("hook {id}"))?;
        Ok(StepResponse::new(format!("seen {id}")))
    }
    let (app, journal) = app();
    app.bind_hook(&products, &created, &Step::new("on-created", on_created))?;
    app.register(&parent)?;
    assert_eq!(app.run(&parent, 1).await?, 101);
    assert_eq!(journal.entries(), ["create 1", "hook 1"]);
    // The child alone too.
    assert_eq!(app.run(&products, 2).await?, 2);
    assert_eq!(journal.entries()[2..], ["create 2", "hook 2"]);
    Ok(())
}

#[tokio::test]
async fn a_failed_compensation_leads_the_error() -> anyhow::Result<()> {
    async fn charge(n: u32, _ctx: StepContext) -> StepResult<u32> {
        Ok(StepResponse::new(n))
    }
    async fn refund(_n: Option<u32>, _ctx: StepContext) -> Result<(), StepFailure> {
        Err(StepFailure::permanent("refund refused by the gateway"))
    }
    async fn ship(_n: u32, _ctx: StepContext) -> StepResult<u32> {
        Err(StepFailure::permanent("no carrier"))
    }
    let charge = Step::new("charge", charge).compensate(refund);
    let ship = Step::new("ship", ship);
    let wf = Workflow::define("checkout", |b, n| {
        let paid = b.step(&charge, n);
        b.step(&ship, paid)
    })?;
    let (app, _) = app();
    app.register(&wf)?;
    let err = app.run(&wf, 5).transaction_id("order-9").await.unwrap_err();
    assert_eq!(err.state(), Some(TransactionState::Failed));
    let message = err.to_string();
    assert!(
        message.contains("compensation failed, done work was not undone: step `charge` (compensate): refund refused by the gateway"),
        "{message}"
    );
    assert!(
        message.contains("the run failed at step `ship` (invoke): no carrier"),
        "{message}"
    );
    assert_eq!(err.failed_compensations().count(), 1);
    Ok(())
}

#[tokio::test]
async fn a_missing_service_is_never_retried() -> anyhow::Result<()> {
    struct Mailer;
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let send = Step::new("send", move |n: u32, ctx: StepContext| {
        let calls = counted.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            ctx.service::<Mailer>()?;
            Ok(StepResponse::new(n))
        }
    })
    .max_retries(5);
    let wf = Workflow::define("mail", |b, n| b.step(&send, n))?;
    let app = App::new(Services::new().with(Arc::new(Journal::default())));
    app.register(&wf)?;
    let err = app.run(&wf, 1).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "called once, not retried");
    assert!(err.to_string().contains("Mailer"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_service_named_in_the_signature_is_checked_at_registration() -> anyhow::Result<()> {
    #[derive(Default)]
    struct Stock {
        reserved: std::sync::Mutex<Vec<String>>,
    }
    async fn reserve(
        sku: String,
        stock: Service<Stock>,
        ctx: StepContext,
    ) -> StepResult<String, String> {
        stock.reserved.lock().unwrap().push(sku.clone());
        let reservation = format!("{sku}@{}", ctx.transaction_id());
        Ok(StepResponse::new(reservation).with_compensation(sku))
    }
    async fn release(sku: Option<String>, stock: Service<Stock>) -> Result<(), StepFailure> {
        stock
            .reserved
            .lock()
            .unwrap()
            .retain(|s| Some(s) != sku.as_ref());
        Ok(())
    }
    async fn refuse(_: String) -> StepResult<()> {
        Err(StepFailure::permanent("refused"))
    }
    let reserve = Step::new("reserve", reserve).compensate(release);
    let refuse = Step::new("refuse", refuse);
    let wf = Workflow::define("reserve", |b, sku| b.step(&reserve, sku))?;
    let failing = Workflow::define("reserve-then-refuse", |b, sku| {
        let reserved = b.step(&reserve.named("reserve-first"), sku);
        b.step(&refuse, reserved)
    })?;

    // Without the service: refused at registration, naming the step and the type.
    let (bare, _) = app();
    match bare.register(&wf).unwrap_err() {
        Error::MissingService {
            type_name, step, ..
        } => {
            assert!(type_name.ends_with("Stock"), "{type_name}");
            assert_eq!(step, "reserve");
        }
        other => panic!("expected MissingService, got {other:?}"),
    }

    let stock = Arc::new(Stock::default());
    let app = App::new(Services::new().with(stock.clone()));
    app.register(&wf)?;
    app.register(&failing)?;
    let reserved = app
        .run(&wf, "tee".to_string())
        .transaction_id("r-1")
        .await?;
    assert_eq!(reserved, "tee@r-1");
    // The compensation takes the service the same way.
    app.run(&failing, "cap".to_string()).await.unwrap_err();
    assert_eq!(*stock.reserved.lock().unwrap(), ["tee"]);
    Ok(())
}

#[tokio::test]
async fn the_app_lists_and_details_runs_with_outputs_as_the_steps_returned_them()
-> anyhow::Result<()> {
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Reservation {
        sku: String,
        quantity: u32,
    }
    async fn reserve(quantity: u32) -> StepResult<Reservation, String> {
        let reservation = Reservation {
            sku: "tee".into(),
            quantity,
        };
        Ok(StepResponse::new(reservation).with_compensation("res-1".to_string()))
    }
    async fn release(_id: Option<String>) -> Result<(), StepFailure> {
        Ok(())
    }
    async fn confirm(reservation: Reservation) -> StepResult<u32> {
        if reservation.quantity > 10 {
            return Err(StepFailure::permanent("too many"));
        }
        Ok(StepResponse::new(reservation.quantity))
    }
    let reserve = Step::new("reserve", reserve).compensate(release);
    let confirm = Step::new("confirm", confirm);
    let wf = Workflow::define("reserve-and-confirm", |b, quantity| {
        let reservation = b.step(&reserve, quantity);
        b.step(&confirm, reservation)
    })?;
    let (app, _) = app();
    app.register(&wf)?;
    app.run(&wf, 2).transaction_id("ok-1").await?;
    app.run(&wf, 20).transaction_id("bad-1").await.unwrap_err();

    let page = app
        .executions(&wf, gorgon_workflows::TransactionFilter::default())
        .await?;
    let ids: Vec<&str> = page.items.iter().map(|s| &*s.key.id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"ok-1") && ids.contains(&"bad-1"));

    let detail = app.execution(&wf, "bad-1").await?;
    assert_eq!(detail.state, TransactionState::Reverted);
    assert_eq!(detail.payload.to_json()?, serde_json::json!(20));
    let reserve = &detail.steps[0];
    assert_eq!(reserve.action, "reserve");
    assert_eq!(
        reserve.output.as_ref().map(|o| o.to_json().unwrap()),
        Some(serde_json::json!({"sku": "tee", "quantity": 20}))
    );
    assert_eq!(
        reserve
            .compensation_input
            .as_ref()
            .map(|c| c.to_json().unwrap()),
        Some(serde_json::json!("res-1"))
    );
    let confirm = &detail.steps[1];
    assert!(confirm.output.is_none());
    assert_eq!(confirm.errors[0].error.message, "too many");
    Ok(())
}
