//! The engine: the tokio runtime around the state machine.
//!
//! It keeps the registered workflows, the transactions being advanced, the timers that resume
//! them, and performs the [`Effect`]s the machine asks for: persisting records, arming and
//! disarming timers, publishing events, calling handlers (the synchronous ones of a round
//! concurrently, the asynchronous ones in tasks of their own).
//!
//! ```text
//!   run / resume / set_step_success / cancel / timer fired
//!                 │
//!                 ▼
//!   lock the transaction ──► machine: next_round(now) ──► Effects ──► Store::append, timers, events
//!                 ▲                   │ Round::Run
//!                 │                   ▼
//!                 └──── complete() ◄── handlers (sync: awaited together; async: spawned)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

use crate::clock::{Clock, SystemClock};
use crate::data::Data;
use crate::error::{Error, Result};
use crate::flow::{Flow, KEY_SEPARATOR, StepIndex};
use crate::machine::{
    Dispatch, Effect, EventKind, Round, StepError, StepOutcome, Timer, Transaction,
    TransactionError, TransactionShared,
};
use crate::state::{HandlerType, StepRun, TransactionState};
use crate::store::{MemoryStore, Store, TransactionHeader, TransactionKey};

/// The idempotency key of one handler: `<workflow>:<transaction>:<action>:<invoke|compensate>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The workflow name.
    pub workflow: Arc<str>,
    /// The transaction id.
    pub transaction: Arc<str>,
    /// The step's action.
    pub action: Arc<str>,
    /// The handler.
    pub handler: HandlerType,
}

impl IdempotencyKey {
    /// A key from its parts.
    pub fn new(
        workflow: impl Into<Arc<str>>,
        transaction: impl Into<Arc<str>>,
        action: impl Into<Arc<str>>,
        handler: HandlerType,
    ) -> Self {
        IdempotencyKey {
            workflow: workflow.into(),
            transaction: transaction.into(),
            action: action.into(),
            handler,
        }
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.workflow, self.transaction, self.action, self.handler
        )
    }
}

impl FromStr for IdempotencyKey {
    type Err = Error;
    fn from_str(key: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidKey {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = key.split(KEY_SEPARATOR).collect();
        let [workflow, transaction, action, handler] = parts[..] else {
            return Err(invalid("expected four parts separated by `:`"));
        };
        if workflow.is_empty() || transaction.is_empty() || action.is_empty() {
            return Err(invalid("a part is empty"));
        }
        let handler = match handler {
            "invoke" => HandlerType::Invoke,
            "compensate" => HandlerType::Compensate,
            _ => return Err(invalid("the last part must be `invoke` or `compensate`")),
        };
        Ok(IdempotencyKey::new(workflow, transaction, action, handler))
    }
}

/// One handler call: everything a step handler gets.
#[derive(Clone)]
pub struct StepCall {
    shared: Arc<TransactionShared>,
    dispatch: Dispatch,
}

impl fmt::Debug for StepCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepCall")
            .field("key", &self.idempotency_key().to_string())
            .field("attempt", &self.dispatch.attempt)
            .finish()
    }
}

impl StepCall {
    /// The workflow name.
    pub fn workflow(&self) -> &str {
        &self.shared.workflow
    }
    /// The transaction id.
    pub fn transaction_id(&self) -> &str {
        &self.shared.id
    }
    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }
    /// The step's action.
    pub fn action(&self) -> &str {
        &self.shared.flow.step(self.dispatch.step).action
    }
    /// The step's index in the flow.
    pub fn step(&self) -> StepIndex {
        self.dispatch.step
    }
    /// Which handler runs.
    pub fn handler_type(&self) -> HandlerType {
        self.dispatch.handler
    }
    /// The 1-based attempt of this side of the step.
    pub fn attempt(&self) -> u32 {
        self.dispatch.attempt
    }
    /// The handler's idempotency key.
    pub fn idempotency_key(&self) -> IdempotencyKey {
        IdempotencyKey {
            workflow: self.shared.workflow.clone(),
            transaction: self.shared.id.clone(),
            action: Arc::from(self.action()),
            handler: self.dispatch.handler,
        }
    }
    /// The workflow input.
    pub fn payload(&self) -> &Data {
        &self.shared.payload
    }
    /// The saved response of a step's side, by action.
    pub fn response(&self, action: &str, handler: HandlerType) -> Option<Data> {
        let step = self.shared.flow.step_index(action)?;
        self.shared.responses.get(step, handler)
    }
    /// The saved response of a step's side, by index.
    pub fn response_at(&self, step: StepIndex, handler: HandlerType) -> Option<Data> {
        self.shared.responses.get(step, handler)
    }
    /// The flow being run.
    pub fn flow(&self) -> &Flow {
        &self.shared.flow
    }
    /// What the handler keeps for this transaction's calls; see
    /// [`TransactionShared::handler_data`].
    pub fn handler_data(&self) -> &std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>> {
        &self.shared.handler_data
    }
}

