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
use std::task::Poll;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

use crate::clock::{Clock, SystemClock};
use crate::data::Data;
use crate::error::{Error, Result};
use crate::flow::{Flow, KEY_SEPARATOR, StepIndex};
use crate::machine::{
    Dispatch, Effect, EventKind, Record, Responses, Round, StepError, StepOutcome, Timer,
    Transaction, TransactionError, TransactionShared,
};
use crate::relay::{EventRelay, RelayLink, RelayStats};
use crate::state::{HandlerType, StepRun, TransactionState};
use crate::store::{
    Claim, Keep, Lease, MemoryStore, Store, StoredTransaction, TransactionHeader, TransactionKey,
};

mod executions; // executions listing, detail and retention (issue 4)
pub use executions::{ExecutionDetail, PURGE_BATCH, StepDetail, StepErrorDetail};

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
    /// The saved responses (read one in place with [`Responses::with`]).
    pub fn responses(&self) -> &Responses {
        &self.shared.responses
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

/// An event of a transaction, as subscribers receive it (serde: it crosses an [`EventRelay`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransactionEvent {
    /// The workflow and transaction.
    pub key: TransactionKey,
    /// What happened.
    pub kind: EventKind,
    /// The step concerned, for step events.
    pub action: Option<Arc<str>>,
    /// The transaction state when it happened.
    pub state: TransactionState,
    /// The engine that emitted it when that is another engine (delivered through the
    /// [`EventRelay`]); `None` for this engine's own events.
    #[serde(default)]
    pub origin: Option<Arc<str>>,
}

/// How to run a workflow.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The transaction id; `auto-<uuid>` when absent.
    pub transaction_id: Option<String>,
    /// The workflow input.
    pub payload: Option<Data>,
    /// Whether a finished run of this transaction id answers with its stored result instead
    /// of running again; `None`: as the workflow's `idempotent` option says. An idempotent
    /// run is kept until its workflow's retention ends (see [`Keep`]).
    pub idempotent: Option<bool>,
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
    /// The saved response of a step's side, by index.
    pub fn response_at(&self, step: StepIndex, handler: HandlerType) -> Option<Data> {
        self.shared.responses.get(step, handler)
    }
    /// The saved responses (read one in place with [`Responses::with`]).
    pub fn responses(&self) -> &Responses {
        &self.shared.responses
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
    /// How this engine shares a store with other engines (other processes).
    pub worker: WorkerOptions,
    // relay: begin
    /// Where events are shared with other engines (other processes); `None`: this engine's
    /// subscribers see only its own transactions. See [`crate::relay`].
    pub relay: Option<Arc<dyn EventRelay>>,
    // relay: end
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            store: Arc::new(MemoryStore::new()),
            clock: Arc::new(SystemClock),
            worker: WorkerOptions::default(),
            relay: None, // relay
        }
    }
}

/// How an engine shares a store with other engines: its worker id and its leases.
///
/// An engine holds a lease on each transaction while it advances it, and gives it up when the
/// transaction finishes or waits (for an async step's response, a retry timer). [`Engine::serve`]
/// renews the leases held and takes over transactions that are due: ones whose owner's lease
/// lapsed (the owner died) and waiting ones whose timer came while no engine had them in memory.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The worker id, unique per engine (default `worker-<uuid v7>`).
    pub id: Arc<str>,
    /// How long a lease lasts unless renewed, in milliseconds (default 10,000). A dead worker's
    /// transactions are taken over about this long after it died.
    pub lease_ms: u64,
    /// How often [`Engine::serve`] renews leases and looks for due transactions, in
    /// milliseconds (default 1,000; at most a third of `lease_ms` is used for renewing).
    pub poll_ms: u64,
    /// How many due transactions one poll claims at most (default 64).
    pub claim_batch: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            id: Arc::from(format!("worker-{}", uuid::Uuid::now_v7())),
            lease_ms: 10_000,
            poll_ms: 1_000,
            claim_batch: 64,
        }
    }
}

