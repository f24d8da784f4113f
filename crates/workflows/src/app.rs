//! [`App`]: the engine, the service registry and the registered workflows; running them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use gorgon_event_bus::{EventBus, EventGroupId};
use gorgon_orchestration::{
    Data, Engine, EngineOptions, EventKind, Execution, HandlerType, IdempotencyKey,
    TransactionError, TransactionEvent, TransactionState,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

use crate::compose::{Env, EnvSource, Resolver};
use crate::context::{Payload, WorkflowContext};
use crate::error::{Error, RunError, StepFailure};
use crate::services::Services;
use crate::step::Value;
use crate::workflow::{Compiled, Runtime, Workflow};

/// The ids of apps, from 1 (0 stands for none in [`Compiled::checked_on`]).
static APP_IDS: AtomicU64 = AtomicU64::new(1);

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
    /// Leave the run's event group staged when the run finishes, neither released nor
    /// discarded: the caller settles it with [`App::release_events`] / [`App::discard_events`]
    /// (Medusa's `preventReleaseEvents`, e.g. for a run inside a larger unit of work). Nested
    /// runs always hold theirs for their parent.
    pub hold_events: bool,
}

impl RunOptions {
    /// Options with this transaction id.
    pub fn transaction_id(id: impl Into<String>) -> Self {
        RunOptions {
            transaction_id: Some(id.into()),
            ..RunOptions::default()
        }
    }
    /// The same options with this shared context.
    pub fn with_context(mut self, context: WorkflowContext) -> Self {
        self.context = Some(context);
        self
    }
    /// The same options, holding the run's events for the caller; see
    /// [`hold_events`](Self::hold_events).
    pub fn hold_events(mut self) -> Self {
        self.hold_events = true;
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
            // The parent's outcome decides the group's fate.
            hold_events: true,
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

    /// Whether the app has an event bus. Without one (the flag is never set) no lock is taken:
    /// every run ends here, on every core.
    fn has_event_bus(&self) -> bool {
        self.bus_set.load(Ordering::Acquire) && self.event_bus.read().is_some()
    }

    /// The event bus, when the app has one.
    pub(crate) fn event_bus(&self) -> Option<Arc<dyn EventBus>> {
        self.event_bus.read().clone()
    }

    /// Releases or discards a whole event group on the app's bus.
    async fn settle_group(&self, settle: Settle, group_id: &str) -> Result<usize, Error> {
        let operation = settle.operation();
        let Some(bus) = self.event_bus() else {
            return Err(Error::NoEventBus {
                operation,
                group_id: group_id.to_string(),
            });
        };
        let bus_error = |source| Error::EventBus {
            operation,
            group_id: group_id.to_string(),
            source,
        };
        let id = EventGroupId::new(group_id).map_err(bus_error)?;
        match settle {
            Settle::Release => bus.release_group(&id).await,
            Settle::Discard => bus.clear_group(&id, None).await,
        }
        .map_err(bus_error)
    }

    /// Settles the event group of a run that finished in `state`: done releases it (publishes),
    /// reverted or failed discards it. Runs that hold their events (nested runs, `hold_events`),
    /// unfinished runs, workflows not registered through this app, and apps without a bus are
    /// left alone. Idempotent: a settled group is empty, so settling again does nothing.
    ///
    /// A failing bus is logged, not returned: the run's outcome stands, and the staged events
    /// stay in the bus (Redis: until their TTL) for [`App::release_events`].
    pub(crate) async fn settle_events(&self, execution: &Execution, state: TransactionState) {
        if state.is_finished() && self.has_event_bus() {
            // The watcher then skips this end (a late duplicate could publish what a cancel
            // right after it staged).
            self.settled
                .lock()
                .insert(Arc::from(execution.run_id()), state);
        }
        self.settle_run(
            execution.workflow(),
            execution.transaction_id(),
            execution.run_id(),
            execution.payload(),
            state,
        )
        .await;
    }

    /// [`settle_events`](Self::settle_events) from the parts of a run.
    async fn settle_run(
        &self,
        workflow: &str,
        transaction_id: &str,
        run_id: &str,
        payload: &Data,
        state: TransactionState,
    ) {
        if !state.is_finished() || !self.has_event_bus() {
            return;
        }
        if !self.workflows.read().contains_key(workflow) {
            return;
        }
        let decoded = Payload::with(payload, workflow, |p| {
            (p.hold_events, p.context.event_group_id.clone())
        });
        let (hold, group_id) = match decoded {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%workflow, transaction_id, %error,
                    "cannot read the run's event group; its events stay staged");
                return;
            }
        };
        if hold {
            return;
        }
        let group_id = if group_id.is_empty() {
            run_id.to_string()
        } else {
            group_id
        };
        let settle = if state == TransactionState::Done {
            Settle::Release
        } else {
            Settle::Discard
        };
        let operation = settle.operation();
        match self.settle_group(settle, &group_id).await {
            Ok(count) => tracing::debug!(%workflow, transaction_id,
                %group_id, count, operation, "settled the run's event group"),
            Err(error) => tracing::error!(%workflow, transaction_id,
                %group_id, %error, operation, "settling the run's event group failed; its events stay staged"),
        }
    }

    /// Settles the group of a run that finished in the background (a retry timer, an async
    /// child completing its parent): watches the engine's `Finish` events.
    fn watch_finished_runs(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.watching.store(false, Ordering::Release);
            tracing::warn!(
                "App::with_event_bus outside a tokio runtime: runs finishing in the background \
                 keep their events staged until App::release_events"
            );
            return;
        };
        let mut events = self.engine.subscribe();
        let app: Weak<AppInner> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                match events.recv().await {
                    // Only this engine's runs: another process (an event relayed to us, with
                    // its origin) settles the runs it finished itself.
                    Ok(event) if event.kind == EventKind::Finish && event.origin.is_none() => {
                        let Some(app) = app.upgrade() else { return };
                        tokio::spawn(async move {
                            if !app.workflows.read().contains_key(&*event.key.workflow) {
                                return;
                            }
                            // The header (payload, run id) straight from the store: no replay,
                            // and the finished run is not brought back into the engine's memory.
                            match app.engine.store().load(&event.key).await {
                                Ok(Some(stored)) => {
                                    let header = &stored.header;
                                    if app.settled.lock().take(&header.run_id, event.state) {
                                        return; // the call that finished the run settled it
                                    }
                                    app.settle_run(
                                        &header.key.workflow,
                                        &header.key.id,
                                        &header.run_id,
                                        &header.payload,
                                        event.state,
                                    )
                                    .await;
                                }
                                Ok(None) => tracing::warn!(key = %event.key,
                                    "a finished run is not in the store; its events stay staged"),
                                Err(error) => tracing::error!(key = %event.key, %error,
                                    "cannot load a finished run to settle its events"),
                            }
                        });
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => tracing::warn!(
                        missed,
                        "missed transaction events: runs that finished in the background \
                         meanwhile keep their events staged until App::release_events"
                    ),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

/// What the end of a run does to its event group.
#[derive(Clone, Copy, Debug)]
enum Settle {
    /// Publish everything staged (the run is done).
    Release,
    /// Drop everything staged (the run was rolled back).
    Discard,
}

impl Settle {
    fn operation(self) -> &'static str {
        match self {
            Settle::Release => "release_events",
            Settle::Discard => "discard_events",
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
    /// Unique per app (never 0), for [`Compiled::checked_on`].
    id: u64,
    pub(crate) engine: Engine,
    services: Arc<Services>,
    workflows: RwLock<HashMap<Arc<str>, Arc<Compiled>>>,
    event_bus: RwLock<Option<Arc<dyn EventBus>>>,
    /// Whether the task settling background-finished runs is running.
    watching: AtomicBool,
    /// Whether a bus was ever set (it is replaced, never removed).
    bus_set: AtomicBool,
    /// Run ends already settled by the call that caused them.
    settled: Mutex<SettledRuns>,
}

/// The last run ends (run id, final state) settled by an app call, so the background watcher
/// does not settle them again. Bounded: the oldest are forgotten (the watcher then settles
/// again, which is a no-op unless something was staged since).
#[derive(Default)]
struct SettledRuns {
    set: HashSet<(Arc<str>, TransactionState)>,
    order: VecDeque<(Arc<str>, TransactionState)>,
}

impl SettledRuns {
    const CAPACITY: usize = 4096;

    fn insert(&mut self, run_id: Arc<str>, state: TransactionState) {
        if !self.set.insert((run_id.clone(), state)) {
            return;
        }
        self.order.push_back((run_id, state));
        if self.order.len() > Self::CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
    }

    /// Whether this end was settled by a call; forgets it (its entry in `order` goes when it
    /// is the oldest, removing nothing then).
    fn take(&mut self, run_id: &Arc<str>, state: TransactionState) -> bool {
        self.set.remove(&(run_id.clone(), state))
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("services", &self.inner.services)
            .field("workflows", &self.inner.workflows.read().len())
            .field("event_bus", &self.inner.event_bus.read().is_some())
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
                id: APP_IDS.fetch_add(1, Ordering::Relaxed),
                engine,
                services: Arc::new(services),
                workflows: RwLock::new(HashMap::new()),
                event_bus: RwLock::new(None),
                watching: AtomicBool::new(false),
                bus_set: AtomicBool::new(false),
                settled: Mutex::new(SettledRuns::default()),
            }),
        }
    }

    /// The same app, emitting through `bus`: steps' [`StepContext::emit`](crate::StepContext::emit)
    /// stage events in their run's event group, and the run's end settles the group (done:
    /// released, reverted or failed: discarded). Call it inside a tokio runtime, before running
    /// workflows; calling it again replaces the bus (groups staged in the old one stay there).
    pub fn with_event_bus(self, bus: Arc<dyn EventBus>) -> Self {
        *self.inner.event_bus.write() = Some(bus);
        self.inner.bus_set.store(true, Ordering::Release);
        self.inner.watch_finished_runs();
        self
    }

    /// The app's event bus, if it was given one.
    pub fn event_bus(&self) -> Option<Arc<dyn EventBus>> {
        self.inner.event_bus()
    }

    /// Publishes the events staged in an event group: for runs started with
    /// [`RunOptions::hold_events`], and to release a group left staged (a bus that failed at the
    /// run's end; a run whose process died, with the Redis bus). Returns how many were published;
    /// an unknown or settled group gives `Ok(0)`.
    pub async fn release_events(&self, group_id: &str) -> Result<usize, Error> {
        self.inner.settle_group(Settle::Release, group_id).await
    }

    /// Drops the events staged in an event group without publishing them; returns how many.
    pub async fn discard_events(&self, group_id: &str) -> Result<usize, Error> {
        self.inner.settle_group(Settle::Discard, group_id).await
    }

    /// Settles the run's event group if `execution` finished, and wraps it.
    async fn settled<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        execution: Execution,
    ) -> Run<Out> {
        // Without a bus there is nothing to settle: no settling future is even built.
        if self.inner.has_event_bus() {
            self.inner.settle_events(&execution, execution.state).await;
        }
        Self::snapshot(workflow, execution)
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
            Arc::new(Runtime::new(
                compiled.clone(),
                self.inner.services.clone(),
                Arc::downgrade(&self.inner),
            )),
        )?;
        self.inner
            .workflows
            .write()
            .insert(compiled.name.clone(), compiled.clone());
        Ok(())
    }

    /// The workflow must be registered, with this flow (not, say, a version without its hooks).
    ///
    /// A workflow that passed once passes for good (a registered name keeps its flow: there is
    /// no unregistering, and registering another flow under it fails), so the app that last
    /// passed it is remembered on the workflow and the next check on that app is one load.
    fn check_registered<In, Out>(&self, workflow: &Workflow<In, Out>) -> Result<(), Error> {
        let compiled = &workflow.compiled;
        if compiled.checked_on.load(Ordering::Relaxed) == self.inner.id {
            return Ok(());
        }
        let workflows = self.inner.workflows.read();
        match workflows.get(workflow.name()) {
            Some(registered)
                if Arc::ptr_eq(registered, compiled)
                    || registered.flow.definition() == compiled.flow.definition() =>
            {
                compiled.checked_on.store(self.inner.id, Ordering::Relaxed);
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
        let mut execution = self.execute(workflow, input, RunOptions::default()).await?;
        if matches!(
            execution.state,
            TransactionState::Reverted | TransactionState::Failed
        ) {
            // The execution is ours: its errors move into the error instead of being cloned.
            return Err(RunError::Failed {
                workflow: workflow.compiled.name.to_string(),
                transaction_id: execution.transaction_id().to_string(),
                state: execution.state,
                errors: std::mem::take(&mut execution.errors),
            });
        }
        result_of(&execution, &workflow.compiled, &workflow.result)
    }

    /// Starts (or, for an unfinished transaction id, resumes) a run and returns its snapshot once
    /// it finishes or waits.
    pub async fn start<In: Value, Out: Clone + Send + Sync + 'static>(
        &self,
        workflow: &Workflow<In, Out>,
        input: In,
        options: RunOptions,
    ) -> Result<Run<Out>, Error> {
        let execution = self.execute(workflow, input, options).await?;
        Ok(Self::snapshot(workflow, execution))
    }

    /// [`start`](Self::start) up to the settled execution, without the snapshot's handles.
    async fn execute<In: Value, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        input: In,
        options: RunOptions,
    ) -> Result<Execution, Error> {
        self.check_registered(workflow)?;
        let context = match options.context {
            Some(context) => Arc::new(context),
            None => default_context(),
        };
        let payload = Data::new(Payload {
            input: Data::new(input),
            context,
            hold_events: options.hold_events,
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
        // Without a bus there is nothing to settle: no settling future is even built.
        if self.inner.has_event_bus() {
            self.inner.settle_events(&execution, execution.state).await;
        }
        Ok(execution)
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
        Ok(self.settled(workflow, execution).await)
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
        Ok(self.settled(workflow, execution).await)
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
        Ok(self.settled(workflow, execution).await)
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
        Ok(self.settled(workflow, execution).await)
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
        Ok(self.settled(workflow, execution).await)
    }

    /// Subscribes to the events of every run on this app (filter on `event.key`), and, when
    /// the engine has an [`EventRelay`](gorgon_orchestration::EventRelay), of the runs of the
    /// other engines on that relay (`event.origin` names their engine; at most once, best effort).
    pub fn subscribe(&self) -> broadcast::Receiver<TransactionEvent> {
        self.inner.engine.subscribe()
    }
}
