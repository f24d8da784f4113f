//! `/auth`: the `emailpass` provider's login, registration and password reset, token refresh,
//! and cookie sessions, as Medusa's auth routes answer.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use gorgon_framework::{App, Route};
use gorgon_http::auth::{bearer, session};
use gorgon_http::{ApiError, ApiResult, AuthContext, Body, Jwt};
use gorgon_module_auth::{AuthError, AuthIdentity, AuthService};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::routes;

/// The routes of this family.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(routes!(login)),
        Route::new(routes!(register)),
        Route::new(routes!(reset_password)),
        Route::new(routes!(update_password)),
        Route::new(routes!(refresh)),
        Route::new(routes!(open_session, close_session)),
    ]
}

/// An email and a password.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
pub struct Credentials {
    /// The email.
    #[garde(email)]
    pub email: String,
    /// The password.
    #[garde(length(min = 1))]
    pub password: String,
}

/// `{token}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// A bearer token (JWT).
    pub token: String,
}

/// Who asks for a reset.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The email.
    #[garde(length(min = 1))]
    pub identifier: String,
}

/// A new password, with the reset token as the bearer.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The email.
    #[garde(email)]
    pub email: String,
    /// The new password.
    #[garde(length(min = 1))]
    pub password: String,
}

/// `{success: true}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Success {
    /// Always true.
    pub success: bool,
}

/// `{user: auth_context}` of a new session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    /// The session's caller.
    pub user: AuthContext,
}

fn service(app: &App) -> ApiResult<std::sync::Arc<AuthService>> {
    app.service::<AuthService>()
        .ok_or_else(|| ApiError::internal("the auth module is not registered"))
}

fn auth_error(error: AuthError) -> ApiError {
    match error {
        AuthError::InvalidCredentials | AuthError::InvalidToken => {
            ApiError::new(gorgon_http::ErrorType::Unauthorized, error.to_string())
        }
        AuthError::Exists => ApiError::new(gorgon_http::ErrorType::Unauthorized, error.to_string()),
        AuthError::InvalidPassword => ApiError::invalid_data(error.to_string()),
        AuthError::Data(error) => error.into(),
        AuthError::Hash(error) => ApiError::internal(error),
    }
}

fn check_actor(actor_type: &str) -> ApiResult<()> {
    if matches!(actor_type, "user" | "customer") {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "Unknown actor type: {actor_type}"
        )))
    }
}

fn token_for(
    app: &App,
    identity: &AuthIdentity,
    actor_type: &str,
    email: &str,
) -> ApiResult<String> {
    let context = AuthContext {
        actor_id: identity.actor_id(actor_type).unwrap_or_default().to_owned(),
        actor_type: actor_type.to_owned(),
        auth_identity_id: identity.id.clone(),
        app_metadata: identity.app_metadata.clone().unwrap_or_else(|| json!({})),
        method: None,
    };
    Jwt::of(app).issue(&context, json!({ "email": email }))
}

/// Logs in with an email and a password.
#[utoipa::path(
    post,
    path = "/auth/{actor_type}/emailpass",
    tag = "Auth",
    params(("actor_type" = String, Path, description = "user or customer")),
    request_body = Credentials,
    responses((status = 200, body = TokenResponse), (status = 401, body = gorgon_http::ErrorBody))
)]
async fn login(
    State(app): State<App>,
    Path(actor_type): Path<String>,
    Body(body): Body<Credentials>,
) -> ApiResult<Json<TokenResponse>> {
    check_actor(&actor_type)?;
    let identity = service(&app)?
        .authenticate(&body.email, &body.password)
        .await
        .map_err(auth_error)?;
    Ok(Json(TokenResponse {
        token: token_for(&app, &identity, &actor_type, &body.email)?,
    }))
}

/// Registers an email and a password; the token has no actor until one is created.
#[utoipa::path(
    post,
    path = "/auth/{actor_type}/emailpass/register",
    tag = "Auth",
    params(("actor_type" = String, Path, description = "user or customer")),
    request_body = Credentials,
    responses((status = 200, body = TokenResponse), (status = 401, body = gorgon_http::ErrorBody))
)]
async fn register(
    State(app): State<App>,
    Path(actor_type): Path<String>,
    Body(body): Body<Credentials>,
) -> ApiResult<Json<TokenResponse>> {
    check_actor(&actor_type)?;
    let identity = service(&app)?
        .register(&body.email, &body.password)
        .await
        .map_err(auth_error)?;
    Ok(Json(TokenResponse {
        token: token_for(&app, &identity, &actor_type, &body.email)?,
    }))
}

