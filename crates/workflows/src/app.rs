//! [`App`]: the engine, the service registry and the registered workflows; running them.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use gorgon_orchestration::{
    Data, Engine, EngineOptions, EventKind, Execution, HandlerType, IdempotencyKey,
    TransactionError, TransactionEvent, TransactionState,
};
use parking_lot::RwLock;
use tokio::sync::broadcast;

use crate::compose::{Env, EnvSource, Resolver};
use crate::context::{Payload, WorkflowContext};
use crate::error::{Error, RunError, StepFailure};
use crate::services::Services;
use crate::step::Value;
use crate::workflow::{Compiled, Runtime, Workflow};

/// The context of runs started without one (its event group id is the run id).
fn default_context() -> Arc<WorkflowContext> {
    static DEFAULT: OnceLock<Arc<WorkflowContext>> = OnceLock::new();
    DEFAULT.get_or_init(Default::default).clone()
}

/// How to start a run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The transaction id; `auto-<uuid>` when absent. Running an unfinished id resumes it.
    pub transaction_id: Option<String>,
    /// The shared context; without one (or with an empty event group id) the event group id is
    /// the run id, unique per run and kept across resumes.
    pub context: Option<WorkflowContext>,
}

impl RunOptions {
    /// Options with this transaction id.
    pub fn transaction_id(id: impl Into<String>) -> Self {
        RunOptions {
            transaction_id: Some(id.into()),
            context: None,
        }
    }
    /// The same options with this shared context.
    pub fn with_context(mut self, context: WorkflowContext) -> Self {
        self.context = Some(context);
        self
    }
}

/// A snapshot of a run: its state and errors, and its typed result once done.
pub struct Run<Out> {
    execution: Execution,
    compiled: Arc<Compiled>,
    result: Resolver<Out>,
}

impl<Out> std::fmt::Debug for Run<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.execution.fmt(f)
    }
}

impl<Out: Clone + Send + Sync + 'static> Run<Out> {
    /// The transaction state.
    pub fn state(&self) -> TransactionState {
        self.execution.state
    }
    /// The transaction id.
    pub fn transaction_id(&self) -> &str {
        self.execution.transaction_id()
    }
    /// The errors recorded on the run.
    pub fn errors(&self) -> &[TransactionError] {
        &self.execution.errors
    }
    /// The orchestrator's snapshot (step states, saved responses).
    pub fn execution(&self) -> &Execution {
        &self.execution
    }
    /// The typed result: `Ok` when the run is done, else a [`RunError`] with the state and errors.
    pub fn result(&self) -> Result<Out, RunError> {
        result_of(&self.execution, &self.compiled, &self.result)
    }
}

/// The typed result of an execution of `compiled`.
pub(crate) fn result_of<Out>(
    execution: &Execution,
    compiled: &Compiled,
    result: &Resolver<Out>,
) -> Result<Out, RunError> {
    match execution.state {
        TransactionState::Done => {
            let env = Env {
                source: EnvSource::Execution(execution),
                compiled,
                workflow: &compiled.name,
            };
            result(&env)?.ok_or_else(|| RunError::NoResult {
                workflow: compiled.name.to_string(),
                transaction_id: execution.transaction_id().to_string(),
            })
        }
        TransactionState::Reverted | TransactionState::Failed => Err(RunError::Failed {
            workflow: compiled.name.to_string(),
            transaction_id: execution.transaction_id().to_string(),
            state: execution.state,
            errors: execution.errors.clone(),
        }),
        state => Err(RunError::NotFinished {
            workflow: compiled.name.to_string(),
            transaction_id: execution.transaction_id().to_string(),
            state,
        }),
    }
}

impl AppInner {
    /// Starts a child workflow (nested or fan-out) with the parent's context; returns when it
    /// finishes or waits.
    pub(crate) async fn start_child<In: Value, Out>(
        &self,
        child: &Workflow<In, Out>,
        transaction_id: String,
        input: In,
        context: Arc<WorkflowContext>,
    ) -> Result<Execution, Error> {
        let payload = Data::new(Payload {
            input: Data::new(input),
            context,
        });
        Ok(self
            .engine
            .run(
                child.name(),
                gorgon_orchestration::RunOptions {
                    transaction_id: Some(transaction_id),
                    payload: Some(payload),
                },
            )
            .await?)
    }

    /// Runs a child workflow to its result.
    pub(crate) async fn run_child<In: Value, Out>(
        &self,
        child: &Workflow<In, Out>,
        transaction_id: String,
        input: In,
        context: Arc<WorkflowContext>,
    ) -> Result<Out, RunError> {
        let execution = self
            .start_child(child, transaction_id, input, context)
            .await?;
        result_of(&execution, &child.compiled, &child.result)
    }

