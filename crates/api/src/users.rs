//! `/admin/users` and `/admin/invites`: the admin users, as Medusa's routes answer.

use axum::Json;
use axum::extract::{Path, State};
use gorgon_framework::{App, Route};
use gorgon_http::{ApiError, ApiResult, Auth, Body, List, ListQuery, one};
use gorgon_module_auth::AuthService;
use gorgon_module_user::{Invite, NewUser, User, UserError, UserService};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

/// The routes of this family.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(routes!(me)),
        Route::new(routes!(list_users)),
        Route::new(routes!(retrieve_user)),
        Route::new(routes!(create_invite)),
        // Accepting an invite needs a registered auth identity, not a user yet.
        Route::new(routes!(accept_invite)).public(),
    ]
}

const USER_FIELDS: &[&str] = &[
    "id",
    "email",
    "first_name",
    "last_name",
    "avatar_url",
    "metadata",
    "created_at",
    "updated_at",
    "deleted_at",
];

/// `{user}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    /// The user (keys depend on `fields`).
    #[schema(value_type = Object)]
    pub user: Value,
}

/// `{users, count, offset, limit}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    /// The users.
    #[schema(value_type = Vec<Object>)]
    pub users: Vec<Value>,
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
pub struct UserListParams {
    /// Keys to return.
    fields: Option<String>,
    /// Page size (default 50).
    limit: Option<u64>,
    /// Skipped.
    offset: Option<u64>,
    /// Order, `-created_at` for newest first.
    order: Option<String>,
    /// Free text over email and names.
    q: Option<String>,
    /// Only this email.
    email: Option<String>,
    /// Only these ids.
    id: Option<String>,
}

/// An invite to create.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// Who is invited.
    #[garde(email)]
    pub email: String,
}

/// `{invite}`; the token is shown to the inviter to pass on.
#[derive(Debug, Serialize, ToSchema)]
pub struct InviteResponse {
    /// The invite.
    #[schema(value_type = Object)]
    pub invite: Invite,
}

/// The new user's details.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// First name.
    #[garde(length(max = 200))]
    pub first_name: Option<String>,
    /// Last name.
    #[garde(length(max = 200))]
    pub last_name: Option<String>,
}

/// The invite's token.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AcceptParams {
    /// The invite's token.
    token: String,
}

fn users(app: &App) -> ApiResult<std::sync::Arc<UserService>> {
    app.service::<UserService>()
        .ok_or_else(|| ApiError::internal("the user module is not registered"))
}

fn user_error(error: UserError) -> ApiError {
    match error {
        UserError::InvalidInvite => {
            ApiError::new(gorgon_http::ErrorType::Unauthorized, error.to_string())
        }
        UserError::Data(error) => error.into(),
    }
}

async fn read_user(app: &App, id: &str, query: &ListQuery) -> ApiResult<Value> {
    query
        .retrieve(app, User::meta(), USER_FIELDS, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("User with id: {id} was not found")))
}

use gorgon_data::Model as _;

/// The logged-in user.
#[utoipa::path(
    get,
    path = "/admin/users/me",
    tag = "Users",
    responses((status = 200, body = UserResponse), (status = 401, body = gorgon_http::ErrorBody))
)]
async fn me(State(app): State<App>, auth: Auth, query: ListQuery) -> ApiResult<Json<Value>> {
    query.allow(&[])?;
    if auth.0.actor_type != "user" {
        return Err(ApiError::forbidden("Only users have a profile"));
    }
    one("user", read_user(&app, &auth.0.actor_id, &query).await?)
}

/// Lists users.
#[utoipa::path(
    get,
    path = "/admin/users",
    tag = "Users",
    params(UserListParams),
    responses((status = 200, body = UserList))
)]
async fn list_users(State(app): State<App>, query: ListQuery) -> ApiResult<List> {
    query.allow(&[
        "id",
        "email",
        "first_name",
        "last_name",
        "created_at",
        "updated_at",
    ])?;
    let request = query.to_graph(User::meta(), USER_FIELDS, 50);
    let page = app.query().graph(request).await?;
    Ok(List::page("users", page, 50))
}

/// One user.
#[utoipa::path(
    get,
    path = "/admin/users/{id}",
    tag = "Users",
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 200, body = UserResponse), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn retrieve_user(
    State(app): State<App>,
    Path(id): Path<String>,
    query: ListQuery,
) -> ApiResult<Json<Value>> {
    query.allow(&[])?;
    one("user", read_user(&app, &id, &query).await?)
}

/// Invites someone to become a user.
#[utoipa::path(
    post,
    path = "/admin/invites",
    tag = "Users",
    request_body = InviteRequest,
    responses((status = 200, body = InviteResponse), (status = 400, body = gorgon_http::ErrorBody))
)]
async fn create_invite(
    State(app): State<App>,
    Body(body): Body<InviteRequest>,
) -> ApiResult<Json<Value>> {
    let invite = users(&app)?.invite(&body.email).await.map_err(user_error)?;
    one("invite", invite)
}

/// Accepts an invite: with the token of a registered auth identity
/// (`POST /auth/user/emailpass/register`) and the invite's token, creates the user and joins
/// the identity to it.
#[utoipa::path(
    post,
    path = "/admin/invites/accept",
    tag = "Users",
    params(AcceptParams),
    request_body = AcceptRequest,
    responses((status = 200, body = UserResponse), (status = 401, body = gorgon_http::ErrorBody))
)]
async fn accept_invite(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(params): axum::extract::Query<AcceptParams>,
    Body(body): Body<AcceptRequest>,
) -> ApiResult<Json<Value>> {
    let jwt = gorgon_http::Jwt::of(&app);
    let context = gorgon_http::auth::identify(&app, &jwt, &headers, false)
        .await?
        .filter(|c| c.actor_id.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let user = users(&app)?
        .accept_invite(
            &params.token,
            NewUser {
                first_name: body.first_name,
                last_name: body.last_name,
                ..NewUser::default()
            },
        )
        .await
        .map_err(user_error)?;
    let auth = app
        .service::<AuthService>()
        .ok_or_else(|| ApiError::internal("the auth module is not registered"))?;
    auth.link_actor(&context.auth_identity_id, "user", &user.id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    one("user", user)
}
