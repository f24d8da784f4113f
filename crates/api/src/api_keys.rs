//! `/admin/api-keys`: publishable and secret keys, created, listed, revoked and deleted, as
//! Medusa's routes answer. A secret key's clear text is in the creation's answer only.

use axum::Json;
use axum::extract::{Path, State};
use gorgon_data::Model as _;
use gorgon_framework::{App, Route};
use gorgon_http::{ApiError, ApiResult, Auth, Body, Deleted, List, ListQuery, one};
use gorgon_module_api_key::{ApiKey, ApiKeyError, ApiKeyService, KeyType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

/// The routes of this family.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(routes!(list_keys, create_key)),
        Route::new(routes!(retrieve_key, delete_key)),
        Route::new(routes!(revoke_key)),
    ]
}

pub(crate) const KEY_FIELDS: &[&str] = &[
    "id",
    "token",
    "redacted",
    "title",
    "type",
    "last_used_at",
    "created_by",
    "revoked_by",
    "revoked_at",
    "created_at",
    "updated_at",
    "deleted_at",
];

/// A key to create.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A name for people.
    #[garde(length(min = 1, max = 200))]
    pub title: String,
    /// `publishable` or `secret`.
    #[serde(rename = "type")]
    #[garde(skip)]
    #[schema(value_type = String)]
    pub key_type: KeyType,
}

/// `{api_key}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    /// The key; on creation of a secret key, `token` is the key in clear, shown once.
    #[schema(value_type = Object)]
    pub api_key: Value,
}

/// `{api_keys, count, offset, limit}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// The keys.
    #[schema(value_type = Vec<Object>)]
    pub api_keys: Vec<Value>,
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
pub struct KeyListParams {
    /// Keys to return.
    fields: Option<String>,
    /// Page size (default 20).
    limit: Option<u64>,
    /// Skipped.
    offset: Option<u64>,
    /// Order.
    order: Option<String>,
    /// Free text over titles.
    q: Option<String>,
    /// `publishable` or `secret`.
    #[param(rename = "type")]
    key_type: Option<String>,
}

fn keys(app: &App) -> ApiResult<std::sync::Arc<ApiKeyService>> {
    app.service::<ApiKeyService>()
        .ok_or_else(|| ApiError::internal("the api_key module is not registered"))
}

fn key_error(error: ApiKeyError) -> ApiError {
    match error {
        ApiKeyError::AlreadyRevoked(_) => ApiError::not_allowed(error.to_string()),
        ApiKeyError::Data(error) => error.into(),
    }
}

/// Lists keys.
#[utoipa::path(
    get,
    path = "/admin/api-keys",
    tag = "API keys",
    params(KeyListParams),
    responses((status = 200, body = KeyList))
)]
async fn list_keys(State(app): State<App>, query: ListQuery) -> ApiResult<List> {
    query.allow(&[
        "id",
        "title",
        "type",
        "created_at",
        "updated_at",
        "revoked_at",
    ])?;
    let page = app
        .query()
        .graph(query.to_graph(ApiKey::meta(), KEY_FIELDS, 20))
        .await?;
    Ok(List::page("api_keys", page, 20))
}

/// Creates a key.
#[utoipa::path(
    post,
    path = "/admin/api-keys",
    tag = "API keys",
    request_body = CreateKey,
    responses((status = 200, body = KeyResponse), (status = 400, body = gorgon_http::ErrorBody))
)]
async fn create_key(
    State(app): State<App>,
    auth: Auth,
    Body(body): Body<CreateKey>,
) -> ApiResult<Json<Value>> {
    let created = keys(&app)?
        .create(&body.title, body.key_type, &auth.0.actor_id)
        .await
        .map_err(key_error)?;
    let mut value = serde_json::to_value(&created.key).map_err(ApiError::internal)?;
    if let Some(secret) = created.secret {
        value["token"] = json!(secret);
    }
    one("api_key", value)
}

/// One key.
#[utoipa::path(
    get,
    path = "/admin/api-keys/{id}",
    tag = "API keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, body = KeyResponse), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn retrieve_key(
    State(app): State<App>,
    Path(id): Path<String>,
    query: ListQuery,
) -> ApiResult<Json<Value>> {
    query.allow(&[])?;
    let key = query
        .retrieve(&app, ApiKey::meta(), KEY_FIELDS, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("ApiKey with id: {id} was not found")))?;
    one("api_key", key)
}

/// Revokes a key: it authenticates nothing from now on.
#[utoipa::path(
    post,
    path = "/admin/api-keys/{id}/revoke",
    tag = "API keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, body = KeyResponse), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn revoke_key(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let key = keys(&app)?
        .revoke(&id, &auth.0.actor_id)
        .await
        .map_err(key_error)?;
    one("api_key", key)
}

/// Deletes a key.
#[utoipa::path(
    delete,
    path = "/admin/api-keys/{id}",
    tag = "API keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, body = Deleted), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn delete_key(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Deleted>> {
    let service = keys(&app)?;
    service
        .keys
        .retrieve(&id, gorgon_data::FindConfig::new())
        .await?;
    service.keys.soft_delete([id.as_str()]).await?;
    Ok(Json(Deleted::new(id, "api_key")))
}