    /// Waits until a run has finished; see [`App::wait_until_finished`].
    pub(crate) async fn wait_finished(
        &self,
        workflow: &str,
        transaction_id: &str,
    ) -> Result<Execution, Error> {
        let mut events = self.engine.subscribe();
        loop {
            let execution = self.engine.get(workflow, transaction_id).await?;
            if execution.state.is_finished() {
                return Ok(execution);
            }
            loop {
                match events.recv().await {
                    Ok(event)
                        if event.kind == EventKind::Finish
                            && &*event.key.id == transaction_id
                            && &*event.key.workflow == workflow =>
                    {
                        break;
                    }
                    Ok(_) => {}
                    // Missed events: look at the run again.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Ok(self.engine.get(workflow, transaction_id).await?);
                    }
                }
            }
        }
    }

    /// Cancels (compensates) a child run; a child that never started has nothing to undo.
    pub(crate) async fn cancel_child(
        &self,
        workflow: &str,
        transaction_id: &str,
    ) -> Result<(), StepFailure> {
        match self.engine.cancel(workflow, transaction_id).await {
            Ok(execution) if execution.state == TransactionState::Reverted => Ok(()),
            Ok(execution) => Err(StepFailure::new(format!(
                "compensating {workflow} {transaction_id} ended {}",
                execution.state
            ))),
            Err(gorgon_orchestration::Error::TransactionNotFound { .. }) => Ok(()),
            Err(error) => Err(StepFailure::new(error.to_string())),
        }
    }
}

/// The application: the orchestrator [`Engine`], the [`Services`] registry, and the workflows
/// registered on it. A cheap `Clone` handle.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

pub(crate) struct AppInner {
    pub(crate) engine: Engine,
    services: Arc<Services>,
    workflows: RwLock<HashMap<Arc<str>, Arc<Compiled>>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("services", &self.inner.services)
            .field("workflows", &self.inner.workflows.read().len())
            .finish()
    }
}

impl App {
    /// An app on the in-memory engine. Call it inside a tokio runtime.
    pub fn new(services: Services) -> Self {
        Self::with_engine(Engine::in_memory(), services)
    }

    /// An app on an engine built from these options (a durable store, a manual clock).
    pub fn with_options(options: EngineOptions, services: Services) -> Self {
        Self::with_engine(options.build(), services)
    }

    /// An app on this engine.
    pub fn with_engine(engine: Engine, services: Services) -> Self {
        App {
            inner: Arc::new(AppInner {
                engine,
                services: Arc::new(services),
                workflows: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The service registry.
    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    /// Registers a workflow. Fails naming the type when a step declared (with
    /// [`Step::requires`](crate::Step::requires)) a service the registry lacks, and when another
    /// workflow with the same name but a different flow is registered.
    pub fn register<In, Out>(&self, workflow: &Workflow<In, Out>) -> Result<(), Error> {
        self.register_compiled(&workflow.compiled)
    }

    fn register_compiled(&self, compiled: &Arc<Compiled>) -> Result<(), Error> {
        for child in &compiled.children {
            self.register_compiled(child)?;
        }
        for node in &compiled.nodes {
            if let Some(missing) = node
                .requires
                .iter()
                .find(|r| !self.inner.services.contains_id(r.type_id))
            {
                return Err(Error::MissingService {
                    type_name: missing.type_name,
                    workflow: compiled.name.to_string(),
                    step: node.name.to_string(),
                });
            }
        }
        self.inner.engine.register_arc(
            compiled.flow.clone(),
            Arc::new(Runtime {
                compiled: compiled.clone(),
                services: self.inner.services.clone(),
                app: Arc::downgrade(&self.inner),
            }),
        )?;
        self.inner
            .workflows
            .write()
            .insert(compiled.name.clone(), compiled.clone());
        Ok(())
    }

    /// The workflow must be registered, with this flow (not, say, a version without its hooks).
    fn check_registered<In, Out>(&self, workflow: &Workflow<In, Out>) -> Result<(), Error> {
        let workflows = self.inner.workflows.read();
        match workflows.get(workflow.name()) {
            Some(registered)
                if Arc::ptr_eq(registered, &workflow.compiled)
                    || registered.flow.definition() == workflow.compiled.flow.definition() =>
            {
                Ok(())
            }
            _ => Err(Error::NotRegistered {
                workflow: workflow.name().to_string(),
            }),
        }
    }

    fn snapshot<In, Out>(workflow: &Workflow<In, Out>, execution: Execution) -> Run<Out> {
        Run {
            execution,
            compiled: workflow.compiled.clone(),
            result: workflow.result.clone(),
        }
    }

    /// Runs a workflow to its end and returns its result, or a [`RunError`] with the final state
    /// and the errors (a run that waits for an async step is [`RunError::NotFinished`]).
    pub async fn run<In: Value, Out: Clone + Send + Sync + 'static>(
        &self,
        workflow: &Workflow<In, Out>,
        input: In,
    ) -> Result<Out, RunError> {
        self.start(workflow, input, RunOptions::default())
            .await?
            .result()
    }

    /// Starts (or, for an unfinished transaction id, resumes) a run and returns its snapshot once
    /// it finishes or waits.
    pub async fn start<In: Value, Out: Clone + Send + Sync + 'static>(
        &self,
        workflow: &Workflow<In, Out>,
        input: In,
        options: RunOptions,
    ) -> Result<Run<Out>, Error> {
        self.check_registered(workflow)?;
        let context = match options.context {
            Some(context) => Arc::new(context),
            None => default_context(),
        };
        let payload = Data::new(Payload {
            input: Data::new(input),
            context,
        });
        let execution = self
            .inner
            .engine
            .run(
                workflow.name(),
                gorgon_orchestration::RunOptions {
                    transaction_id: options.transaction_id,
                    payload: Some(payload),
                },
            )
            .await?;
        Ok(Self::snapshot(workflow, execution))
    }

    /// Resumes an unfinished run (a retry after `auto_retry(false)`, a run loaded from a store).
    pub async fn resume<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        transaction_id: &str,
    ) -> Result<Run<Out>, Error> {
        self.check_registered(workflow)?;
        let execution = self
            .inner
            .engine
            .resume(workflow.name(), transaction_id)
            .await?;
        Ok(Self::snapshot(workflow, execution))
    }

    /// The current snapshot of a run.
    pub async fn get<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        transaction_id: &str,
    ) -> Result<Run<Out>, Error> {
        self.check_registered(workflow)?;
        let execution = self
            .inner
            .engine
            .get(workflow.name(), transaction_id)
            .await?;
        Ok(Self::snapshot(workflow, execution))
    }

