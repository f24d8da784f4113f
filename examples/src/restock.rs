//! `restock_order`: create a restock order, create its items, confirm it with the supplier.
//!
//! ```text
//!  create-restock-order ─► create-restock-items ─► confirm-restock-order
//!   ↩ delete the order      ↩ delete the items       (fails: the supplier refuses)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::ensure;
use gorgon_workflows::{
    App, Error, Services, Step, StepContext, StepFailure, StepResponse, StepResult,
    TransactionState, Workflow,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{compensated, ran, run_as};

/// The workflow's name.
pub const WORKFLOW: &str = "restock-order";

/// What to restock, from which supplier.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestockInput {
    /// The supplier's name.
    pub supplier: String,
    /// The products and quantities to order.
    pub lines: Vec<Line>,
}

/// A product and a quantity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product's SKU.
    pub sku: String,
    /// How many units.
    pub quantity: u32,
}

impl Line {
    /// A line of `quantity` units of `sku`.
    pub fn new(sku: &str, quantity: u32) -> Self {
        Line {
            sku: sku.to_string(),
            quantity,
        }
    }
}

/// Where a restock order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Created, not sent to the supplier yet.
    Draft,
    /// The supplier accepted it.
    Confirmed,
}

/// A restock order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestockOrder {
    /// Its id.
    pub id: u64,
    /// The supplier.
    pub supplier: String,
    /// Where it stands.
    pub status: Status,
}

/// An item of a restock order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestockItem {
    /// Its id.
    pub id: u64,
    /// The order it belongs to.
    pub order_id: u64,
    /// The product's SKU.
    pub sku: String,
    /// How many units.
    pub quantity: u32,
}

/// What the workflow returns: the confirmed order and its items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restocked {
    /// The confirmed order.
    pub order: RestockOrder,
    /// Its items.
    pub items: Vec<RestockItem>,
}

/// The restock module's service: orders and items, in memory.
#[derive(Debug, Default)]
pub struct Restocks {
    state: Mutex<RestockState>,
}

#[derive(Debug, Default)]
struct RestockState {
    next_id: u64,
    orders: BTreeMap<u64, RestockOrder>,
    items: BTreeMap<u64, RestockItem>,
}

impl RestockState {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl Restocks {
    /// Creates a draft order for `supplier`.
    pub fn create_order(&self, supplier: &str) -> RestockOrder {
        let mut state = self.state.lock();
        let order = RestockOrder {
            id: state.id(),
            supplier: supplier.to_string(),
            status: Status::Draft,
        };
        state.orders.insert(order.id, order.clone());
        order
    }

    /// Deletes an order (nothing happens when it does not exist).
    pub fn delete_order(&self, id: u64) {
        self.state.lock().orders.remove(&id);
    }

    /// Creates the items of an order.
    pub fn create_items(&self, order_id: u64, lines: &[Line]) -> Vec<RestockItem> {
        let mut state = self.state.lock();
        lines
            .iter()
            .map(|line| {
                let item = RestockItem {
                    id: state.id(),
                    order_id,
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                };
                state.items.insert(item.id, item.clone());
                item
            })
            .collect()
    }

    /// Deletes items (the missing ones are ignored).
    pub fn delete_items(&self, ids: &[u64]) {
        let mut state = self.state.lock();
        for id in ids {
            state.items.remove(id);
        }
    }

    /// Marks an order confirmed; `None` when it does not exist.
    pub fn confirm(&self, id: u64) -> Option<RestockOrder> {
        let mut state = self.state.lock();
        let order = state.orders.get_mut(&id)?;
        order.status = Status::Confirmed;
        Some(order.clone())
    }

    /// The orders, by id.
    pub fn orders(&self) -> Vec<RestockOrder> {
        self.state.lock().orders.values().cloned().collect()
    }

    /// The items, by id.
    pub fn items(&self) -> Vec<RestockItem> {
        self.state.lock().items.values().cloned().collect()
    }
}

/// The suppliers and how many units each delivers per order, in memory.
#[derive(Debug, Default)]
pub struct Suppliers {
    limits: Mutex<BTreeMap<String, u32>>,
}

impl Suppliers {
    /// Adds a supplier delivering at most `max_units` per order.
    pub fn with_limit(self, supplier: &str, max_units: u32) -> Self {
        self.limits.lock().insert(supplier.to_string(), max_units);
        self
    }

