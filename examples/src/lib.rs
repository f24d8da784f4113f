//! Gorgon's seed examples, written with the workflows SDK (`gorgon-workflows`), each runnable
//! from the repository root and printing every step, every compensation and the services'
//! state after each run:
//!
//! - `cargo run --example restock_order`: create a restock order, create its items, confirm it;
//!   then a run the supplier refuses, whose items and order are removed again ([`restock`]).
//! - `cargo run --example brand_with_logo`: create a brand, upload its logo to the local-disk
//!   file store, set the brand's logo; failed runs restore the previous logo and delete the
//!   uploaded file ([`brand`]).
//! - `cargo run --example create_order`: validate the inventory, create the order, reserve the
//!   inventory and take the payment in parallel, send the confirmation only when the payment
//!   was captured (a `when`), allocate a warehouse; a declined card releases the reservation,
//!   cancels the order and sends nothing ([`order`]).
//!
//! The services are plain structs holding their state behind a `parking_lot::Mutex`, registered
//! in [`Services`](gorgon_workflows::Services) and resolved by type in the steps
//! (`ctx.service::<Restocks>()`). Each module's `demo()` is what its example's `main` runs; it
//! checks the end state of every run and returns an error when it is not the expected one, so a
//! regression makes the example exit non-zero (and the tests fail).
//!
//! The restock workflow, as the README shows it:
//!
//! ```
//! use gorgon_examples::restock::{services, Line, RestockInput, RestockItem, RestockOrder, Restocks, Suppliers};
//! use gorgon_workflows::{App, Inputs, Service, Services, Step, StepFailure, StepResponse, StepResult, Workflow};
//! async fn create_order(input: RestockInput, restocks: Service<Restocks>) -> StepResult<RestockOrder, u64> {
//!     let order = restocks.create_order(&input.supplier); // a service, by type: checked at register
//!     Ok(StepResponse::new(order.clone()).with_compensation(order.id)) // the undo needs the id only
//! }
//! async fn delete_order(id: Option<u64>, restocks: Service<Restocks>) -> Result<(), StepFailure> {
//!     if let Some(id) = id { restocks.delete_order(id) }
//!     Ok(())
//! }
//! #[derive(Clone, serde::Serialize, serde::Deserialize, Inputs)] // makes `ItemsInputHandles`
//! struct ItemsInput { order: RestockOrder, input: RestockInput }
//! async fn create_items(i: ItemsInput, restocks: Service<Restocks>) -> StepResult<Vec<RestockItem>, Vec<u64>> {
//!     let items = restocks.create_items(i.order.id, &i.input.lines);
//!     let ids = items.iter().map(|item| item.id).collect();
//!     Ok(StepResponse::new(items).with_compensation(ids))
//! }
//! async fn delete_items(ids: Option<Vec<u64>>, restocks: Service<Restocks>) -> Result<(), StepFailure> {
//!     restocks.delete_items(&ids.unwrap_or_default());
//!     Ok(())
//! }
//! async fn confirm((order, items): (RestockOrder, Vec<RestockItem>), suppliers: Service<Suppliers>, restocks: Service<Restocks>) -> StepResult<Option<RestockOrder>> {
//!     let units = items.iter().map(|item| item.quantity).sum();
//!     suppliers.accept(&order.supplier, units).map_err(StepFailure::permanent)?; // rolls back
//!     Ok(StepResponse::new(restocks.confirm(order.id)))
//! }
//!
//! let create_order = Step::new("create-restock-order", create_order).compensate(delete_order);
//! let create_items = Step::new("create-restock-items", create_items).compensate(delete_items);
//! let confirm = Step::new("confirm-restock-order", confirm);
//! let restock = Workflow::define("restock-order", |b, input| {
//!     let order = b.step(&create_order, input); // a Handle<RestockOrder>
//!     let items = b.step(&create_items, ItemsInputHandles { order, input });
//!     b.step(&confirm, (order, items))
//! })?;
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let (restocks, suppliers) = services(); // Arc<Restocks>, Arc<Suppliers>: plain structs
//! let app = App::new(Services::new().with(restocks.clone()).with(suppliers));
//! app.register(&restock)?;
//! app.run(&restock, RestockInput { supplier: "acme".into(), lines: vec![Line::new("tee", 120)] }).await?;
//! assert!(app.run(&restock, RestockInput { supplier: "acme".into(), lines: vec![Line::new("tee", 900)] }).await.is_err());
//! # assert_eq!(restocks.orders()[0].status, gorgon_examples::restock::Status::Confirmed);
//! # assert_eq!((restocks.orders().len(), restocks.items().len()), (1, 1)); // the refused one was removed
//! # Ok::<_, anyhow::Error>(())
//! # })?;
//! # Ok::<_, anyhow::Error>(())
//! ```

pub mod brand;
pub mod order;
pub mod restock;

use gorgon_workflows::{App, Error, StepContext, Value, Workflow};

/// Runs `workflow` under the transaction id `transaction_id`, prints the steps it skipped (a
/// `when` not taken), and returns its result.
pub async fn run_as<In: Value, Out: Clone + Send + Sync + 'static>(
    app: &App,
    workflow: &Workflow<In, Out>,
    transaction_id: &str,
    input: In,
) -> Result<Out, Error> {
    let run = app
        .run(workflow, input)
        .transaction_id(transaction_id)
        .snapshot()
        .await?;
    for name in workflow.step_names() {
        let step = run.execution().step(name);
        if step.is_some_and(|step| step.invoke.state.as_str() == "skipped") {
            println!("  · {name}: skipped");
        }
    }
    run.result()
}

/// Prints what a step's invoke did: `  ▸ step (attempt n): message`.
pub fn ran(ctx: &StepContext, message: impl std::fmt::Display) {
    let attempt = match ctx.attempt() {
        1 => String::new(),
        n => format!(" (attempt {n})"),
    };
    println!("  ▸ {}{attempt}: {message}", ctx.step_name());
}

/// Prints what a step's compensation did: `  ↩ step: message`.
pub fn compensated(ctx: &StepContext, message: impl std::fmt::Display) {
    println!("  ↩ {}: {message}", ctx.step_name());
}
