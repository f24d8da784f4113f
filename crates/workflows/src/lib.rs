//! Gorgon's workflows SDK: typed steps and declarative composition, compiled to the
//! orchestrator's flow (Medusa's `createStep` / `createWorkflow` / `StepResponse` / `transform` /
//! `when` / `parallelize`, made type-safe).
//!
//! How to use it:
//! 1. Write steps: [`Step::new`]`(name, async fn(I, ...) -> StepResult<O, C>)`, whose parameters
//!    after the input are taken by type: the [`StepContext`], and the [`Service`]s the step uses
//!    (declared once, by naming them: registration checks them). Optionally
//!    [`.compensate(...)`](Step::compensate) and options (`max_retries`, `timeout`,
//!    `asynchronous`, ...). A [`StepResponse`] carries the output and, separately, the
//!    compensation input. Fail with `Err(`[`StepFailure`]`)` (`?` works on any error; a
//!    [`StepFailure::permanent`] one is never retried); a permanent failure that still hands
//!    its compensation data over is [`StepResponse::permanent_failure_with`].
//! 2. Compose a [`Workflow`] with [`Workflow::define`]: the composer gets a [`Builder`] and the
//!    input as a typed [`Handle`], adds steps ([`Builder::step`]), [`transform`](Builder::transform)s,
//!    [`when`](Builder::when) blocks and [`parallel`](Builder::parallel) blocks, and returns the
//!    result's handle. It runs once, at definition, and performs no I/O. A step's input is a
//!    handle, `()`, a [constant](Builder::constant), a tuple of inputs, or a struct of handles
//!    made by [`#[derive(Inputs)]`](derive@Inputs) (Medusa's object inputs). Beyond those:
//!    [`hook`](Builder::hook)s an application binds a handler to ([`App::bind_hook`]), nested
//!    workflows as a step ([`subflow`](Builder::subflow)), and fan-out over a runtime `Vec`
//!    ([`for_each`](Builder::for_each)), each element a run of its own, compensated on its own.
//! 3. Build an [`App`] with the [`Services`] your steps use (resolved by type, no string keys),
//!    bind hook handlers, and [`register`](App::register) the workflow: missing services are
//!    reported then.
//! 4. [`run`](App::run) it: `app.run(&wf, input).await` gives the typed result or an [`Error`]
//!    carrying the final state and errors, waiting through the engine's own timers (retry
//!    intervals, timeouts, background steps); options go on what `run` returns
//!    (`.transaction_id(..)`, `.context(..)`, `.event_group(..)`, `.idempotent(..)`). A run that
//!    waits for the outside (an async step) is [`Error::NotFinished`]: drive it with
//!    [`set_step_success`](App::set_step_success), [`resume`](App::resume),
//!    [`cancel`](App::cancel); [`subscribe`](App::subscribe) to its events; list and inspect
//!    runs with [`executions`](App::executions) and [`execution`](App::execution).
//! 5. To publish domain events, give the app an event bus
//!    ([`App::with_event_bus`]`(Arc<dyn gorgon_event_bus::EventBus>)`) and
//!    [`emit`](StepContext::emit) from steps: events are staged in the run's event group and
//!    published only when the run succeeds (see [Events](#events)).
//!
//! Words, as this crate uses them: a **workflow** is the definition; a **run** (a
//! *transaction* to the orchestrator, an *execution* in listings, Medusa's word) is one
//! execution of it under a **transaction id**, which the caller may choose and which stays when
//! the run is resumed; each run also gets a unique **run id**. A **step** is a node of the
//! workflow; its **action** is its stable name in the flow; each step has an **invoke** and a
//! **compensate** handler side.
//!
//! ```
//! use std::sync::Arc;
//! use parking_lot::Mutex;
//! use serde::{Deserialize, Serialize};
//! use gorgon_workflows::{App, Service, Services, Step, StepFailure, StepResponse, StepResult,
//!     TransactionState, Workflow};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct Restock { sku: String, quantity: u32 }
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! struct Order { id: u32, quantity: u32 }
//!
//! /// A service the steps use, resolved by type.
//! #[derive(Default)]
//! struct Orders { rows: Mutex<Vec<Order>> }
//!
//! async fn create_order(input: Restock, orders: Service<Orders>) -> StepResult<Order, u32> {
//!     let order = Order { id: 1, quantity: input.quantity };
//!     orders.rows.lock().push(order.clone());
//!     // The compensation gets the id only.
//!     Ok(StepResponse::new(order.clone()).with_compensation(order.id))
//! }
//! async fn delete_order(id: Option<u32>, orders: Service<Orders>) -> Result<(), StepFailure> {
//!     if let Some(id) = id {
//!         orders.rows.lock().retain(|o| o.id != id);
//!     }
//!     Ok(())
//! }
//! async fn confirm(order: Order) -> StepResult<String> {
//!     if order.quantity > 100 {
//!         return Err(StepFailure::permanent("too many"));
//!     }
//!     Ok(StepResponse::new(format!("order {} confirmed", order.id)))
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let create = Step::new("create-order", create_order).compensate(delete_order);
//! let confirm = Step::new("confirm", confirm).max_retries(2);
//! let restock = Workflow::define("restock", |b, input| {
//!     let order = b.step(&create, input);
//!     let message = b.step(&confirm, order);
//!     b.transform((order, message), |(order, message)| format!("{message} ({} units)", order.quantity))
//! })?;
//!
//! let orders = Arc::new(Orders::default());
//! let app = App::new(Services::new().with(orders.clone()));
//! app.register(&restock)?; // checks that `Orders` is registered
//!
//! let done = app.run(&restock, Restock { sku: "tee".into(), quantity: 5 }).await?;
//! assert_eq!(done, "order 1 confirmed (5 units)");
//!
//! orders.rows.lock().clear();
//! let err = app
//!     .run(&restock, Restock { sku: "tee".into(), quantity: 500 })
//!     .transaction_id("restock-500")
//!     .await
//!     .unwrap_err();
//! assert_eq!(err.state(), Some(TransactionState::Reverted));
//! assert_eq!(err.errors()[0].error.message, "too many");
//! assert!(orders.rows.lock().is_empty()); // the order was deleted again
//! # Ok::<_, anyhow::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Events
//!
//! A step's [`StepContext::emit`] / [`emit_many`](StepContext::emit_many) stage events in the
//! run's event group ([`StepContext::event_group_id`]: the [`WorkflowContext`]'s, else the run
//! id) on the app's bus. When the run finishes, the app settles the group:
//!
//! ```text
//!  step: ctx.emit(name, data) ──► staged in group <event group id> (memory, or Redis)
//!  run ends done ───────────────► release: every staged event is published, in order
//!  run ends reverted / failed ──► discard: none is published
//!  nested / fan-out child ends ─► nothing: its events are in the parent's group, settled
//!                                 with the parent (Medusa's preventReleaseEvents)
//! ```
//!
//! This holds however the run ends: in [`App::run`] / [`start`](App::start), through
//! [`set_step_success`](App::set_step_success) / `set_step_failure` / [`cancel`](App::cancel),
//! or in the background (a retry timer, an async child completing its parent), which the app
//! watches for. Settling happens before those calls return; for background ends, shortly after.
//! Without a bus, `emit` is [`Error::NoEventBus`].
//!
//! - **Cancel after success:** the events were released when the run finished; a later
//!   [`cancel`](App::cancel) compensates but cannot recall them. Events staged during that
//!   compensation are discarded with the group; publish a "cancelled" event directly with
//!   [`StepContext::event_bus`].
//! - **Held runs:** [`RunOptions::hold_events`] leaves the group to the caller
//!   ([`App::release_events`] / [`App::discard_events`]), for a run inside a larger unit of work.
//! - **Failures of the bus** at the end of a run are logged, not turned into a run failure: the
//!   run's outcome stands and the group stays staged (with Redis, across restarts, until its TTL)
//!   for [`App::release_events`]. Redis staging survives a crash of the process that emitted;
//!   whether the run itself does depends on the engine's store.
//! - **Retries:** an attempt that emitted and then failed has staged its events; the retry
//!   stages them again. Emit after the step's last fallible call (or discard by name with
//!   [`StepContext::discard_events`]).
//! - Runs sharing an event group id (given in their context) share its fate: the first to
//!   finish settles what all of them staged so far.
//!
//! ```
//! use std::sync::Arc;
//! use gorgon_event_bus::{EventBus, LocalEventBus, handler_fn};
//! use gorgon_workflows::{App, Services, Step, StepContext, StepResponse, StepResult, Workflow};
//!
//! async fn place(id: u32, ctx: StepContext) -> StepResult<u32> {
//!     ctx.emit("order.placed", serde_json::json!({ "id": id })).await?; // staged
//!     Ok(StepResponse::new(id))
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let bus: Arc<dyn EventBus> = Arc::new(LocalEventBus::new());
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! bus.subscribe("order.*", "mailer", handler_fn(move |event| {
//!     let tx = tx.clone();
//!     async move { tx.send(event.name).ok(); Ok(()) }
//! })).await?;
//!
//! let app = App::new(Services::new()).with_event_bus(bus);
//! let place = Step::new("place", place);
//! let wf = Workflow::define("place-order", |b, input| b.step(&place, input))?;
//! app.register(&wf)?;
//! app.run(&wf, 7).await?; // done: the run's group is released
//! assert_eq!(rx.recv().await.as_deref(), Some("order.placed"));
//! # Ok::<_, anyhow::Error>(())
//! # }).unwrap();
//! ```
//!
//! How a run flows:
//!
//! ```text
//!  define:  composer(&mut Builder, Handle<In>) ─► stages of nodes ─► FlowDefinition ─► Flow
//!  run:     App::run ─► Engine::run(payload = {input, context}) ─► WorkflowHandler::call(step index)
//!              ─► nodes[index]: resolve the input from saved responses (typed: a refcount, no JSON)
//!              ─► the step's async fn ─► StepOutcome (output + compensation input, saved)
//!  result:  the result handle resolved against the finished execution ─► Ok(Out) | Error
//! ```
//!
//! Contract: values that cross a checkpoint (the input, step outputs and compensation inputs)
//! are `serde` ([`Value`]); in memory they keep their Rust type and are handed on by reference
//! count, and read back from JSON when the run was loaded from a durable store. Transforms are
//! not saved: they are recomputed when needed, so they must be pure. A `when` decision is saved.

// Layers, lowest first: error, services → node → context → step → compose → workflow → hook,
// nested → app. Each module uses only those before it (`tests/layering.rs` checks).
mod app;
mod compose;
mod context;
mod error;
mod hook;
mod nested;
mod node;
mod services;
mod step;
mod workflow;

pub use app::{App, Run, RunBuilder, RunOptions};
pub use compose::{Branch, Builder, Handle, Inputs, Source};
pub use context::{RequestMetadata, StepContext, WorkflowContext};
pub use error::{Error, StepFailure};
/// Derives `<Struct>Handles` for a struct of values: a step's object input, composed from
/// handles (see [`Inputs`]).
pub use gorgon_macros::Inputs;
pub use hook::Hook;
pub use services::{Requirement, Services};
pub use step::{
    FromFailure, FromStepContext, Service, Step, StepFn, StepResponse, StepResult, Value,
};
pub use workflow::Workflow;

pub use gorgon_orchestration::{
    EngineOptions, ExecutionDetail, HandlerType, IdempotencyKey, StepDetail, StepOptions,
    TransactionError, TransactionEvent, TransactionFilter, TransactionPage, TransactionState,
    TransactionSummary, WorkflowOptions,
};
