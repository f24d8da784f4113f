//! [`App`]: the engine, the service registry and the registered workflows; running them.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use futures::future::BoxFuture;
use gorgon_event_bus::{EventBus, EventGroupId};
use gorgon_orchestration::{
    Data, Engine, EngineOptions, EventKind, Execution, ExecutionDetail, HandlerType,
    IdempotencyKey, TransactionError, TransactionEvent, TransactionFilter, TransactionKey,
    TransactionPage, TransactionState,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

use crate::context::{Payload, StepEnv, WorkflowContext};
use crate::error::{Error, StepFailure};
use crate::hook::bound_node;
use crate::node::{Compiled, Host, NodeDef, Resolver, Runtime};
use crate::services::Services;
use crate::step::Value;
use crate::workflow::{Wait, Workflow, result_of, waits};

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
    /// Whether a finished run of this transaction id answers with its stored result instead of
    /// running again; `None`: as the workflow's [`idempotent`](gorgon_orchestration::WorkflowOptions::idempotent)
    /// option says. An idempotent run is kept until its workflow's retention ends.
    ///
    /// [`WorkflowOptions::idempotent`]: gorgon_orchestration::WorkflowOptions::idempotent
    pub idempotent: Option<bool>,
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
    /// The same options with this event group id (Medusa's `context.eventGroupId`): runs
    /// sharing one stage their events together, settled by the first to finish.
    pub fn event_group(mut self, group_id: impl Into<String>) -> Self {
        self.context
            .get_or_insert_with(Default::default)
            .event_group_id = group_id.into();
        self
    }
    /// The same options, idempotent or not for this run; see [`idempotent`](Self::idempotent).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }
}

/// A run about to start, as [`App::run`] returns it: set its options, then `.await` it for
/// the workflow's result (Medusa's `workflow(container).run({ input, transactionId, context })`).
///
/// Awaiting it runs the workflow and waits through everything the engine drives by itself:
/// retry intervals, timeouts, background (`background_execution`) steps, nested workflows. It
/// returns [`Error::NotFinished`] only when the run waits for the outside: an async step for
/// [`App::set_step_success`] / `set_step_failure`, or a step for [`App::resume`]. A run that
/// waits on a long retry interval keeps the caller waiting as long: bound it with
/// `tokio::time::timeout` (the run goes on in the background if the wait is dropped).
///
/// ```
/// # use gorgon_workflows::{App, Services, Step, StepContext, StepResponse, StepResult, Workflow};
/// # async fn double(n: u32, _: StepContext) -> StepResult<u32> { Ok(StepResponse::new(n * 2)) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let double = Step::new("double", double);
/// # let wf = Workflow::define("doubling", |b, n| b.step(&double, n))?;
/// # let app = App::new(Services::new());
/// # app.register(&wf)?;
/// assert_eq!(app.run(&wf, 21).await?, 42);
/// let again = app.run(&wf, 21).transaction_id("order-7").event_group("cart-7").await?;
/// assert_eq!(again, 42);
/// # Ok::<_, anyhow::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "a run does nothing until it is awaited"]
pub struct RunBuilder<'a, In, Out> {
    app: &'a App,
    workflow: &'a Workflow<In, Out>,
    input: In,
    options: RunOptions,
}

impl<In, Out> std::fmt::Debug for RunBuilder<'_, In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunBuilder")
            .field("workflow", &self.workflow.name())
            .field("options", &self.options)
            .finish()
    }
}

impl<'a, In: Value, Out: Clone + Send + Sync + 'static> RunBuilder<'a, In, Out> {
    /// Runs under this transaction id (`auto-<uuid>` without one); running an unfinished id
    /// resumes it.
    pub fn transaction_id(mut self, id: impl Into<String>) -> Self {
        self.options.transaction_id = Some(id.into());
        self
    }
    /// Runs with this shared context (event group id, request metadata).
    pub fn context(mut self, context: WorkflowContext) -> Self {
        self.options.context = Some(context);
        self
    }
    /// Runs in this event group; see [`RunOptions::event_group`].
    pub fn event_group(mut self, group_id: impl Into<String>) -> Self {
        self.options = self.options.event_group(group_id);
        self
    }
    /// Leaves the run's event group to the caller; see [`RunOptions::hold_events`].
    pub fn hold_events(mut self) -> Self {
        self.options.hold_events = true;
        self
    }
    /// Idempotent or not for this run; see [`RunOptions::idempotent`].
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.options.idempotent = Some(idempotent);
        self
    }
    /// Replaces every option at once.
    pub fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }
    /// Runs as awaiting does, but returns the run's snapshot (state, steps, errors) instead of
    /// its result; a failed run is a snapshot too, not an error.
    pub async fn snapshot(self) -> Result<Run<Out>, Error> {
        let RunBuilder {
            app,
            workflow,
            input,
            options,
        } = self;
        let (execution, compiled) = app.run_to_end(workflow, input, options).await?;
        Ok(Run {
            execution,
            compiled: compiled.into_owned(),
            result: workflow.result.clone(),
        })
    }
}

