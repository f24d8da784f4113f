//! The SDK end to end: typed steps, compensation, composition, running.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{Journal, JsonStore, app, note, until};
use gorgon_orchestration::{EngineOptions, EventKind, StepState, SystemClock};
use gorgon_workflows::{
    App, Error, HandlerType, IdempotencyKey, RequestMetadata, RunOptions, Services, Step,
    StepContext, StepFailure, StepResponse, StepResult, TransactionState, Workflow,
    WorkflowContext,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    total: u64,
}

async fn parse(input: String, _ctx: StepContext) -> StepResult<u32> {
    Ok(StepResponse::new(input.trim().parse::<u32>()?))
}

async fn make_order(id: u32, ctx: StepContext) -> StepResult<Order> {
    note(&ctx, format!("make_order {id}"))?;
    Ok(StepResponse::new(Order {
        id,
        total: u64::from(id) * 10,
    }))
}

async fn order_total(order: Order, _ctx: StepContext) -> StepResult<u64> {
    Ok(StepResponse::new(order.total))
}

#[tokio::test]
async fn sequence_passes_typed_values() -> anyhow::Result<()> {
    let parse = Step::new("parse", parse);
    let make = Step::new("make-order", make_order);
    let total = Step::new("total", order_total);
    let wf = Workflow::define("sequence", |b, input| {
        let id = b.step(&parse, input);
        let order = b.step(&make, id);
        b.step(&total, order)
    })?;
    assert_eq!(
        wf.step_names().collect::<Vec<_>>(),
        ["parse", "make-order", "total"]
    );
    let (app, journal) = app();
    app.register(&wf)?;
    assert_eq!(app.run(&wf, " 7 ".to_string()).await?, 70);
    assert_eq!(journal.entries(), ["make_order 7"]);

    // A `?` on a std error in a step is a (temporary, here final) failure with its message.
    let err = app.run(&wf, "seven".to_string()).await.unwrap_err();
    assert_eq!(err.state(), Some(TransactionState::Reverted));
    assert_eq!(err.errors().len(), 1);
    assert_eq!(err.errors()[0].action, "parse");
    assert!(err.errors()[0].error.message.contains("invalid digit"));
    Ok(())
}

/// Three steps; the last fails for good. Compensations run last-first, each with its input.
#[tokio::test]
async fn compensation_runs_in_reverse_with_the_compensation_input() -> anyhow::Result<()> {
    async fn a(n: u32, _ctx: StepContext) -> StepResult<u32, String> {
        Ok(StepResponse::new(n + 1).with_compensation(format!("undo-a-{n}")))
    }
    async fn undo_a(input: Option<String>, ctx: StepContext) -> Result<(), StepFailure> {
        note(&ctx, format!("compensate a {input:?}"))
    }
    async fn b(n: u32, _ctx: StepContext) -> StepResult<u32> {
        Ok(StepResponse::new(n * 10))
    }
    async fn undo_b(input: Option<u32>, ctx: StepContext) -> Result<(), StepFailure> {
        note(
            &ctx,
            format!("compensate b {input:?} failed={}", ctx.invoke_failed()),
        )
    }
    async fn c(_n: u32, _ctx: StepContext) -> StepResult<u32> {
        Err(StepFailure::permanent("c is broken"))
    }
    async fn undo_c(input: Option<u32>, ctx: StepContext) -> Result<(), StepFailure> {
        note(
            &ctx,
            format!("compensate c {input:?} failed={}", ctx.invoke_failed()),
        )
    }
    let a = Step::new("a", a).compensate(undo_a);
    let b = Step::new("b", b).compensate(undo_b);
    let c = Step::new("c", c).compensate(undo_c).max_retries(3);
    let wf = Workflow::define("reverse", |bld, input| {
        let x = bld.step(&a, input);
        let y = bld.step(&b, x);
        bld.step(&c, y)
    })?;
    let (app, journal) = app();
    app.register(&wf)?;
    let err = app.run(&wf, 2).await.unwrap_err();
    let Error::Failed { state, errors, .. } = &err else {
        panic!("expected a failed run, got {err:?}");
    };
    assert_eq!(*state, TransactionState::Reverted);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].action, "c");
    assert_eq!(errors[0].handler_type, HandlerType::Invoke);
    assert_eq!(
        journal.entries(),
        [
            "compensate c None failed=true",
            "compensate b Some(30) failed=false",
            "compensate a Some(\"undo-a-2\")",
        ]
    );
    Ok(())
}

#[tokio::test]
async fn permanent_failure_carries_compensation_data() -> anyhow::Result<()> {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let insert = Step::new("insert", move |_n: u32, _ctx: StepContext| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok(StepResponse::<u32, Vec<u32>>::permanent_failure_with(
                "Error inserting 1, 3, 5, 7",
                vec![2, 4, 6, 8],
            ))
        }
    })
    .compensate(|ids: Option<Vec<u32>>, ctx: StepContext| async move {
        note(
            &ctx,
            format!("remove {ids:?} failed={}", ctx.invoke_failed()),
        )
    })
    .max_retries(3);
    let wf = Workflow::define("permanent", |b, input| b.step(&insert, input))?;
    let (app, journal) = app();
    app.register(&wf)?;
    let err = app.run(&wf, 1).await.unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a permanent failure is not retried"
    );
    assert_eq!(err.errors().len(), 1);
    assert_eq!(err.errors()[0].error.message, "Error inserting 1, 3, 5, 7");
    assert_eq!(journal.entries(), ["remove Some([2, 4, 6, 8]) failed=true"]);
    Ok(())
}

