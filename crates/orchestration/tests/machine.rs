//! The state machine on its own, without an engine: events in (begin, a handler's outcome, an
//! outside completion, a timer), then what it asks for out (the calls of the next round, the
//! records to append, the timers to arm or disarm, the events to publish).

use std::sync::Arc;

use serde_json::json;

use gorgon_orchestration::machine::{Dispatch, Next, Round, Timer, TimerAction};
use gorgon_orchestration::{
    Actions, Data, EventKind, Flow, FlowDefinition, HandlerType, Record, StepError, StepOutcome,
    StepState, StepStatus, Transaction, TransactionState, WorkflowOptions,
};

fn flow(json: &str) -> Arc<Flow> {
    let definition = FlowDefinition::from_json(json).expect("definition");
    Arc::new(Flow::compile("m", definition, WorkflowOptions::default()).expect("compiles"))
}

/// A transaction with the buffers its caller owns: the round's calls and the actions.
struct Fed {
    tx: Transaction,
    round: Round,
    out: Actions,
}

fn transaction(flow: &Arc<Flow>) -> Fed {
    Fed {
        tx: Transaction::new(flow.clone(), "t".into(), "r".into(), Data::null()),
        round: Round::default(),
        out: Actions::default(),
    }
}

impl Fed {
    fn begin_or_resume(&mut self, now: u64) -> bool {
        self.tx.begin_or_resume(now, &mut self.out)
    }
    /// Plans the next round; returns its calls (none once finished).
    fn next_round(&mut self, now: u64) -> Next {
        self.tx.next_round(now, &mut self.round, &mut self.out)
    }
    fn calls(&self) -> Vec<Dispatch> {
        self.round.calls().to_vec()
    }
    fn complete(&mut self, dispatch: Dispatch, outcome: StepOutcome, now: u64) {
        self.tx
            .complete(dispatch, outcome, self.round.steps(), now, &mut self.out)
    }
    fn register_success(
        &mut self,
        step: usize,
        response: Option<Data>,
    ) -> gorgon_orchestration::Result<()> {
        self.tx
            .register_success(step, HandlerType::Invoke, response, &mut self.out)
    }
    fn timer_fired(&mut self, timer: Timer, now: u64) -> bool {
        self.tx.timer_fired(timer, now, &mut self.out)
    }
}

impl std::ops::Deref for Fed {
    type Target = Transaction;
    fn deref(&self) -> &Transaction {
        &self.tx
    }
}

impl std::ops::DerefMut for Fed {
    fn deref_mut(&mut self) -> &mut Transaction {
        &mut self.tx
    }
}

/// What the machine asked for since the last drain.
#[derive(Debug, Default)]
struct Asked {
    records: Vec<Record>,
    /// `Some(at)`: arm; `None`: disarm.
    timers: Vec<(Timer, Option<u64>)>,
    events: Vec<(EventKind, Option<String>)>,
}

impl Asked {
    fn steps(&self) -> Vec<(String, StepState, StepStatus)> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Step { step, run } => {
                    Some((format!("{step}"), run.side().state, run.side().status))
                }
                _ => None,
            })
            .collect()
    }
    fn fields(&self) -> Vec<TransactionState> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Transaction(fields) => Some(fields.state),
                _ => None,
            })
            .collect()
    }
    fn events(&self) -> Vec<EventKind> {
        self.events.iter().map(|(kind, _)| *kind).collect()
    }
}

/// Ends the batch and takes what the machine asked for.
fn drain(fed: &mut Fed) -> Asked {
    fed.tx.end_batch(&mut fed.out);
    Asked {
        records: std::mem::take(&mut fed.out.records),
        timers: fed
            .out
            .timers
            .drain(..)
            .map(|t| match t {
                TimerAction::Arm(timer, at) => (timer, Some(at)),
                TimerAction::Disarm(timer) => (timer, None),
            })
            .collect(),
        events: fed
            .out
            .events
            .drain(..)
            .map(|(kind, step)| (kind, step.map(|s| fed.tx.flow().step(s).action.clone())))
            .collect(),
    }
}

/// Replays what was drained so far and checks it rebuilds the live transaction.
fn assert_replays(flow: &Arc<Flow>, log: &[Record], live: &Fed) {
    let replayed = Transaction::replay(flow.clone(), "t".into(), "r".into(), Data::null(), log)
        .expect("replay");
    assert_eq!(replayed.state(), live.state());
    assert_eq!(replayed.steps(), live.steps());
    assert_eq!(replayed.errors(), live.errors());
    assert_eq!(replayed.timers(), live.timers());
}

