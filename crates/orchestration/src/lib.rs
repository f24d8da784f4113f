//! Gorgon's orchestration: Medusa's transaction engine in Rust.
//!
//! A workflow is a tree of steps (Medusa's `TransactionStepsDefinition`); each step has an invoke
//! handler and a compensation. The engine runs the steps in rounds (a step's children wait for
//! the step and its parallel siblings, unless `noWait`), retries failures, waits for
//! asynchronous steps, times steps and transactions out, and compensates what was done, children
//! before parents, when something fails for good or the transaction is cancelled.
//!
//! How to use it:
//! 1. Describe the flow ([`FlowDefinition`], from JSON or built in code) and compile it
//!    ([`Flow::compile`]): bad flows are refused with the path of the offending field.
//! 2. Build an [`Engine`] ([`EngineOptions`]: a [`Store`] and a [`Clock`]; `Engine::in_memory()`
//!    for development) inside a tokio runtime.
//! 3. [`register`](Engine::register) the flow with a [`Handler`]: one async function that gets a
//!    [`StepCall`] (action, handler type, attempt, idempotency key, payload, saved responses)
//!    and returns a [`StepOutcome`].
//! 4. [`run`](Engine::run) it, and drive waiting steps with
//!    [`set_step_success`](Engine::set_step_success) / [`set_step_failure`](Engine::set_step_failure),
//!    [`resume`](Engine::resume) and [`cancel`](Engine::cancel); [`subscribe`](Engine::subscribe)
//!    to its events.
//!
//! ```
//! use gorgon_orchestration::{Engine, Flow, FlowDefinition, HandlerType, RunOptions, StepCall, StepOutcome,
//!     TransactionState, WorkflowOptions};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let definition = FlowDefinition::from_json(r#"{"next": {"action": "reserve", "next": {"action": "charge"}}}"#)?;
//! let engine = Engine::in_memory();
//! engine.register(Flow::compile("checkout", definition, WorkflowOptions::default())?, |call: StepCall| async move {
//!     match (call.action(), call.handler_type()) {
//!         ("charge", HandlerType::Invoke) => StepOutcome::permanent("card declined"),
//!         _ => StepOutcome::ok(serde_json::json!({"done": call.action()})),
//!     }
//! })?;
//! let run = engine.run("checkout", RunOptions::default()).await?;
//! assert_eq!(run.state, TransactionState::Reverted); // `reserve` was compensated
//! # Ok::<_, gorgon_orchestration::Error>(())
//! # }).unwrap();
//! ```
//!
//! The state machine ([`machine`]) makes every decision from state, event and time, and returns
//! [`Effect`]s; the engine ([`engine`]) performs them. Its states:
//!
//! ```text
//!  transaction:  not_started ─► invoking ─────────────────────────────► done
//!                                  │ permanent failure / timeout / cancel   │ cancel
//!                                  ▼                                        ▼
//!                         waiting_to_compensate ◄────────────────────────────┘
//!                                  │ nothing runnable, nothing in flight
//!                                  ▼
//!                            compensating ─► reverted   (every compensation ok)
//!                                         └► failed     (a compensation failed for good)
//!
//!  step (invoke side):  not_started ─► invoking ─► done | failed | timeout | skipped
//!                       not_started ─► skipped_failure            (skipOnPermanentFailure)
//!  step (compensate):   dormant ─► not_started ─► compensating ─► reverted | failed
//!  status:              idle ─► waiting_response ─► ok | temp_failure ─► … | permanent_failure
//! ```

pub mod clock;
pub mod data;
pub mod engine;
mod error;
pub mod flow;
pub mod log;
pub mod machine;
pub mod relay;
pub mod state;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::{Clock, ManualClock, SystemClock};
pub use data::Data;
pub use engine::{
    Engine, EngineOptions, Execution, ExecutionDetail, Handler, IdempotencyKey, RunOptions,
    StepCall, StepDetail, StepErrorDetail, TransactionEvent, WorkerOptions,
};
pub use error::{Error, Result};
pub use flow::{Flow, FlowDefinition, StepIndex, StepOptions, WorkflowOptions};
pub use machine::{
    Actions, EventKind, Record, StepError, StepOutcome, Transaction, TransactionError,
};
pub use relay::{EventRelay, MemoryRelay, RelayStats, RelayedEvent};
pub use state::{HandlerType, StepRun, StepState, StepStatus, TransactionState};
pub use store::{
    Claim, Keep, Lease, Leases, Listing, MemoryStore, PageCursor, Purge, Store, TransactionFilter,
    TransactionKey, TransactionLog, TransactionPage, TransactionSummary, WriteMode,
};