    fn check_key<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        key: &IdempotencyKey,
    ) -> Result<(), Error> {
        self.check_registered(workflow)?;
        if &*key.workflow != workflow.name() {
            return Err(Error::KeyMismatch {
                key: key.to_string(),
                workflow: workflow.name().to_string(),
            });
        }
        Ok(())
    }

    /// Completes a waiting (asynchronous) step with its output (of the step's output type), then
    /// advances the run. For a compensation key, `output` is ignored.
    pub async fn set_step_success<In, Out, T: Send + 'static>(
        &self,
        workflow: &Workflow<In, Out>,
        key: &IdempotencyKey,
        output: T,
    ) -> Result<Run<Out>, Error> {
        self.check_key(workflow, key)?;
        let compiled = &workflow.compiled;
        let response = match key.handler {
            HandlerType::Compensate => None,
            HandlerType::Invoke => {
                let node = compiled
                    .flow
                    .step_index(&key.action)
                    .and_then(|i| compiled.by_index.get(i))
                    .and_then(|&n| compiled.nodes.get(n))
                    .ok_or_else(|| gorgon_orchestration::Error::UnknownStep {
                        workflow: compiled.name.to_string(),
                        action: key.action.to_string(),
                    })?;
                let data = node
                    .node
                    .external_success(Box::new(output))
                    .ok_or_else(|| Error::WrongOutputType {
                        workflow: compiled.name.to_string(),
                        step: key.action.to_string(),
                        expected: node.node.output_type(),
                    })?;
                Some(data)
            }
        };
        let execution = self.inner.engine.set_step_success(key, response).await?;
        Ok(Self::snapshot(workflow, execution))
    }

    /// Fails a waiting (asynchronous) step: retried while its retries allow, unless the failure
    /// is permanent; then advances the run.
    pub async fn set_step_failure<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        key: &IdempotencyKey,
        failure: StepFailure,
    ) -> Result<Run<Out>, Error> {
        self.check_key(workflow, key)?;
        let permanent = failure.permanent;
        let execution = self
            .inner
            .engine
            .set_step_failure(key, failure.error, permanent)
            .await?;
        Ok(Self::snapshot(workflow, execution))
    }

    /// Cancels a run, running or finished: what was done is compensated.
    pub async fn cancel<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        transaction_id: &str,
    ) -> Result<Run<Out>, Error> {
        self.check_registered(workflow)?;
        let execution = self
            .inner
            .engine
            .cancel(workflow.name(), transaction_id)
            .await?;
        Ok(Self::snapshot(workflow, execution))
    }

    /// Waits until a run has finished (done, reverted or failed) and returns its snapshot: for
    /// runs that go on in the background (async steps, retry intervals). A run waiting for
    /// `set_step_success` waits as long; bound it with `tokio::time::timeout`.
    pub async fn wait_until_finished<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        transaction_id: &str,
    ) -> Result<Run<Out>, Error> {
        self.check_registered(workflow)?;
        let execution = self
            .inner
            .wait_finished(workflow.name(), transaction_id)
            .await?;
        Ok(Self::snapshot(workflow, execution))
    }

    /// Subscribes to the events of every run on this app (filter on `event.key`).
    pub fn subscribe(&self) -> broadcast::Receiver<TransactionEvent> {
        self.inner.engine.subscribe()
    }
}