#[test]
fn a_sequence_calls_one_step_per_round_and_records_each_boundary_once() {
    let flow = flow(r#"{"next":{"action":"a","next":{"action":"b"}}}"#);
    let (a, b) = (flow.step_index("a").unwrap(), flow.step_index("b").unwrap());
    let mut tx = transaction(&flow);
    let mut log = Vec::new();

    assert!(tx.begin_or_resume(10));
    tx.next_round(10);
    assert_eq!(
        tx.calls(),
        vec![Dispatch {
            step: a,
            handler: HandlerType::Invoke,
            attempt: 1,
            is_async: false
        }]
    );
    assert!(tx.round.continue_after());
    let asked = drain(&mut tx);
    // The step once, in its last state of the batch, then the transaction's fields.
    assert_eq!(
        asked.steps(),
        vec![(format!("{a}"), StepState::Invoking, StepStatus::Waiting)]
    );
    assert_eq!(asked.fields(), vec![TransactionState::Invoking]);
    assert!(matches!(asked.records.last(), Some(Record::Transaction(_))));
    assert_eq!(asked.events(), vec![EventKind::Begin, EventKind::StepBegin]);
    assert!(asked.timers.is_empty());
    log.extend(asked.records);
    assert_replays(&flow, &log, &tx);

    tx.complete(tx.calls()[0], StepOutcome::ok(json!(1)), 11);
    tx.next_round(11);
    assert_eq!(tx.calls()[0].step, b);
    let asked = drain(&mut tx);
    assert!(matches!(
        asked.records.first(),
        Some(Record::Response { step, handler: HandlerType::Invoke, data: Some(_) }) if *step == a
    ));
    assert_eq!(
        asked.steps(),
        vec![
            (format!("{a}"), StepState::Done, StepStatus::Ok),
            (format!("{b}"), StepState::Invoking, StepStatus::Waiting),
        ]
    );
    // The fields are as the last batch left them: no transaction record.
    assert!(asked.fields().is_empty());
    assert_eq!(
        asked.events(),
        vec![EventKind::StepSuccess, EventKind::StepBegin]
    );
    log.extend(asked.records);

    tx.complete(tx.calls()[0], StepOutcome::ok(json!(2)), 12);
    assert_eq!(tx.next_round(12), Next::Finished);
    let asked = drain(&mut tx);
    assert_eq!(asked.fields(), vec![TransactionState::Done]);
    assert_eq!(
        asked.events(),
        vec![EventKind::StepSuccess, EventKind::Finish]
    );
    log.extend(asked.records);
    assert_replays(&flow, &log, &tx);
    assert_eq!(tx.state(), TransactionState::Done);
}

#[test]
fn parallel_steps_are_called_in_one_round() {
    let flow = flow(r#"{"next":[{"action":"a"},{"action":"b"},{"action":"c"}]}"#);
    let mut tx = transaction(&flow);
    tx.begin_or_resume(0);
    tx.next_round(0);
    let called: Vec<_> = tx
        .calls()
        .iter()
        .map(|c| flow.step(c.step).action.clone())
        .collect();
    assert_eq!(called, ["a", "b", "c"]);
    // The outcomes arrive in any order; the round ends when all three are in.
    for dispatch in tx.calls().into_iter().rev() {
        tx.complete(dispatch, StepOutcome::ok(json!(0)), 1);
    }
    assert_eq!(tx.next_round(1), Next::Finished);
    assert_eq!(tx.state(), TransactionState::Done);
}

#[test]
fn a_temporary_failure_is_retried_then_a_permanent_one_compensates_in_reverse() {
    let flow = flow(r#"{"next":{"action":"a","next":{"action":"b","maxRetries":1}}}"#);
    let (a, b) = (flow.step_index("a").unwrap(), flow.step_index("b").unwrap());
    let mut tx = transaction(&flow);
    let mut log = Vec::new();
    tx.begin_or_resume(0);
    tx.next_round(0);
    tx.complete(tx.calls()[0], StepOutcome::ok(json!(1)), 1);

    // b fails once: an error record, and the next round calls it again (attempt 2).
    tx.next_round(1);
    tx.complete(tx.calls()[0], StepOutcome::fail("flaky"), 2);
    tx.next_round(2);
    assert_eq!(
        tx.calls(),
        vec![Dispatch {
            step: b,
            handler: HandlerType::Invoke,
            attempt: 2,
            is_async: false
        }]
    );
    let asked = drain(&mut tx);
    // A failure with retries left is counted on the step; no error is recorded yet.
    assert!(asked.records.iter().any(|r| matches!(
        r,
        Record::Step { step, run } if *step == b && run.failures == 1 && run.attempts == 2
    )));
    assert!(!asked.records.iter().any(|r| matches!(r, Record::Error(_))));
    log.extend(asked.records);

    // Out of retries: b fails for good, the transaction compensates a (b has nothing to undo).
    tx.complete(tx.calls()[0], StepOutcome::fail("again"), 3);
    tx.next_round(3);
    let called: Vec<_> = tx
        .calls()
        .iter()
        .map(|c| (flow.step(c.step).action.clone(), c.handler))
        .collect();
    assert_eq!(called, [("b".to_string(), HandlerType::Compensate)]);
    let asked = drain(&mut tx);
    assert!(asked.events().contains(&EventKind::CompensateBegin));
    assert_eq!(tx.state(), TransactionState::Compensating);
    log.extend(asked.records);
    tx.complete(tx.calls()[0], StepOutcome::ok(json!(0)), 4);
    tx.next_round(4);
    assert_eq!(tx.calls()[0].step, a);
    assert_eq!(tx.calls()[0].handler, HandlerType::Compensate);
    tx.complete(tx.calls()[0], StepOutcome::ok(json!(0)), 5);
    assert_eq!(tx.next_round(5), Next::Finished);
    assert_eq!(tx.state(), TransactionState::Reverted);
    log.extend(drain(&mut tx).records);
    assert_replays(&flow, &log, &tx);
    assert_eq!(tx.errors().len(), 1);
    assert_eq!(tx.errors()[0].action, "b");
    assert_eq!(tx.errors()[0].error, StepError::new("again"));
}

#[test]
fn an_async_step_with_a_timeout_arms_its_timer_and_a_completion_disarms_it() {
    let flow = flow(r#"{"next":{"action":"a","async":true,"timeout":2}}"#);
    let a = flow.step_index("a").unwrap();
    let mut tx = transaction(&flow);
    let mut log = Vec::new();
    tx.begin_or_resume(1_000);
    tx.next_round(1_000);
    assert!(tx.calls()[0].is_async);
    // Nothing follows an async call in the same round.
    assert!(!tx.round.continue_after());
    let asked = drain(&mut tx);
    assert_eq!(asked.timers, vec![(Timer::StepTimeout(a), Some(3_001))]);
    // The armed timer is in the log too, so that it survives the process.
    assert!(asked.records.contains(&Record::Timer {
        timer: Timer::StepTimeout(a),
        at: Some(3_001)
    }));
    log.extend(asked.records);
    assert_replays(&flow, &log, &tx);
    assert_eq!(tx.wake_at(), Some(3_001));

    tx.register_success(a, Some(Data::json(serde_json::json!(5))))
        .expect("the step waits");
    assert_eq!(tx.next_round(1_500), Next::Finished);
    let asked = drain(&mut tx);
    assert_eq!(asked.timers, vec![(Timer::StepTimeout(a), None)]);
    assert_eq!(asked.events()[0], EventKind::Resume);
    log.extend(asked.records);
    assert_replays(&flow, &log, &tx);
    assert!(tx.timers().is_empty());
    assert_eq!(tx.state(), TransactionState::Done);
}

#[test]
fn an_async_step_times_out_when_its_timer_fires_late_enough() {
    let flow = flow(r#"{"next":{"action":"a","async":true,"timeout":2}}"#);
    let a = flow.step_index("a").unwrap();
    let mut tx = transaction(&flow);
    tx.begin_or_resume(0);
    tx.next_round(0);
    tx.complete(tx.calls()[0], StepOutcome::ok(json!(0)), 0);
    drain(&mut tx);
    // Early: the timer stays armed and is armed again.
    assert!(!tx.timer_fired(Timer::StepTimeout(a), 1_000));
    assert_eq!(
        drain(&mut tx).timers,
        vec![(Timer::StepTimeout(a), Some(2_001))]
    );
    assert!(tx.timer_fired(Timer::StepTimeout(a), 2_001));
    tx.next_round(2_001);
    let asked = drain(&mut tx);
    assert!(asked.events().contains(&EventKind::Timeout));
    assert_eq!(tx.step(a).invoke.state, StepState::Timeout);
}

#[test]
fn a_cancelled_run_compensates_what_was_done() {
    let flow = flow(r#"{"next":{"action":"a","next":{"action":"b"}}}"#);
    let a = flow.step_index("a").unwrap();
    let mut tx = transaction(&flow);
    tx.begin_or_resume(0);
    tx.next_round(0);
    tx.complete(tx.calls()[0], StepOutcome::ok(json!(0)), 0);
    tx.next_round(0);
    tx.complete(tx.calls()[0], StepOutcome::ok(json!(0)), 0);
    assert_eq!(tx.next_round(0), Next::Finished);
    drain(&mut tx);
    tx.cancel(1)
        .expect("a running transaction can be cancelled");
    tx.next_round(1);
    let called: Vec<_> = tx
        .calls()
        .iter()
        .map(|c| (flow.step(c.step).action.clone(), c.handler))
        .collect();
    assert_eq!(called, [("b".to_string(), HandlerType::Compensate)]);
    tx.complete(tx.calls()[0], StepOutcome::ok(json!(0)), 2);
    tx.next_round(2);
    assert_eq!(tx.calls()[0].step, a);
    tx.complete(tx.calls()[0], StepOutcome::ok(json!(0)), 3);
    assert_eq!(tx.next_round(3), Next::Finished);
    assert_eq!(tx.state(), TransactionState::Reverted);
    assert!(tx.fields().cancelled_at.is_some());
    // A finished transaction refuses outside completions.
    assert!(tx.register_success(a, None).is_err());
}
