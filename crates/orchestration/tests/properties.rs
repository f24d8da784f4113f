//! Property tests of the state machine: random trees (depth up to 5, width up to 6) with failures
//! injected at random invokes and compensations.
//!
//! For every run: the transaction ends `done`, `reverted` or `failed`; no invoke begins after the
//! first compensation call; a compensation completes at most once and only for a step whose
//! invoke began; a parent's compensation begins only after every child that ran was compensated.
//!
//! Every tree runs on each of the engine's write paths (an append per step boundary, appends
//! pipelined behind the steps, and stretches deferred into one append on a volatile store), with
//! and without an event subscriber. On each, the stored log replays to the run's final state, and
//! every path ends in the same states as the others.

use std::collections::HashMap;
use std::sync::Arc;

use gorgon_orchestration::TransactionLog;

use gorgon_orchestration::flow::{Next, SkipOnPermanentFailure};
use gorgon_orchestration::{
    EngineOptions, Flow, FlowDefinition, HandlerType, MemoryStore, RunOptions, StepCall,
    StepOptions, StepOutcome, StepRun, Transaction, TransactionKey, TransactionState,
    WorkflowOptions, WriteMode,
};
use parking_lot::Mutex;
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Ok,
    Fail,
    Permanent,
    Skip,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![6 => Just(Outcome::Ok), 2 => Just(Outcome::Fail), 1 => Just(Outcome::Permanent), 1 => Just(Outcome::Skip)]
}

#[derive(Clone, Debug)]
struct StepSpec {
    max_retries: u32,
    no_wait: bool,
    no_compensation: bool,
    continue_on_failure: bool,
    skip_on_failure: bool,
    invoke: Vec<Outcome>,
    compensate: Vec<Outcome>,
}

fn step_spec() -> impl Strategy<Value = StepSpec> {
    (
        0u32..3,
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::collection::vec(outcome(), 1..4),
        prop::collection::vec(
            prop_oneof![8 => Just(Outcome::Ok), 2 => Just(Outcome::Fail)],
            1..3,
        ),
    )
        .prop_map(
            |(
                max_retries,
                no_wait,
                no_compensation,
                continue_on_failure,
                skip_on_failure,
                invoke,
                compensate,
            )| {
                StepSpec {
                    max_retries,
                    no_wait,
                    no_compensation,
                    continue_on_failure,
                    skip_on_failure,
                    invoke,
                    compensate,
                }
            },
        )
}

/// A tree shape: each node has up to 6 children, depth up to 5.
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
    let node = leaf.prop_recursive(4, 60, 6, |inner| {
        (step_spec(), prop::collection::vec(inner, 0..7))
            .prop_map(|(spec, children)| Node { spec, children })
    });
    prop::collection::vec(node, 1..7)
}

fn build(
    nodes: &[Node],
    specs: &mut HashMap<String, StepSpec>,
    parents: &mut HashMap<String, Option<String>>,
    parent: Option<&str>,
) -> Option<Next> {
    let mut defs = Vec::new();
    for node in nodes {
        let action = format!("s{}", specs.len());
        specs.insert(action.clone(), node.spec.clone());
        parents.insert(action.clone(), parent.map(str::to_string));
        let options = StepOptions {
            max_retries: Some(node.spec.max_retries),
            no_wait: Some(node.spec.no_wait),
            no_compensation: Some(node.spec.no_compensation),
            continue_on_permanent_failure: Some(node.spec.continue_on_failure),
            skip_on_permanent_failure: Some(SkipOnPermanentFailure::All(node.spec.skip_on_failure)),
            ..StepOptions::default()
        };
        let mut def = FlowDefinition::step(action.clone(), options);
        def.next = build(&node.children, specs, parents, Some(&action));
        defs.push(def);
    }
    match defs.len() {
        0 => None,
        1 => Some(Next::One(Box::new(defs.pop().expect("one")))),
        _ => Some(Next::Many(defs)),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Begin(HandlerType, String),
    End(HandlerType, String, bool),
}

/// How the engine writes a run's records: what the store in front of the memory store declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WritePath {
    /// One append per step boundary, durable before the engine goes on.
    EveryStep,
    /// Appends queued behind the steps, at most one in flight per transaction.
    Pipelined,
    /// A volatile store: a stretch run without waiting goes into one append.
    Deferred,
}

const WRITE_PATHS: [WritePath; 3] = [
    WritePath::EveryStep,
    WritePath::Pipelined,
    WritePath::Deferred,
];

/// What a run leaves behind, clocks left out: the transaction's state, and each step's.
type RunEnd = (TransactionState, Vec<(String, StepRun)>);