/// Asks for a password reset: emits `auth.password_reset` with the token, for a subscriber
/// to send. Answers the same whether or not the email is known.
#[utoipa::path(
    post,
    path = "/auth/{actor_type}/emailpass/reset-password",
    tag = "Auth",
    params(("actor_type" = String, Path, description = "user or customer")),
    request_body = ResetRequest,
    responses((status = 201, description = "Requested"))
)]
async fn reset_password(
    State(app): State<App>,
    Path(actor_type): Path<String>,
    Body(body): Body<ResetRequest>,
) -> ApiResult<Response> {
    check_actor(&actor_type)?;
    if let Some(token) = service(&app)?
        .reset_token(&body.identifier)
        .await
        .map_err(auth_error)?
    {
        let event = gorgon_event_bus::Message::new(
            "auth.password_reset",
            json!({ "entity_id": body.identifier, "actor_type": actor_type, "token": token }),
        );
        app.infrastructure()
            .events
            .emit_one(event)
            .await
            .map_err(ApiError::internal)?;
    }
    Ok(axum::http::StatusCode::CREATED.into_response())
}

/// Sets a new password with the reset token (`Authorization: Bearer <token>`).
#[utoipa::path(
    post,
    path = "/auth/{actor_type}/emailpass/update",
    tag = "Auth",
    params(("actor_type" = String, Path, description = "user or customer")),
    request_body = UpdateRequest,
    responses((status = 200, body = Success), (status = 401, body = gorgon_http::ErrorBody))
)]
async fn update_password(
    State(app): State<App>,
    Path(actor_type): Path<String>,
    headers: HeaderMap,
    Body(body): Body<UpdateRequest>,
) -> ApiResult<Json<Success>> {
    check_actor(&actor_type)?;
    let token = bearer(&headers).ok_or_else(ApiError::unauthorized)?;
    service(&app)?
        .reset_password(&body.email, token, &body.password)
        .await
        .map_err(auth_error)?;
    Ok(Json(Success { success: true }))
}

/// A fresh token for the bearer's (or session's) caller.
#[utoipa::path(
    post,
    path = "/auth/token/refresh",
    tag = "Auth",
    responses((status = 200, body = TokenResponse), (status = 401, body = gorgon_http::ErrorBody))
)]
async fn refresh(State(app): State<App>, headers: HeaderMap) -> ApiResult<Json<TokenResponse>> {
    let jwt = Jwt::of(&app);
    let context = gorgon_http::auth::identify(&app, &jwt, &headers, false)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    // Read the identity again: an actor created since the last token is in it now.
    let identity = service(&app)?
        .retrieve(&context.auth_identity_id)
        .await
        .map_err(auth_error)?;
    let context = AuthContext {
        actor_id: identity
            .actor_id(&context.actor_type)
            .unwrap_or(&context.actor_id)
            .to_owned(),
        app_metadata: identity.app_metadata.unwrap_or_else(|| json!({})),
        ..context
    };
    Ok(Json(TokenResponse {
        token: jwt.issue(&context, Value::Null)?,
    }))
}

/// Turns a bearer token into a cookie session.
#[utoipa::path(
    post,
    path = "/auth/session",
    tag = "Auth",
    responses((status = 200, body = SessionResponse), (status = 401, body = gorgon_http::ErrorBody))
)]
async fn open_session(State(app): State<App>, headers: HeaderMap) -> ApiResult<Response> {
    let token = bearer(&headers).ok_or_else(ApiError::unauthorized)?;
    let context = Jwt::of(&app)
        .verify(token)
        .ok_or_else(ApiError::unauthorized)?;
    let id = session::open(&app, &context).await?;
    let mut response = Json(SessionResponse { user: context }).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(&app, &id));
    Ok(response)
}

/// Ends the cookie session.
#[utoipa::path(
    delete,
    path = "/auth/session",
    tag = "Auth",
    responses((status = 200, body = Success))
)]
async fn close_session(State(app): State<App>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(id) = session::cookie(&headers) {
        session::close(&app, &id).await?;
    }
    let mut response = Json(Success { success: true }).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    Ok(response)
}
