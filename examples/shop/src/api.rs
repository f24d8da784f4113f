//! The shop's own route, the seed's `POST /admin/restock-orders`: the body validated as the
//! seed's zod schema does (supplier id, items with product id, quantity ≥ 1, unit cost ≥ 0,
//! optional notes), the restock workflow run, the order read back with its items.

use std::sync::OnceLock;

use axum::extract::State;
use gorgon_data::FindConfig;
use gorgon_framework::{App, Route};
use gorgon_http::{ApiError, ApiResult, Body, one};
use gorgon_workflows::Workflow;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::flows::{Line, RestockInput, restock_workflow};
use crate::supplier::{RestockOrder, SupplierService};

/// The shop's routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(routes!(create_restock_order)),
        Route::new(routes!(list_suppliers)),
        Route::new(routes!(my_loyalty_account)),
        Route::new(routes!(loyalty_account)),
    ]
}

/// `{loyalty_account}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoyaltyAccountResponse {
    /// The account.
    #[schema(value_type = Object)]
    pub loyalty_account: crate::loyalty::LoyaltyAccount,
}

fn customer(auth: gorgon_http::MaybeAuth) -> ApiResult<String> {
    match auth.0 {
        Some(context) if context.actor_type == "customer" && !context.actor_id.is_empty() => {
            Ok(context.actor_id)
        }
        _ => Err(ApiError::unauthorized()),
    }
}

async fn account_of(
    app: &App,
    customer_id: &str,
) -> ApiResult<Option<crate::loyalty::LoyaltyAccount>> {
    let loyalty = app
        .service::<crate::loyalty::LoyaltyService>()
        .ok_or_else(|| ApiError::internal("the loyalty module is disabled"))?;
    Ok(loyalty
        .accounts
        .list(
            serde_json::json!({ "customer_id": customer_id }),
            FindConfig::new().take(1),
        )
        .await?
        .into_iter()
        .next())
}

/// The logged-in customer's loyalty account.
#[utoipa::path(get, path = "/store/loyalty-accounts/me", tag = "Loyalty",
    responses((status = 200, body = LoyaltyAccountResponse), (status = 401, body = gorgon_http::ErrorBody),
        (status = 404, body = gorgon_http::ErrorBody)))]
async fn my_loyalty_account(
    State(app): State<App>,
    auth: gorgon_http::MaybeAuth,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let customer = customer(auth)?;
    let account = account_of(&app, &customer)
        .await?
        .ok_or_else(|| ApiError::not_found("You have no loyalty account yet"))?;
    one("loyalty_account", account)
}

/// A loyalty account by id: only its own customer reads it; any other caller is told it does
/// not exist, as Medusa answers for another customer's order.
#[utoipa::path(get, path = "/store/loyalty-accounts/{id}", tag = "Loyalty",
    params(("id" = String, Path, description = "The account's id")),
    responses((status = 200, body = LoyaltyAccountResponse), (status = 401, body = gorgon_http::ErrorBody),
        (status = 404, body = gorgon_http::ErrorBody)))]
async fn loyalty_account(
    State(app): State<App>,
    auth: gorgon_http::MaybeAuth,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let customer = customer(auth)?;
    match account_of(&app, &customer).await? {
        Some(account) if account.id == id => one("loyalty_account", account),
        _ => Err(ApiError::not_found(format!(
            "Loyalty account with id: {id} was not found"
        ))),
    }
}

/// `{suppliers, count, offset, limit}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SupplierList {
    /// The suppliers (keys depend on `fields`; `*brands` adds the linked brands).
    #[schema(value_type = Vec<Object>)]
    pub suppliers: Vec<serde_json::Value>,
    /// How many match.
    pub count: u64,
    /// Skipped.
    pub offset: u64,
    /// Page size.
    pub limit: u64,
}

