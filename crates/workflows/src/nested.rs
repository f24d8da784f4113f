//! Workflows inside workflows: a nested workflow used as a step, and fan-out (a step run once per
//! element of a runtime `Vec`, each element its own child run, tracked and compensated alone).

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use futures::future::BoxFuture;
use gorgon_orchestration::{
    Data, Execution, HandlerType, IdempotencyKey, StepCall, StepError, StepOptions, StepOutcome,
    TransactionState,
};

use crate::compose::{Builder, Handle, Inputs};
use crate::context::{Payload, WorkflowContext};
use crate::error::{Error, StepFailure};
use crate::node::{
    Host, Node, NodeDef, Resolver, Runtime, ready, resolution_failure, resolve_input,
};
use crate::step::{Saved, Step, Value, failure_outcome};
use crate::workflow::{Workflow, result_of};

fn permanent(message: impl Into<String>) -> StepOutcome {
    StepOutcome::Failure {
        error: StepError::new(message),
        permanent: true,
        response: None,
    }
}

/// The app running `rt`'s workflow; a permanent failure when it was dropped.
fn host_of(rt: &Runtime) -> Result<Arc<dyn Host>, StepOutcome> {
    rt.host
        .upgrade()
        .ok_or_else(|| permanent("the app running this workflow was dropped"))
}

/// What a nested or fan-out step starts its children with: its input and the app. `Err` is the
/// outcome to give at once: a skip (a `when` not taken, an absent input), or a permanent failure
/// (an input that does not resolve, a dropped app).
fn input_and_host<T>(
    call: &StepCall,
    rt: &Runtime,
    guards: &[usize],
    input: &Resolver<T>,
) -> Result<(T, Arc<dyn Host>), StepOutcome> {
    let input = match resolve_input(call, rt, guards, input) {
        Ok(Some(input)) => input,
        Ok(None) => return Err(StepOutcome::Skip),
        Err(error) => return Err(resolution_failure(error)),
    };
    Ok((input, host_of(rt)?))
}

/// The context a child run gets: the parent's, with the parent's event group id made explicit
/// (the parent's run id when it had none), so the child's events join the parent's group.
fn context_of(call: &StepCall) -> Arc<WorkflowContext> {
    let context =
        Payload::with(call.payload(), call.workflow(), |p| p.context.clone()).unwrap_or_default();
    if !context.event_group_id.is_empty() {
        return context;
    }
    let mut context = (*context).clone();
    context.event_group_id = call.run_id().to_string();
    Arc::new(context)
}

/// A failed child run, as the parent step's error (it names the child's first error).
fn child_failure(error: Error) -> StepError {
    StepError::named("ChildWorkflowError", error.to_string())
}

/// The id of a child run: `<step>-<parent transaction>`, with `-<element>` for fan-out.
fn child_id(call: &StepCall, element: Option<usize>) -> String {
    match element {
        None => format!("{}-{}", call.action(), call.transaction_id()),
        Some(i) => format!("{}-{}-{i}", call.action(), call.transaction_id()),
    }
}

/// Starts a child workflow (nested or fan-out) with the parent's context; returns when it
/// finishes or waits.
async fn start_child<In: Value, Out>(
    host: &dyn Host,
    child: &Workflow<In, Out>,
    transaction_id: String,
    input: In,
    context: Arc<WorkflowContext>,
) -> Result<Execution, Error> {
    let payload = Data::new(Payload {
        input: Data::new(input),
        context,
        // The parent's outcome decides the group's fate.
        hold_events: true,
    });
    Ok(host
        .engine()
        .run(
            child.name(),
            gorgon_orchestration::RunOptions {
                transaction_id: Some(transaction_id),
                payload: Some(payload),
                idempotent: None,
            },
        )
        .await?)
}

/// Runs a child workflow to its result.
async fn run_child<In: Value, Out>(
    host: &dyn Host,
    child: &Workflow<In, Out>,
    transaction_id: String,
    input: In,
    context: Arc<WorkflowContext>,
) -> Result<Out, Error> {
    let mut execution = start_child(host, child, transaction_id, input, context).await?;
    if !execution.state.is_finished() {
        // A child that waits on the engine's timers (a retry interval) is waited for.
        if let Some(compiled) = host.compiled_of(child.name()) {
            execution = host.wait_engine_driven(&compiled, execution).await?;
        }
    }
    child_result(host, child, &execution)
}

