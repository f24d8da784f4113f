//! `/admin/sales-channels` and the channels of a publishable key
//! (`POST /admin/api-keys/{id}/sales-channels`), as Medusa's routes answer. A storefront's
//! publishable key carries its channels into every `/store` request.

use axum::Json;
use axum::extract::{Path, State};
use gorgon_data::{FindConfig, Model as _};
use gorgon_framework::{App, Route};
use gorgon_http::{ApiError, ApiResult, Body, Deleted, List, ListQuery, one};
use gorgon_module_api_key::{ApiKeyService, KeyType};
use gorgon_module_sales_channel::{SalesChannel, SalesChannelService};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

/// The routes of this family.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(routes!(list_channels, create_channel)),
        Route::new(routes!(retrieve_channel, update_channel, delete_channel)),
        Route::new(routes!(key_channels)),
    ]
}

const FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "is_disabled",
    "metadata",
    "created_at",
    "updated_at",
    "deleted_at",
];

/// A channel to create.
#[derive(Debug, Serialize, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    /// Its name.
    #[garde(length(min = 1, max = 200))]
    pub name: String,
    /// What it is for.
    #[garde(length(max = 2000))]
    pub description: Option<String>,
    /// Whether it is disabled.
    #[garde(skip)]
    #[serde(default)]
    pub is_disabled: bool,
    /// Free-form data.
    #[garde(skip)]
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
}

/// Changes to a channel.
#[derive(Debug, Serialize, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannel {
    /// A new name.
    #[garde(length(min = 1, max = 200))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new description.
    #[garde(length(max = 2000))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Disable or enable it.
    #[garde(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_disabled: Option<bool>,
    /// Free-form data.
    #[garde(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub metadata: Option<Value>,
}

/// Channels to add to a key and to remove from it.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct KeyChannels {
    /// Channel ids to add.
    #[garde(skip)]
    #[serde(default)]
    pub add: Vec<String>,
    /// Channel ids to remove.
    #[garde(skip)]
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `{sales_channel}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelResponse {
    /// The channel.
    #[schema(value_type = Object)]
    pub sales_channel: Value,
}

/// `{sales_channels, count, offset, limit}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelList {
    /// The channels.
    #[schema(value_type = Vec<Object>)]
    pub sales_channels: Vec<Value>,
    /// How many match.
    pub count: u64,
    /// Skipped.
    pub offset: u64,
    /// Page size.
    pub limit: u64,
}

/// `{api_key}` with its channels.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyWithChannels {
    /// The key, with `sales_channels`.
    #[schema(value_type = Object)]
    pub api_key: Value,
}

/// List parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ChannelListParams {
    /// Keys to return.
    fields: Option<String>,
    /// Page size (default 20).
    limit: Option<u64>,
    /// Skipped.
    offset: Option<u64>,
    /// Order.
    order: Option<String>,
    /// Free text over names and descriptions.
    q: Option<String>,
    /// Only these ids.
    id: Option<String>,
    /// Only this name.
    name: Option<String>,
}

fn channels(app: &App) -> ApiResult<std::sync::Arc<SalesChannelService>> {
    app.service::<SalesChannelService>()
        .ok_or_else(|| ApiError::internal("the sales_channel module is not registered"))
}

async fn read(app: &App, id: &str, query: &ListQuery) -> ApiResult<Value> {
    query
        .retrieve(app, SalesChannel::meta(), FIELDS, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Sales channel with id: {id} was not found")))
}

/// Lists sales channels.
#[utoipa::path(get, path = "/admin/sales-channels", tag = "Sales channels",
    params(ChannelListParams), responses((status = 200, body = ChannelList)))]
async fn list_channels(State(app): State<App>, query: ListQuery) -> ApiResult<List> {
    query.allow(&["id", "name", "is_disabled", "created_at", "updated_at"])?;
    let page = app
        .query()
        .graph(query.to_graph(SalesChannel::meta(), FIELDS, 20))
        .await?;
    Ok(List::page("sales_channels", page, 20))
}

/// Creates a sales channel.
#[utoipa::path(post, path = "/admin/sales-channels", tag = "Sales channels",
    request_body = CreateChannel,
    responses((status = 200, body = ChannelResponse), (status = 400, body = gorgon_http::ErrorBody)))]