/// The code behind a workflow's steps: called once per handler call with its [`StepCall`].
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one handler of one step.
    async fn call(&self, call: StepCall) -> StepOutcome;
}

#[async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(StepCall) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = StepOutcome> + Send + 'static,
{
    async fn call(&self, call: StepCall) -> StepOutcome {
        (self)(call).await
    }
}

/// An event of a transaction, as subscribers receive it.
#[derive(Clone, Debug)]
pub struct TransactionEvent {
    /// The workflow and transaction.
    pub key: TransactionKey,
    /// What happened.
    pub kind: EventKind,
    /// The step concerned, for step events.
    pub action: Option<Arc<str>>,
    /// The transaction state when it happened.
    pub state: TransactionState,
}

/// How to run a workflow.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The transaction id; `auto-<uuid>` when absent.
    pub transaction_id: Option<String>,
    /// The workflow input.
    pub payload: Option<Data>,
}

/// A snapshot of a transaction, as operations return it.
#[derive(Clone)]
pub struct Execution {
    shared: Arc<TransactionShared>,
    /// The transaction state.
    pub state: TransactionState,
    /// The errors recorded on the transaction.
    pub errors: Vec<TransactionError>,
    /// Every step's run (index 0, the root, unused).
    pub steps: Vec<StepRun>,
}

impl fmt::Debug for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Execution")
            .field("workflow", &self.shared.workflow)
            .field("transaction", &self.shared.id)
            .field("state", &self.state)
            .field("errors", &self.errors)
            .finish()
    }
}

impl Execution {
    fn of(tx: &Transaction) -> Self {
        Execution {
            shared: tx.shared().clone(),
            state: tx.state(),
            errors: tx.errors().to_vec(),
            steps: tx.steps().to_vec(),
        }
    }
    /// The workflow name.
    pub fn workflow(&self) -> &str {
        &self.shared.workflow
    }
    /// The transaction id.
    pub fn transaction_id(&self) -> &str {
        &self.shared.id
    }
    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }
    /// The flow that ran.
    pub fn flow(&self) -> &Flow {
        &self.shared.flow
    }
    /// The workflow input.
    pub fn payload(&self) -> &Data {
        &self.shared.payload
    }
    /// The saved response of a step's side, by action.
    pub fn response(&self, action: &str, handler: HandlerType) -> Option<Data> {
        let step = self.shared.flow.step_index(action)?;
        self.shared.responses.get(step, handler)
    }
    /// The run of a step, by action.
    pub fn step(&self, action: &str) -> Option<&StepRun> {
        self.shared.flow.step_index(action).map(|i| &self.steps[i])
    }
    /// Whether the transaction has finished.
    pub fn has_finished(&self) -> bool {
        self.state.is_finished()
    }
}

/// What an engine is built from.
pub struct EngineOptions {
    /// Where transactions are kept.
    pub store: Arc<dyn Store>,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            store: Arc::new(MemoryStore::new()),
            clock: Arc::new(SystemClock),
        }
    }
}

impl EngineOptions {
    /// Builds the engine. Call it inside a tokio runtime.
    pub fn build(self) -> Engine {
        let (events, _) = broadcast::channel(4096);
        Engine {
            inner: Arc::new(Inner {
                store: self.store,
                clock: self.clock,
                workflows: RwLock::new(Default::default()),
                live: Mutex::new(Default::default()),
                events,
                subscribed: AtomicBool::new(false),
                timer_ids: AtomicU64::new(0),
            }),
        }
    }
}

/// Runs transactions. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("workflows", &self.inner.workflows.read().len())
            .finish()
    }
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    workflows: RwLock<foldhash::HashMap<Arc<str>, Arc<Registered>>>,
    live: Mutex<foldhash::HashMap<TransactionKey, Arc<Cell>>>,
    events: broadcast::Sender<TransactionEvent>,
    /// Whether anyone ever subscribed: until then an event has no receiver for sure, and the
    /// channel's lock (which every core running a transaction would take per event) is skipped.
    subscribed: AtomicBool,
    timer_ids: AtomicU64,
}