impl EngineOptions {
    /// Builds the engine. Call it inside a tokio runtime.
    pub fn build(self) -> Engine {
        let (events, _) = broadcast::channel(4096);
        let relay = self.relay.map(|r| RelayLink::start(r, events.clone())); // relay
        Engine {
            inner: Arc::new(Inner {
                pipelined: self.store.pipelined(),
                volatile: self.store.volatile(),
                store: self.store,
                clock: self.clock,
                worker: self.worker,
                workflows: RwLock::new(Default::default()),
                live: Mutex::new(Default::default()),
                events,
                relay, // relay
                subscribed: AtomicBool::new(false),
                timer_ids: AtomicU64::new(0),
                lease_clock: LeaseClock(std::time::Instant::now()),
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
    pipelined: bool,
    /// The store's records live no longer than the process (`Store::volatile`).
    volatile: bool,
    clock: Arc<dyn Clock>,
    worker: WorkerOptions,
    workflows: RwLock<foldhash::HashMap<Arc<str>, Arc<Registered>>>,
    live: Mutex<foldhash::HashMap<TransactionKey, Arc<Cell>>>,
    events: broadcast::Sender<TransactionEvent>,
    relay: Option<RelayLink>, // relay
    /// Whether anyone ever subscribed: until then an event has no receiver for sure, and the
    /// channel's lock (which every core running a transaction would take per event) is skipped.
    subscribed: AtomicBool,
    timer_ids: AtomicU64,
    lease_clock: LeaseClock,
}

struct Registered {
    flow: Arc<Flow>,
    handler: Arc<dyn Handler>,
}

/// A transaction being advanced, with its timers and its count of outstanding work.
///
/// `epoch` and `held` change only under the `tx` lock: the epoch this engine last held the
/// transaction's lease at (0: never, the copy came from a plain load), and whether it holds it.
struct Cell {
    key: TransactionKey,
    tx: tokio::sync::Mutex<Transaction>,
    timers: Mutex<HashMap<Timer, (u64, tokio::task::AbortHandle)>>,
    activity: AtomicUsize,
    async_running: AtomicUsize,
    handler: Arc<dyn Handler>,
    epoch: AtomicU64,
    held: AtomicBool,
    writes: Mutex<WriteQueue>,
    written: tokio::sync::Notify,
    /// When the store last confirmed this engine's lease ([`LeaseClock`] ms, read before the
    /// request): durable stores only.
    confirmed: AtomicU64,
}

/// A monotonic clock in milliseconds from the engine's start: what lease ages are measured
/// on (a wall clock may step).
struct LeaseClock(std::time::Instant);

impl LeaseClock {
    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Records waiting for the transaction's append in flight, with pipelined stores.
#[derive(Default)]
struct WriteQueue {
    create: Option<(TransactionHeader, Lease)>,
    queued: Vec<Record>,
    running: bool,
    error: Option<Error>,
}

impl Cell {
    fn new(key: TransactionKey, tx: Transaction, handler: Arc<dyn Handler>, epoch: u64) -> Self {
        Cell {
            key,
            tx: tokio::sync::Mutex::new(tx),
            timers: Mutex::new(HashMap::new()),
            activity: AtomicUsize::new(0),
            async_running: AtomicUsize::new(0),
            handler,
            epoch: AtomicU64::new(epoch),
            held: AtomicBool::new(epoch > 0),
            writes: Mutex::new(WriteQueue::default()),
            written: tokio::sync::Notify::new(),
            confirmed: AtomicU64::new(0),
        }
    }
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
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

/// A stored transaction folded back onto its flow.
fn replay(
    flow: Arc<Flow>,
    key: &TransactionKey,
    stored: &StoredTransaction,
) -> Result<Transaction> {
    Transaction::replay(
        flow,
        key.id.clone(),
        stored.header.run_id.clone(),
        stored.header.payload.clone(),
        &stored.records,
    )
}

/// Polls a future once: its output, or `Pending` with the task's waker registered.
fn poll_once<F: std::future::Future + ?Sized>(
    mut future: std::pin::Pin<&mut F>,
) -> impl std::future::Future<Output = Poll<F::Output>> + '_ {
    std::future::poll_fn(move |cx| Poll::Ready(future.as_mut().poll(cx)))
}

/// Whether an async call's step still waits for that call's outcome.
fn still_waiting(tx: &Transaction, dispatch: Dispatch) -> bool {
    let run = tx.step(dispatch.step);
    run.handler_type() == dispatch.handler
        && run.attempts == dispatch.attempt
        && run.side().status == crate::state::StepStatus::Waiting
}

/// The longest transaction id, in bytes: ids are keys in every store (a PostgreSQL index entry,
/// a Redis key) and travel in every relayed event.
pub const MAX_TRANSACTION_ID: usize = 256;

fn check_transaction_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "a transaction id cannot be empty"
    } else if id.contains(KEY_SEPARATOR) {
        "a transaction id cannot contain `:`"
    } else if id.chars().any(char::is_control) {
        "a transaction id cannot contain control characters"
    } else if id.len() > MAX_TRANSACTION_ID {
        "a transaction id is at most 256 bytes long"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTransactionId {
        transaction: id.to_string(),
        reason: reason.to_string(),
    })
}

/// What a call was advancing when its future was dropped.
enum Unfinished<'a> {
    /// A transaction in memory.
    Cell(&'a Arc<Cell>),
    /// A transaction the call was creating in the store (it may or may not exist there).
    Key(&'a TransactionKey),
}

/// Keeps a transaction going when the call advancing it is dropped mid-way: a caller that went
/// away (an HTTP client disconnecting, a request timeout, `tokio::time::timeout` around the
/// call). Armed for the length of the call and disarmed when it returns (with a result or an
/// error). Dropped armed, it marks the copy in memory as possibly behind its store (its last
/// write may have been cut short; the handlers it was running were cancelled) and has a task
/// of its own take the transaction again from the store and drive it on: the handlers that were
/// running run again, with the same idempotency keys (at least once, as after a crash).
/// Costs nothing until dropped armed: it only borrows.
struct KeepGoing<'a> {
    engine: &'a Engine,
    unfinished: Option<Unfinished<'a>>,
}

impl<'a> KeepGoing<'a> {
    fn new(engine: &'a Engine, unfinished: Unfinished<'a>) -> Self {
        KeepGoing {
            engine,
            unfinished: Some(unfinished),
        }
    }
    /// The call returned: nothing to keep going.
    fn done(mut self) {
        self.unfinished = None;
    }
}

impl Drop for KeepGoing<'_> {
    fn drop(&mut self) {
        let Some(unfinished) = self.unfinished.take() else {
            return;
        };
        // Outside a runtime the lease lapses instead, and a serving engine takes it over.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = self.engine.clone();
        match unfinished {
            Unfinished::Cell(cell) => {
                // The next holder reloads the transaction from the store (a plain copy's
                // epoch), resetting the handlers that were running.
                cell.held.store(false, Ordering::Release);
                cell.epoch.store(0, Ordering::Release);
                let cell = cell.clone();
                runtime.spawn(async move { engine.keep_going(cell).await });
            }
            Unfinished::Key(key) => {
                let key = key.clone();
                runtime.spawn(async move {
                    match engine.resume(&key.workflow, &key.id).await {
                        Ok(_) | Err(Error::TransactionNotFound { .. } | Error::Leased { .. }) => {}
                        Err(error) => {
                            tracing::warn!(transaction = %key, %error, "going on after a dropped call failed");
                        }
                    }
                });
            }
        }
    }
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

    /// Subscribes to the events of every transaction: this engine's, and with a relay those
    /// other engines publish to it (each event once; remote ones at most once, best effort).
    pub fn subscribe(&self) -> broadcast::Receiver<TransactionEvent> {
        self.inner.subscribed.store(true, Ordering::Release);
        self.inner.events.subscribe()
    }

    // relay: begin
    /// Resolves once the engine listens to its relay (at once without one): remote events
    /// published before that are not delivered.
    pub async fn relay_ready(&self) {
        if let Some(relay) = &self.inner.relay {
            relay.ready().await;
        }
    }

    /// The engine's id in the relay (the `origin` of the events it publishes), if it has one.
    pub fn relay_origin(&self) -> Option<&str> {
        self.inner.relay.as_ref().map(|r| r.origin())
    }

    /// Events this engine could not hand to its relay (zero without one).
    pub fn relay_stats(&self) -> RelayStats {
        self.inner
            .relay
            .as_ref()
            .map(|r| r.stats())
            .unwrap_or_default()
    }
    // relay: end

    /// Runs a workflow: begins a new transaction, or resumes the unfinished one with this id,
    /// and advances it until it finishes or waits (for an async step, a retry timer, a resume).
    ///
    /// A finished transaction id is run again as a new run, unless the workflow is
    /// `idempotent`: then the stored result is returned. A start while the same id is being
    /// advanced is refused with [`Error::AlreadyStarted`].
    pub async fn run(&self, workflow: &str, options: RunOptions) -> Result<Execution> {
        let registered = self.registered(workflow)?;
        // One clock read stamps the run id, the creation, the lease and the drive's start (the
        // engine's clock, as everywhere else). A chosen id reads it again after its lookup.
        let started = self.now();
        // A v7 uuid without the crate's process-wide counter context (a mutex every run would
        // take): ids stay time-ordered to the millisecond, random within it.
        let run_uuid = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            started / 1000,
            (started % 1000) as u32 * 1_000_000,
        ));
        // The uuid is formatted once, straight into a buffer (no formatting machinery), and
        // serves as both the run id and a generated transaction id's suffix.
        let mut uuid_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let uuid_text: &str = run_uuid.hyphenated().encode_lower(&mut uuid_text);
        let (id, chosen): (Arc<str>, bool) = match options.transaction_id {
            Some(id) => {
                check_transaction_id(&id)?;
                (id.into(), true)
            }
            None => {
                // Assembled on the stack: the shared string is the only allocation.
                let mut id = [0u8; 5 + uuid::fmt::Hyphenated::LENGTH];
                id[..5].copy_from_slice(b"auto-");
                id[5..].copy_from_slice(uuid_text.as_bytes());
                let id = std::str::from_utf8(&id).expect("ascii");
                (Arc::from(id), false)
            }
        };
        let key = TransactionKey::new(registered.flow.workflow_arc().clone(), id);
        let existing = if chosen {
            self.existing_cell(&key, &registered).await?
        } else {
            None
        };
        if let Some(cell) = existing {
            let already_started = || Error::AlreadyStarted {
                workflow: workflow.to_string(),
                transaction: key.id.to_string(),
            };
            let Ok(mut tx) = cell.tx.try_lock() else {
                return Err(already_started());
            };
            if !tx.has_finished() {
                let going = KeepGoing::new(self, Unfinished::Cell(&cell));
                let result = async {
                    match self.hold(&cell, &mut tx).await {
                        Err(Error::Leased { .. }) => return Err(already_started()),
                        other => other?,
                    }
                    if tx.has_finished() {
                        return Ok(None); // finished meanwhile, by another worker
                    }
                    let driven = self.drive(&cell, &mut tx, true).await;
                    self.settle(&cell, &mut tx, driven).await.map(Some)
                }
                .await;
                going.done();
                if let Some(execution) = result? {
                    return Ok(execution);
                }
            }
            if options
                .idempotent
                .unwrap_or(registered.flow.options().idempotent())
            {
                return Ok(Execution::of(&tx));
            }
        }
        let now = if chosen { self.now() } else { started };
        let payload = options.payload.unwrap_or_else(Data::null);
        let run_id: Arc<str> = Arc::from(uuid_text);
        let header = TransactionHeader {
            key: key.clone(),
            run_id: run_id.clone(),
            payload: payload.clone(),
            created_at: now,
            keep: Keep::of(registered.flow.options(), options.idempotent),
        };
        // A generated id cannot be taken, so its creation travels with its first append (one
        // write fewer); a chosen id is created first, so a taken one is refused up front.
        let deferred = !chosen;
        // For a generated id the lease is taken with the first append, after this reading.
        let mut asked = self.lease_asked();
        let epoch = if deferred {
            1
        } else {
            let going = KeepGoing::new(self, Unfinished::Key(&key));
            asked = self.lease_asked();
            let created = self.inner.store.create(&header, Some(&self.lease())).await;
            going.done();
            created?
        };
        let tx = Transaction::new(registered.flow.clone(), key.id.clone(), run_id, payload);
        let cell = Arc::new(Cell::new(
            key.clone(),
            tx,
            registered.handler.clone(),
            epoch,
        ));
        cell.confirmed.store(asked, Ordering::Release);
        if deferred {
            cell.writes.lock().create = Some((header, self.lease()));
        }
        // Nobody else can see the cell yet: the lock is free (and `try_lock` spends none of the
        // task's scheduling budget, which a forced yield would hand to another worker thread).
        let mut tx = cell.tx.try_lock().expect("a new cell is unlocked");
        self.inner.live.lock().insert(key, cell.clone());
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let driven = self.drive_from(&cell, &mut tx, true, now).await;
        let result = self.settle(&cell, &mut tx, driven).await;
        going.done();
        result
    }