#[tokio::test]
async fn skip_skips_the_consumers_and_optional_reads_none() -> anyhow::Result<()> {
    async fn maybe(n: u32, _ctx: StepContext) -> StepResult<u32> {
        if n == 1 {
            return Ok(StepResponse::skip());
        }
        Ok(StepResponse::new(n))
    }
    async fn consume(n: u32, ctx: StepContext) -> StepResult<u32> {
        note(&ctx, format!("consume {n}"))?;
        Ok(StepResponse::new(n + 100))
    }
    async fn report(n: Option<u32>, _ctx: StepContext) -> StepResult<String> {
        Ok(StepResponse::new(format!("{n:?}")))
    }
    let maybe = Step::new("maybe", maybe);
    let consume = Step::new("consume", consume);
    let report = Step::new("report", report);
    let wf = Workflow::define("skip", |b, input| {
        let value = b.step(&maybe, input);
        b.step(&consume, value);
        let optional = b.optional(value);
        b.step(&report, optional)
    })?;
    let (app, journal) = app();
    app.register(&wf)?;

    let run = app.start(&wf, 1, RunOptions::default()).await?;
    assert_eq!(run.result()?, "None");
    assert_eq!(
        run.execution().step("maybe").unwrap().invoke.state,
        StepState::Skipped
    );
    assert_eq!(
        run.execution().step("consume").unwrap().invoke.state,
        StepState::Skipped
    );
    assert!(journal.entries().is_empty());

    assert_eq!(app.run(&wf, 5).await?, "Some(5)");
    assert_eq!(journal.entries(), ["consume 5"]);
    Ok(())
}

#[tokio::test]
async fn temporary_failures_are_retried_up_to_max_retries() -> anyhow::Result<()> {
    async fn flaky(n: u32, ctx: StepContext) -> StepResult<u32> {
        note(&ctx, format!("attempt {}", ctx.attempt()))?;
        if ctx.attempt() <= 2 {
            return Err(StepFailure::new("not yet"));
        }
        Ok(StepResponse::new(n * ctx.attempt()))
    }
    let retried = Step::new("flaky", flaky).max_retries(2);
    let wf = Workflow::define("retries", |b, input| b.step(&retried, input))?;
    let (app, journal) = app();
    app.register(&wf)?;
    assert_eq!(app.run(&wf, 5).await?, 15, "the third attempt's output");
    assert_eq!(journal.entries(), ["attempt 1", "attempt 2", "attempt 3"]);

    let too_few = Step::new("flaky", flaky).max_retries(1);
    let wf = Workflow::define("retries-exhausted", |b, input| b.step(&too_few, input))?;
    app.register(&wf)?;
    let err = app.run(&wf, 5).await.unwrap_err();
    assert_eq!(err.state(), Some(TransactionState::Reverted));
    assert_eq!(journal.count("attempt"), 5);
    assert_eq!(err.errors().last().unwrap().error.message, "not yet");
    Ok(())
}

/// A step waiting on a barrier of 2: the two parallel members only pass it together.
async fn meet(n: u32, ctx: StepContext) -> StepResult<u32> {
    let barrier = ctx.service::<tokio::sync::Barrier>()?;
    tokio::time::timeout(Duration::from_secs(5), barrier.wait())
        .await
        .map_err(|_| StepFailure::permanent("parallel steps did not run together"))?;
    note(&ctx, format!("{} {n}", ctx.step_name()))?;
    Ok(StepResponse::new(n + 1))
}

#[tokio::test]
async fn parallel_members_run_together_and_the_next_step_waits_for_all() -> anyhow::Result<()> {
    async fn first(n: u32, _ctx: StepContext) -> StepResult<u32> {
        Ok(StepResponse::new(n * 2))
    }
    async fn join(pair: (u32, u32), ctx: StepContext) -> StepResult<u32> {
        note(&ctx, "join")?;
        Ok(StepResponse::new(pair.0 + pair.1))
    }
    let first = Step::new("first", first);
    let left = Step::new("left", meet);
    let right = left.named("right");
    let join = Step::new("join", join);
    let wf = Workflow::define("parallel", |b, input| {
        let x = b.step(&first, input);
        let (l, r) = b.parallel(|b| (b.step(&left, x), b.step(&right, x)));
        b.step(&join, (l, r))
    })?;
    let flow = wf.flow();
    let first_index = flow.step_index("first");
    assert_eq!(
        flow.step(flow.step_index("left").unwrap()).parent,
        first_index
    );
    assert_eq!(
        flow.step(flow.step_index("right").unwrap()).parent,
        first_index
    );

    let journal = Arc::new(Journal::default());
    let app = App::new(
        Services::new()
            .with(journal.clone())
            .with(Arc::new(tokio::sync::Barrier::new(2))),
    );
    app.register(&wf)?;
    assert_eq!(app.run(&wf, 3).await?, 14);
    let entries = journal.entries();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2], "join");
    assert!(entries[..2].contains(&"left 6".to_string()));
    assert!(entries[..2].contains(&"right 6".to_string()));
    Ok(())
}

async fn double(n: u32, ctx: StepContext) -> StepResult<u32> {
    note(&ctx, format!("double {n}"))?;
    Ok(StepResponse::new(n * 2))
}

#[tokio::test]
async fn when_runs_its_block_only_when_the_condition_holds() -> anyhow::Result<()> {
    let double = Step::new("double", double);
    let wf = Workflow::define("when", |b, input| {
        let doubled = b.when(
            "is-big",
            input,
            |n: &u32| *n > 10,
            |b| b.step(&double, input),
        );
        b.transform((input, doubled), |(n, doubled)| {
            format!("{n} -> {doubled:?}")
        })
    })?;
    let (app, journal) = app();
    app.register(&wf)?;
    assert_eq!(app.run(&wf, 20).await?, "20 -> Some(40)");
    assert_eq!(app.run(&wf, 5).await?, "5 -> None");
    assert_eq!(journal.entries(), ["double 20"]);
    Ok(())
}