struct Registered {
    flow: Arc<Flow>,
    handler: Arc<dyn Handler>,
}

/// A transaction being advanced, with its timers and its count of outstanding work.
struct Cell {
    key: TransactionKey,
    tx: tokio::sync::Mutex<Transaction>,
    timers: Mutex<HashMap<Timer, (u64, tokio::task::AbortHandle)>>,
    activity: AtomicUsize,
    handler: Arc<dyn Handler>,
}

struct ActivityGuard(Arc<Cell>);

impl ActivityGuard {
    fn new(cell: &Arc<Cell>) -> Self {
        cell.activity.fetch_add(1, Ordering::SeqCst);
        ActivityGuard(cell.clone())
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.activity.fetch_sub(1, Ordering::SeqCst);
    }
}

fn check_transaction_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "a transaction id cannot be empty"
    } else if id.contains(KEY_SEPARATOR) {
        "a transaction id cannot contain `:`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTransactionId {
        transaction: id.to_string(),
        reason: reason.to_string(),
    })
}

impl Engine {
    /// An engine on the in-memory store and the system clock.
    pub fn in_memory() -> Self {
        EngineOptions::default().build()
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The engine's store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Registers a workflow's flow and handler. Registering the same name again is allowed only
    /// with the same definition and options (the handler is replaced).
    pub fn register(&self, flow: Flow, handler: impl Handler) -> Result<()> {
        self.register_arc(Arc::new(flow), Arc::new(handler))
    }

    /// [`register`](Self::register) with shared parts.
    pub fn register_arc(&self, flow: Arc<Flow>, handler: Arc<dyn Handler>) -> Result<()> {
        let mut workflows = self.inner.workflows.write();
        if let Some(existing) = workflows.get(flow.workflow())
            && (existing.flow.definition() != flow.definition()
                || existing.flow.options() != flow.options())
        {
            return Err(Error::DuplicateWorkflow {
                workflow: flow.workflow().to_string(),
            });
        }
        workflows.insert(
            Arc::from(flow.workflow()),
            Arc::new(Registered { flow, handler }),
        );
        Ok(())
    }

    /// The flow of a registered workflow.
    pub fn flow(&self, workflow: &str) -> Result<Arc<Flow>> {
        Ok(self.registered(workflow)?.flow.clone())
    }

    fn registered(&self, workflow: &str) -> Result<Arc<Registered>> {
        self.inner
            .workflows
            .read()
            .get(workflow)
            .cloned()
            .ok_or_else(|| Error::UnknownWorkflow {
                workflow: workflow.to_string(),
            })
    }

    /// Subscribes to the events of every transaction.
    pub fn subscribe(&self) -> broadcast::Receiver<TransactionEvent> {
        self.inner.subscribed.store(true, Ordering::Release);
        self.inner.events.subscribe()
    }

    /// Runs a workflow: begins a new transaction, or resumes the unfinished one with this id,
    /// and advances it until it finishes or waits (for an async step, a retry timer, a resume).
    ///
    /// A finished transaction id is run again as a new run, unless the workflow is
    /// `idempotent`: then the stored result is returned. A start while the same id is being
    /// advanced is refused with [`Error::AlreadyStarted`].
    pub async fn run(&self, workflow: &str, options: RunOptions) -> Result<Execution> {
        let registered = self.registered(workflow)?;
        // A v7 uuid without the crate's process-wide counter context (a mutex every run would
        // take): ids stay time-ordered to the millisecond, random within it.
        let run_uuid = uuid::Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext));
        let (id, chosen) = match options.transaction_id {
            Some(id) => {
                check_transaction_id(&id)?;
                (id, true)
            }
            None => (format!("auto-{run_uuid}"), false),
        };
        let key = TransactionKey::new(registered.flow.workflow_arc().clone(), id);
        let existing = if chosen {
            self.existing_cell(&key, &registered).await?
        } else {
            None
        };
        if let Some(cell) = existing {
            let Ok(mut tx) = cell.tx.try_lock() else {
                return Err(Error::AlreadyStarted {
                    workflow: workflow.to_string(),
                    transaction: key.id.to_string(),
                });
            };
            if !tx.has_finished() {
                self.drive(&cell, &mut tx, true).await?;
                return Ok(Execution::of(&tx));
            }
            if registered.flow.options().idempotent() {
                return Ok(Execution::of(&tx));
            }
        }
        let payload = options.payload.unwrap_or_else(Data::null);
        let run_id: Arc<str> = Arc::from(run_uuid.to_string());
        let header = TransactionHeader {
            key: key.clone(),
            run_id: run_id.clone(),
            payload: payload.clone(),
            created_at: self.now(),
        };
        self.inner.store.create(&header).await?;
        let tx = Transaction::new(registered.flow.clone(), key.id.clone(), run_id, payload);
        let cell = Arc::new(Cell {
            key: key.clone(),
            tx: tokio::sync::Mutex::new(tx),
            timers: Mutex::new(HashMap::new()),
            activity: AtomicUsize::new(0),
            handler: registered.handler.clone(),
        });
        let mut tx = cell.tx.lock().await;
        self.inner.live.lock().insert(key, cell.clone());
        self.drive(&cell, &mut tx, true).await?;
        Ok(Execution::of(&tx))
    }

    /// Resumes an unfinished transaction (a retry after `autoRetry: false`, a lost timer).
    pub async fn resume(&self, workflow: &str, transaction: &str) -> Result<Execution> {
        let cell = self.cell(workflow, transaction).await?;
        let mut tx = cell.tx.lock().await;
        self.drive(&cell, &mut tx, true).await?;
        Ok(Execution::of(&tx))
    }

    /// Completes a waiting (async) step's handler with a response, then advances.
    pub async fn set_step_success(
        &self,
        key: &IdempotencyKey,
        response: Option<Data>,
    ) -> Result<Execution> {
        let (cell, step) = self.cell_and_step(key).await?;
        let mut tx = cell.tx.lock().await;
        tx.register_success(step, key.handler, response)?;
        self.drive(&cell, &mut tx, false).await?;
        Ok(Execution::of(&tx))
    }

    /// Fails a waiting (async) step's handler (retried while retries remain, unless
    /// `force_permanent`), then advances.
    pub async fn set_step_failure(
        &self,
        key: &IdempotencyKey,
        error: StepError,
        force_permanent: bool,
    ) -> Result<Execution> {
        let (cell, step) = self.cell_and_step(key).await?;
        let mut tx = cell.tx.lock().await;
        let now = self.now();
        tx.register_failure(step, key.handler, error, force_permanent, now)?;
        self.drive(&cell, &mut tx, false).await?;
        Ok(Execution::of(&tx))
    }

    /// Invokes a waiting step's handler again (a lost async response).
    pub async fn retry_step(&self, key: &IdempotencyKey) -> Result<Execution> {
        let (cell, step) = self.cell_and_step(key).await?;
        let mut tx = cell.tx.lock().await;
        let now = self.now();
        tx.retry_step(step, key.handler, now)?;
        self.apply_effects(&cell, &mut tx).await?;
        Ok(Execution::of(&tx))
    }

    /// Cancels a transaction, running or finished: what was done is compensated.
    pub async fn cancel(&self, workflow: &str, transaction: &str) -> Result<Execution> {
        let cell = self.cell(workflow, transaction).await?;
        let mut tx = cell.tx.lock().await;
        let now = self.now();
        tx.cancel(now)?;
        self.drive(&cell, &mut tx, false).await?;
        Ok(Execution::of(&tx))
    }

    /// A snapshot of a transaction.
    pub async fn get(&self, workflow: &str, transaction: &str) -> Result<Execution> {
        let cell = self.cell(workflow, transaction).await?;
        let tx = cell.tx.lock().await;
        Ok(Execution::of(&tx))
    }

    /// Whether nothing is running for a transaction: no handler, no armed timer, no advance in
    /// progress. A finished or unknown transaction is quiet.
    pub fn is_quiet(&self, workflow: &str, transaction: &str) -> bool {
        let key = TransactionKey::new(workflow, transaction);
        let live = self.inner.live.lock().get(&key).cloned();
        match live {
            None => true,
            Some(cell) => cell.activity.load(Ordering::SeqCst) == 0 && cell.tx.try_lock().is_ok(),
        }
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    async fn cell(&self, workflow: &str, transaction: &str) -> Result<Arc<Cell>> {
        let registered = self.registered(workflow)?;
        check_transaction_id(transaction)?;
        let key = TransactionKey::new(registered.flow.workflow_arc().clone(), transaction);
        self.existing_cell(&key, &registered)
            .await?
            .ok_or_else(|| Error::TransactionNotFound {
                workflow: workflow.to_string(),
                transaction: transaction.to_string(),
            })
    }

    async fn cell_and_step(&self, key: &IdempotencyKey) -> Result<(Arc<Cell>, StepIndex)> {
        let cell = self.cell(&key.workflow, &key.transaction).await?;
        let registered = self.registered(&key.workflow)?;
        let step = registered
            .flow
            .step_index(&key.action)
            .ok_or_else(|| Error::UnknownStep {
                workflow: key.workflow.to_string(),
                action: key.action.to_string(),
            })?;
        Ok((cell, step))
    }

    /// The live cell of a transaction, loading it from the store when it is not in memory.
    async fn existing_cell(
        &self,
        key: &TransactionKey,
        registered: &Arc<Registered>,
    ) -> Result<Option<Arc<Cell>>> {
        if let Some(cell) = self.inner.live.lock().get(key) {
            return Ok(Some(cell.clone()));
        }
        let Some(stored) = self.inner.store.load(key).await? else {
            return Ok(None);
        };
        let tx = Transaction::replay(
            registered.flow.clone(),
            key.id.clone(),
            stored.header.run_id.clone(),
            stored.header.payload.clone(),
            &stored.records,
        )?;
        let cell = Arc::new(Cell {
            key: key.clone(),
            tx: tokio::sync::Mutex::new(tx),
            timers: Mutex::new(HashMap::new()),
            activity: AtomicUsize::new(0),
            handler: registered.handler.clone(),
        });
        let mut live = self.inner.live.lock();
        Ok(Some(live.entry(key.clone()).or_insert(cell).clone()))
    }

    /// Advances a transaction until it finishes or waits. `announce` emits begin/resume.
    async fn drive(&self, cell: &Arc<Cell>, tx: &mut Transaction, announce: bool) -> Result<()> {
        // The clock is read when the drive starts and when a handler returns; a round is planned
        // at the time its predecessor's last handler returned (a read per plan and per outcome
        // was a tenth of a short run's time).
        let mut now = self.now();
        if announce && !tx.begin_or_resume(now) {
            return Ok(());
        }
        let mut effects = Vec::new();
        loop {
            let round = tx.next_round(now);
            self.apply(cell, tx, &mut effects).await?;
            let (calls, steps, continue_after) = match round {
                Round::Finished => {
                    self.retire(cell);
                    return Ok(());
                }
                Round::Run {
                    calls,
                    steps,
                    continue_after,
                } => (calls, steps, continue_after),
            };
            let sync_count = calls.iter().filter(|c| !c.is_async).count();
            if sync_count == 1 {
                let only = *calls.iter().find(|c| !c.is_async).expect("one sync call");
                let outcome = cell
                    .handler
                    .call(StepCall {
                        shared: tx.shared().clone(),
                        dispatch: only,
                    })
                    .await;
                now = self.now();
                tx.complete(only, outcome, &steps, now);
                self.apply(cell, tx, &mut effects).await?;
            } else if sync_count > 1 {
                now = self
                    .run_concurrently(cell, tx, &calls, &steps, &mut effects)
                    .await?;
            }
            if calls.iter().any(|c| c.is_async) {
                let round_steps: Arc<[StepIndex]> = steps.as_slice().into();
                for &dispatch in calls.iter().filter(|c| c.is_async) {
                    self.spawn_async(cell, tx, dispatch, round_steps.clone());
                }
            }
            tx.recycle_round(calls, steps);
            if !continue_after {
                return Ok(());
            }
        }
    }

    /// Runs the sync calls of a round concurrently, recording each outcome as it arrives.
    /// Returns the time the last one was recorded at.
    async fn run_concurrently(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        calls: &[Dispatch],
        steps: &[StepIndex],
        effects: &mut Vec<Effect>,
    ) -> Result<u64> {
        // The handler's own boxed futures, borrowing the cell's handler: no second box and no
        // clone of the handler's `Arc` (shared by every transaction of the workflow) per call.
        type Call<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = StepOutcome> + Send + 'a>>;
        let handler = &cell.handler;
        let mut running: Vec<(Dispatch, Option<Call<'_>>)> = calls
            .iter()
            .filter(|c| !c.is_async)
            .map(|&dispatch| {
                let call = StepCall {
                    shared: tx.shared().clone(),
                    dispatch,
                };
                (dispatch, Some(handler.call(call)))
            })
            .collect();
        let mut pending = running.len();
        let mut now = self.now();
        while pending > 0 {
            // Polls every unfinished call (a round is narrow), returning the first that is done.
            let (dispatch, outcome) = std::future::poll_fn(|cx| {
                for (dispatch, slot) in running.iter_mut() {
                    if let Some(future) = slot
                        && let std::task::Poll::Ready(outcome) = future.as_mut().poll(cx)
                    {
                        *slot = None;
                        return std::task::Poll::Ready((*dispatch, outcome));
                    }
                }
                std::task::Poll::Pending
            })
            .await;
            pending -= 1;
            now = self.now();
            tx.complete(dispatch, outcome, steps, now);
            self.apply(cell, tx, effects).await?;
        }
        Ok(now)
    }

    fn spawn_async(
        &self,
        cell: &Arc<Cell>,
        tx: &Transaction,
        dispatch: Dispatch,
        steps: Arc<[StepIndex]>,
    ) {
        let guard = ActivityGuard::new(cell);
        let engine = self.clone();
        let call = StepCall {
            shared: tx.shared().clone(),
            dispatch,
        };
        tokio::spawn(async move {
            let cell = guard.0.clone();
            let outcome = cell.handler.call(call).await;
            let mut tx = cell.tx.lock().await;
            tx.complete(dispatch, outcome, &steps, engine.now());
            if let Err(error) = engine.apply_effects(&cell, &mut tx).await {
                tracing::error!(transaction = %cell.key, %error, "recording an async step's outcome failed");
            }
            drop(guard);
        });
    }

    fn retire(&self, cell: &Arc<Cell>) {
        let mut live = self.inner.live.lock();
        if live.get(&cell.key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            live.remove(&cell.key);
        }
    }

    async fn apply_effects(&self, cell: &Arc<Cell>, tx: &mut Transaction) -> Result<()> {
        self.apply(cell, tx, &mut Vec::new()).await
    }

    /// Performs the effects the machine queued, in order, using `buffer` as scratch space.
    async fn apply(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        buffer: &mut Vec<Effect>,
    ) -> Result<()> {
        tx.drain_effects_into(buffer);
        let mut result = Ok(());
        for effect in buffer.drain(..) {
            if result.is_err() {
                continue; // drop what follows a failed write; the caller sees the error
            }
            match effect {
                Effect::Persist(records) => {
                    result = self.inner.store.append(&cell.key, &records).await;
                    tx.recycle(records);
                }
                Effect::Arm(timer, at) => self.arm(cell, timer, at),
                Effect::Disarm(timer) => {
                    if let Some((_, handle)) = cell.timers.lock().remove(&timer) {
                        handle.abort();
                    }
                }
                Effect::Emit(kind, step) => {
                    if self.inner.subscribed.load(Ordering::Acquire)
                        && self.inner.events.receiver_count() > 0
                    {
                        let event = TransactionEvent {
                            key: cell.key.clone(),
                            kind,
                            action: step.map(|s| Arc::from(tx.flow().step(s).action.as_str())),
                            state: tx.state(),
                        };
                        let _ = self.inner.events.send(event);
                    }
                }
            }
        }
        result
    }

    fn arm(&self, cell: &Arc<Cell>, timer: Timer, at: u64) {
        let id = self.inner.timer_ids.fetch_add(1, Ordering::Relaxed);
        let guard = ActivityGuard::new(cell);
        let engine = self.clone();
        let sleep = self.inner.clock.sleep_until(at);
        // The map lock is held across the spawn so the task cannot look itself up before it is in.
        let mut timers = cell.timers.lock();
        let handle = tokio::spawn(async move {
            sleep.await;
            let cell = guard.0.clone();
            let mine = {
                let mut timers = cell.timers.lock();
                if timers.get(&timer).is_some_and(|(owner, _)| *owner == id) {
                    timers.remove(&timer);
                    true
                } else {
                    false
                }
            };
            if mine {
                let mut tx = cell.tx.lock().await;
                if let Err(error) = engine.drive(&cell, &mut tx, true).await {
                    tracing::error!(transaction = %cell.key, %error, "resuming after a timer failed");
                }
            }
            drop(guard);
        });
        if let Some((_, old)) = timers.insert(timer, (id, handle.abort_handle())) {
            old.abort();
        }
    }
}
