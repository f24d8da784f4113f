//! Property test of liveness: random trees mixing synchronous and asynchronous steps, step and
//! transaction timeouts, retry intervals and steps that wait for a resume, driven on a manual
//! clock by a random sequence of outside actions (complete or fail a waiting step, resume,
//! move the clock).
//!
//! After every action the stored log is replayed and must satisfy the engine's invariant: an
//! unfinished transaction always has a running handler, an armed timer, or waits for an outside
//! completion with no timeout configured ([`Transaction::stall`] is `None`). Debug builds also
//! check it inside the engine whenever it lets a transaction go. Every run must end once the
//! outside stops failing things and time moves on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gorgon_orchestration::flow::Next;
use gorgon_orchestration::{
    Engine, EngineOptions, Flow, FlowDefinition, HandlerType, IdempotencyKey, ManualClock,
    RunOptions, StepCall, StepError, StepOptions, StepOutcome, StepStatus, Transaction,
    TransactionKey, WorkflowOptions,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct StepSpec {
    is_async: bool,
    timeout_ms: Option<u32>,
    retry_interval_ms: Option<u32>,
    retry_interval_awaiting_ms: Option<u32>,
    auto_retry: bool,
    max_retries: u32,
    /// For a synchronous step: whether each call fails (temporarily), by attempt.
    fails: Vec<bool>,
}

fn step_spec() -> impl Strategy<Value = StepSpec> {
    (
        prop::bool::weighted(0.35),
        prop::option::weighted(0.5, 5u32..80),
        prop::option::weighted(0.25, 1u32..40),
        prop::option::weighted(0.15, 5u32..60),
        prop::bool::weighted(0.85),
        0u32..3,
        prop::collection::vec(prop::bool::weighted(0.3), 1..4),
    )
        .prop_map(
            |(
                is_async,
                timeout_ms,
                retry_interval_ms,
                retry_interval_awaiting_ms,
                auto_retry,
                max_retries,
                fails,
            )| StepSpec {
                is_async,
                timeout_ms,
                retry_interval_ms,
                retry_interval_awaiting_ms: retry_interval_awaiting_ms.filter(|_| is_async),
                auto_retry,
                max_retries,
                fails,
            },
        )
}

#[derive(Clone, Debug)]
struct Node {
    spec: StepSpec,
    children: Vec<Node>,
}

fn tree() -> impl Strategy<Value = Vec<Node>> {
    let leaf = step_spec().prop_map(|spec| Node {
        spec,
        children: vec![],
    });
    let node = leaf.prop_recursive(2, 16, 3, |inner| {
        (step_spec(), prop::collection::vec(inner, 0..4))
            .prop_map(|(spec, children)| Node { spec, children })
    });
    prop::collection::vec(node, 1..4)
}

fn build(nodes: &[Node], specs: &mut HashMap<String, StepSpec>) -> Option<Next> {
    let seconds = |ms: u32| f64::from(ms) / 1000.0;
    let mut defs = Vec::new();
    for node in nodes {
        let action = format!("s{}", specs.len());
        specs.insert(action.clone(), node.spec.clone());
        let spec = &node.spec;
        let options = StepOptions {
            is_async: Some(spec.is_async),
            timeout: spec.timeout_ms.map(seconds),
            retry_interval: spec.retry_interval_ms.map(seconds),
            retry_interval_awaiting: spec.retry_interval_awaiting_ms.map(seconds),
            max_awaiting_retries: spec.retry_interval_awaiting_ms.map(|_| 2),
            auto_retry: Some(spec.auto_retry),
            max_retries: Some(spec.max_retries),
            ..StepOptions::default()
        };
        let mut def = FlowDefinition::step(action.clone(), options);
        def.next = build(&node.children, specs);
        defs.push(def);
    }
    match defs.len() {
        0 => None,
        1 => Some(Next::One(Box::new(defs.pop().expect("one")))),
        _ => Some(Next::Many(defs)),
    }
}

/// Lets every task that can make progress make it (handlers yield; timers fire after a move of
/// the manual clock).
async fn quiesce() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// The transaction as its stored log has it.
async fn stored(engine: &Engine, key: &TransactionKey) -> Transaction {
    let flow = engine.flow(&key.workflow).expect("registered");
    let stored = engine
        .store()
        .load(key)
        .await
        .expect("loads")
        .expect("stored");
    Transaction::replay(
        flow,
        key.id.clone(),
        stored.header.run_id.clone(),
        stored.header.payload.clone(),
        &stored.records,
    )
    .expect("replays")
}

/// An outside action, chosen by a random byte: complete or fail a waiting step, resume a step
/// that waits for one, or move the clock.
async fn act_on(engine: &Engine, clock: &ManualClock, tx: &Transaction, choice: u8, failing: bool) {
    let steps = 1..tx.flow().steps().len();
    let waiting: Vec<(usize, HandlerType)> = steps
        .clone()
        .filter(|&s| {
            let run = tx.step(s);
            run.side().status == StepStatus::Waiting
                && tx.flow().step(s).options.is_async_side(run.handler_type())
        })
        .map(|s| (s, tx.step(s).handler_type()))
        .collect();
    let awaiting_resume = steps.clone().any(|s| {
        let run = tx.step(s);
        run.side().status == StepStatus::TemporaryFailure && run.temporary_failed_at.is_some()
    });
    match (choice % 5, waiting.is_empty()) {
        (0 | 1, false) => {
            let (step, handler) = waiting[usize::from(choice) % waiting.len()];
            let action = tx.flow().step(step).action.clone();
            let key = IdempotencyKey::new("prop-async", ID, action, handler);
            // Refusals (the step moved on meanwhile) are part of the game.
            if failing && choice.is_multiple_of(3) {
                let permanent = choice.is_multiple_of(7);
                let error = StepError::new("outside failure");
                let _ = engine.set_step_failure(&key, error, permanent).await;
            } else {
                let response = Some(serde_json::json!("outside").into());
                let _ = engine.set_step_success(&key, response).await;
            }
        }
        (2, _) if awaiting_resume => {
            let _ = engine.resume("prop-async", ID).await;
        }
        _ => clock.advance(Duration::from_millis(u64::from(choice % 40) + 1)),
    }
}

/// The transaction id of every case.
const ID: &str = "liveness";

fn run_case(
    nodes: Vec<Node>,
    timeout_ms: Option<u32>,
    choices: Vec<u8>,
) -> Result<(), TestCaseError> {
    let mut specs = HashMap::new();
    let definition = FlowDefinition {
        action: None,
        next: build(&nodes, &mut specs),
        options: StepOptions::default(),
    };
    let options = WorkflowOptions {
        timeout: timeout_ms.map(|ms| f64::from(ms) / 1000.0),
        ..WorkflowOptions::default()
    };
    let flow = Flow::compile("prop-async", definition, options).expect("generated flows are valid");
    let specs = Arc::new(specs);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let clock = Arc::new(ManualClock::default());
        let engine = EngineOptions {
            clock: clock.clone(),
            ..EngineOptions::default()
        }
        .build();
        let h_specs = specs.clone();
        engine
            .register(flow, move |call: StepCall| {
                let specs = h_specs.clone();
                async move {
                    tokio::task::yield_now().await;
                    let spec = &specs[call.action()];
                    let attempt = call.attempt() as usize;
                    let fails = spec.fails[(attempt.max(1) - 1).min(spec.fails.len() - 1)];
                    let is_async = call
                        .flow()
                        .step(call.step())
                        .options
                        .is_async_side(call.handler_type());
                    if call.handler_type() == HandlerType::Invoke && !is_async && fails {
                        StepOutcome::fail("flaky")
                    } else {
                        // An async invoke now waits for the outside.
                        StepOutcome::ok(serde_json::json!(attempt))
                    }
                }
            })
            .expect("register");
        let key = TransactionKey::new("prop-async", ID);
        engine
            .run(
                "prop-async",
                RunOptions {
                    transaction_id: Some(ID.into()),
                    ..RunOptions::default()
                },
            )
            .await
            .expect("runs");
        // The outside acts at random (failing steps too), then only completes and waits.
        // (0: complete a waiting step; 2: resume; 39: move the clock by 40 ms.)
        let tail = [0u8, 2, 39].into_iter().cycle().take(600);
        for (i, choice) in choices.iter().copied().chain(tail).enumerate() {
            quiesce().await;
            let tx = stored(&engine, &key).await;
            if tx.has_finished() {
                return Ok(());
            }
            if let Some(stall) = tx.stall() {
                prop_assert!(false, "after {i} actions: {stall}");
            }
            act_on(&engine, &clock, &tx, choice, i < choices.len()).await;
        }
        let tx = stored(&engine, &key).await;
        prop_assert!(tx.has_finished(), "never ended: {:?}", tx.state());
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_async_trees_never_stall(
        nodes in tree(),
        timeout_ms in prop::option::weighted(0.3, 20u32..400),
        choices in prop::collection::vec(any::<u8>(), 0..60),
    ) {
        run_case(nodes, timeout_ms, choices)?;
    }
}

/// Found by the property test: a run whose only step in flight was parked after a temporary
/// failure (an async step with `autoRetry: false` and a retry interval) when the transaction
/// timeout fired spent its timeout without failing anything, then waited for good. The parked
/// step times out with the transaction, and the run is rolled back.
#[tokio::test(flavor = "current_thread")]
async fn a_transaction_timeout_fails_a_step_parked_after_a_temporary_failure() {
    let definition = FlowDefinition::from_json(
        r#"{"next":{"action":"s0","async":true,"next":{"action":"s1","async":true,
            "retryInterval":0.033,"autoRetry":false,"maxRetries":1}}}"#,
    )
    .expect("valid");
    let options = WorkflowOptions {
        timeout: Some(0.033),
        ..WorkflowOptions::default()
    };
    let flow = Flow::compile("parked", definition, options).expect("compiles");
    let clock = Arc::new(ManualClock::default());
    let engine = EngineOptions {
        clock: clock.clone(),
        ..EngineOptions::default()
    }
    .build();
    engine
        .register(flow, |_call: StepCall| async {
            StepOutcome::ok(serde_json::json!(1))
        })
        .expect("register");
    let run = RunOptions {
        transaction_id: Some("t".into()),
        ..RunOptions::default()
    };
    engine.run("parked", run).await.expect("runs");
    let key = |action: &str| IdempotencyKey::new("parked", "t", action, HandlerType::Invoke);
    engine
        .set_step_success(&key("s0"), Some(serde_json::json!(1).into()))
        .await
        .expect("s0 completes");
    engine
        .set_step_failure(&key("s1"), StepError::new("later"), false)
        .await
        .expect("s1 fails for now");
    clock.advance(Duration::from_millis(34));
    quiesce().await;
    let tx = stored(&engine, &TransactionKey::new("parked", "t")).await;
    assert_eq!(tx.state(), gorgon_orchestration::TransactionState::Reverted);
}