/// A step's run without its timestamps (which differ between runs).
fn timeless(run: &StepRun) -> StepRun {
    StepRun {
        last_attempt: None,
        started_at: None,
        timed_out_at: None,
        retry_rescheduled_at: None,
        temporary_failed_at: run.temporary_failed_at.map(|_| 0),
        ..*run
    }
}

fn run_case(nodes: Vec<Node>) -> Result<(), TestCaseError> {
    let mut specs = HashMap::new();
    let mut parents = HashMap::new();
    let next = build(&nodes, &mut specs, &mut parents, None);
    let definition = FlowDefinition {
        action: None,
        next,
        options: StepOptions::default(),
    };
    let flow = Arc::new(
        Flow::compile("prop", definition, WorkflowOptions::default())
            .expect("generated flows are valid"),
    );
    let specs = Arc::new(specs);
    let mut first: Option<(WritePath, bool, RunEnd)> = None;
    for path in WRITE_PATHS {
        for subscribed in [false, true] {
            let outcome = run_on(&flow, &specs, &parents, path, subscribed)?;
            match &first {
                None => first = Some((path, subscribed, outcome)),
                Some((first_path, first_subscribed, expected)) => prop_assert_eq!(
                    &outcome,
                    expected,
                    "{:?} (subscriber: {}) ended otherwise than {:?} (subscriber: {})",
                    path,
                    subscribed,
                    first_path,
                    first_subscribed
                ),
            }
        }
    }
    Ok(())
}

