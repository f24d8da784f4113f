//! Timeouts fire, whatever the load: a run waiting on an async step reaches its step timeout or
//! its workflow timeout, on the current-thread and the multi-thread runtime, one run after the
//! other and many at once. `.ci/run` runs this file 20 times in a row beside a CPU hog.

use std::time::Duration;

use gorgon_orchestration::WorkflowOptions;
use gorgon_workflows::{
    App, RunOptions, Services, Step, StepContext, StepResponse, StepResult, TransactionState,
    Workflow,
};

async fn wait_outside(_input: u32, _ctx: StepContext) -> StepResult<u32> {
    Ok(StepResponse::wait())
}

/// A workflow whose only step is async: with a 50 ms step timeout, or a 50 ms workflow timeout.
fn workflow(step_timeout: bool) -> Workflow<u32, u32> {
    let mut step = Step::new("wait-outside", wait_outside).asynchronous();
    let mut options = WorkflowOptions::default();
    if step_timeout {
        step = step.timeout(Duration::from_millis(50));
    } else {
        options.timeout = Some(0.05);
    }
    let name = if step_timeout {
        "step-timeout"
    } else {
        "workflow-timeout"
    };
    Workflow::define_with(name, options, |b, input| b.step(&step, input)).expect("defines")
}

/// Starts `runs` runs (`together`: all at once, else one after the other) and waits for each to
/// end, bounded to 2 s; returns the ids of those that did not.
async fn stuck_runs(step_timeout: bool, runs: usize, together: bool) -> Vec<String> {
    let app = App::new(Services::new());
    let wf = workflow(step_timeout);
    app.register(&wf).expect("registers");
    let one = |i: usize| {
        let (app, wf) = (app.clone(), wf.clone());
        async move {
            let id = format!("{}-{i}", wf.name());
            let started = app
                .start(&wf, 1, RunOptions::transaction_id(id.clone()))
                .await
                .expect("starts");
            assert!(!started.state().is_finished(), "{id} waits at first");
            let ended =
                tokio::time::timeout(Duration::from_secs(2), app.wait_until_finished(&wf, &id))
                    .await;
            match ended {
                Ok(run) => {
                    let run = run.expect("reads the run");
                    assert_eq!(run.state(), TransactionState::Reverted, "{id}");
                    None
                }
                Err(_) => Some(id),
            }
        }
    };
    let mut stuck = Vec::new();
    if together {
        let handles: Vec<_> = (0..runs).map(|i| tokio::spawn(one(i))).collect();
        for handle in handles {
            stuck.extend(handle.await.expect("joins"));
        }
    } else {
        for i in 0..runs {
            stuck.extend(one(i).await);
        }
    }
    stuck
}

async fn check_all() {
    for step_timeout in [true, false] {
        let stuck = stuck_runs(step_timeout, 40, false).await;
        assert!(
            stuck.is_empty(),
            "never timed out, one at a time: {stuck:?}"
        );
        let stuck = stuck_runs(step_timeout, 100, true).await;
        assert!(stuck.is_empty(), "never timed out, all at once: {stuck:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn timeouts_fire_on_the_current_thread_runtime() {
    check_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_fire_on_the_multi_thread_runtime() {
    check_all().await;
}