/// The decision is saved: a run resumed on another app, from a store that kept only JSON,
/// takes the branch decided at first, though the condition now says otherwise.
#[tokio::test]
async fn a_when_decision_is_remembered_across_a_resume() -> anyhow::Result<()> {
    async fn wait(_n: u32, ctx: StepContext) -> StepResult<u32> {
        note(&ctx, format!("waiting {}", ctx.idempotency_key()))?;
        Ok(StepResponse::wait())
    }
    let gate = Arc::new(AtomicBool::new(true));
    let open = gate.clone();
    let wait = Step::new("wait", wait).asynchronous();
    let double = Step::new("double", double);
    let wf = Workflow::define("remembered", |b, input| {
        b.when(
            "gate",
            input,
            move |_: &u32| open.load(Ordering::SeqCst),
            |b| {
                let waited = b.step(&wait, input);
                b.step(&double, waited)
            },
        )
    })?;
    let store = Arc::new(JsonStore::default());
    let journal = Arc::new(Journal::default());
    let options = || EngineOptions {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        ..EngineOptions::default()
    };
    let first = App::with_options(options(), Services::new().with(journal.clone()));
    first.register(&wf)?;
    let run = first
        .start(&wf, 4, RunOptions::transaction_id("remember-1"))
        .await?;
    assert!(matches!(run.result(), Err(Error::NotFinished { .. })));
    until(|| journal.count("waiting") == 1).await;
    assert_eq!(
        journal.entries(),
        ["waiting remembered:remember-1:wait:invoke"]
    );

    // The condition flips; a second app (a restart) picks the run up from the store.
    gate.store(false, Ordering::SeqCst);
    let second = App::with_options(options(), Services::new().with(journal.clone()));
    second.register(&wf)?;
    let key = IdempotencyKey::new("remembered", "remember-1", "wait", HandlerType::Invoke);
    let run = second.set_step_success(&wf, &key, 21u32).await?;
    assert_eq!(run.state(), TransactionState::Done);
    assert_eq!(run.result()?, Some(42));
    assert_eq!(journal.count("double 21"), 1);

    // A new run sees the closed gate.
    second
        .start(&wf, 4, RunOptions::transaction_id("remember-2"))
        .await?;
    let run = second.wait_until_finished(&wf, "remember-2").await?;
    assert_eq!(run.result()?, None);
    assert_eq!(journal.count("waiting"), 1);
    Ok(())
}

