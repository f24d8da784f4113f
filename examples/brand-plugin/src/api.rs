//! The plugin's admin routes, as Medusa's CRUD routes answer: `GET`/`POST /admin/brands`,
//! `GET`/`POST`/`DELETE /admin/brands/{id}`. Creation runs the `create-brand` workflow; lists
//! read through Query (so `fields=*suppliers` follows the application's links).

use std::sync::OnceLock;

use axum::Json;
use axum::extract::{Path, State};
use gorgon_data::{FindConfig, Model};
use gorgon_framework::{App, Route};
use gorgon_http::{ApiError, ApiResult, Body, Deleted, List, ListQuery, one};
use gorgon_workflows::Workflow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::{Brand, BrandError, BrandService, NewBrand, create_brand_workflow};

/// The plugin's routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(routes!(list_brands, create_brand)),
        Route::new(routes!(retrieve_brand, update_brand, delete_brand)),
    ]
}

fn workflow() -> &'static Workflow<NewBrand, Brand> {
    static WORKFLOW: OnceLock<Workflow<NewBrand, Brand>> = OnceLock::new();
    WORKFLOW
        .get_or_init(|| create_brand_workflow().expect("the create-brand workflow is well formed"))
}

/// The `create-brand` workflow, compiled once (what the plugin registers).
pub fn create_brand_flow() -> &'static Workflow<NewBrand, Brand> {
    workflow()
}

const FIELDS: &[&str] = &[
    "id",
    "name",
    "country",
    "created_at",
    "updated_at",
    "deleted_at",
];

/// A brand to create.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct CreateBrand {
    /// Its name (the plugin's `max_name_length` applies).
    #[garde(length(min = 1))]
    pub name: String,
    /// Its country (ISO 3166 alpha-2); the plugin's `default_country` when left out.
    #[garde(length(min = 2, max = 2))]
    pub country: Option<String>,
}

/// Changes to a brand.
#[derive(Debug, Serialize, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct UpdateBrand {
    /// A new name.
    #[garde(length(min = 1))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new country.
    #[garde(length(min = 2, max = 2))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// `{brand}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrandResponse {
    /// The brand (keys depend on `fields`).
    #[schema(value_type = Object)]
    pub brand: Value,
}

/// `{brands, count, offset, limit}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrandList {
    /// The brands.
    #[schema(value_type = Vec<Object>)]
    pub brands: Vec<Value>,
    /// How many match.
    pub count: u64,
    /// Skipped.
    pub offset: u64,
    /// Page size.
    pub limit: u64,
}

/// List parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct BrandListParams {
    /// Keys to return (`*suppliers` adds the linked suppliers).
    fields: Option<String>,
    /// Page size (default 20).
    limit: Option<u64>,
    /// Skipped.
    offset: Option<u64>,
    /// Order (`name`, `-created_at`).
    order: Option<String>,
    /// Free text over names.
    q: Option<String>,
    /// Only these ids.
    id: Option<String>,
    /// Only this name.
    name: Option<String>,
    /// Only this country.
    country: Option<String>,
}

fn service(app: &App) -> ApiResult<std::sync::Arc<BrandService>> {
    app.service::<BrandService>()
        .ok_or_else(|| ApiError::internal("the brand module is disabled"))
}

fn brand_error(error: BrandError) -> ApiError {
    match error {
        BrandError::Name { .. } => ApiError::invalid_data(format!("Invalid request: {error}")),
        BrandError::Data(error) => error.into(),
    }
}

async fn read(app: &App, id: &str, query: &ListQuery) -> ApiResult<Value> {
    query
        .retrieve(app, Brand::meta(), FIELDS, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Brand with id: {id} was not found")))
}

/// Lists brands.
#[utoipa::path(get, path = "/admin/brands", tag = "Brands", params(BrandListParams),
    responses((status = 200, body = BrandList)))]
async fn list_brands(State(app): State<App>, query: ListQuery) -> ApiResult<List> {
    query.allow(&["id", "name", "country", "created_at", "updated_at"])?;
    let page = app
        .query()
        .graph(query.to_graph(Brand::meta(), FIELDS, 20))
        .await?;
    Ok(List::page("brands", page, 20))
}

/// Creates a brand (the `create-brand` workflow).
#[utoipa::path(post, path = "/admin/brands", tag = "Brands", request_body = CreateBrand,
    responses((status = 200, body = BrandResponse), (status = 400, body = gorgon_http::ErrorBody)))]
async fn create_brand(
    State(app): State<App>,
    Body(body): Body<CreateBrand>,
) -> ApiResult<Json<Value>> {
    let brand = app
        .workflows()
        .run(
            workflow(),
            NewBrand {
                name: body.name,
                country: body.country,
            },
        )
        .await?;
    one("brand", brand)
}

/// One brand.
#[utoipa::path(get, path = "/admin/brands/{id}", tag = "Brands",
    params(("id" = String, Path, description = "The brand's id")),
    responses((status = 200, body = BrandResponse), (status = 404, body = gorgon_http::ErrorBody)))]
async fn retrieve_brand(
    State(app): State<App>,
    Path(id): Path<String>,
    query: ListQuery,
) -> ApiResult<Json<Value>> {
    query.allow(&[])?;
    one("brand", read(&app, &id, &query).await?)
}

/// Updates a brand.
#[utoipa::path(post, path = "/admin/brands/{id}", tag = "Brands",
    params(("id" = String, Path, description = "The brand's id")), request_body = UpdateBrand,
    responses((status = 200, body = BrandResponse), (status = 404, body = gorgon_http::ErrorBody)))]
async fn update_brand(
    State(app): State<App>,
    Path(id): Path<String>,
    Body(body): Body<UpdateBrand>,
) -> ApiResult<Json<Value>> {
    let brands = service(&app)?;
    if let Some(name) = &body.name {
        brands.check_name(name).map_err(brand_error)?;
    }
    brands.brands.retrieve(&id, FindConfig::new()).await?;
    let brand = brands.brands.update(&id, &body).await?;
    one("brand", brand)
}

/// Deletes a brand (soft: `restore` brings it back with its links).
#[utoipa::path(delete, path = "/admin/brands/{id}", tag = "Brands",
    params(("id" = String, Path, description = "The brand's id")),
    responses((status = 200, body = Deleted), (status = 404, body = gorgon_http::ErrorBody)))]
async fn delete_brand(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Deleted>> {
    let brands = service(&app)?;
    brands.brands.retrieve(&id, FindConfig::new()).await?;
    brands.brands.soft_delete([id.as_str()]).await?;
    Ok(Json(Deleted::new(id, "brand")))
}