async fn create_channel(
    State(app): State<App>,
    Body(body): Body<CreateChannel>,
) -> ApiResult<Json<Value>> {
    let channel = channels(&app)?.create(&body).await?;
    one("sales_channel", channel)
}

/// One sales channel.
#[utoipa::path(get, path = "/admin/sales-channels/{id}", tag = "Sales channels",
    params(("id" = String, Path, description = "The channel's id")),
    responses((status = 200, body = ChannelResponse), (status = 404, body = gorgon_http::ErrorBody)))]
async fn retrieve_channel(
    State(app): State<App>,
    Path(id): Path<String>,
    query: ListQuery,
) -> ApiResult<Json<Value>> {
    query.allow(&[])?;
    one("sales_channel", read(&app, &id, &query).await?)
}

/// Updates a sales channel.
#[utoipa::path(post, path = "/admin/sales-channels/{id}", tag = "Sales channels",
    params(("id" = String, Path, description = "The channel's id")), request_body = UpdateChannel,
    responses((status = 200, body = ChannelResponse), (status = 404, body = gorgon_http::ErrorBody)))]
async fn update_channel(
    State(app): State<App>,
    Path(id): Path<String>,
    Body(body): Body<UpdateChannel>,
) -> ApiResult<Json<Value>> {
    let service = channels(&app)?;
    service.retrieve(&id, FindConfig::new()).await?;
    one("sales_channel", service.update(&id, &body).await?)
}

/// Deletes a sales channel (soft), and its links to keys.
#[utoipa::path(delete, path = "/admin/sales-channels/{id}", tag = "Sales channels",
    params(("id" = String, Path, description = "The channel's id")),
    responses((status = 200, body = Deleted), (status = 404, body = gorgon_http::ErrorBody)))]
async fn delete_channel(
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deleted>> {
    let service = channels(&app)?;
    service.retrieve(&id, FindConfig::new()).await?;
    let keys = service.soft_delete([id.as_str()]).await?;
    app.links().delete(&keys).await?;
    Ok(Json(Deleted::new(id, "sales-channel")))
}

/// Adds channels to a publishable key and removes others.
#[utoipa::path(post, path = "/admin/api-keys/{id}/sales-channels", tag = "API keys",
    params(("id" = String, Path, description = "The key's id")), request_body = KeyChannels,
    responses((status = 200, body = KeyWithChannels), (status = 400, body = gorgon_http::ErrorBody),
        (status = 404, body = gorgon_http::ErrorBody)))]
async fn key_channels(
    State(app): State<App>,
    Path(id): Path<String>,
    Body(body): Body<KeyChannels>,
) -> ApiResult<Json<Value>> {
    let keys = app
        .service::<ApiKeyService>()
        .ok_or_else(|| ApiError::internal("the api_key module is not registered"))?;
    let key = keys.keys.retrieve(&id, FindConfig::new()).await?;
    if key.r#type != KeyType::Publishable {
        return Err(ApiError::invalid_data(
            "Sales channels can only be associated with publishable API keys",
        ));
    }
    let service = channels(&app)?;
    for channel in &body.add {
        service.retrieve(channel, FindConfig::new()).await?;
    }
    let pair = |channel: &String| json!({ "api_key": { "api_key_id": id }, "sales_channel": { "sales_channel_id": channel } });
    let links = app.links();
    let existing = crate::channels_of(&app, &id).await?;
    let new: Vec<Value> = body
        .add
        .iter()
        .filter(|c| !existing.contains(c))
        .map(pair)
        .collect();
    if !new.is_empty() {
        links.create(new).await?;
    }
    if !body.remove.is_empty() {
        links.dismiss(body.remove.iter().map(pair)).await?;
    }
    let found = app
        .query()
        .graph(gorgon_framework::GraphRequest {
            entity: "api_key".into(),
            fields: crate::api_keys::KEY_FIELDS
                .iter()
                .map(|f| (*f).to_owned())
                .chain(["sales_channels.*".to_owned()])
                .collect(),
            filters: json!({ "id": id }),
            pagination: None,
            with_deleted: false,
        })
        .await?;
    let key = found
        .data
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(id.clone()))?;
    one("api_key", key)
}