#[tokio::test]
async fn transform_combines_handles_without_a_step() -> anyhow::Result<()> {
    let computed = Arc::new(AtomicU32::new(0));
    let count = computed.clone();
    let make = Step::new("make-order", make_order);
    let total = Step::new("total", order_total);
    let wf = Workflow::define("transform", |b, input: gorgon_workflows::Handle<u32>| {
        let order = b.step(&make, input);
        let discounted = b.transform((order, input), move |(order, id)| {
            count.fetch_add(1, Ordering::SeqCst);
            Order {
                id: order.id,
                total: order.total - u64::from(id),
            }
        });
        b.step(&total, discounted)
    })?;
    assert_eq!(wf.flow().len(), 2, "a transform adds no step");
    let (app, _journal) = app();
    app.register(&wf)?;
    assert_eq!(app.run(&wf, 3).await?, 27);
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_step_used_twice_needs_a_new_name() -> anyhow::Result<()> {
    async fn inc(n: u32, _ctx: StepContext) -> StepResult<u32> {
        Ok(StepResponse::new(n + 1))
    }
    let inc = Step::new("inc", inc);
    let err = Workflow::define("twice", |b, input| {
        let once = b.step(&inc, input);
        b.step(&inc, once)
    })
    .unwrap_err();
    match err {
        Error::DuplicateStep { workflow, step } => {
            assert_eq!(workflow, "twice");
            assert_eq!(step, "inc");
        }
        other => panic!("expected DuplicateStep, got {other:?}"),
    }

    let wf = Workflow::define("thrice", |b, input| {
        let one = b.step(&inc, input);
        let two = b.step(&inc.named("inc-2"), one);
        let three = b.step(&inc.named("inc-3"), two);
        b.transform((one, two, three), |(a, b, c)| vec![a, b, c])
    })?;
    let (app, _journal) = app();
    app.register(&wf)?;
    assert_eq!(app.run(&wf, 0).await?, vec![1, 2, 3]);
    Ok(())
}

#[tokio::test]
async fn definition_mistakes_are_typed_errors() {
    async fn id(n: u32, _ctx: StepContext) -> StepResult<u32> {
        Ok(StepResponse::new(n))
    }
    let a = Step::new("a", id);
    let b = Step::new("b", id);

    // A handle of another definition.
    let mut leaked = None;
    Workflow::define("first", |bld, input| {
        leaked = Some(input);
        bld.step(&a, input)
    })
    .unwrap();
    let err = Workflow::define("second", |bld, _input: gorgon_workflows::Handle<u32>| {
        bld.step(&a, leaked.unwrap())
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::ForeignHandle { ref step, .. } if step == "a"),
        "{err:?}"
    );

    // A parallel member consuming its sibling.
    let err = Workflow::define("siblings", |bld, input| {
        bld.parallel(|bld| {
            let x = bld.step(&a, input);
            bld.step(&b, x)
        })
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::ParallelDependency { ref step, .. } if step == "b"),
        "{err:?}"
    );

    // A `when` nested in a `when` inside `parallel`.
    let err = Workflow::define("when-in-parallel", |bld, input| {
        bld.parallel(|bld| {
            bld.when(
                "outer",
                input,
                |_: &u32| true,
                |bld| {
                    bld.when(
                        "inner",
                        input,
                        |_: &u32| true,
                        |bld| {
                            bld.step(&b, input);
                        },
                    );
                },
            );
            bld.step(&a, input)
        })
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::NotInParallel { ref step, .. } if step == "inner"),
        "{err:?}"
    );

    // A name the orchestrator refuses.
    let err = Workflow::define("bad", |bld, input| bld.step(&a.named("a:b"), input)).unwrap_err();
    assert!(matches!(err, Error::Orchestration(_)), "{err:?}");
}

trait Greeter: Send + Sync {
    fn greet(&self, name: &str) -> String;
}

struct English;
impl Greeter for English {
    fn greet(&self, name: &str) -> String {
        format!("hello {name}")
    }
}

struct Punctuation(&'static str);

async fn greet(name: String, ctx: StepContext) -> StepResult<String> {
    let greeter = ctx.service::<dyn Greeter>()?;
    let punctuation = ctx.service::<Punctuation>()?;
    Ok(StepResponse::new(format!(
        "{}{}",
        greeter.greet(&name),
        punctuation.0
    )))
}

#[tokio::test]
async fn services_are_resolved_by_type() -> anyhow::Result<()> {
    let step = Step::new("greet", greet)
        .requires::<dyn Greeter>()
        .requires::<Punctuation>();
    let wf = Workflow::define("greet", |b, input| b.step(&step, input))?;
    let mut services = Services::new();
    services
        .insert::<dyn Greeter>(Arc::new(English))
        .insert(Arc::new(Punctuation("!")));
    let app = App::new(services);
    app.register(&wf)?;
    assert_eq!(app.run(&wf, "ada".to_string()).await?, "hello ada!");
    Ok(())
}

#[tokio::test]
async fn a_missing_service_is_an_error_naming_the_type() -> anyhow::Result<()> {
    // Declared: refused at registration.
    let declared = Step::new("greet", greet).requires::<dyn Greeter>();
    let wf = Workflow::define("greet-declared", |b, input| b.step(&declared, input))?;
    let app = App::new(Services::new().with(Arc::new(Punctuation("."))));
    match app.register(&wf).unwrap_err() {
        Error::MissingService {
            type_name,
            workflow,
            step,
        } => {
            assert!(type_name.contains("Greeter"), "{type_name}");
            assert_eq!(workflow, "greet-declared");
            assert_eq!(step, "greet");
        }
        other => panic!("expected MissingService, got {other:?}"),
    }
    assert!(matches!(
        app.run(&wf, "ada".to_string()).await,
        Err(Error::NotRegistered { .. })
    ));

    // Undeclared: the step fails, naming the type.
    let undeclared = Step::new("greet", greet);
    let wf = Workflow::define("greet-undeclared", |b, input| b.step(&undeclared, input))?;
    app.register(&wf)?;
    let err = app.run(&wf, "ada".to_string()).await.unwrap_err();
    let message = &err.errors()[0].error.message;
    assert!(message.contains("Greeter"), "{message}");
    assert!(message.contains("greet-undeclared"), "{message}");
    Ok(())
}

#[tokio::test]
async fn the_context_carries_the_run_and_the_shared_context() -> anyhow::Result<()> {
    async fn describe(_n: u32, ctx: StepContext) -> StepResult<String> {
        let shared = ctx.workflow_context();
        Ok(StepResponse::new(format!(
            "{}|{}|{}|{}|{}|{:?}",
            ctx.workflow(),
            ctx.transaction_id(),
            ctx.step_name(),
            ctx.attempt(),
            shared.event_group_id,
            shared.request.request_id,
        )))
    }
    let step = Step::new("describe", describe);
    let wf = Workflow::define("context", |b, input| b.step(&step, input))?;
    let (app, _journal) = app();
    app.register(&wf)?;
    let context = WorkflowContext {
        event_group_id: "group-1".into(),
        request: RequestMetadata {
            request_id: Some("req-9".into()),
            ..RequestMetadata::default()
        },
    };
    let run = app
        .start(
            &wf,
            1,
            RunOptions::transaction_id("tx-ctx").with_context(context),
        )
        .await?;
    assert_eq!(
        run.result()?,
        "context|tx-ctx|describe|1|group-1|Some(\"req-9\")"
    );
    let generated = app.run(&wf, 1).await?;
    let group = generated.split('|').nth(4).unwrap();
    assert!(!group.is_empty(), "an event group id is generated");
    Ok(())
}

async fn charge(amount: u32, ctx: StepContext) -> StepResult<u32> {
    note(
        &ctx,
        format!("charging {amount} key={}", ctx.idempotency_key()),
    )?;
    Ok(StepResponse::wait())
}

async fn refund(receipt: Option<u32>, ctx: StepContext) -> Result<(), StepFailure> {
    note(&ctx, format!("refund {receipt:?}"))
}

#[tokio::test]
async fn an_async_step_waits_for_set_step_success() -> anyhow::Result<()> {
    let charge = Step::new("charge", charge)
        .asynchronous()
        .compensate(refund);
    let double = Step::new("double", double);
    let wf = Workflow::define("payment", |b, input| {
        let receipt = b.step(&charge, input);
        b.step(&double, receipt)
    })?;
    let (app, journal) = app();
    app.register(&wf)?;

    let run = app
        .start(&wf, 30, RunOptions::transaction_id("pay-1"))
        .await?;
    assert!(!run.state().is_finished());
    assert!(matches!(run.result(), Err(Error::NotFinished { .. })));
    let key = IdempotencyKey::new("payment", "pay-1", "charge", HandlerType::Invoke);
    until(|| journal.count("charging") == 1).await;
    assert_eq!(
        journal.entries(),
        ["charging 30 key=payment:pay-1:charge:invoke"]
    );

    // A value of the wrong type is refused, naming the expected one.
    let err = app
        .set_step_success(&wf, &key, "receipt")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongOutputType {
                expected: "u32",
                ..
            }
        ),
        "{err:?}"
    );
    // A key of another workflow is refused.
    let other = IdempotencyKey::new("other", "pay-1", "charge", HandlerType::Invoke);
    assert!(matches!(
        app.set_step_success(&wf, &other, 1u32).await,
        Err(Error::KeyMismatch { .. })
    ));

    let run = app.set_step_success(&wf, &key, 77u32).await?;
    assert_eq!(run.state(), TransactionState::Done);
    assert_eq!(run.result()?, 154);
    assert_eq!(app.get(&wf, "pay-1").await?.result()?, 154);

    // set_step_failure: the step fails for good and the run is compensated.
    app.start(&wf, 5, RunOptions::transaction_id("pay-2"))
        .await?;
    let key = IdempotencyKey::new("payment", "pay-2", "charge", HandlerType::Invoke);
    let run = app
        .set_step_failure(&wf, &key, StepFailure::permanent("card declined"))
        .await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    assert_eq!(run.errors()[0].error.message, "card declined");
    assert_eq!(journal.count("refund None"), 1);
    Ok(())
}