/// The typed result of a child run, read with the child as registered on the app (its hooks
/// bound).
fn child_result<In, Out>(
    host: &dyn Host,
    child: &Workflow<In, Out>,
    execution: &Execution,
) -> Result<Out, Error> {
    let compiled = host
        .compiled_of(child.name())
        .unwrap_or_else(|| child.compiled.clone());
    result_of(execution, &compiled, &child.result)
}

/// Cancels (compensates) a child run; a child that never started has nothing to undo.
async fn cancel_child(
    host: &dyn Host,
    workflow: &str,
    transaction_id: &str,
) -> Result<(), StepFailure> {
    match host.engine().cancel(workflow, transaction_id).await {
        Ok(execution) if execution.state == TransactionState::Reverted => Ok(()),
        Ok(execution) => Err(StepFailure::new(format!(
            "compensating {workflow} {transaction_id} ended {}",
            execution.state
        ))),
        Err(gorgon_orchestration::Error::TransactionNotFound { .. }) => Ok(()),
        Err(error) => Err(StepFailure::new(error.to_string())),
    }
}

struct SubflowNode<CI, CO> {
    child: Workflow<CI, CO>,
    input: Resolver<CI>,
    guards: Box<[usize]>,
    /// The child has async steps: the parent step is async and nested, and is completed with
    /// `set_step_success` / `set_step_failure` when the child finishes.
    asynchronous: bool,
}

/// Completes the parent's nested step with the outcome of its finished child.
async fn complete_parent<CI, CO: Value>(
    host: &dyn Host,
    child: &Workflow<CI, CO>,
    execution: &Execution,
    parent: &IdempotencyKey,
) {
    let result = match child_result(host, child, execution) {
        Ok(output) => {
            let response = Data::new(Saved::<CO, ()> {
                output: Some(output),
                compensation: None,
                compensation_is_output: false,
            });
            host.engine().set_step_success(parent, Some(response)).await
        }
        Err(error) => {
            host.engine()
                .set_step_failure(parent, child_failure(error), true)
                .await
        }
    };
    match result {
        // The parent may have finished here: settle its (and its children's) events.
        Ok(parent_execution) => {
            host.settle_events(&parent_execution, parent_execution.state)
                .await;
        }
        Err(error) => {
            tracing::error!(step = %parent, %error, "completing a nested workflow step failed");
        }
    }
}

impl<CI: Value, CO: Value> Node for SubflowNode<CI, CO> {
    fn invoke(&self, call: StepCall, rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        let (input, host) = match input_and_host(&call, rt, &self.guards, &self.input) {
            Ok(found) => found,
            Err(outcome) => return ready(outcome),
        };
        let child = self.child.clone();
        let id = child_id(&call, None);
        let context = context_of(&call);
        if self.asynchronous {
            let parent = call.idempotency_key();
            return Box::pin(async move {
                let execution = match start_child(&*host, &child, id.clone(), input, context).await
                {
                    Ok(execution) => execution,
                    Err(error) => return permanent(error.to_string()),
                };
                if execution.state.is_finished() {
                    complete_parent(&*host, &child, &execution, &parent).await;
                } else {
                    // The child waits (an async step of its own): complete the parent when it
                    // finishes. In-process only: after a restart, resume the parent by hand.
                    tokio::spawn(async move {
                        match host.wait_finished(child.name(), &id).await {
                            Ok(execution) => {
                                complete_parent(&*host, &child, &execution, &parent).await;
                            }
                            Err(error) => {
                                tracing::error!(step = %parent, %error, "watching a child run failed");
                                let _ = host
                                    .engine()
                                    .set_step_failure(
                                        &parent,
                                        StepError::new(error.to_string()),
                                        true,
                                    )
                                    .await;
                            }
                        }
                    });
                }
                StepOutcome::Success(None)
            });
        }
        Box::pin(async move {
            match run_child(&*host, &child, id, input, context).await {
                Ok(output) => StepOutcome::Success(Some(Data::new(Saved::<CO, ()> {
                    output: Some(output),
                    compensation: None,
                    compensation_is_output: false,
                }))),
                Err(Error::NoResult { .. }) => StepOutcome::Skip,
                Err(error) => StepOutcome::Failure {
                    error: child_failure(error),
                    permanent: true,
                    response: None,
                },
            }
        })
    }

