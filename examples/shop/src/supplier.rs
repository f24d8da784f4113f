//! The `supplier` module: suppliers, their restock orders and the orders' items (the seed's
//! restock example, with its three-step workflow in [`crate::flows`]).

use chrono::{DateTime, Utc};
use gorgon_data::{Crud, Migration, Model, ModelMeta, migration};
use gorgon_framework::{BoxError, Module, ModuleContext, NoOptions};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A supplier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "sup")]
pub struct Supplier {
    /// `sup_…`.
    pub id: String,
    /// Its name.
    #[model(searchable)]
    pub name: String,
    /// Where restock orders are sent.
    pub email: String,
    /// Whether it takes orders now (a supplier that does not makes the restock workflow fail
    /// at its last step, and roll back).
    #[model(default)]
    pub accepts_orders: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Its restock orders, when read.
    #[model(has_many(RestockOrder, by = "supplier_id"), cascade)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restock_orders: Option<Vec<RestockOrder>>,
}

/// Where a restock order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestockStatus {
    /// Created, not sent.
    Draft,
    /// Sent to the supplier.
    Sent,
    /// Expired unsent (the `expire-restock-drafts` job).
    Expired,
}

/// A restock order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "rsord")]
pub struct RestockOrder {
    /// `rsord_…`.
    pub id: String,
    /// Its supplier.
    pub supplier_id: String,
    /// Where it stands.
    #[model(kind = "text", default)]
    pub status: RestockStatus,
    /// The buyer's notes for the supplier.
    pub notes: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Its items, when read.
    #[model(has_many(RestockItem, by = "restock_order_id"), cascade)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<RestockItem>>,
    /// Its supplier, when read.
    #[model(belongs_to(Supplier, by = "supplier_id"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier: Option<Box<Supplier>>,
}

/// A line of a restock order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "rsitem")]
pub struct RestockItem {
    /// `rsitem_…`.
    pub id: String,
    /// Its order.
    pub restock_order_id: String,
    /// The product variant's SKU.
    pub product_id: String,
    /// How many.
    pub quantity: i64,
    /// The supplier's price per unit.
    pub unit_cost: Decimal,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The supplier module's service: one generated service per model.
#[derive(Debug, Clone)]
pub struct SupplierService {
    /// Suppliers.
    pub suppliers: Crud<Supplier>,
    /// Restock orders.
    pub restock_orders: Crud<RestockOrder>,
    /// Restock items.
    pub restock_items: Crud<RestockItem>,
}

/// The module's migrations.
pub const MIGRATIONS: &[Migration] = &[
    migration!("0001_supplier"),
    migration!("0002_restock_seed_fields"),
];

/// The `supplier` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct SupplierModule;

impl Module for SupplierModule {
    type Service = SupplierService;
    type Options = NoOptions;

    fn name(&self) -> &'static str {
        "supplier"
    }

    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![Supplier::meta(), RestockOrder::meta(), RestockItem::meta()]
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<SupplierService, BoxError> {
        Ok(SupplierService {
            suppliers: Crud::new(cx.db.clone()),
            restock_orders: Crud::new(cx.db.clone()),
            restock_items: Crud::new(cx.db),
        })
    }
}
