//! Gorgon's core API, as Medusa's: the routes every application has, and the modules behind
//! them. An application gets them with one line, `app.plugin(CorePlugin)` (the `gorgon`
//! binary and `gorgon_cli::run` add it first, so that the application may override any route).
//!
//! | family | routes |
//! |---|---|
//! | auth | `POST /auth/{actor}/emailpass`, `…/register`, `…/reset-password`, `…/update`, `POST /auth/token/refresh`, `POST`/`DELETE /auth/session` |
//! | users | `GET /admin/users/me`, `GET /admin/users`, `GET /admin/users/{id}`, `POST /admin/invites`, `POST /admin/invites/accept` |
//! | API keys | `GET`/`POST /admin/api-keys`, `GET`/`DELETE /admin/api-keys/{id}`, `POST /admin/api-keys/{id}/revoke`, `POST /admin/api-keys/{id}/sales-channels` |
//! | sales channels | `GET`/`POST /admin/sales-channels`, `GET`/`POST`/`DELETE /admin/sales-channels/{id}` |
//! | workflow executions | `GET /admin/workflows-executions`, `GET …/{id}`, `GET …/{workflow_id}/{transaction_id}`, `POST …/{workflow_id}/run`, `POST …/{workflow_id}/steps/success\|failure`, `POST …/{workflow_id}/{transaction_id}/cancel\|retry`, `GET …/{workflow_id}/subscribe`, `GET …/{workflow_id}/{transaction_id}/subscribe` |

mod api_keys;
mod auth;
pub mod executions;
mod sales_channels;
mod users;

use std::sync::Arc;

use gorgon_framework::{App, AppBuilder, BoxError, NoOptions, Plugin, Route};
use gorgon_framework::{Side, define_link};
use gorgon_http::{ApiError, AuthContext, Credentials, PublishableKey};
use gorgon_module_api_key::{ApiKey, ApiKeyModule, ApiKeyService};
use gorgon_module_auth::AuthModule;
use gorgon_module_sales_channel::{SalesChannel, SalesChannelModule};
use gorgon_module_user::UserModule;

pub use gorgon_module_api_key as api_key;
pub use gorgon_module_auth as auth_module;
pub use gorgon_module_sales_channel as sales_channel;
pub use gorgon_module_user as user;

/// Every core route.
pub fn routes() -> Vec<Route> {
    let mut routes = auth::routes();
    routes.extend(users::routes());
    routes.extend(api_keys::routes());
    routes.extend(executions::routes());
    routes.extend(sales_channels::routes());
    routes
}

/// The core plugin: the user, auth, API key and sales channel modules, the key ↔ channel link,
/// the key checks the guards use, and every core route.
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
            .module(SalesChannelModule)
            // A publishable key scopes a storefront to its channels.
            .link(define_link(
                Side::of::<ApiKey>().list(),
                Side::of::<SalesChannel>().list(),
            ))
            .service::<dyn Credentials>(Arc::new(ApiKeyCredentials));
        for route in routes() {
            app.route(route);
        }
        Ok(())
    }
}

/// The ids of the sales channels a key is linked to.
pub(crate) async fn channels_of(app: &App, key_id: &str) -> Result<Vec<String>, ApiError> {
    let rows = app
        .links()
        .list(serde_json::json!({ "api_key": { "api_key_id": key_id } }))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| row.get("sales_channel_id").and_then(|v| v.as_str()))
        .map(str::to_owned)
        .collect())
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
            let Some(key) = key else {
                return Ok(None);
            };
            Ok(Some(PublishableKey {
                sales_channel_ids: channels_of(app, &key.id).await?,
                id: key.id,
                token: key.token,
            }))
        })
    }
}