    fn compensate(&self, call: StepCall, rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        let host = match host_of(rt) {
            Ok(host) => host,
            Err(outcome) => return ready(outcome),
        };
        let child = self.child.compiled.name.clone();
        let id = child_id(&call, None);
        Box::pin(async move {
            match cancel_child(&*host, &child, &id).await {
                Ok(()) => StepOutcome::Success(None),
                Err(failure) => failure_outcome(failure),
            }
        })
    }

    fn external_success(&self, output: Box<dyn Any + Send>) -> Option<Data> {
        let output = output.downcast::<CO>().ok()?;
        Some(Saved::<CO, ()>::success(*output))
    }

    fn output_type(&self) -> &'static str {
        std::any::type_name::<CO>()
    }

    fn nested(&self) -> Option<Arc<str>> {
        self.asynchronous.then(|| self.child.compiled.name.clone())
    }
}

struct FanOutNode<T, O> {
    child: Workflow<T, O>,
    input: Resolver<Vec<T>>,
    guards: Box<[usize]>,
}

impl<T: Value, O: Value> Node for FanOutNode<T, O> {
    fn invoke(&self, call: StepCall, rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        let (items, host) = match input_and_host(&call, rt, &self.guards, &self.input) {
            Ok(found) => found,
            Err(outcome) => return ready(outcome),
        };
        let child = self.child.clone();
        let context = context_of(&call);
        let ids: Vec<String> = (0..items.len()).map(|i| child_id(&call, Some(i))).collect();
        Box::pin(async move {
            let count = items.len();
            let runs = items
                .into_iter()
                .zip(ids)
                .map(|(item, id)| run_child(&*host, &child, id, item, context.clone()));
            let results = futures::future::join_all(runs).await;
            let mut outputs = Vec::with_capacity(count);
            let mut failures = Vec::new();
            for (i, result) in results.into_iter().enumerate() {
                match result {
                    Ok(output) => outputs.push(output),
                    Err(error) => failures.push(format!("element {i}: {}", child_failure(error))),
                }
            }
            // The compensation input is the element count: rolling back cancels every child.
            if failures.is_empty() {
                StepOutcome::Success(Some(Data::new(Saved::<Vec<O>, usize> {
                    output: Some(outputs),
                    compensation: Some(count),
                    compensation_is_output: false,
                })))
            } else {
                StepOutcome::Failure {
                    error: StepError::named(
                        "FanOutError",
                        format!(
                            "{} of {count} elements failed: {}",
                            failures.len(),
                            failures.join("; ")
                        ),
                    ),
                    permanent: true,
                    response: Some(Data::new(Saved::<Vec<O>, usize> {
                        output: None,
                        compensation: Some(count),
                        compensation_is_output: false,
                    })),
                }
            }
        })
    }

    fn compensate(&self, call: StepCall, rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        let count = match call.response_at(call.step(), HandlerType::Invoke) {
            None => 0,
            Some(data) => match Saved::<Vec<O>, usize>::read(&data) {
                Ok(saved) => saved.compensation.unwrap_or(0),
                Err(e) => return ready(permanent(e.to_string())),
            },
        };
        let host = match host_of(rt) {
            Ok(host) => host,
            Err(outcome) => return ready(outcome),
        };
        let child = self.child.compiled.name.clone();
        let ids: Vec<String> = (0..count).rev().map(|i| child_id(&call, Some(i))).collect();
        Box::pin(async move {
            for id in ids {
                if let Err(failure) = cancel_child(&*host, &child, &id).await {
                    return failure_outcome(failure);
                }
            }
            StepOutcome::Success(None)
        })
    }