impl<'a, In: Value, Out: Clone + Send + Sync + 'static> IntoFuture for RunBuilder<'a, In, Out> {
    type Output = Result<Out, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Out, Error>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let RunBuilder {
                app,
                workflow,
                input,
                options,
            } = self;
            let (mut execution, compiled) = app.run_to_end(workflow, input, options).await?;
            if matches!(
                execution.state,
                TransactionState::Reverted | TransactionState::Failed
            ) {
                // The execution is ours: its errors move into the error instead of being cloned.
                return Err(Error::Failed {
                    workflow: compiled.name.to_string(),
                    transaction_id: execution.transaction_id().to_string(),
                    state: execution.state,
                    errors: std::mem::take(&mut execution.errors),
                });
            }
            result_of(&execution, &compiled, &workflow.result)
        })
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
    /// The typed result: `Ok` when the run is done, else an [`Error`] with the state and errors
    /// ([`Error::Failed`], [`Error::NotFinished`], [`Error::NoResult`]).
    pub fn result(&self) -> Result<Out, Error> {
        result_of(&self.execution, &self.compiled, &self.result)
    }
}

impl AppInner {
    /// Waits until a run finishes or comes to wait for the outside (its own steps, or those of
    /// the workflows it nests).
    async fn wait_engine_driven(
        &self,
        compiled: &Arc<Compiled>,
        mut execution: Execution,
    ) -> Result<Execution, Error> {
        let workflow = compiled.name.clone();
        let id: Arc<str> = Arc::from(execution.transaction_id());
        // Subscribed before looking again, so that no change is missed in between.
        let mut events = self.engine.subscribe();
        loop {
            let keys = self.nested_keys(compiled, &id);
            execution = self.engine.get(&workflow, &id).await?;
            if execution.state.is_finished() || self.waits_outside(compiled, &execution).await? {
                return Ok(execution);
            }
            loop {
                match events.recv().await {
                    Ok(event) if keys.contains(&event.key) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Ok(self.engine.get(&workflow, &id).await?);
                    }
                }
            }
        }
    }

    /// The keys of a run and of the runs of the workflows it nests, recursively.
    fn nested_keys(&self, compiled: &Compiled, id: &Arc<str>) -> HashSet<TransactionKey> {
        let mut keys = HashSet::new();
        let mut pending = vec![(compiled.name.clone(), id.clone())];
        while let Some((name, id)) = pending.pop() {
            if let Some(compiled) = self.compiled_of(&name) {
                for node in compiled.nodes.iter().filter(|n| n.in_flow()) {
                    if let Some(child) = node.node.nested() {
                        pending.push((child, Arc::from(format!("{}-{id}", node.name))));
                    }
                }
            }
            keys.insert(TransactionKey::new(name, id));
        }
        keys
    }

    /// Whether an unfinished run waits for the outside: one of its steps does, or a workflow
    /// it nests does.
    fn waits_outside<'a>(
        &'a self,
        compiled: &'a Compiled,
        execution: &'a Execution,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            for wait in waits(execution) {
                let step = match wait {
                    Wait::Outside(_) => return Ok(true),
                    Wait::Nested(step) => step,
                };
                let child = compiled
                    .by_index
                    .get(step)
                    .and_then(|&n| compiled.nodes.get(n))
                    .and_then(|node| node.node.nested())
                    .and_then(|name| self.compiled_of(&name));
                let Some(child) = child else { continue };
                let action = &execution.flow().step(step).action;
                let id = format!("{action}-{}", execution.transaction_id());
                // A child not yet created, or finished (its parent is being completed), is
                // the engine's to move on.
                if let Ok(found) = self.engine.get(&child.name, &id).await
                    && !found.state.is_finished()
                    && self.waits_outside(&child, &found).await?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    /// Waits until a run has finished; see [`App::wait_until_finished`].
    async fn wait_finished(
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

    /// Whether the app has an event bus. Without one (the flag is never set) no lock is taken:
    /// every run ends here, on every core.
    fn has_event_bus(&self) -> bool {
        self.bus_set.load(Ordering::Acquire) && self.event_bus.read().is_some()
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
    async fn settle_events(&self, execution: &Execution, state: TransactionState) {
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

impl Host for AppInner {
    fn event_bus(&self) -> Option<Arc<dyn EventBus>> {
        self.event_bus.read().clone()
    }

    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn compiled_of(&self, name: &str) -> Option<Arc<Compiled>> {
        self.workflows.read().get(name).cloned()
    }

    fn wait_engine_driven<'a>(
        &'a self,
        compiled: &'a Arc<Compiled>,
        execution: Execution,
    ) -> BoxFuture<'a, Result<Execution, Error>> {
        Box::pin(AppInner::wait_engine_driven(self, compiled, execution))
    }

    fn wait_finished<'a>(
        &'a self,
        workflow: &'a str,
        transaction_id: &'a str,
    ) -> BoxFuture<'a, Result<Execution, Error>> {
        Box::pin(AppInner::wait_finished(self, workflow, transaction_id))
    }

    fn settle_events<'a>(
        &'a self,
        execution: &'a Execution,
        state: TransactionState,
    ) -> BoxFuture<'a, ()> {
        Box::pin(AppInner::settle_events(self, execution, state))
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
    /// Hook handlers bound on this app, by workflow and hook name: applied when the workflow
    /// is registered (alone or as another's child).
    hooks: Mutex<HashMap<HookKey, NodeDef>>,
}

