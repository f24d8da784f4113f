//! Who is calling, as Medusa's `authenticate` middleware decides it.
//!
//! | namespace | required | accepted |
//! |---|---|---|
//! | `/admin` | an actor `user` | `Authorization: Bearer <jwt>`, the session cookie, `Authorization: Basic <sk_…>` (a secret API key) |
//! | `/store` | `x-publishable-api-key` | a `customer` bearer token or session, optional |
//! | `/auth`, others | nothing | |
//!
//! Tokens are JWTs (HS256 with `project.http.jwt_secret`) whose claims carry the actor; secret
//! and publishable keys are checked by the application's [`Credentials`] service (the API key
//! module); sessions live in the cache module under a random id, so that logging out ends
//! them everywhere.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gorgon_framework::App;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorType};

/// The header a storefront names itself with.
pub const PUBLISHABLE_KEY_HEADER: &str = "x-publishable-api-key";

/// The session cookie (express-session's name, which Medusa keeps).
pub const SESSION_COOKIE: &str = "connect.sid";

/// How long a session lives (Medusa's default: 10 hours).
pub const SESSION_TTL: Duration = Duration::from_secs(10 * 3600);

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A bearer JWT.
    Bearer,
    /// The session cookie.
    Session,
    /// A secret API key.
    ApiKey,
}

/// The authenticated caller (Medusa's `req.auth_context`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuthContext {
    /// The actor's id (`user_…`, `cus_…`, the key's id for an API key); empty while the auth
    /// identity has no actor yet (just registered).
    pub actor_id: String,
    /// `user`, `customer`, `api-key`.
    pub actor_type: String,
    /// The auth identity (empty for an API key).
    pub auth_identity_id: String,
    /// The identity's `app_metadata`.
    #[serde(default)]
    pub app_metadata: Value,
    /// How it was proved.
    #[serde(skip)]
    pub method: Option<AuthMethod>,
}

/// A JWT's claims: the auth context, issued-at and expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The actor's id.
    pub actor_id: String,
    /// The actor's type.
    pub actor_type: String,
    /// The auth identity.
    pub auth_identity_id: String,
    /// The identity's `app_metadata`.
    #[serde(default)]
    pub app_metadata: Value,
    /// The provider's user metadata.
    #[serde(default)]
    pub user_metadata: Value,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
}

/// The publishable key a store request came with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishableKey {
    /// The key's id (`apk_…`).
    pub id: String,
    /// The key (`pk_…`).
    pub token: String,
    /// The sales channels it is scoped to.
    pub sales_channel_ids: Vec<String>,
}

/// The application's keys, looked up by the guards: implemented over the API key module
/// (`gorgon-api`) and registered as `Arc<dyn Credentials>`.
pub trait Credentials: Send + Sync {
    /// The auth context of the live, unrevoked secret key `token` (`sk_…`).
    fn secret_key<'a>(
        &'a self,
        app: &'a App,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<AuthContext>, ApiError>>;

    /// The live, unrevoked publishable key `token` (`pk_…`).
    fn publishable_key<'a>(
        &'a self,
        app: &'a App,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<PublishableKey>, ApiError>>;
}

/// Issues and verifies bearer tokens.
#[derive(Clone)]
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    expires_in: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The development secret, which the `prod` profile refuses.
const DEV_SECRET: &str = "supersecret";

impl Jwt {
    /// Signs with `secret` (HS256); tokens live `expires_in`. An empty secret is an error.
    pub fn new(secret: &[u8], expires_in: Duration) -> Result<Self, ApiError> {
        Ok(Self {
            encoding: EncodingKey::from_secret(secret).map_err(ApiError::internal)?,
            decoding: DecodingKey::from_secret(secret).map_err(ApiError::internal)?,
            expires_in,
        })
    }

    /// The application's: `project.http.jwt_secret` (the development secret when unset, which
    /// only the `dev` profile allows) and `project.http.jwt_expires_in`.
    pub fn of(app: &App) -> Self {
        let http = &app.config().project.http;
        let secret = http
            .jwt_secret
            .as_ref()
            .map(|s| s.expose_secret().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEV_SECRET.to_owned());
        Self::new(secret.as_bytes(), Duration::from_secs(http.jwt_expires_in))
            .expect("a non-empty secret makes a key")
    }

    /// A token for `context`.
    pub fn issue(&self, context: &AuthContext, user_metadata: Value) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            actor_id: context.actor_id.clone(),
            actor_type: context.actor_type.clone(),
            auth_identity_id: context.auth_identity_id.clone(),
            app_metadata: context.app_metadata.clone(),
            user_metadata,
            iat: now,
            exp: now + self.expires_in.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// The auth context of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<AuthContext> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?;
        Some(AuthContext {
            actor_id: data.claims.actor_id,
            actor_type: data.claims.actor_type,
            auth_identity_id: data.claims.auth_identity_id,
            app_metadata: data.claims.app_metadata,
            method: Some(AuthMethod::Bearer),
        })
    }
}

/// Sessions in the cache module.
pub mod session {
    use super::*;
    use gorgon_cache::CacheExt;

    fn key(id: &str) -> String {
        format!("gorgon:session:{id}")
    }

