//! The `orders` module: a shop's orders, just enough to pay one with loyalty points.

use chrono::{DateTime, Utc};
use gorgon_data::{Crud, FindConfig, Migration, Model, ModelMeta, migration};
use gorgon_framework::{BoxError, Module, ModuleContext, NoOptions};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Awaiting payment.
    Pending,
    /// Paid.
    Paid,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "order", name = "shop_order")]
pub struct ShopOrder {
    /// `order_…`.
    pub id: String,
    /// The customer.
    pub customer_id: String,
    /// The amount due.
    pub total: Decimal,
    /// Points spent on it.
    #[model(default)]
    pub points_used: i64,
    /// Where it stands.
    #[model(kind = "text", default)]
    pub status: OrderStatus,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// What the orders service refuses.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// Points go on pending orders only.
    #[error("order {0} is already paid")]
    AlreadyPaid(String),
    /// The data layer's error.
    #[error(transparent)]
    Data(#[from] gorgon_data::Error),
}

/// The orders module's service.
#[derive(Debug, Clone)]
pub struct OrderService {
    /// The generated service of [`ShopOrder`].
    pub orders: Crud<ShopOrder>,
}

impl OrderService {
    /// Records `points` spent on a pending order and marks it paid. Joins the caller's
    /// transaction.
    pub async fn pay_with_points(
        &self,
        order_id: &str,
        points: i64,
    ) -> Result<ShopOrder, OrderError> {
        let order = self.orders.retrieve(order_id, FindConfig::new()).await?;
        if order.status != OrderStatus::Pending {
            return Err(OrderError::AlreadyPaid(order_id.to_owned()));
        }
        Ok(self
            .orders
            .update(
                order_id,
                json!({ "points_used": order.points_used + points, "status": "paid" }),
            )
            .await?)
    }
}

/// The module's migrations.
pub const MIGRATIONS: &[Migration] = &[migration!("0001_orders")];

/// The `orders` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderModule;

impl Module for OrderModule {
    type Service = OrderService;
    type Options = NoOptions;

    fn name(&self) -> &'static str {
        "orders"
    }

    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![ShopOrder::meta()]
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<OrderService, BoxError> {
        Ok(OrderService {
            orders: Crud::new(cx.db),
        })
    }
}