/// Runs the flow once on one write path and checks the run's invariants and its replay.
fn run_on(
    flow: &Arc<Flow>,
    specs: &Arc<HashMap<String, StepSpec>>,
    parents: &HashMap<String, Option<String>>,
    path: WritePath,
    subscribed: bool,
) -> Result<RunEnd, TestCaseError> {
    let log: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let counters: Arc<Mutex<HashMap<(HandlerType, String), usize>>> = Arc::default();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (state, steps, replayed) = runtime.block_on(async {
        let store = Arc::new(MemoryStore::new().declaring(match path {
            WritePath::EveryStep => WriteMode::Durable,
            WritePath::Pipelined => WriteMode::Pipelined,
            WritePath::Deferred => WriteMode::Volatile,
        }));
        let engine = EngineOptions {
            store: store.clone(),
            ..EngineOptions::default()
        }
        .build();
        let _events = subscribed.then(|| engine.subscribe());
        let (h_specs, h_log, h_counters) = (specs.clone(), log.clone(), counters.clone());
        engine
            .register_arc(
                flow.clone(),
                Arc::new(move |call: StepCall| {
                    let (specs, log, counters) =
                        (h_specs.clone(), h_log.clone(), h_counters.clone());
                    async move {
                        let action = call.action().to_string();
                        let side = call.handler_type();
                        log.lock().push(Entry::Begin(side, action.clone()));
                        let spec = &specs[&action];
                        let list = if side == HandlerType::Invoke {
                            &spec.invoke
                        } else {
                            &spec.compensate
                        };
                        let n = {
                            let mut c = counters.lock();
                            let n = c.entry((side, action.clone())).or_insert(0);
                            *n += 1;
                            *n - 1
                        };
                        tokio::task::yield_now().await;
                        let outcome = list[n.min(list.len() - 1)];
                        log.lock().push(Entry::End(
                            side,
                            action.clone(),
                            matches!(outcome, Outcome::Ok | Outcome::Skip),
                        ));
                        match outcome {
                            Outcome::Ok => StepOutcome::ok(serde_json::json!(n)),
                            Outcome::Fail => StepOutcome::fail("boom"),
                            Outcome::Permanent => StepOutcome::permanent("broken"),
                            Outcome::Skip => StepOutcome::Skip,
                        }
                    }
                }),
            )
            .expect("register");
        let execution = engine
            .run("prop", RunOptions::default())
            .await
            .expect("run");
        let steps: HashMap<String, _> = execution
            .flow()
            .steps()
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, s)| (s.action.clone(), execution.steps[i]))
            .collect();
        // The stored log folds back to the run's final state, step by step, with its errors
        // and every response.
        let key = TransactionKey::new("prop", execution.transaction_id());
        let stored = store
            .load(&key)
            .await
            .expect("load")
            .expect("the run is stored");
        let replayed = Transaction::replay(
            flow.clone(),
            key.id.clone(),
            stored.header.run_id.clone(),
            stored.header.payload.clone(),
            &stored.records,
        )
        .expect("the log replays");
        let mut mismatch = None;
        if replayed.state() != execution.state {
            mismatch = Some(format!(
                "state {} replays as {}",
                execution.state,
                replayed.state()
            ));
        } else if replayed.steps() != execution.steps.as_slice() {
            mismatch = Some(format!(
                "steps {:?} replay as {:?}",
                execution.steps,
                replayed.steps()
            ));
        } else if replayed.errors() != execution.errors.as_slice() {
            mismatch = Some(format!(
                "errors {:?} replay as {:?}",
                execution.errors,
                replayed.errors()
            ));
        } else {
            for step in 1..flow.steps().len() {
                for side in [HandlerType::Invoke, HandlerType::Compensate] {
                    let live = execution.response_at(step, side);
                    let stored = replayed.shared().responses.get(step, side);
                    if live.as_ref().map(|d| d.to_json().ok())
                        != stored.as_ref().map(|d| d.to_json().ok())
                    {
                        mismatch = Some(format!(
                            "the {side} response of step {step} replays as {stored:?}, not {live:?}"
                        ));
                    }
                }
            }
        }
        (execution.state, steps, mismatch)
    });
    if let Some(mismatch) = replayed {
        prop_assert!(
            false,
            "{:?} (subscriber: {}): {}",
            path,
            subscribed,
            mismatch
        );
    }
    let log = log.lock().clone();

    // 1. Every transaction ends done, reverted or failed (no async steps here).
    prop_assert!(state.is_finished(), "ended {state}");

    // 2. No invoke begins after the first compensation call.
    if let Some(first) = log
        .iter()
        .position(|e| matches!(e, Entry::Begin(HandlerType::Compensate, _)))
    {
        prop_assert!(
            !log[first..]
                .iter()
                .any(|e| matches!(e, Entry::Begin(HandlerType::Invoke, _))),
            "an invoke began after compensation: {log:?}"
        );
    }

    // 3. A compensation completes (ok) at most once, and only for a step whose invoke began.
    let mut compensated: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in log.iter().enumerate() {
        if let Entry::Begin(HandlerType::Compensate, action) = entry {
            prop_assert!(
                log[..i]
                    .iter()
                    .any(|e| *e == Entry::Begin(HandlerType::Invoke, action.clone())),
                "{action} compensated without an invoke"
            );
        }
        if let Entry::End(HandlerType::Compensate, action, true) = entry {
            *compensated.entry(action).or_default() += 1;
        }
    }
    prop_assert!(
        compensated.values().all(|&n| n == 1),
        "a compensation completed twice: {compensated:?}"
    );

    // 4. A parent's compensation begins only after every child that was invoked finished compensating.
    for (i, entry) in log.iter().enumerate() {
        let Entry::Begin(HandlerType::Compensate, parent) = entry else {
            continue;
        };
        for (child, p) in parents.iter() {
            if p.as_deref() != Some(parent.as_str()) {
                continue;
            }
            let child_invoked = log
                .iter()
                .any(|e| *e == Entry::Begin(HandlerType::Invoke, child.clone()));
            let child_compensate_calls = log
                .iter()
                .any(|e| matches!(e, Entry::Begin(HandlerType::Compensate, c) if c == child));
            if child_invoked && child_compensate_calls {
                let done_before = log[..i]
                    .iter()
                    .any(|e| matches!(e, Entry::End(HandlerType::Compensate, c, _) if c == child));
                prop_assert!(
                    done_before,
                    "{parent} compensated before its child {child}: {log:?}"
                );
            }
        }
    }

    // 5. The end state agrees with the steps.
    match state {
        TransactionState::Done => {
            prop_assert!(
                !log.iter()
                    .any(|e| matches!(e, Entry::Begin(HandlerType::Compensate, _)))
            );
        }
        TransactionState::Reverted => {
            for (action, run) in &steps {
                let invoked = log
                    .iter()
                    .any(|e| *e == Entry::Begin(HandlerType::Invoke, action.clone()));
                if invoked && run.invoke.state != gorgon_orchestration::StepState::Skipped {
                    prop_assert_eq!(
                        run.compensate.state,
                        gorgon_orchestration::StepState::Reverted,
                        "{}",
                        action
                    );
                }
            }
        }
        TransactionState::Failed => {
            prop_assert!(
                steps
                    .values()
                    .any(|r| r.compensate.state == gorgon_orchestration::StepState::Failed)
            );
        }
        other => prop_assert!(false, "unexpected state {other}"),
    }
    let mut runs: Vec<(String, StepRun)> = steps
        .into_iter()
        .map(|(action, run)| (action, timeless(&run)))
        .collect();
    runs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((state, runs))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_end_in_a_consistent_state_on_every_write_path(nodes in tree()) {
        run_case(nodes)?;
    }
}