/// A hook of a workflow: the workflow's name and the hook's.
type HookKey = (Arc<str>, Cow<'static, str>);

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
    /// An app on the in-memory engine (for development and tests; give a durable store with
    /// [`with_options`](Self::with_options)). Call it inside a tokio runtime.
    ///
    /// What the in-memory store keeps of finished runs: an idempotent workflow's runs and runs
    /// of a workflow with a retention time are kept until that retention ends (for good when
    /// idempotent without one), so a later start of the same transaction id returns the stored
    /// result; of the other runs, which nothing asks for again, the last 256 are kept
    /// ([`MemoryStore`](gorgon_orchestration::MemoryStore)), bounding memory.
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
                hooks: Mutex::new(HashMap::new()),
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

    /// The snapshot of a run of `workflow` after `operation` on it (run only once the workflow
    /// is found registered here), its event group settled if the operation finished it.
    async fn settled_after<In, Out, E>(
        &self,
        workflow: &Workflow<In, Out>,
        operation: impl Future<Output = Result<Execution, E>>,
    ) -> Result<Run<Out>, Error>
    where
        Error: From<E>,
    {
        let compiled = self.compiled_for(workflow)?;
        let execution = operation.await?;
        Ok(self.settled(workflow, compiled, execution).await)
    }

    /// Settles the run's event group if `execution` finished, and wraps it.
    async fn settled<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        compiled: Cow<'_, Arc<Compiled>>,
        execution: Execution,
    ) -> Run<Out> {
        // Without a bus there is nothing to settle: no settling future is even built.
        if self.inner.has_event_bus() {
            self.inner.settle_events(&execution, execution.state).await;
        }
        Self::snapshot(workflow, compiled, execution)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The service registry.
    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    /// Binds `handler` to `hook`, declared by `workflow` (Medusa's
    /// `createProductsWorkflow.hooks.productsCreated(handler, compensation)`): on this app,
    /// every run of the workflow runs the handler where the hook is declared, under the hook's
    /// name, with the handler's options and compensation, whether the workflow runs alone or
    /// nested in another. Bind hooks before registering the workflow (or a workflow that
    /// nests it): the hook's step is part of the registered flow.
    ///
    /// ```
    /// use gorgon_workflows::{App, Hook, Services, Step, StepResponse, StepResult, Workflow};
    /// async fn create(name: String) -> StepResult<String> { Ok(StepResponse::new(name)) }
    /// async fn announce(name: String) -> StepResult<String> {
    ///     Ok(StepResponse::new(format!("announced {name}")))
    /// }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// // The workflow declares the hook...
    /// let products_created: Hook<String, String> = Hook::new("products-created");
    /// let create = Step::new("create", create);
    /// let create_products = Workflow::define("create-products", |b, name| {
    ///     let product = b.step(&create, name);
    ///     b.hook(&products_created, product)
    /// })?;
    /// // ...the application binds its handler, then registers.
    /// let app = App::new(Services::new());
    /// app.bind_hook(&create_products, &products_created, &Step::new("announce", announce))?;
    /// app.register(&create_products)?;
    /// let announced = app.run(&create_products, "tee".to_string()).await?;
    /// assert_eq!(announced.as_deref(), Some("announced tee"));
    /// # Ok::<_, anyhow::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// Errors: [`Error::UnknownHook`] when the workflow declares no such hook,
    /// [`Error::HookType`] when it declares it with other types, [`Error::HookAlreadyBound`]
    /// for a second handler, [`Error::HookAfterRegistration`] once the workflow is registered.
    pub fn bind_hook<In, Out, T, R, C>(
        &self,
        workflow: &Workflow<In, Out>,
        hook: &crate::Hook<T, R>,
        handler: &crate::Step<T, R, C>,
    ) -> Result<(), Error>
    where
        T: Send + 'static,
        R: Value,
        C: Value,
    {
        let compiled = &workflow.compiled;
        if self.inner.workflows.read().contains_key(&compiled.name) {
            return Err(Error::HookAfterRegistration {
                workflow: compiled.name.to_string(),
                hook: hook.name().to_string(),
            });
        }
        let (_, node) = bound_node(compiled, hook, handler)?;
        let mut hooks = self.inner.hooks.lock();
        let key = (compiled.name.clone(), node.name.clone());
        if hooks.contains_key(&key) {
            return Err(Error::HookAlreadyBound {
                workflow: compiled.name.to_string(),
                hook: hook.name().to_string(),
            });
        }
        hooks.insert(key, node);
        Ok(())
    }

    /// Registers a workflow, with the workflows it nests, and the hook handlers bound on this
    /// app ([`bind_hook`](Self::bind_hook)). Fails naming the type when a step declared (with
    /// [`Step::requires`](crate::Step::requires) or a [`Service`](crate::Service) parameter) a
    /// service the registry lacks, and when another workflow with the same name but a different
    /// flow is registered.
    pub fn register<In, Out>(&self, workflow: &Workflow<In, Out>) -> Result<(), Error> {
        self.register_compiled(&workflow.compiled).map(drop)
    }

    /// Registers `compiled` (with its hooks bound) and returns what was registered.
    fn register_compiled(&self, compiled: &Arc<Compiled>) -> Result<Arc<Compiled>, Error> {
        for child in &compiled.children {
            self.register_compiled(child)?;
        }
        let bound = self.with_bound_hooks(compiled)?;
        for node in bound.nodes.iter().filter(|n| n.in_flow()) {
            if let Some(missing) = node
                .requires
                .iter()
                .find(|r| !self.inner.services.contains_id(r.type_id))
            {
                return Err(Error::MissingService {
                    type_name: missing.type_name,
                    workflow: bound.name.to_string(),
                    step: node.name.to_string(),
                });
            }
        }
        if let Some(registered) = self.inner.compiled_of(&bound.name)
            && registered.flow.definition() == bound.flow.definition()
            && registered.flow.options() == bound.flow.options()
        {
            // The same workflow again (a shared child, a second register): nothing changes.
            return Ok(registered);
        }
        let host: Weak<dyn Host> = Arc::<AppInner>::downgrade(&self.inner);
        let env = Arc::new(StepEnv {
            services: self.inner.services.clone(),
            host: host.clone(),
        });
        self.inner.engine.register_arc(
            bound.flow.clone(),
            Arc::new(Runtime {
                compiled: bound.clone(),
                host,
                env,
            }),
        )?;
        self.inner
            .workflows
            .write()
            .insert(bound.name.clone(), bound.clone());
        Ok(bound)
    }

    /// `compiled` with the hook handlers bound on this app (itself when none is).
    fn with_bound_hooks(&self, compiled: &Arc<Compiled>) -> Result<Arc<Compiled>, Error> {
        let hooks = self.inner.hooks.lock();
        let mut nodes: Option<Vec<NodeDef>> = None;
        for (n, node) in compiled.nodes.iter().enumerate() {
            if let Some(bound) = hooks.get(&(compiled.name.clone(), node.name.clone()))
                && node.hook.is_some()
            {
                nodes.get_or_insert_with(|| compiled.nodes.clone())[n] = bound.clone();
            }
        }
        match nodes {
            None => Ok(compiled.clone()),
            Some(nodes) => Ok(Arc::new(compiled.with_nodes(nodes)?)),
        }
    }

    /// The workflow as it runs on this app: registered, with the hooks bound here.
    ///
    /// A workflow registered without bound hooks is its own registered form: the app that
    /// last found it so is remembered on the workflow, and the next check is one load.
    fn compiled_for<'w, In, Out>(
        &self,
        workflow: &'w Workflow<In, Out>,
    ) -> Result<Cow<'w, Arc<Compiled>>, Error> {
        let compiled = &workflow.compiled;
        // Borrowed on the common path: no count of the shared `Arc` taken per run.
        if compiled.checked_on.load(Ordering::Relaxed) == self.inner.id {
            return Ok(Cow::Borrowed(compiled));
        }
        let registered = self.inner.compiled_of(workflow.name());
        match registered {
            Some(registered) if Arc::ptr_eq(&registered, compiled) => {
                compiled.checked_on.store(self.inner.id, Ordering::Relaxed);
                Ok(Cow::Borrowed(compiled))
            }
            // Registered from another copy of the definition, or with hooks bound here: the
            // same nodes in the same stages.
            Some(registered)
                if registered.stages == compiled.stages
                    && registered
                        .nodes
                        .iter()
                        .map(|n| &n.name)
                        .eq(compiled.nodes.iter().map(|n| &n.name)) =>
            {
                Ok(Cow::Owned(registered))
            }
            _ => Err(Error::NotRegistered {
                workflow: workflow.name().to_string(),
            }),
        }
    }

    fn snapshot<In, Out>(
        workflow: &Workflow<In, Out>,
        compiled: Cow<'_, Arc<Compiled>>,
        execution: Execution,
    ) -> Run<Out> {
        Run {
            execution,
            compiled: compiled.into_owned(),
            result: workflow.result.clone(),
        }
    }

    /// Runs a workflow and returns its result: set options on what it returns
    /// ([`RunBuilder`]: transaction id, context, event group, idempotency), then `.await` it.
    ///
    /// The run is waited for through the engine's own timers (retry intervals, timeouts,
    /// background steps, nested workflows); [`Error::NotFinished`] means it waits for the
    /// outside (an async step, a resume). A failed run is [`Error::Failed`] with its final
    /// state and errors.
    pub fn run<'a, In: Value, Out: Clone + Send + Sync + 'static>(
        &'a self,
        workflow: &'a Workflow<In, Out>,
        input: In,
    ) -> RunBuilder<'a, In, Out> {
        RunBuilder {
            app: self,
            workflow,
            input,
            options: RunOptions::default(),
        }
    }

    /// Starts (or, for an unfinished transaction id, resumes) a run and returns its snapshot
    /// as soon as it finishes or waits for anything (a timer included): what a caller that
    /// drives the run itself wants. [`run`](Self::run) waits through the engine's timers.
    pub async fn start<In: Value, Out: Clone + Send + Sync + 'static>(
        &self,
        workflow: &Workflow<In, Out>,
        input: In,
        options: RunOptions,
    ) -> Result<Run<Out>, Error> {
        let (execution, compiled) = self.execute(workflow, input, options).await?;
        Ok(Self::snapshot(workflow, compiled, execution))
    }

    /// Starts a run and waits for it through the engine's own timers (see [`run`](Self::run)).
    async fn run_to_end<'w, In: Value, Out>(
        &self,
        workflow: &'w Workflow<In, Out>,
        input: In,
        options: RunOptions,
    ) -> Result<(Execution, Cow<'w, Arc<Compiled>>), Error> {
        let (execution, compiled) = self.execute(workflow, input, options).await?;
        let outside = waits(&execution)
            .iter()
            .any(|w| matches!(w, Wait::Outside(_)));
        if execution.state.is_finished() || outside {
            return Ok((execution, compiled));
        }
        let execution = self.inner.wait_engine_driven(&compiled, execution).await?;
        if self.inner.has_event_bus() {
            self.inner.settle_events(&execution, execution.state).await;
        }
        Ok((execution, compiled))
    }

    /// [`start`](Self::start) up to the settled execution, without the snapshot's handles.
    async fn execute<'w, In: Value, Out>(
        &self,
        workflow: &'w Workflow<In, Out>,
        input: In,
        options: RunOptions,
    ) -> Result<(Execution, Cow<'w, Arc<Compiled>>), Error> {
        let compiled = self.compiled_for(workflow)?;
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
                    idempotent: options.idempotent,
                },
            )
            .await?;
        // Without a bus there is nothing to settle: no settling future is even built.
        if self.inner.has_event_bus() {
            self.inner.settle_events(&execution, execution.state).await;
        }
        Ok((execution, compiled))
    }

    /// Resumes an unfinished run (a retry after `auto_retry(false)`, a run loaded from a store).
    pub async fn resume<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        transaction_id: &str,
    ) -> Result<Run<Out>, Error> {
        let resume = self.inner.engine.resume(workflow.name(), transaction_id);
        self.settled_after(workflow, resume).await
    }

    /// The current snapshot of a run.
    pub async fn get<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        transaction_id: &str,
    ) -> Result<Run<Out>, Error> {
        let compiled = self.compiled_for(workflow)?;
        let execution = self
            .inner
            .engine
            .get(workflow.name(), transaction_id)
            .await?;
        Ok(Self::snapshot(workflow, compiled, execution))
    }

    fn check_key<'w, In, Out>(
        &self,
        workflow: &'w Workflow<In, Out>,
        key: &IdempotencyKey,
    ) -> Result<Cow<'w, Arc<Compiled>>, Error> {
        let compiled = self.compiled_for(workflow)?;
        if &*key.workflow != workflow.name() {
            return Err(Error::KeyMismatch {
                key: key.to_string(),
                workflow: workflow.name().to_string(),
            });
        }
        Ok(compiled)
    }

    /// Completes a waiting (asynchronous) step with its output (of the step's output type), then
    /// advances the run. For a compensation key, `output` is ignored.
    pub async fn set_step_success<In, Out, T: Send + 'static>(
        &self,
        workflow: &Workflow<In, Out>,
        key: &IdempotencyKey,
        output: T,
    ) -> Result<Run<Out>, Error> {
        let compiled = self.check_key(workflow, key)?;
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
        Ok(self.settled(workflow, compiled, execution).await)
    }

    /// Fails a waiting (asynchronous) step: retried while its retries allow, unless the failure
    /// is permanent; then advances the run.
    pub async fn set_step_failure<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        key: &IdempotencyKey,
        failure: StepFailure,
    ) -> Result<Run<Out>, Error> {
        let compiled = self.check_key(workflow, key)?;
        let permanent = failure.permanent;
        let execution = self
            .inner
            .engine
            .set_step_failure(key, failure.error, permanent)
            .await?;
        Ok(self.settled(workflow, compiled, execution).await)
    }

    /// Cancels a run, running or finished: what was done is compensated.
    pub async fn cancel<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        transaction_id: &str,
    ) -> Result<Run<Out>, Error> {
        let cancel = self.inner.engine.cancel(workflow.name(), transaction_id);
        self.settled_after(workflow, cancel).await
    }

    /// Waits until a run has finished (done, reverted or failed) and returns its snapshot: for
    /// runs that go on in the background (async steps, retry intervals). A run waiting for
    /// `set_step_success` waits as long; bound it with `tokio::time::timeout`.
    pub async fn wait_until_finished<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        transaction_id: &str,
    ) -> Result<Run<Out>, Error> {
        let finished = self.inner.wait_finished(workflow.name(), transaction_id);
        self.settled_after(workflow, finished).await
    }

    /// A page of this workflow's runs, newest first (Medusa's workflow executions list):
    /// `filter` narrows by state and creation time and pages with its cursor; its workflow is
    /// this one.
    pub async fn executions<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        filter: TransactionFilter,
    ) -> Result<TransactionPage, Error> {
        let compiled = self.compiled_for(workflow)?;
        let filter = TransactionFilter {
            workflow: Some(compiled.name.clone()),
            ..filter
        };
        Ok(self.inner.engine.list(&filter).await?)
    }

    /// One run in detail, for an operator: each step's states, attempts, times and errors,
    /// with its output and its compensation input as the step returned them (JSON), and the
    /// run's input as it was given (the SDK's envelopes taken off).
    pub async fn execution<In, Out>(
        &self,
        workflow: &Workflow<In, Out>,
        transaction_id: &str,
    ) -> Result<ExecutionDetail, Error> {
        let compiled = self.compiled_for(workflow)?;
        self.detail_of(&compiled, transaction_id).await
    }

    /// [`execution`](Self::execution) of the registered workflow `name`, for callers that
    /// know workflows by name only (the admin API, the CLI).
    pub async fn execution_named(
        &self,
        name: &str,
        transaction_id: &str,
    ) -> Result<ExecutionDetail, Error> {
        let compiled = self.registered(name)?;
        self.detail_of(&compiled, transaction_id).await
    }

    /// The names of the registered workflows, sorted.
    pub fn workflow_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .workflows
            .read()
            .keys()
            .map(|k| k.to_string())
            .collect();
        names.sort();
        names
    }

    fn registered(&self, name: &str) -> Result<Arc<Compiled>, Error> {
        self.inner.compiled_of(name).ok_or_else(|| {
            gorgon_orchestration::Error::UnknownWorkflow {
                workflow: name.to_owned(),
            }
            .into()
        })
    }

    /// Runs the registered workflow `name` with its input as JSON, as an operator does (the
    /// admin API's "run"), and waits through the engine's timers as [`run`](Self::run) does.
    /// An input that does not decode as the workflow's input type fails the run's first step
    /// that reads it.
    pub async fn run_named(
        &self,
        name: &str,
        input: serde_json::Value,
        options: RunOptions,
    ) -> Result<Execution, Error> {
        let compiled = self.registered(name)?;
        let context = match options.context {
            Some(context) => Arc::new(context),
            None => default_context(),
        };
        let payload = Data::new(Payload {
            input: Data::json(input),
            context,
            hold_events: options.hold_events,
        });
        let execution = self
            .inner
            .engine
            .run(
                name,
                gorgon_orchestration::RunOptions {
                    transaction_id: options.transaction_id,
                    payload: Some(payload),
                    idempotent: options.idempotent,
                },
            )
            .await?;
        if self.inner.has_event_bus() {
            self.inner.settle_events(&execution, execution.state).await;
        }
        let outside = waits(&execution)
            .iter()
            .any(|w| matches!(w, Wait::Outside(_)));
        if execution.state.is_finished() || outside {
            return Ok(execution);
        }
        let execution = self.inner.wait_engine_driven(&compiled, execution).await?;
        if self.inner.has_event_bus() {
            self.inner.settle_events(&execution, execution.state).await;
        }
        Ok(execution)
    }

    async fn detail_of(
        &self,
        compiled: &Arc<Compiled>,
        transaction_id: &str,
    ) -> Result<ExecutionDetail, Error> {
        let mut detail = self
            .inner
            .engine
            .detail(&compiled.name, transaction_id)
            .await?;
        let input = Payload::with(&detail.payload, &compiled.name, |p| p.input.to_json())?;
        detail.payload = Data::json(input.map_err(|e| decode_error(&compiled.name, "input", e))?);
        for step in &mut detail.steps {
            let node = compiled
                .by_index
                .get(step.index)
                .and_then(|&n| compiled.nodes.get(n));
            let (Some(node), Some(saved)) = (node, &step.output) else {
                continue;
            };
            if !node.node.saves_envelope() {
                continue;
            }
            let mut json = saved
                .to_json()
                .map_err(|e| decode_error(&compiled.name, &step.action, e))?;
            let output = json.get_mut("output").map(serde_json::Value::take);
            let compensation = if json.get("compensation_is_output") == Some(&true.into()) {
                output.clone()
            } else {
                json.get_mut("compensation").map(serde_json::Value::take)
            };
            step.output = output.map(Data::json);
            step.compensation_input = compensation.map(Data::json);
        }
        Ok(detail)
    }

    /// Subscribes to the events of every run on this app (filter on `event.key`), and, when
    /// the engine has an [`EventRelay`](gorgon_orchestration::EventRelay), of the runs of the
    /// other engines on that relay (`event.origin` names their engine; at most once, best effort).
    pub fn subscribe(&self) -> broadcast::Receiver<TransactionEvent> {
        self.inner.engine.subscribe()
    }
}

/// A saved value that could not be read back as JSON.
fn decode_error(workflow: &str, source: &str, error: serde_json::Error) -> Error {
    Error::Decode {
        workflow: workflow.to_string(),
        source_name: source.to_string(),
        reason: error.to_string(),
    }
}
