//! Gorgon's core API, as Medusa's: the routes every application has, and the modules behind
//! them. An application gets them with one line, `app.plugin(CorePlugin)` (the `gorgon`
//! binary and `gorgon_cli::run` add it first, so that the application may override any route).
//!
//! | family | routes |
//! |---|---|
//! | auth | `POST /auth/{actor}/emailpass`, `…/register`, `…/reset-password`, `…/update`, `POST /auth/token/refresh`, `POST`/`DELETE /auth/session` |
//! | users | `GET /admin/users/me`, `GET /admin/users`, `GET /admin/users/{id}`, `POST /admin/invites`, `POST /admin/invites/accept` |
//! | API keys | `GET`/`POST /admin/api-keys`, `GET`/`DELETE /admin/api-keys/{id}`, `POST /admin/api-keys/{id}/revoke` |
//! | workflow executions | `GET /admin/workflows-executions`, `GET …/{id}`, `GET …/{workflow_id}/{transaction_id}`, `POST …/{workflow_id}/run`, `POST …/{workflow_id}/steps/success\|failure`, `POST …/{workflow_id}/{transaction_id}/cancel\|retry`, `GET …/{workflow_id}/subscribe`, `GET …/{workflow_id}/{transaction_id}/subscribe` |

mod api_keys;
mod auth;
mod executions;
mod users;

use std::sync::Arc;

use gorgon_framework::{App, AppBuilder, BoxError, NoOptions, Plugin, Route};
use gorgon_http::{ApiError, AuthContext, Credentials, PublishableKey};
use gorgon_module_api_key::{ApiKeyModule, ApiKeyService};
use gorgon_module_auth::AuthModule;
use gorgon_module_user::UserModule;

pub use gorgon_module_api_key as api_key;
pub use gorgon_module_auth as auth_module;
pub use gorgon_module_user as user;

/// Every core route.
pub fn routes() -> Vec<Route> {
    let mut routes = auth::routes();
    routes.extend(users::routes());
    routes.extend(api_keys::routes());
    routes.extend(executions::routes());
    routes
}

/// The core plugin: the user, auth and API key modules, the key checks the guards use, and
/// every core route.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorePlugin;

impl Plugin for CorePlugin {
    type Options = NoOptions;

    fn name(&self) -> &'static str {
        "core"
    }

    fn register(&self, app: &mut AppBuilder, _: NoOptions) -> Result<(), BoxError> {
        app.module(UserModule)
            .module(AuthModule)
            .module(ApiKeyModule)
            .service::<dyn Credentials>(Arc::new(ApiKeyCredentials));
        for route in routes() {
            app.route(route);
        }
        Ok(())
    }
}

/// The guards' key checks, over the API key module.
#[derive(Debug, Clone, Copy)]
pub struct ApiKeyCredentials;

fn key_service(app: &App) -> Result<Arc<ApiKeyService>, ApiError> {
    app.service::<ApiKeyService>()
        .ok_or_else(|| ApiError::internal("the api_key module is not registered"))
}

impl Credentials for ApiKeyCredentials {
    fn secret_key<'a>(
        &'a self,
        app: &'a App,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<AuthContext>, ApiError>> {
        Box::pin(async move {
            let key = key_service(app)?
                .authenticate_secret(token)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(key.map(|key| AuthContext {
                actor_id: key.id,
                actor_type: "api-key".into(),
                auth_identity_id: String::new(),
                app_metadata: serde_json::json!({}),
                method: Some(gorgon_http::auth::AuthMethod::ApiKey),
            }))
        })
    }

    fn publishable_key<'a>(
        &'a self,
        app: &'a App,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<PublishableKey>, ApiError>> {
        Box::pin(async move {
            let key = key_service(app)?
                .publishable(token)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(key.map(|key| PublishableKey {
                id: key.id,
                token: key.token,
                sales_channel_ids: Vec::new(),
            }))
        })
    }
}