    fn external_success(&self, output: Box<dyn Any + Send>) -> Option<Data> {
        let output = output.downcast::<Vec<O>>().ok()?;
        Some(Saved::<Vec<O>, usize>::success(*output))
    }

    fn output_type(&self) -> &'static str {
        std::any::type_name::<Vec<O>>()
    }
}

impl Builder {
    /// Runs `child` as one step of this workflow, named `<child>-as-step`; its result is the
    /// step's output. The child is a run of its own (transaction `<step>-<parent transaction>`,
    /// the parent's context); rolling the parent back after it cancels the child, which
    /// compensates its own steps. The child is registered with the parent.
    ///
    /// A child with async steps makes this step async too: the parent waits until the child
    /// finishes (for example once its own async step got `set_step_success`), then goes on with
    /// the child's result. That completion is watched in-process: a parent whose process
    /// restarted while its child waited must be completed by hand.
    pub fn subflow<CI: Value, CO: Value>(
        &mut self,
        child: &Workflow<CI, CO>,
        input: impl Inputs<Values = CI>,
    ) -> Handle<CO> {
        let name = format!("{}-as-step", child.name());
        self.subflow_named(name, child, input)
    }

    /// [`subflow`](Self::subflow) under another step name, to run the same child twice.
    pub fn subflow_named<CI: Value, CO: Value>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        child: &Workflow<CI, CO>,
        input: impl Inputs<Values = CI>,
    ) -> Handle<CO> {
        let name = name.into();
        let stage = self.next_stage();
        let source = self.checked_source(input, &name, stage);
        let asynchronous = child.flow().has_async_steps();
        let node = Arc::new(SubflowNode {
            child: child.clone(),
            input: source.resolver,
            guards: self.guards.clone().into_boxed_slice(),
            asynchronous,
        });
        self.children.push(child.compiled.clone());
        let options = if asynchronous {
            StepOptions {
                is_async: Some(true),
                nested: Some(true),
                ..StepOptions::default()
            }
        } else {
            StepOptions::default()
        };
        self.add_output_node::<CO, ()>(
            NodeDef {
                name,
                options,
                node,
                requires: Vec::new(),
                hook: None,
            },
            stage,
        )
    }

    /// Fan-out: runs `step` once per element of a `Vec` known only at run time, and returns the
    /// outputs in order. Medusa cannot express this.
    ///
    /// Each element is a child run of a one-step workflow `<workflow>-<step>-each` (transaction
    /// `<step>-<parent transaction>-<index>`), so it is tracked on its own, retried with the
    /// step's options, and compensated with its own compensation input. The elements run
    /// concurrently; when any fails, the step fails for good after all have finished, and the
    /// rollback compensates the elements that succeeded, last first. An empty `Vec` gives an
    /// empty output.
    pub fn for_each<T: Value, O: Value, C: Value>(
        &mut self,
        step: &Step<T, O, C>,
        items: impl Inputs<Values = Vec<T>>,
    ) -> Handle<Vec<O>> {
        let child_name = format!("{}-{}-each", self.workflow(), step.name());
        let child = match Workflow::<T, O>::define(child_name, |b, item| b.step(step, item)) {
            Ok(child) => child,
            Err(error) => {
                self.fail(error);
                return self.transform_absent();
            }
        };
        let name = step.name.clone();
        let stage = self.next_stage();
        let source = self.checked_source(items, &name, stage);
        let node = Arc::new(FanOutNode {
            child: child.clone(),
            input: source.resolver,
            guards: self.guards.clone().into_boxed_slice(),
        });
        self.children.push(child.compiled.clone());
        self.add_output_node::<Vec<O>, usize>(
            NodeDef {
                name,
                options: StepOptions::default(),
                node,
                requires: step.requires.clone(),
                hook: None,
            },
            stage,
        )
    }

    /// A handle that is always absent; stands in after a definition error.
    fn transform_absent<T: Clone + Send + Sync + 'static>(&mut self) -> Handle<T> {
        let never: Resolver<T> = Arc::new(|_env| Ok(None));
        self.slot(never, None)
    }
}
