//! The workflows that combine the modules: the seed's three-step restock, and paying an order
//! with points, both writes in one database transaction.

use gorgon_data::{Db, FindConfig};
use gorgon_workflows::{Inputs, Service, Step, StepFailure, StepResponse, StepResult, Workflow};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::loyalty::{LoyaltyError, LoyaltyService};
use crate::orders::{OrderError, OrderService, ShopOrder};
use crate::supplier::{RestockItem, RestockOrder, SupplierService};

/// One line to restock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The product restocked.
    pub product_id: String,
    /// How many.
    pub quantity: i64,
    /// The supplier's price per unit.
    pub unit_cost: Decimal,
}

/// The restock workflow's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestockInput {
    /// The supplier.
    pub supplier_id: String,
    /// What to order.
    pub items: Vec<Line>,
    /// Notes for the supplier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

fn failure(error: impl std::fmt::Display) -> StepFailure {
    StepFailure::new(error.to_string())
}

async fn create_restock_order(
    input: RestockInput,
    suppliers: Service<SupplierService>,
) -> StepResult<RestockOrder, String> {
    let order = suppliers
        .restock_orders
        .create(json!({ "supplier_id": input.supplier_id, "notes": input.notes }))
        .await
        .map_err(|error| StepFailure::permanent(error.to_string()))?;
    let id = order.id.clone();
    Ok(StepResponse::new(order).with_compensation(id))
}

async fn delete_restock_order(
    id: Option<String>,
    suppliers: Service<SupplierService>,
) -> Result<(), StepFailure> {
    if let Some(id) = id {
        suppliers
            .restock_orders
            .delete([id])
            .await
            .map_err(failure)?;
    }
    Ok(())
}

/// The second step's input: the order made by the first, and the lines.
#[derive(Debug, Clone, Serialize, Deserialize, Inputs)]
pub struct ItemsInput {
    /// The order.
    pub order: RestockOrder,
    /// The workflow's input.
    pub input: RestockInput,
}

async fn create_restock_items(
    i: ItemsInput,
    suppliers: Service<SupplierService>,
) -> StepResult<Vec<RestockItem>, Vec<String>> {
    let rows: Vec<_> = i
        .input
        .items
        .iter()
        .map(|line| json!({ "restock_order_id": i.order.id, "product_id": line.product_id, "quantity": line.quantity, "unit_cost": line.unit_cost }))
        .collect();
    let items = suppliers
        .restock_items
        .create_many(&rows)
        .await
        .map_err(|error| StepFailure::permanent(error.to_string()))?;
    let ids = items.iter().map(|item| item.id.clone()).collect();
    Ok(StepResponse::new(items).with_compensation(ids))
}

async fn delete_restock_items(
    ids: Option<Vec<String>>,
    suppliers: Service<SupplierService>,
) -> Result<(), StepFailure> {
    if let Some(ids) = ids {
        suppliers.restock_items.delete(ids).await.map_err(failure)?;
    }
    Ok(())
}

async fn send_restock_order(
    order: RestockOrder,
    suppliers: Service<SupplierService>,
) -> StepResult<RestockOrder> {
    let supplier = suppliers
        .suppliers
        .retrieve(&order.supplier_id, FindConfig::new())
        .await
        .map_err(failure)?;
    if !supplier.accepts_orders {
        return Err(StepFailure::permanent(format!(
            "supplier {} does not take orders now",
            supplier.name
        )));
    }
    let sent = suppliers
        .restock_orders
        .update(&order.id, json!({ "status": "sent" }))
        .await
        .map_err(failure)?;
    let read = suppliers
        .restock_orders
        .retrieve(&sent.id, FindConfig::new().relations(["items"]))
        .await
        .map_err(failure)?;
    Ok(StepResponse::new(read))
}