    /// Starts a workflow without running it here: the transaction is stored, due at once, and
    /// the first engine whose [`serve`](Self::serve) loop claims it runs it (this one included).
    /// Returns the transaction id.
    pub async fn enqueue(&self, workflow: &str, options: RunOptions) -> Result<String> {
        let registered = self.registered(workflow)?;
        let run_uuid = uuid::Uuid::now_v7();
        let id = match options.transaction_id {
            Some(id) => {
                check_transaction_id(&id)?;
                id
            }
            None => format!("auto-{run_uuid}"),
        };
        let header = TransactionHeader {
            key: TransactionKey::new(registered.flow.workflow_arc().clone(), id.as_str()),
            run_id: Arc::from(run_uuid.to_string()),
            payload: options.payload.unwrap_or_else(Data::null),
            created_at: self.now(),
            keep: Keep::of(registered.flow.options(), options.idempotent),
        };
        self.inner.store.create(&header, None).await?;
        Ok(id)
    }

    /// The worker loop: until `shutdown` completes, renews the leases this engine holds and
    /// takes over the transactions that are due (see [`WorkerOptions`]). Run it on every engine
    /// that shares a durable store with others, or that must pick up work after a restart:
    /// `tokio::spawn(engine.clone().serve(shutdown))`.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let worker = self.inner.worker.clone();
        let poll = std::time::Duration::from_millis(worker.poll_ms.clamp(1, worker.lease_ms / 3));
        tokio::pin!(shutdown);
        loop {
            // Only the transactions this engine is advancing: one it let go of without a
            // release (a failed write) lapses, and is taken over (by this engine too).
            let held: Vec<TransactionKey> = self
                .inner
                .live
                .lock()
                .values()
                .filter(|cell| cell.held())
                .map(|cell| cell.key.clone())
                .collect();
            if !held.is_empty() {
                let asked = self.inner.lease_clock.now();
                match self.inner.store.renew(&self.lease(), &held).await {
                    Ok(_) => self.confirm_leases(&held, asked),
                    Err(error) => {
                        tracing::warn!(worker = %worker.id, %error, "renewing leases failed");
                    }
                }
            }
            self.take_over_due().await;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One poll of [`serve`](Self::serve): claims due transactions and advances each in a task
    /// of its own. Returns how many were claimed.
    pub async fn take_over_due(&self) -> usize {
        let workflows: Vec<Arc<str>> = self.inner.workflows.read().keys().cloned().collect();
        if workflows.is_empty() {
            return 0;
        }
        let worker = &self.inner.worker;
        let asked = self.lease_asked();
        let claimed = match self
            .inner
            .store
            .claim_due(&workflows, &self.lease(), worker.claim_batch)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(worker = %worker.id, %error, "claiming due transactions failed");
                return 0;
            }
        };
        let count = claimed.len();
        for (key, epoch) in claimed {
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(error) = engine.take_over(&key, epoch, asked).await {
                    tracing::warn!(transaction = %key, %error, "taking a transaction over failed");
                }
            });
        }
        count
    }

    /// Advances a transaction this engine has just claimed at `epoch`.
    async fn take_over(&self, key: &TransactionKey, epoch: u64, asked: u64) -> Result<Execution> {
        let registered = self.registered(&key.workflow)?;
        let live = self.inner.live.lock().get(key).cloned();
        let (cell, loaded) = match live {
            Some(cell) => (cell, false),
            None => self.load_claimed(key, &registered, epoch).await?,
        };
        let mut tx = cell.tx.lock().await;
        cell.confirmed.fetch_max(asked, Ordering::AcqRel);
        let adopted = if loaded {
            // Loaded after the claim, so current at `epoch`: only its timers are left to arm.
            for (timer, at) in tx.timers().to_vec() {
                self.arm(&cell, timer, at);
            }
            Ok(())
        } else {
            self.adopt(&cell, &mut tx, epoch).await
        };
        let driven = match adopted {
            Ok(()) => self.drive(&cell, &mut tx, true).await,
            Err(error) => Err(error),
        };
        self.settle(&cell, &mut tx, driven).await
    }

    /// The cell of a transaction this engine claimed at `epoch` and does not have in memory,
    /// from one load: handlers that were running when its last owner died are made ready to
    /// run again. Returns whether the cell is that fresh load (`false`: another task put a
    /// cell in memory meanwhile, which is returned instead and must be adopted).
    async fn load_claimed(
        &self,
        key: &TransactionKey,
        registered: &Arc<Registered>,
        epoch: u64,
    ) -> Result<(Arc<Cell>, bool)> {
        let stored =
            self.inner
                .store
                .load(key)
                .await?
                .ok_or_else(|| Error::TransactionNotFound {
                    workflow: key.workflow.to_string(),
                    transaction: key.id.to_string(),
                })?;
        let mut tx = replay(registered.flow.clone(), key, &stored)?;
        let reset = tx.recover_in_flight(true);
        if reset > 0 {
            tracing::info!(transaction = %key, handlers = reset, epoch, "taking over: handlers in flight will run again");
        }
        let fresh = Arc::new(Cell::new(
            key.clone(),
            tx,
            registered.handler.clone(),
            epoch,
        ));
        let mut live = self.inner.live.lock();
        let cell = live.entry(key.clone()).or_insert_with(|| fresh.clone());
        let loaded = Arc::ptr_eq(cell, &fresh);
        Ok((cell.clone(), loaded))
    }

    /// The lease clock's reading before asking the store for a lease (zero with a volatile
    /// store, whose leases are never checked).
    fn lease_asked(&self) -> u64 {
        if self.inner.volatile {
            0
        } else {
            self.inner.lease_clock.now()
        }
    }

    /// The lease this engine takes: its worker id, for `lease_ms` of the store's time.
    fn lease(&self) -> Lease {
        Lease {
            owner: self.inner.worker.id.clone(),
            ms: self.inner.worker.lease_ms,
        }
    }

    /// When a transaction released at `now` with its earliest timer at `wake_at` is due again,
    /// from now: at that timer, plus one poll, so that a timer still armed in some engine's
    /// memory fires first and only a forgotten one is taken over by `serve`.
    fn wake_in(&self, wake_at: Option<u64>, now: u64) -> Option<u64> {
        wake_at.map(|at| {
            at.saturating_sub(now)
                .saturating_add(self.inner.worker.poll_ms)
        })
    }

    /// Notes that the store confirmed these transactions' leases to this engine as asked at
    /// `asked` (the lease clock's reading before the request).
    fn confirm_leases(&self, keys: &[TransactionKey], asked: u64) {
        let live = self.inner.live.lock();
        for key in keys {
            if let Some(cell) = live.get(key) {
                cell.confirmed.fetch_max(asked, Ordering::AcqRel);
            }
        }
    }

    /// Before handlers start: with a durable store, makes sure the transaction's lease still
    /// runs. A lease confirmed more than a third of its length ago is renewed here; one that
    /// cannot be renewed and may have lapsed (or that another worker took) stops the drive, so
    /// that no step runs on two workers at once.
    async fn ensure_lease(&self, cell: &Arc<Cell>) -> Result<()> {
        if self.inner.volatile {
            return Ok(());
        }
        let lease_ms = self.inner.worker.lease_ms;
        let asked = self.inner.lease_clock.now();
        let age = asked.saturating_sub(cell.confirmed.load(Ordering::Acquire));
        if age < lease_ms / 3 {
            return Ok(());
        }
        let lost = || Error::Leased {
            workflow: cell.key.workflow.to_string(),
            transaction: cell.key.id.to_string(),
            owner: "(lease lapsed)".to_string(),
        };
        match self
            .inner
            .store
            .renew(&self.lease(), std::slice::from_ref(&cell.key))
            .await
        {
            Ok(1) => {
                cell.confirmed.fetch_max(asked, Ordering::AcqRel);
                Ok(())
            }
            Ok(_) => Err(lost()),
            Err(error) if age >= lease_ms => {
                tracing::warn!(transaction = %cell.key, %error, "the lease may have lapsed and cannot be renewed: stopping");
                Err(lost())
            }
            Err(error) => {
                tracing::warn!(transaction = %cell.key, %error, "renewing a lease failed; trying again before the next step");
                Ok(())
            }
        }
    }

    /// Makes sure this engine holds the transaction's lease before it writes: claims it (an
    /// error when another worker's lease runs) and, when someone else wrote since this copy was
    /// taken, reloads it.
    async fn hold(&self, cell: &Arc<Cell>, tx: &mut Transaction) -> Result<()> {
        if cell.held() {
            self.listen(tx);
            return Ok(());
        }
        let held = self.claim_into(cell, tx).await;
        self.listen(tx);
        held
    }

    /// Has the transaction queue its events when anyone would receive them, and only then
    /// (see [`Transaction::set_events`]). Asked before the machine is moved: whenever a lock
    /// is held again, at each round, and after each wait.
    #[inline]
    fn listen(&self, tx: &mut Transaction) {
        tx.set_events(self.events_wanted());
    }

    /// [`hold`](Self::hold) when the lease is not held: claims it and adopts the transaction.
    async fn claim_into(&self, cell: &Arc<Cell>, tx: &mut Transaction) -> Result<()> {
        let asked = self.lease_asked();
        match self.inner.store.claim(&cell.key, &self.lease()).await? {
            Claim::Granted { epoch } => {
                cell.confirmed.fetch_max(asked, Ordering::AcqRel);
                self.adopt(cell, tx, epoch).await
            }
            Claim::Leased { owner } => Err(Error::Leased {
                workflow: cell.key.workflow.to_string(),
                transaction: cell.key.id.to_string(),
                owner,
            }),
            Claim::NotFound => {
                self.retire(cell);
                Err(Error::TransactionNotFound {
                    workflow: cell.key.workflow.to_string(),
                    transaction: cell.key.id.to_string(),
                })
            }
        }
    }

    /// Takes a claimed lease at `epoch` into the cell. Unless the claim shows that no one else
    /// wrote since this engine last held the lease, the transaction is reloaded from the store,
    /// handlers that were running when its last owner died are made ready to run again, and
    /// its timers are armed here.
    async fn adopt(&self, cell: &Arc<Cell>, tx: &mut Transaction, epoch: u64) -> Result<()> {
        let last = cell.epoch();
        let current = last > 0 && (epoch == last || epoch == last + 1);
        if !current {
            let stored = self.inner.store.load(&cell.key).await?.ok_or_else(|| {
                Error::TransactionNotFound {
                    workflow: cell.key.workflow.to_string(),
                    transaction: cell.key.id.to_string(),
                }
            })?;
            let mut fresh = replay(tx.shared().flow.clone(), &cell.key, &stored)?;
            // No synchronous handler runs now (they run under the lock this caller holds);
            // background ones may, in this process's tasks.
            let background = cell.async_running.load(Ordering::SeqCst) == 0;
            let reset = fresh.recover_in_flight(background);
            if reset > 0 {
                tracing::info!(transaction = %cell.key, handlers = reset, epoch, "taking over: handlers in flight will run again");
            }
            *tx = fresh;
            for (timer, at) in tx.timers().to_vec() {
                self.arm(cell, timer, at);
            }
        } else {
            self.arm_missing(cell, tx);
        }
        cell.epoch.store(epoch, Ordering::Release);
        cell.held.store(true, Ordering::Release);
        Ok(())
    }

    /// Ends an operation: gives the lease up when the transaction waits (recording when it
    /// wants to wake), drops the cell when a write failed (it is reloaded on next use), and
    /// returns the snapshot or the operation's error.
    async fn settle(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        outcome: Result<()>,
    ) -> Result<Execution> {
        let flushed = self.flush(cell).await;
        let outcome = outcome.and(flushed);
        if let Err(error) = outcome {
            if cell.held.swap(false, Ordering::AcqRel) {
                // The copy in memory may be ahead of the store: it goes, and the lease is given
                // up so that any worker (this one too) takes the transaction over from its log
                // at once. Should the release fail as well, the lease lapses: it is no longer
                // renewed.
                let released = self
                    .inner
                    .store
                    .release(&cell.key, cell.epoch(), Some(0))
                    .await;
                if let Err(release) = released {
                    tracing::debug!(transaction = %cell.key, %release, "releasing after a failure failed");
                }
            }
            self.retire(cell);
            return Err(error);
        }
        if tx.has_finished() {
            cell.held.store(false, Ordering::Release);
        } else if cell.held() {
            self.check_liveness(cell, tx);
            cell.held.store(false, Ordering::Release);
            if let Err(error) = self
                .inner
                .store
                .release(
                    &cell.key,
                    cell.epoch(),
                    self.wake_in(tx.wake_at(), self.now()),
                )
                .await
            {
                self.retire(cell);
                return Err(error);
            }
        }
        Ok(Execution::of(tx))
    }

    /// Resumes an unfinished transaction (a retry after `autoRetry: false`, a lost timer).
    pub async fn resume(&self, workflow: &str, transaction: &str) -> Result<Execution> {
        let cell = self.cell(workflow, transaction).await?;
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            let driven = match self.hold(&cell, &mut tx).await {
                Ok(()) => self.drive(&cell, &mut tx, true).await,
                Err(error) => return Err(error),
            };
            self.settle(&cell, &mut tx, driven).await
        }
        .await;
        going.done();
        result
    }

    /// Drives on a transaction whose call was dropped mid-way (see [`KeepGoing`]).
    async fn keep_going(&self, cell: Arc<Cell>) {
        let mut tx = cell.tx.lock().await;
        // Back in memory (the call may have let it go), so that its lease is renewed.
        let live = self
            .inner
            .live
            .lock()
            .entry(cell.key.clone())
            .or_insert_with(|| cell.clone())
            .clone();
        if !Arc::ptr_eq(&live, &cell) {
            return; // another copy is being advanced
        }
        let driven = match self.hold(&cell, &mut tx).await {
            Ok(()) => self.drive(&cell, &mut tx, true).await,
            // Another worker has it, or it is gone: nothing to keep going.
            Err(Error::Leased { .. } | Error::TransactionNotFound { .. }) => return,
            Err(error) => Err(error),
        };
        if let Err(error) = self.settle(&cell, &mut tx, driven).await {
            tracing::warn!(transaction = %cell.key, %error, "going on after a dropped call failed");
        }
    }

    /// Completes a waiting (async) step's handler with a response, then advances.
    pub async fn set_step_success(
        &self,
        key: &IdempotencyKey,
        response: Option<Data>,
    ) -> Result<Execution> {
        let (cell, step) = self.cell_and_step(key).await?;
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            self.hold(&cell, &mut tx).await?;
            let driven = match tx.register_success(step, key.handler, response) {
                Ok(()) => self.drive(&cell, &mut tx, false).await,
                Err(error) => Err(error),
            };
            self.settle_unless_refused(&cell, &mut tx, driven).await
        }
        .await;
        going.done();
        result
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
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            self.hold(&cell, &mut tx).await?;
            let now = self.now();
            let driven = match tx.register_failure(step, key.handler, error, force_permanent, now) {
                Ok(()) => self.drive(&cell, &mut tx, false).await,
                Err(error) => Err(error),
            };
            self.settle_unless_refused(&cell, &mut tx, driven).await
        }
        .await;
        going.done();
        result
    }

    /// Invokes a waiting step's handler again (a lost async response).
    pub async fn retry_step(&self, key: &IdempotencyKey) -> Result<Execution> {
        let (cell, step) = self.cell_and_step(key).await?;
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            self.hold(&cell, &mut tx).await?;
            let now = self.now();
            let applied = match tx.retry_step(step, key.handler, now) {
                Ok(()) => self.apply_effects(&cell, &mut tx).await,
                Err(error) => Err(error),
            };
            self.settle_unless_refused(&cell, &mut tx, applied).await
        }
        .await;
        going.done();
        result
    }

    /// Cancels a transaction, running or finished: what was done is compensated.
    pub async fn cancel(&self, workflow: &str, transaction: &str) -> Result<Execution> {
        let cell = self.cell(workflow, transaction).await?;
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            self.hold(&cell, &mut tx).await?;
            let now = self.now();
            let driven = match tx.cancel(now) {
                Ok(()) => self.drive(&cell, &mut tx, false).await,
                Err(error) => Err(error),
            };
            self.settle_unless_refused(&cell, &mut tx, driven).await
        }
        .await;
        going.done();
        result
    }

    /// [`settle`](Self::settle), except that an operation the machine refused (nothing was
    /// changed, so nothing needs reloading) keeps the cell.
    async fn settle_unless_refused(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        outcome: Result<()>,
    ) -> Result<Execution> {
        match outcome {
            Err(error) if !error.is_store_failure() => {
                self.settle(cell, tx, Ok(())).await?;
                Err(error)
            }
            other => self.settle(cell, tx, other).await,
        }
    }

    /// A snapshot of a transaction: the copy this engine is advancing (the stored copy while
    /// one of its steps runs, rather than waiting for the step), else the stored one.
    pub async fn get(&self, workflow: &str, transaction: &str) -> Result<Execution> {
        let registered = self.registered(workflow)?;
        check_transaction_id(transaction)?;
        let key = TransactionKey::new(registered.flow.workflow_arc().clone(), transaction);
        let live = self.inner.live.lock().get(&key).cloned();
        let mut stored = None;
        if let Some(cell) = live {
            // The copy this engine advances is the newest; any other (a plain load, or one
            // whose lease another worker may have taken since) can be stale: read the store.
            // While it is being advanced (a handler may run for minutes), an observer reads
            // the store's copy, which has every step up to the running one, rather than wait;
            // a store that has nothing yet (the memory store defers its writes) is waited for.
            let tx = match cell.tx.try_lock() {
                Ok(tx) => Some(tx),
                Err(_) => {
                    stored = self.inner.store.load(&key).await?;
                    match stored {
                        Some(_) => None,
                        None => Some(cell.tx.lock().await),
                    }
                }
            };
            if let Some(tx) = tx
                && cell.held()
            {
                return Ok(Execution::of(&tx));
            }
        }
        let not_found = || Error::TransactionNotFound {
            workflow: workflow.to_string(),
            transaction: transaction.to_string(),
        };
        let stored = match stored {
            Some(stored) => stored,
            None => self.inner.store.load(&key).await?.ok_or_else(not_found)?,
        };
        Ok(Execution::of(&replay(
            registered.flow.clone(),
            &key,
            &stored,
        )?))
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
        let tx = replay(registered.flow.clone(), key, &stored)?;
        // Epoch 0: a plain load; the first claim reloads it under the lease.
        let cell = Arc::new(Cell::new(key.clone(), tx, registered.handler.clone(), 0));
        let mut live = self.inner.live.lock();
        Ok(Some(live.entry(key.clone()).or_insert(cell).clone()))
    }

    /// Advances a transaction until it finishes or waits. `announce` emits begin/resume.
    async fn drive(&self, cell: &Arc<Cell>, tx: &mut Transaction, announce: bool) -> Result<()> {
        self.drive_from(cell, tx, announce, self.now()).await
    }

    /// [`drive`](Self::drive) from `now`, a clock reading the caller has just taken.
    async fn drive_from(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        announce: bool,
        mut now: u64,
    ) -> Result<()> {
        // The clock is read when the drive starts and when a handler returns; a round is planned
        // at the time its predecessor's last handler returned (a read per plan and per outcome
        // was a tenth of a short run's time).
        self.listen(tx);
        if announce && !tx.begin_or_resume(now) {
            return Ok(());
        }
        let mut effects = Vec::new();
        loop {
            // Applies what the last round's outcomes changed together with what this round
            // prepares: one append per step boundary. With a volatile store the records may
            // instead wait in the transaction for the append that ends a stretch run without
            // waiting (see `Store::volatile`).
            self.listen(tx);
            let round = tx.next_round(now);
            let mut deferred = !matches!(round, Round::Finished) && self.defer(tx);
            if !deferred {
                self.apply(cell, tx, &mut effects).await?;
            }
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
            if !self.inner.volatile && !calls.is_empty() {
                self.ensure_lease(cell).await?;
            }
            let sync_count = calls.iter().filter(|c| !c.is_async).count();
            if sync_count == 1 {
                let only = *calls.iter().find(|c| !c.is_async).expect("one sync call");
                let mut call = cell.handler.call(StepCall {
                    shared: tx.shared().clone(),
                    dispatch: only,
                });
                let outcome = match poll_once(call.as_mut()).await {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => {
                        // The handler waits: what is deferred is written before time passes.
                        self.end_stretch(cell, tx, &mut effects, &mut deferred)
                            .await?;
                        let outcome = call.await;
                        self.listen(tx);
                        outcome
                    }
                };
                now = self.now();
                tx.complete(only, outcome, &steps, now);
            } else if sync_count > 1 {
                now = self
                    .run_concurrently(cell, tx, &calls, &steps, &mut effects, &mut deferred)
                    .await?;
            }
            if calls.iter().any(|c| c.is_async) {
                // A handler about to run elsewhere: the stretch ends here.
                self.end_stretch(cell, tx, &mut effects, &mut deferred)
                    .await?;
                let round_steps: Arc<[StepIndex]> = steps.as_slice().into();
                for &dispatch in calls.iter().filter(|c| c.is_async) {
                    self.spawn_async(cell, tx, dispatch, round_steps.clone());
                }
            }
            tx.recycle_round(calls, steps);
            if !continue_after {
                return self.apply(cell, tx, &mut effects).await;
            }
        }
    }

    /// Whether this step boundary's records may wait for a later append: the store is volatile,
    /// nobody listens for events, and the batch arms no timer (see [`Store::volatile`]).
    #[inline]
    fn defer(&self, tx: &mut Transaction) -> bool {
        self.inner.volatile && !self.events_wanted() && tx.defer_batch()
    }

    /// Ends a stretch run without waiting: appends what is `deferred` (and clears the flag).
    async fn end_stretch(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        effects: &mut Vec<Effect>,
        deferred: &mut bool,
    ) -> Result<()> {
        if std::mem::take(deferred) {
            self.apply(cell, tx, effects).await?;
        }
        Ok(())
    }

    /// Whether an event would reach anyone: a subscriber or the relay.
    #[inline]
    fn events_wanted(&self) -> bool {
        (self.inner.subscribed.load(Ordering::Acquire) && self.inner.events.receiver_count() > 0)
            || self.inner.relay.is_some()
    }

    /// Runs the sync calls of a round concurrently, recording each outcome as it arrives.
    /// Returns the time the last one was recorded at. `deferred` records are appended before
    /// the first wait (and then the flag cleared).
    async fn run_concurrently(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        calls: &[Dispatch],
        steps: &[StepIndex],
        effects: &mut Vec<Effect>,
        deferred: &mut bool,
    ) -> Result<u64> {
        // The handler's own boxed futures, borrowing the cell's handler: no second box and no
        // clone of the handler's `Arc` (shared by every transaction of the workflow) per call.
        type Call<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = StepOutcome> + Send + 'a>>;
        let handler = &cell.handler;
        // Sized up front (a filtered iterator would grow the Vec from four, twice for ten).
        let mut running: Vec<(Dispatch, Option<Call<'_>>)> = Vec::with_capacity(calls.len());
        running.extend(calls.iter().filter(|c| !c.is_async).map(|&dispatch| {
            let call = StepCall {
                shared: tx.shared().clone(),
                dispatch,
            };
            (dispatch, Some(handler.call(call)))
        }));
        let mut pending = running.len();
        if pending == 0 {
            return Ok(self.now());
        }
        // Read when outcomes arrive (the loop runs at least once).
        let mut now = 0;
        let mut ready: Vec<(Dispatch, StepOutcome)> = Vec::with_capacity(pending);
        while pending > 0 {
            // Polls every unfinished call (a round is narrow) and takes every one that is done:
            // outcomes that arrive together are recorded in one append.
            let waits = *deferred;
            std::future::poll_fn(|cx| {
                for (dispatch, slot) in running.iter_mut() {
                    if let Some(future) = slot
                        && let Poll::Ready(outcome) = future.as_mut().poll(cx)
                    {
                        *slot = None;
                        ready.push((*dispatch, outcome));
                    }
                }
                // With records deferred, nothing ready means the stretch ends: they are
                // written before waiting (the calls are polled again then).
                if ready.is_empty() && !waits {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            if ready.is_empty() {
                self.end_stretch(cell, tx, effects, deferred).await?;
                continue;
            }
            if !waits {
                // Time may have passed (someone may have subscribed) since the round began.
                self.listen(tx);
            }
            pending -= ready.len();
            now = self.now();
            for (dispatch, outcome) in ready.drain(..) {
                tx.complete(dispatch, outcome, steps, now);
            }
            if pending > 0 && !*deferred {
                // The last outcomes are applied with the next round's records.
                self.apply(cell, tx, effects).await?;
            }
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
        cell.async_running.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let cell = guard.0.clone();
            let outcome = cell.handler.call(call).await;
            cell.async_running.fetch_sub(1, Ordering::SeqCst);
            let mut tx = cell.tx.lock().await;
            let recorded = match engine.hold(&cell, &mut tx).await {
                // The step may have moved on meanwhile (a timeout, a takeover): then the
                // outcome is stale and dropped.
                Ok(()) if still_waiting(&tx, dispatch) => {
                    tx.complete(dispatch, outcome, &steps, engine.now());
                    engine.apply_effects(&cell, &mut tx).await
                }
                Ok(()) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = engine.settle(&cell, &mut tx, recorded).await {
                tracing::error!(transaction = %cell.key, %error, "recording an async step's outcome failed");
            }
            drop(guard);
        });
    }

    /// Queues records behind the transaction's append in flight (pipelined stores): at most
    /// one append per transaction is in flight, so its log stays in order, and what queues
    /// meanwhile goes in the next one. A failed append stops the writes; [`flush`](Self::flush)
    /// reports it.
    fn write_behind(&self, cell: &Arc<Cell>, records: Vec<Record>) -> Result<()> {
        let mut queue = cell.writes.lock();
        if let Some(error) = queue.error.take() {
            return Err(error);
        }
        if queue.queued.is_empty() {
            queue.queued = records;
        } else {
            queue.queued.extend(records);
        }
        if !queue.running {
            queue.running = true;
            let store = self.inner.store.clone();
            let cell = cell.clone();
            tokio::spawn(async move {
                loop {
                    let (create, records) = {
                        let mut queue = cell.writes.lock();
                        if queue.queued.is_empty() || queue.error.is_some() {
                            queue.queued.clear();
                            queue.running = false;
                            drop(queue);
                            cell.written.notify_waiters();
                            return;
                        }
                        (queue.create.take(), std::mem::take(&mut queue.queued))
                    };
                    let written = match create {
                        Some((header, lease)) => store
                            .create_and_append(&header, Some(&lease), &records)
                            .await
                            .map(drop),
                        None => store.append(&cell.key, cell.epoch(), &records).await,
                    };
                    if let Err(error) = written {
                        cell.writes.lock().error = Some(error);
                    }
                }
            });
        }
        Ok(())
    }

    /// Waits until every record queued for the transaction is durable (pipelined stores).
    async fn flush(&self, cell: &Arc<Cell>) -> Result<()> {
        if !self.inner.pipelined {
            return Ok(());
        }
        loop {
            let written = cell.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            {
                let mut queue = cell.writes.lock();
                if !queue.running {
                    return match queue.error.take() {
                        Some(error) => Err(error),
                        None => Ok(()),
                    };
                }
            }
            written.await;
        }
    }

    fn retire(&self, cell: &Arc<Cell>) {
        let mut live = self.inner.live.lock();
        // Usually the entry is this cell: one lookup removes it; another cell is put back.
        if let Some(other) = live.remove(&cell.key)
            && !Arc::ptr_eq(&other, cell)
        {
            live.insert(cell.key.clone(), other);
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
        // Every record queued goes in one append, made before the other effects: timers and
        // events follow what is durable.
        let mut records: Option<Vec<Record>> = None;
        for effect in buffer.iter_mut() {
            if let Effect::Persist(batch) = effect {
                match &mut records {
                    None => records = Some(std::mem::take(batch)),
                    Some(all) => all.append(batch),
                }
            }
        }
        let mut result = Ok(());
        if let Some(records) = records.filter(|records| !records.is_empty()) {
            if self.inner.pipelined {
                result = self.write_behind(cell, records);
            } else {
                let mut records = records;
                let create = cell.writes.lock().create.take();
                let store = &self.inner.store;
                result = match create {
                    Some((header, lease)) => {
                        match store.create_and_append_now(&header, Some(&lease), &mut records) {
                            Some(done) => done.map(drop),
                            None => store
                                .create_and_append(&header, Some(&lease), &records)
                                .await
                                .map(drop),
                        }
                    }
                    None => match store.append_now(&cell.key, cell.epoch(), &mut records) {
                        Some(done) => done,
                        None => store.append(&cell.key, cell.epoch(), &records).await,
                    },
                };
                tx.recycle(records);
            }
        }
        // Asked once per batch (with a subscriber, the count of receivers takes the channel's lock).
        let events_wanted = self.events_wanted();
        for effect in buffer.drain(..) {
            if result.is_err() {
                continue; // drop what follows a failed write; the caller sees the error
            }
            match effect {
                Effect::Persist(_) => {}
                Effect::Arm(timer, at) => self.arm(cell, timer, at),
                Effect::Disarm(timer) => {
                    if let Some((_, handle)) = cell.timers.lock().remove(&timer) {
                        handle.abort();
                    }
                }
                Effect::Emit(kind, step) => {
                    if events_wanted {
                        let event = TransactionEvent {
                            key: cell.key.clone(),
                            kind,
                            action: step.map(|s| Arc::from(tx.flow().step(s).action.as_str())),
                            state: tx.state(),
                            origin: None, // relay: set by the receiving engine
                        };
                        if let Some(relay) = &self.inner.relay {
                            relay.publish(event.clone()); // relay: never waits
                        }
                        let _ = self.inner.events.send(event);
                    }
                }
            }
        }
        tx.recycle_effects(buffer);
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
            // The transaction first: while this task waits for it, its timer is still in the
            // map (armed), and a disarm made meanwhile aborts the task right here.
            let mut tx = cell.tx.lock().await;
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
                let fired = match engine.hold(&cell, &mut tx).await {
                    Ok(()) => {
                        let now = engine.now();
                        if tx.timer_fired(timer, now) {
                            engine.drive_from(&cell, &mut tx, true, now).await
                        } else {
                            // Early (armed again), or disarmed meanwhile.
                            engine.apply_effects(&cell, &mut tx).await
                        }
                    }
                    // Another worker has the transaction and its timers.
                    Err(Error::Leased { .. }) => {
                        drop(tx);
                        drop(guard);
                        return;
                    }
                    Err(error) => Err(error),
                };
                if let Err(error) = engine.settle(&cell, &mut tx, fired).await {
                    tracing::error!(transaction = %cell.key, %error, "resuming after a timer failed");
                }
            }
            drop(tx);
            drop(guard);
        });
        if let Some((_, old)) = timers.insert(timer, (id, handle.abort_handle())) {
            old.abort();
        }
    }

    /// Arms the transaction's timers that this engine has not armed (a copy that another
    /// worker advanced, a timer task that found the lease taken).
    fn arm_missing(&self, cell: &Arc<Cell>, tx: &Transaction) {
        for &(timer, at) in tx.timers() {
            if !cell.timers.lock().contains_key(&timer) {
                self.arm(cell, timer, at);
            }
        }
    }

    /// Checks, in debug builds, what the engine promises of a transaction it lets go unfinished:
    /// a running handler, an armed timer, or an outside completion with no timeout configured
    /// (see [`Transaction::stall`]); and every timer the transaction records is armed here.
    fn check_liveness(&self, cell: &Arc<Cell>, tx: &Transaction) {
        if !cfg!(debug_assertions) || tx.has_finished() {
            return;
        }
        if let Some(stall) = tx.stall() {
            panic!(
                "transaction {} may stall: {stall} (timers {:?})",
                cell.key,
                tx.timers()
            );
        }
        let armed = cell.timers.lock();
        for (timer, _) in tx.timers() {
            assert!(
                armed.contains_key(timer),
                "transaction {} records the timer {timer:?}, which no task sleeps on",
                cell.key
            );
        }
        drop(armed);
        let sync_waiting = (1..tx.flow().steps().len()).find(|&step| {
            let run = tx.step(step);
            run.side().status == crate::state::StepStatus::Waiting
                && !tx
                    .flow()
                    .step(step)
                    .options
                    .is_async_side(run.handler_type())
        });
        if let Some(step) = sync_waiting {
            panic!(
                "transaction {} lets go of step `{}` waiting for a synchronous handler that no \
                 longer runs",
                cell.key,
                tx.flow().step(step).action
            );
        }
    }
}