    /// Asks the supplier to deliver `units`: the refusal says why.
    pub fn accept(&self, supplier: &str, units: u32) -> Result<(), String> {
        match self.limits.lock().get(supplier) {
            None => Err(format!("unknown supplier {supplier}")),
            Some(&max) if units > max => Err(format!(
                "supplier {supplier} delivers at most {max} units per order, {units} asked"
            )),
            Some(_) => Ok(()),
        }
    }
}

async fn create_order(input: RestockInput, ctx: StepContext) -> StepResult<RestockOrder, u64> {
    let order = ctx.service::<Restocks>()?.create_order(&input.supplier);
    ran(
        &ctx,
        format!("order #{} for {} (draft)", order.id, order.supplier),
    );
    Ok(StepResponse::new(order.clone()).with_compensation(order.id))
}

async fn delete_order(id: Option<u64>, ctx: StepContext) -> Result<(), StepFailure> {
    if let Some(id) = id {
        ctx.service::<Restocks>()?.delete_order(id);
        compensated(&ctx, format!("deleted order #{id}"));
    }
    Ok(())
}

async fn create_items(
    (order, input): (RestockOrder, RestockInput),
    ctx: StepContext,
) -> StepResult<Vec<RestockItem>, Vec<u64>> {
    let items = ctx
        .service::<Restocks>()?
        .create_items(order.id, &input.lines);
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    ran(&ctx, format!("items {ids:?} of order #{}", order.id));
    Ok(StepResponse::new(items).with_compensation(ids))
}

async fn delete_items(ids: Option<Vec<u64>>, ctx: StepContext) -> Result<(), StepFailure> {
    if let Some(ids) = ids {
        ctx.service::<Restocks>()?.delete_items(&ids);
        compensated(&ctx, format!("deleted items {ids:?}"));
    }
    Ok(())
}

async fn confirm(
    (order, items): (RestockOrder, Vec<RestockItem>),
    ctx: StepContext,
) -> StepResult<RestockOrder> {
    let units = items.iter().map(|i| i.quantity).sum();
    if let Err(refusal) = ctx.service::<Suppliers>()?.accept(&order.supplier, units) {
        ran(&ctx, format!("FAILED: {refusal}"));
        return Ok(StepResponse::permanent_failure(refusal));
    }
    let confirmed = ctx
        .service::<Restocks>()?
        .confirm(order.id)
        .ok_or_else(|| StepFailure::permanent(format!("order #{} is gone", order.id)))?;
    ran(
        &ctx,
        format!("order #{} confirmed ({units} units)", order.id),
    );
    Ok(StepResponse::new(confirmed))
}

/// The restock workflow: `RestockInput` in, the confirmed order and its items out.
pub fn workflow() -> Result<Workflow<RestockInput, Restocked>, Error> {
    let create_order = Step::new("create-restock-order", create_order)
        .compensate(delete_order)
        .requires::<Restocks>();
    let create_items = Step::new("create-restock-items", create_items)
        .compensate(delete_items)
        .requires::<Restocks>();
    let confirm = Step::new("confirm-restock-order", confirm)
        .requires::<Restocks>()
        .requires::<Suppliers>();
    Workflow::define(WORKFLOW, |b, input| {
        let order = b.step(&create_order, input);
        let items = b.step(&create_items, (order, input));
        let confirmed = b.step(&confirm, (order, items));
        b.transform((confirmed, items), |(order, items)| Restocked {
            order,
            items,
        })
    })
}

/// The services of the example: the restock store and two suppliers (`acme` delivers up to 500
/// units per order, `tiny` up to 50).
pub fn services() -> (Arc<Restocks>, Arc<Suppliers>) {
    let suppliers = Suppliers::default()
        .with_limit("acme", 500)
        .with_limit("tiny", 50);
    (Arc::new(Restocks::default()), Arc::new(suppliers))
}

fn print_state(restocks: &Restocks) {
    println!("  state: orders {:?}", restocks.orders());
    println!("         items  {:?}", restocks.items());
}

/// Runs the example: a restock that is confirmed, then one the supplier refuses, whose items and
/// order are removed again. Prints what happens; fails if the end state is not the expected one.
pub async fn demo() -> anyhow::Result<()> {
    let (restocks, suppliers) = services();
    let app = App::new(
        Services::new()
            .with(restocks.clone())
            .with(suppliers.clone()),
    );
    let restock = workflow()?;
    app.register(&restock)?;

    println!("== run 1: restock 120 tees and 80 mugs from acme");
    let input = RestockInput {
        supplier: "acme".into(),
        lines: vec![Line::new("tee", 120), Line::new("mug", 80)],
    };
    let done = run_as(&app, &restock, "restock-1", input).await?;
    println!(
        "  result: order #{} {:?} with {} items",
        done.order.id,
        done.order.status,
        done.items.len()
    );
    print_state(&restocks);
    ensure!(restocks.orders() == vec![done.order.clone()]);
    ensure!(done.order.status == Status::Confirmed);
    ensure!(restocks.items() == done.items && done.items.len() == 2);

    println!("== run 2: restock 120 tees from tiny, which delivers 50 at most: confirming fails");
    let input = RestockInput {
        supplier: "tiny".into(),
        lines: vec![Line::new("tee", 120)],
    };
    let error = match run_as(&app, &restock, "restock-2", input).await {
        Ok(done) => anyhow::bail!("the refused restock was confirmed: {done:?}"),
        Err(error) => error,
    };
    println!("  result: {error}");
    print_state(&restocks);
    ensure!(matches!(
        error,
        Error::Failed {
            state: TransactionState::Reverted,
            ..
        }
    ));
    ensure!(error.errors()[0].action == "confirm-restock-order");
    ensure!(
        restocks.orders() == vec![done.order],
        "the refused order is still there"
    );
    ensure!(restocks.items() == done.items, "its items are still there");
    println!("ok: the confirmed restock stays, the refused one was removed again");
    Ok(())
}