/// The seed's restock workflow: create the order, create its items, send it to the supplier.
/// A supplier that refuses makes the last step fail; the items and the order are deleted again.
pub fn restock_workflow() -> Result<Workflow<RestockInput, RestockOrder>, gorgon_workflows::Error> {
    let create_order =
        Step::new("create-restock-order", create_restock_order).compensate(delete_restock_order);
    let create_items =
        Step::new("create-restock-items", create_restock_items).compensate(delete_restock_items);
    let send = Step::new("send-restock-order", send_restock_order);
    Workflow::define("restock", move |b, input| {
        let order = b.step(&create_order, input);
        b.step(&create_items, ItemsInputHandles { order, input });
        b.step(&send, order)
    })
}

/// Paying an order with points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeem {
    /// The order.
    pub order_id: String,
    /// The customer spending the points.
    pub customer_id: String,
    /// How many.
    pub points: i64,
}

/// What paying with points refuses.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// The points could not be deducted.
    #[error(transparent)]
    Loyalty(#[from] LoyaltyError),
    /// The order could not be updated.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The transaction itself failed.
    #[error(transparent)]
    Data(#[from] gorgon_data::Error),
}

/// Deducts the points and marks the order paid in one transaction (the seed's
/// `atomicPhase_`): when the second write fails, the first is undone.
pub async fn redeem_points(
    db: &Db,
    loyalty: &LoyaltyService,
    orders: &OrderService,
    redeem: &Redeem,
) -> Result<ShopOrder, RedeemError> {
    db.transaction(|| async {
        loyalty
            .deduct_points(&redeem.customer_id, redeem.points)
            .await?;
        Ok(orders
            .pay_with_points(&redeem.order_id, redeem.points)
            .await?)
    })
    .await
}

async fn pay_with_points(
    redeem: Redeem,
    db: Service<Db>,
    loyalty: Service<LoyaltyService>,
    orders: Service<OrderService>,
) -> StepResult<ShopOrder> {
    let order = redeem_points(&db, &loyalty, &orders, &redeem)
        .await
        .map_err(|error| StepFailure::permanent(error.to_string()))?;
    Ok(StepResponse::new(order))
}

/// The `redeem-points` workflow: one step running [`redeem_points`].
pub fn redeem_workflow() -> Result<Workflow<Redeem, ShopOrder>, gorgon_workflows::Error> {
    let pay = Step::new("pay-with-points", pay_with_points);
    Workflow::define("redeem-points", move |b, input| b.step(&pay, input))
}

/// A restock a manager approves: the budget is reserved (a slow call, three seconds), then
/// the run waits for the manager's answer, an async step completed from the dashboard or the
/// admin API (`…/steps/success|failure`, step `manager-approval`). A refusal releases the
/// budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewInput {
    /// The supplier.
    pub supplier_id: String,
    /// The budget to reserve.
    pub amount: Decimal,
}

async fn reserve_budget(input: ReviewInput) -> StepResult<String, Decimal> {
    // The finance system answers slowly.
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    let reservation = format!("budget {} for {}", input.amount, input.supplier_id);
    Ok(StepResponse::new(reservation).with_compensation(input.amount))
}

async fn release_budget(amount: Option<Decimal>) -> Result<(), StepFailure> {
    tracing::info!(?amount, "budget released");
    Ok(())
}

async fn manager_approval(_reservation: String) -> StepResult<String, ()> {
    Ok(StepResponse::wait())
}

/// The `review-restock` workflow (see [`ReviewInput`]).
pub fn review_workflow() -> Result<Workflow<ReviewInput, String>, gorgon_workflows::Error> {
    let reserve = Step::new("reserve-budget", reserve_budget).compensate(release_budget);
    let approval = Step::new("manager-approval", manager_approval).asynchronous();
    let options = gorgon_workflows::WorkflowOptions {
        store: Some(true),
        retention_time: Some(3.0 * 24.0 * 3600.0),
        ..Default::default()
    };
    Workflow::define_with("review-restock", options, move |b, input| {
        let reservation = b.step(&reserve, input);
        b.step(&approval, reservation)
    })
}