#[tokio::test]
async fn a_background_step_completes_by_itself() -> anyhow::Result<()> {
    async fn slow(n: u32, _ctx: StepContext) -> StepResult<u32> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(StepResponse::new(n + 1))
    }
    let slow = Step::new("slow", slow).background_execution();
    let double = Step::new("double", double);
    let wf = Workflow::define("background", |b, input| {
        let x = b.step(&slow, input);
        b.step(&double, x)
    })?;
    let (app, _journal) = app();
    app.register(&wf)?;
    let mut events = app.subscribe();
    app.start(&wf, 1, RunOptions::transaction_id("bg-1"))
        .await?;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = events.recv().await.unwrap();
            if &*event.key.id == "bg-1" && event.kind == EventKind::Finish {
                break;
            }
        }
    })
    .await?;
    assert_eq!(app.get(&wf, "bg-1").await?.result()?, 4);
    Ok(())
}

#[tokio::test]
async fn cancel_compensates_a_finished_run() -> anyhow::Result<()> {
    async fn reserve(n: u32, ctx: StepContext) -> StepResult<u32> {
        note(&ctx, format!("reserve {n}"))?;
        Ok(StepResponse::new(n))
    }
    async fn release(n: Option<u32>, ctx: StepContext) -> Result<(), StepFailure> {
        note(&ctx, format!("release {n:?}"))
    }
    let reserve = Step::new("reserve", reserve).compensate(release);
    let charge = Step::new("charge", |n: u32, _ctx: StepContext| async move {
        Ok(StepResponse::new(n * 100).with_compensation(format!("charge-{n}")))
    })
    .compensate(|c: Option<String>, ctx: StepContext| async move {
        note(&ctx, format!("refund {c:?}"))
    });
    let wf = Workflow::define("cancel", |b, input| {
        let r = b.step(&reserve, input);
        b.step(&charge, r)
    })?;
    let (app, journal) = app();
    app.register(&wf)?;
    let run = app.start(&wf, 3, RunOptions::transaction_id("c-1")).await?;
    assert_eq!(run.result()?, 300);
    let run = app.cancel(&wf, "c-1").await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    assert_eq!(
        journal.entries(),
        ["reserve 3", "refund Some(\"charge-3\")", "release Some(3)"]
    );
    assert!(matches!(run.result(), Err(Error::Failed { .. })));
    Ok(())
}

#[tokio::test]
async fn subscribers_see_the_events_of_a_run() -> anyhow::Result<()> {
    let make = Step::new("make-order", make_order);
    let wf = Workflow::define("events", |b, input| b.step(&make, input))?;
    let (app, _journal) = app();
    app.register(&wf)?;
    let mut events = app.subscribe();
    app.start(&wf, 1, RunOptions::transaction_id("ev-1"))
        .await?;
    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        if &*event.key.id == "ev-1" {
            kinds.push(event.kind);
        }
    }
    assert_eq!(kinds.first(), Some(&EventKind::Begin));
    assert!(kinds.contains(&EventKind::StepSuccess));
    assert_eq!(kinds.last(), Some(&EventKind::Finish));
    Ok(())
}

#[tokio::test]
async fn continue_on_permanent_failure_keeps_the_run_going() -> anyhow::Result<()> {
    async fn broken(_n: u32, _ctx: StepContext) -> StepResult<u32> {
        Ok(StepResponse::permanent_failure("optional step broke"))
    }
    let broken = Step::new("broken", broken).continue_on_permanent_failure();
    let double = Step::new("double", double);
    let wf = Workflow::define("continue", |b, input| {
        let x = b.step(&broken, input);
        let x = b.optional(x);
        let doubled = b.step(&double, input);
        b.transform((x, doubled), |(x, d)| (x, d))
    })?;
    let (app, _journal) = app();
    app.register(&wf)?;
    let run = app.start(&wf, 4, RunOptions::default()).await?;
    assert_eq!(run.state(), TransactionState::Done);
    assert_eq!(run.errors().len(), 1);
    assert_eq!(run.result()?, (None, 8));
    Ok(())
}

