//! [`Workflow`]: a composed, compiled workflow; and what a run of it ended with or waits on.

use std::marker::PhantomData;
use std::sync::Arc;

use gorgon_orchestration::{
    Execution, Flow, HandlerType, StepIndex, StepStatus, TransactionState, WorkflowOptions,
};

use crate::compose::{Builder, Handle};
use crate::error::Error;
use crate::node::{Compiled, Env, EnvSource, Resolver};
use crate::step::Value;

/// A workflow: typed input `In`, typed result `Out`, defined once by a composer.
///
/// Cheap to clone. Register it on an [`App`](crate::App), then run it there.
pub struct Workflow<In, Out> {
    pub(crate) compiled: Arc<Compiled>,
    pub(crate) result: Resolver<Out>,
    _input: PhantomData<fn(In)>,
}

impl<In, Out> Clone for Workflow<In, Out> {
    fn clone(&self) -> Self {
        Workflow {
            compiled: self.compiled.clone(),
            result: self.result.clone(),
            _input: PhantomData,
        }
    }
}

impl<In, Out> std::fmt::Debug for Workflow<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("name", &self.compiled.name)
            .field("steps", &self.compiled.nodes.len())
            .finish()
    }
}

impl<In: Value, Out: Clone + Send + Sync + 'static> Workflow<In, Out> {
    /// Defines a workflow: `composer` receives the input as a handle, adds the steps, and returns
    /// the handle of the result. It runs once, now, and performs no I/O.
    pub fn define<F>(name: impl Into<String>, composer: F) -> Result<Self, Error>
    where
        F: FnOnce(&mut Builder, Handle<In>) -> Handle<Out>,
    {
        Self::define_with(name, WorkflowOptions::default(), composer)
    }

    /// [`define`](Self::define) with workflow options (timeout, idempotent, retention, store).
    pub fn define_with<F>(
        name: impl Into<String>,
        options: WorkflowOptions,
        composer: F,
    ) -> Result<Self, Error>
    where
        F: FnOnce(&mut Builder, Handle<In>) -> Handle<Out>,
    {
        let name: Arc<str> = Arc::from(name.into());
        let mut builder = Builder::new(name.clone());
        let input = builder.input::<In>();
        let output = composer(&mut builder, input);
        let result = builder.result(output);
        let composed = builder.finish()?;
        Ok(Workflow {
            compiled: Arc::new(Compiled::build(name, options, composed)?),
            result,
            _input: PhantomData,
        })
    }
}

impl<In, Out> Workflow<In, Out> {
    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.compiled.name
    }
    /// The compiled flow (the step tree the orchestrator runs).
    pub fn flow(&self) -> &Flow {
        &self.compiled.flow
    }
    /// The step names in definition order.
    pub fn step_names(&self) -> impl Iterator<Item = &str> {
        self.compiled.nodes.iter().map(|n| n.name.as_ref())
    }
}

/// The typed result of an execution of `compiled`.
pub(crate) fn result_of<Out>(
    execution: &Execution,
    compiled: &Compiled,
    result: &Resolver<Out>,
) -> Result<Out, Error> {
    match execution.state {
        TransactionState::Done => {
            let env = Env {
                source: EnvSource::Execution(execution),
                compiled,
                workflow: &compiled.name,
            };
            result(&env)?.ok_or_else(|| Error::NoResult {
                workflow: compiled.name.to_string(),
                transaction_id: execution.transaction_id().to_string(),
            })
        }
        TransactionState::Reverted | TransactionState::Failed => Err(Error::Failed {
            workflow: compiled.name.to_string(),
            transaction_id: execution.transaction_id().to_string(),
            state: execution.state,
            errors: execution.errors.clone(),
        }),
        state => Err(Error::NotFinished {
            workflow: compiled.name.to_string(),
            transaction_id: execution.transaction_id().to_string(),
            state,
            waiting_on: waiting_on(execution),
        }),
    }
}

/// What an unfinished execution's step waits on.
pub(crate) enum Wait {
    /// The outside: `set_step_success` / `set_step_failure` for an async step, or a resume.
    Outside(String),
    /// The workflow the step at this index nests.
    Nested(StepIndex),
}

/// What an unfinished execution's steps wait on (the engine's own timers and background
/// steps aside).
pub(crate) fn waits(execution: &Execution) -> Vec<Wait> {
    let flow = execution.flow();
    let mut waits = Vec::new();
    for (index, run) in execution.steps.iter().enumerate().skip(1) {
        let step = flow.step(index);
        let side = run.side();
        let options = &step.options;
        let handler = run.handler_type();
        if side.status == StepStatus::Waiting && options.is_async_side(handler) {
            if options.nested() {
                waits.push(Wait::Nested(index));
            } else if handler == HandlerType::Compensate || !options.background_execution() {
                waits.push(Wait::Outside(format!(
                    "step `{}` ({handler}: set_step_success / set_step_failure)",
                    step.action
                )));
            }
        } else if side.status == StepStatus::TemporaryFailure && run.temporary_failed_at.is_some() {
            waits.push(Wait::Outside(format!("step `{}` (resume)", step.action)));
        }
    }
    waits
}

/// What an unfinished execution waits on, a line per step: async steps waiting for
/// `set_step_success` / `set_step_failure`, steps waiting for a resume, nested workflows.
fn waiting_on(execution: &Execution) -> Vec<String> {
    waits(execution)
        .into_iter()
        .map(|wait| match wait {
            Wait::Outside(what) => what,
            Wait::Nested(index) => format!(
                "nested workflow step `{}`",
                execution.flow().step(index).action
            ),
        })
        .collect()
}