    /// Opens a session for `context`; its id is the cookie's value.
    pub async fn open(app: &App, context: &AuthContext) -> Result<String, ApiError> {
        let id = hex::encode(rand::random::<[u8; 32]>());
        app.infrastructure()
            .cache
            .set_json(&key(&id), context, SESSION_TTL, &[])
            .await
            .map_err(ApiError::internal)?;
        Ok(id)
    }

    /// The context of a live session.
    pub async fn find(app: &App, id: &str) -> Option<AuthContext> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut context: AuthContext = app
            .infrastructure()
            .cache
            .get_json(&key(id))
            .await
            .ok()
            .flatten()?;
        context.method = Some(AuthMethod::Session);
        Some(context)
    }

    /// Ends a session.
    pub async fn close(app: &App, id: &str) -> Result<(), ApiError> {
        app.infrastructure()
            .cache
            .invalidate(&key(id))
            .await
            .map_err(ApiError::internal)
    }

    /// The `Set-Cookie` value that hands session `id` to the browser: `HttpOnly`,
    /// `SameSite=Lax`, for [`SESSION_TTL`], and `Secure` in the `prod` profile.
    pub fn set_cookie(app: &App, id: &str) -> HeaderValue {
        let secure = app.config().profile == gorgon_framework::Profile::Prod;
        cookie_header(id, SESSION_TTL.as_secs(), secure)
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_cookie() -> HeaderValue {
        cookie_header("", 0, false)
    }

    fn cookie_header(value: &str, max_age: u64, secure: bool) -> HeaderValue {
        let secure = if secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The session id in a request's cookies.
    pub fn cookie(headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == SESSION_COOKIE)
            .map(|(_, value)| value.to_owned())
    }
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The key of `Authorization: Basic base64(sk_…:)`, or `Basic sk_…` as Medusa also accepts.
fn basic(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let token = token.trim();
    if token.starts_with("sk_") {
        return Some(token.trim_end_matches(':').to_owned());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or_default().to_owned())
}

fn credentials(app: &App) -> Result<Arc<dyn Credentials>, ApiError> {
    app.service::<dyn Credentials>().ok_or_else(|| {
        ApiError::internal(
            "no Credentials service is registered (gorgon-api's CorePlugin registers it)",
        )
    })
}

/// The caller of a request, by bearer token, session, or (when `api_keys`) secret key.
pub async fn identify(
    app: &App,
    jwt: &Jwt,
    headers: &HeaderMap,
    api_keys: bool,
) -> Result<Option<AuthContext>, ApiError> {
    if let Some(token) = bearer(headers) {
        return Ok(jwt.verify(token));
    }
    if api_keys && let Some(key) = basic(headers) {
        return credentials(app)?.secret_key(app, &key).await;
    }
    if let Some(id) = session::cookie(headers) {
        return Ok(session::find(app, &id).await);
    }
    Ok(None)
}

/// Medusa's 401 body on `/admin`.
fn unauthorized() -> Response {
    ApiError::new(ErrorType::Unauthorized, "Unauthorized").into_response()
}

/// The `/admin` guard: a user (token, session) or a secret key.
pub async fn require_admin(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let jwt = Jwt::of(&app);
    match identify(&app, &jwt, request.headers(), true).await {
        Ok(Some(context))
            if !context.actor_id.is_empty()
                && (context.actor_type == "user" || context.actor_type == "api-key") =>
        {
            request.extensions_mut().insert(context);
            next.run(request).await
        }
        Ok(_) => unauthorized(),
        Err(error) => error.into_response(),
    }
}

/// The `/store` guard: a publishable key, and a customer when one is logged in.
pub async fn require_publishable_key(
    State(app): State<App>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = request
        .headers()
        .get(PUBLISHABLE_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
    else {
        return ApiError::not_allowed(
            "Publishable API key required in the request header: x-publishable-api-key. You can manage your keys in settings in the dashboard.",
        )
        .into_response();
    };
    let key = match credentials(&app) {
        Ok(credentials) => credentials.publishable_key(&app, &token).await,
        Err(error) => Err(error),
    };
    match key {
        Ok(Some(key)) => {
            request.extensions_mut().insert(key);
        }
        Ok(None) => {
            return ApiError::not_allowed(
                "A valid publishable key is required to proceed with the request",
            )
            .into_response();
        }
        Err(error) => return error.into_response(),
    }
    let jwt = Jwt::of(&app);
    if let Ok(Some(context)) = identify(&app, &jwt, request.headers(), false).await
        && context.actor_type == "customer"
    {
        request.extensions_mut().insert(context);
    }
    next.run(request).await
}

/// The authenticated caller; a handler taking it answers 401 without one.
#[derive(Debug, Clone)]
pub struct Auth(pub AuthContext);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthContext>()
            .cloned()
            .map(Auth)
            .ok_or_else(ApiError::unauthorized)
    }
}

/// The caller when there is one (store routes a guest may call).
#[derive(Debug, Clone)]
pub struct MaybeAuth(pub Option<AuthContext>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeAuth {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybeAuth(parts.extensions.get::<AuthContext>().cloned()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PublishableKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<PublishableKey>()
            .cloned()
            .ok_or_else(|| {
                ApiError::not_allowed(
                    "A valid publishable key is required to proceed with the request",
                )
            })
    }
}
