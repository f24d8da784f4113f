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
//!   lock the transaction ──► machine: next_round(now) ──► Effects ──► TransactionLog::append, timers, events
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
    Dispatch, EventKind, Next, Record, Responses, StepError, StepOutcome, Timer, Transaction,
    TransactionError, TransactionShared,
};
use crate::relay::{EventRelay, RelayLink, RelayStats};
use crate::state::{HandlerType, StepRun, TransactionState};
use crate::store::{
    Claim, Keep, Lease, MemoryStore, Store, StoredTransaction, TransactionHeader, TransactionKey,
};

mod drive;
mod executions;
mod run;
mod workers;
mod write;

pub use executions::{ExecutionDetail, PURGE_BATCH, StepDetail, StepErrorDetail};
use write::{WritePolicy, Writer};

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
    /// Where events are shared with other engines (other processes); `None`: this engine's
    /// subscribers see only its own transactions. See [`crate::relay`].
    pub relay: Option<Arc<dyn EventRelay>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            store: Arc::new(MemoryStore::new()),
            clock: Arc::new(SystemClock),
            worker: WorkerOptions::default(),
            relay: None,
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
        let relay = self.relay.map(|r| RelayLink::start(r, events.clone()));
        Engine {
            inner: Arc::new(Inner {
                writes: WritePolicy::of(self.store.write_mode()),
                store: self.store,
                clock: self.clock,
                worker: self.worker,
                workflows: RwLock::new(Default::default()),
                live: Mutex::new(Default::default()),
                events,
                relay,
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
    /// When records are appended (from the store's [`WriteMode`](crate::store::WriteMode)).
    writes: WritePolicy,
    clock: Arc<dyn Clock>,
    worker: WorkerOptions,
    workflows: RwLock<foldhash::HashMap<Arc<str>, Arc<Registered>>>,
    live: Mutex<foldhash::HashMap<TransactionKey, Arc<Cell>>>,
    events: broadcast::Sender<TransactionEvent>,
    relay: Option<RelayLink>,
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

/// A run's id: a v7 uuid from the engine's clock, time-ordered to the millisecond and random
/// within it (without the uuid crate's process-wide counter, a lock every run would take),
/// formatted once.
struct RunId([u8; uuid::fmt::Hyphenated::LENGTH]);

impl RunId {
    /// A new run id at `now_ms` (Unix milliseconds).
    fn at(now_ms: u64) -> Self {
        let uuid = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            now_ms / 1000,
            (now_ms % 1000) as u32 * 1_000_000,
        ));
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid.hyphenated().encode_lower(&mut text);
        RunId(text)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a uuid is ascii")
    }

    /// The transaction id of a run started without one: `auto-<run id>`.
    fn generated_transaction_id(&self) -> Arc<str> {
        let mut id = [0u8; 5 + uuid::fmt::Hyphenated::LENGTH];
        id[..5].copy_from_slice(b"auto-");
        id[5..].copy_from_slice(&self.0);
        Arc::from(std::str::from_utf8(&id).expect("ascii"))
    }
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

    fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }
}