/// List parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SupplierListParams {
    /// Keys to return.
    fields: Option<String>,
    /// Page size (default 20).
    limit: Option<u64>,
    /// Skipped.
    offset: Option<u64>,
    /// Order.
    order: Option<String>,
    /// Free text over names.
    q: Option<String>,
    /// Only these ids.
    id: Option<String>,
    /// Only this name.
    name: Option<String>,
}

/// Lists suppliers (through Query, so `fields=*brands` follows the supplier ↔ brand link).
#[utoipa::path(get, path = "/admin/suppliers", tag = "Suppliers", params(SupplierListParams),
    responses((status = 200, body = SupplierList)))]
async fn list_suppliers(
    State(app): State<App>,
    query: gorgon_http::ListQuery,
) -> ApiResult<gorgon_http::List> {
    use gorgon_data::Model as _;
    query.allow(&["id", "name", "email", "created_at", "updated_at"])?;
    let request = query.to_graph(
        crate::supplier::Supplier::meta(),
        &[
            "id",
            "name",
            "email",
            "accepts_orders",
            "created_at",
            "updated_at",
            "deleted_at",
        ],
        20,
    );
    let page = app.query().graph(request).await?;
    Ok(gorgon_http::List::page("suppliers", page, 20))
}

/// The restock workflow, compiled once.
pub fn restock() -> &'static Workflow<RestockInput, RestockOrder> {
    static WORKFLOW: OnceLock<Workflow<RestockInput, RestockOrder>> = OnceLock::new();
    WORKFLOW.get_or_init(|| restock_workflow().expect("the restock workflow is well formed"))
}

/// One item to restock.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct RestockItemInput {
    /// The product.
    #[garde(length(min = 1))]
    pub product_id: String,
    /// How many, at least 1.
    #[garde(range(min = 1))]
    pub quantity: i64,
    /// The price per unit, at least 0.
    #[garde(custom(not_negative))]
    #[schema(value_type = f64, minimum = 0)]
    pub unit_cost: Decimal,
}

fn not_negative(value: &Decimal, _: &()) -> garde::Result {
    if value.is_sign_negative() && !value.is_zero() {
        Err(garde::Error::new("lower than 0"))
    } else {
        Ok(())
    }
}

/// A restock order to create.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct CreateRestockOrder {
    /// The supplier.
    #[garde(length(min = 1))]
    pub supplier_id: String,
    /// What to order (at least one item).
    #[garde(length(min = 1), dive)]
    pub items: Vec<RestockItemInput>,
    /// Notes for the supplier.
    #[garde(length(max = 2000))]
    pub notes: Option<String>,
}

/// `{restock_order}`, with its items.
#[derive(Debug, Serialize, ToSchema)]
pub struct RestockOrderResponse {
    /// The order, sent to the supplier.
    #[schema(value_type = Object)]
    pub restock_order: RestockOrder,
}

/// Creates a restock order and sends it to its supplier (the seed's three-step workflow; a
/// supplier that refuses rolls it back and answers 400).
#[utoipa::path(
    post,
    path = "/admin/restock-orders",
    tag = "Restock orders",
    request_body = CreateRestockOrder,
    responses(
        (status = 200, body = RestockOrderResponse),
        (status = 400, body = gorgon_http::ErrorBody),
        (status = 404, body = gorgon_http::ErrorBody)
    )
)]
async fn create_restock_order(
    State(app): State<App>,
    Body(body): Body<CreateRestockOrder>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let suppliers = app
        .service::<SupplierService>()
        .ok_or_else(|| ApiError::internal("the supplier module is disabled"))?;
    // An unknown supplier is a 404, before anything runs.
    suppliers
        .suppliers
        .retrieve(&body.supplier_id, FindConfig::new())
        .await?;
    let input = RestockInput {
        supplier_id: body.supplier_id,
        items: body
            .items
            .into_iter()
            .map(|item| Line {
                product_id: item.product_id,
                quantity: item.quantity,
                unit_cost: item.unit_cost,
            })
            .collect(),
        notes: body.notes,
    };
    let order = app.workflows().run(restock(), input).await?;
    one("restock_order", order)
}