async fn logged(n: u32, ctx: StepContext) -> StepResult<u32> {
    note(&ctx, format!("do {} {n}", ctx.step_name()))?;
    if n == 13 {
        return Ok(StepResponse::permanent_failure(format!(
            "{} refuses 13",
            ctx.step_name()
        )));
    }
    Ok(StepResponse::new(n + 1))
}

async fn unlogged(n: Option<u32>, ctx: StepContext) -> Result<(), StepFailure> {
    note(&ctx, format!("undo {} {n:?}", ctx.step_name()))
}

#[tokio::test]
async fn a_nested_workflow_is_rolled_back_with_its_parent() -> anyhow::Result<()> {
    let s1 = Step::new("s1", logged).compensate(unlogged);
    let s2 = s1.named("s2");
    let s3 = s1.named("s3");
    let s4 = s1.named("s4");
    let child = Workflow::define("child", |b, input| {
        let x = b.step(&s1, input);
        b.step(&s2, x)
    })?;
    let parent = Workflow::define("parent", |b, input| {
        let x = b.step(&s3, input);
        let from_child = b.subflow(&child, x);
        b.step(&s4, from_child)
    })?;
    let (app, journal) = app();
    app.register(&parent)?; // registers the child too
    assert_eq!(app.run(&parent, 1).await?, 5);
    assert_eq!(
        journal.entries(),
        ["do s3 1", "do s1 2", "do s2 3", "do s4 4"]
    );
    assert_eq!(app.run(&child, 1).await?, 3, "the child is registered");

    // s4 refuses 13: the child's steps are compensated (last first), then s3.
    let journal_len = journal.entries().len();
    let run = app
        .start(&parent, 10, RunOptions::transaction_id("nested-1"))
        .await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    assert_eq!(
        journal.entries()[journal_len..],
        [
            "do s3 10",
            "do s1 11",
            "do s2 12",
            "do s4 13",
            "undo s4 None",
            "undo s2 Some(13)",
            "undo s1 Some(12)",
            "undo s3 Some(11)",
        ]
    );
    let child_run = app.get(&child, "child-as-step-nested-1").await?;
    assert_eq!(child_run.state(), TransactionState::Reverted);

    // A failing child fails the parent step with the child's error, and the parent rolls back.
    let err = app.run(&parent, 12).await.unwrap_err();
    assert_eq!(err.state(), Some(TransactionState::Reverted));
    assert!(
        err.errors()[0].error.message.contains("s1 refuses 13"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn fan_out_runs_a_step_per_element_and_compensates_each() -> anyhow::Result<()> {
    async fn items(n: u32, _ctx: StepContext) -> StepResult<Vec<u32>> {
        Ok(StepResponse::new((n..n + 3).collect()))
    }
    let items = Step::new("items", items);
    let reserve = Step::new("reserve", logged).compensate(unlogged);
    let after = Step::new("after", |all: Vec<u32>, _ctx: StepContext| async move {
        if all.contains(&100) {
            return Ok(StepResponse::permanent_failure("after refuses"));
        }
        Ok(StepResponse::new(all.iter().sum::<u32>()))
    });
    let wf = Workflow::define("fan-out", |b, input| {
        let list = b.step(&items, input);
        let reserved = b.for_each(&reserve, list);
        b.step(&after, reserved)
    })?;
    let (app, journal) = app();
    app.register(&wf)?;
    assert_eq!(app.run(&wf, 1).await?, 2 + 3 + 4);
    let mut done = journal.entries();
    done.sort();
    assert_eq!(done, ["do reserve 1", "do reserve 2", "do reserve 3"]);

    // One element fails: it compensates itself (with None); the others are compensated once each.
    let before = journal.entries().len();
    let err = app.run(&wf, 12).await.unwrap_err();
    assert_eq!(err.state(), Some(TransactionState::Reverted));
    assert!(
        err.errors()[0]
            .error
            .message
            .contains("1 of 3 elements failed"),
        "{err}"
    );
    let entries = journal.entries()[before..].to_vec();
    for undo in [
        "undo reserve Some(13)",
        "undo reserve Some(15)",
        "undo reserve None",
    ] {
        assert_eq!(
            entries.iter().filter(|e| *e == undo).count(),
            1,
            "{undo} in {entries:?}"
        );
    }

    // A later failure compensates every element, last first.
    let before = journal.entries().len();
    let err = app.run(&wf, 97).await.unwrap_err();
    assert_eq!(err.errors()[0].error.message, "after refuses");
    assert_eq!(
        journal.entries()[before + 3..],
        [
            "undo reserve Some(100)",
            "undo reserve Some(99)",
            "undo reserve Some(98)"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn hooks_run_their_handler_and_take_part_in_rollback() -> anyhow::Result<()> {
    let order_created: gorgon_workflows::Hook<u32, String> =
        gorgon_workflows::Hook::new("order-created");
    let s1 = Step::new("s1", logged).compensate(unlogged);
    let s2 = s1.named("s2");
    let wf = Workflow::define("hooked", |b, input| {
        let x = b.step(&s1, input);
        let from_hook = b.hook(&order_created, x);
        let y = b.step(&s2, x);
        b.transform((y, from_hook), |pair| pair)
    })?;
    // Unbound: the hook is not in the flow, and its result is None.
    assert_eq!(wf.flow().len(), 2);
    let (app, journal) = app();
    app.register(&wf)?;
    assert_eq!(app.run(&wf, 1).await?, (3, None));

    async fn on_created(n: u32, ctx: StepContext) -> StepResult<String> {
        note(&ctx, format!("hook {} {n}", ctx.step_name()))?;
        Ok(StepResponse::new(format!("seen {n}")))
    }
    async fn undo_created(seen: Option<String>, ctx: StepContext) -> Result<(), StepFailure> {
        note(&ctx, format!("undo hook {seen:?}"))
    }
    let handler = Step::new("on-created", on_created).compensate(undo_created);
    let (app, journal2) = common::app();
    drop(journal);
    app.bind_hook(&wf, &order_created, &handler)?;
    match app.bind_hook(&wf, &order_created, &handler).unwrap_err() {
        Error::HookAlreadyBound { hook, .. } => assert_eq!(hook, "order-created"),
        other => panic!("expected HookAlreadyBound, got {other:?}"),
    }
    let other: gorgon_workflows::Hook<u32, String> = gorgon_workflows::Hook::new("nope");
    assert!(matches!(
        app.bind_hook(&wf, &other, &handler),
        Err(Error::UnknownHook { .. })
    ));
    app.register(&wf)?;
    // The workflow value is the one defined above: the app runs it with the hook bound.
    assert_eq!(app.run(&wf, 1).await?, (3, Some("seen 2".to_string())));
    assert_eq!(
        journal2.entries(),
        ["do s1 1", "hook order-created 2", "do s2 2"]
    );
    let late = Step::new("late", on_created);
    assert!(matches!(
        app.bind_hook(&wf, &order_created, &late),
        Err(Error::HookAfterRegistration { .. })
    ));

    // s2 refuses 13: the hook's compensation runs in the rollback, between s2's and s1's.
    let before = journal2.entries().len();
    app.run(&wf, 12).await.unwrap_err();
    assert_eq!(
        journal2.entries()[before..],
        [
            "do s1 12",
            "hook order-created 13",
            "do s2 13",
            "undo s2 None",
            "undo hook Some(\"seen 13\")",
            "undo s1 Some(13)",
        ]
    );
    Ok(())
}

#[tokio::test]
async fn an_idempotent_workflow_returns_the_stored_result() -> anyhow::Result<()> {
    let make = Step::new("make-order", make_order);
    let options = gorgon_workflows::WorkflowOptions {
        idempotent: Some(true),
        ..Default::default()
    };
    let wf = Workflow::define_with("idempotent", options, |b, input| b.step(&make, input))?;
    let (app, journal) = app();
    app.register(&wf)?;
    let first = app
        .start(&wf, 4, RunOptions::transaction_id("once"))
        .await?;
    let again = app
        .start(&wf, 9, RunOptions::transaction_id("once"))
        .await?;
    assert_eq!(first.result()?, Order { id: 4, total: 40 });
    assert_eq!(again.result()?, Order { id: 4, total: 40 });
    assert_eq!(journal.entries(), ["make_order 4"]);

    // Another flow under the same name is not the registered workflow.
    let total = Step::new("total", order_total);
    let other = Workflow::define("idempotent", |b, input| {
        let order = b.step(&make, input);
        b.step(&total, order)
    })?;
    assert!(matches!(
        app.start(&other, 1, RunOptions::default()).await,
        Err(Error::NotRegistered { .. })
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_in_spawned_tasks_stay_isolated() -> anyhow::Result<()> {
    let parse = Step::new("parse", parse);
    let make = Step::new("make-order", make_order);
    let total = Step::new("total", order_total);
    let wf = Workflow::define("concurrent", |b, input| {
        let id = b.step(&parse, input);
        let order = b.step(&make, id);
        b.step(&total, order)
    })?;
    let (app, journal) = app();
    app.register(&wf)?;
    let tasks: Vec<_> = (0..64u32)
        .map(|i| {
            let app = app.clone();
            let wf = wf.clone();
            tokio::spawn(async move { app.run(&wf, i.to_string()).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await??, i as u64 * 10);
    }
    assert_eq!(journal.count("make_order"), 64);
    Ok(())
}

/// Medusa's C6: `parallelize(s1, when(false) -> s2, s3, when(true) -> s4)`.
#[tokio::test]
async fn when_blocks_inside_parallel_are_members_of_the_group() -> anyhow::Result<()> {
    let s1 = Step::new("s1", logged);
    let s2 = s1.named("s2");
    let s3 = s1.named("s3");
    let s4 = s1.named("s4");
    let wf = Workflow::define("when-parallel", |b, input| {
        let (r1, r2, r3, r4) = b.parallel(|b| {
            let r1 = b.step(&s1, input);
            let r2 = b.when("no", input, |_: &u32| false, |b| b.step(&s2, input));
            let r3 = b.step(&s3, input);
            let r4 = b.when("yes", input, |_: &u32| true, |b| b.step(&s4, input));
            (r1, r2, r3, r4)
        });
        b.transform((r1, r2, r3, r4), |all| all)
    })?;
    let flow = wf.flow();
    let parent = |name: &str| flow.step(flow.step_index(name).unwrap()).parent;
    // The decisions run first, then the four members side by side.
    assert_eq!(parent("no"), Some(0));
    assert_eq!(parent("yes"), Some(0));
    for member in ["s1", "s2", "s3", "s4"] {
        assert_eq!(parent(member), flow.step_index("yes"), "{member}");
    }
    let (app, journal) = app();
    app.register(&wf)?;
    assert_eq!(app.run(&wf, 1).await?, (2, None, 2, Some(2)));
    let mut done = journal.entries();
    done.sort();
    assert_eq!(done, ["do s1 1", "do s3 1", "do s4 1"]);
    Ok(())
}

#[tokio::test]
async fn resume_retries_a_step_without_auto_retry() -> anyhow::Result<()> {
    async fn once_broken(n: u32, ctx: StepContext) -> StepResult<u32> {
        note(&ctx, format!("attempt {}", ctx.attempt()))?;
        if ctx.attempt() == 1 {
            return Err(StepFailure::new("try again later"));
        }
        Ok(StepResponse::new(n + 1))
    }
    let step = Step::new("once-broken", once_broken)
        .max_retries(1)
        .auto_retry(false);
    let wf = Workflow::define("resume", |b, input| b.step(&step, input))?;
    let (app, journal) = app();
    app.register(&wf)?;
    let run = app.start(&wf, 1, RunOptions::transaction_id("r-1")).await?;
    assert!(!run.state().is_finished(), "{:?}", run.state());
    assert_eq!(journal.entries(), ["attempt 1"]);
    let run = app.resume(&wf, "r-1").await?;
    assert_eq!(run.result()?, 2);
    assert_eq!(journal.entries(), ["attempt 1", "attempt 2"]);
    Ok(())
}

/// A run picked up by another app from a store that kept only JSON: earlier outputs, the input
/// and compensation inputs are decoded into their types.
#[tokio::test]
async fn a_run_resumed_from_a_json_store_decodes_its_values() -> anyhow::Result<()> {
    async fn make(id: u32, _ctx: StepContext) -> StepResult<Order, Option<u32>> {
        let order = Order {
            id,
            total: u64::from(id) * 10,
        };
        Ok(StepResponse::new(order).with_compensation(None))
    }
    async fn unmake(input: Option<Option<u32>>, ctx: StepContext) -> Result<(), StepFailure> {
        note(&ctx, format!("unmake {input:?}"))
    }
    let make = Step::new("make", make).compensate(unmake);
    let charge = Step::new("charge", charge)
        .asynchronous()
        .compensate(refund);
    let wf = Workflow::define("durable", |b, input| {
        let order = b.step(&make, input);
        let amount = b.transform(order, |o: Order| o.total as u32);
        let receipt = b.step(&charge, amount);
        b.transform((input, order, receipt), |(input, order, receipt)| {
            format!("input {input}, order {}, receipt {receipt}", order.total)
        })
    })?;
    let store = Arc::new(JsonStore::default());
    let journal = Arc::new(Journal::default());
    let new_app = || {
        let app = App::with_options(
            EngineOptions {
                store: store.clone(),
                clock: Arc::new(SystemClock),
                ..EngineOptions::default()
            },
            Services::new().with(journal.clone()),
        );
        app.register(&wf).map(|()| app)
    };
    let first = new_app()?;
    first
        .start(&wf, 3, RunOptions::transaction_id("d-1"))
        .await?;
    first
        .start(&wf, 4, RunOptions::transaction_id("d-2"))
        .await?;
    until(|| journal.count("charging") == 2).await;

    let second = new_app()?;
    let key = IdempotencyKey::new("durable", "d-1", "charge", HandlerType::Invoke);
    let run = second.set_step_success(&wf, &key, 99u32).await?;
    assert_eq!(run.result()?, "input 3, order 30, receipt 99");
    assert_eq!(
        second.get(&wf, "d-1").await?.result()?,
        "input 3, order 30, receipt 99"
    );

    let key = IdempotencyKey::new("durable", "d-2", "charge", HandlerType::Invoke);
    let run = second
        .set_step_failure(&wf, &key, StepFailure::permanent("declined"))
        .await?;
    assert_eq!(run.state(), TransactionState::Reverted);
    assert_eq!(
        journal.count("unmake Some(None)"),
        1,
        "{:?}",
        journal.entries()
    );
    Ok(())
}

/// A child with an async step: the parent waits for the child, which waits for its answer.
#[tokio::test]
async fn a_nested_workflow_with_an_async_step_completes_its_parent() -> anyhow::Result<()> {
    let charge = Step::new("charge", charge)
        .asynchronous()
        .compensate(refund);
    let s3 = Step::new("s3", logged).compensate(unlogged);
    let s4 = s3.named("s4");
    let child = Workflow::define("payment-child", |b, input| b.step(&charge, input))?;
    let parent = Workflow::define("order-parent", |b, input| {
        let x = b.step(&s3, input);
        let receipt = b.subflow(&child, x);
        b.step(&s4, receipt)
    })?;
    let (app, journal) = app();
    app.register(&parent)?;

    app.start(&parent, 1, RunOptions::transaction_id("p-1"))
        .await?;
    until(|| journal.count("charging 2") == 1).await;
    let key = IdempotencyKey::new(
        "payment-child",
        "payment-child-as-step-p-1",
        "charge",
        HandlerType::Invoke,
    );
    app.set_step_success(&child, &key, 40u32).await?;
    let run = tokio::time::timeout(
        Duration::from_secs(5),
        app.wait_until_finished(&parent, "p-1"),
    )
    .await??;
    assert_eq!(run.result()?, 41);
    assert_eq!(journal.count("do s4 40"), 1);

    // The child's payment is declined: the child rolls back, then the parent.
    app.start(&parent, 5, RunOptions::transaction_id("p-2"))
        .await?;
    until(|| journal.count("charging 6") == 1).await;
    let key = IdempotencyKey::new(
        "payment-child",
        "payment-child-as-step-p-2",
        "charge",
        HandlerType::Invoke,
    );
    app.set_step_failure(&child, &key, StepFailure::permanent("declined"))
        .await?;
    let run = tokio::time::timeout(
        Duration::from_secs(5),
        app.wait_until_finished(&parent, "p-2"),
    )
    .await??;
    assert_eq!(run.state(), TransactionState::Reverted);
    assert!(
        run.errors()[0].error.message.contains("declined"),
        "{:?}",
        run.errors()
    );
    assert_eq!(
        journal.count("undo s3 Some(6)"),
        1,
        "{:?}",
        journal.entries()
    );
    assert_eq!(journal.count("refund None"), 1);
    Ok(())
}
