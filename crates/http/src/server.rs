//! The application's router: its routes (the core's, its plugins', its own) guarded by
//! namespace, per-namespace CORS, and the layers every request passes: a request id
//! (`x-request-id`, kept when the caller sends one), a tracing span, metrics, a body limit, a
//! timeout, compression and panic catching (a panic answers Medusa's 500 body).

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gorgon_framework::{Access, App, BoxError};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{PUBLISHABLE_KEY_HEADER, require_admin, require_publishable_key};
use crate::error::ApiError;
use crate::metrics::{Metrics, serve_metrics, track};
use crate::openapi;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

async fn health() -> &'static str {
    "OK"
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("Cannot {method} {}", uri.path()))
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    tracing::error!("handler panicked: {message}");
    ApiError::internal(format!("panic: {message}")).into_response()
}

fn cors(origins: &str) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::ACCEPT,
            HeaderName::from_static(PUBLISHABLE_KEY_HEADER),
            HeaderName::from_static("x-medusa-locale"),
            REQUEST_ID,
        ])
        .expose_headers([REQUEST_ID])
        .max_age(Duration::from_secs(600))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Admin,
    Store,
    Auth,
    Other,
}

fn namespace(path: &str) -> Namespace {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if under("/admin") {
        Namespace::Admin
    } else if under("/store") {
        Namespace::Store
    } else if under("/auth") {
        Namespace::Auth
    } else {
        Namespace::Other
    }
}

/// The router of `app`, with its state applied.
pub fn router(app: &App) -> Router {
    let metrics = Metrics::new();
    metrics.watch_runs(app.workflows());
    router_with(app, metrics)
}

fn router_with(app: &App, metrics: Arc<Metrics>) -> Router {
    let http = &app.config().project.http;
    let mut by_namespace: [Router<App>; 4] = Default::default();
    for route in app.routes() {
        let space = namespace(route.path());
        let mut method_router = route.router().clone();
        if route.access() == Access::Namespace {
            method_router = match space {
                Namespace::Admin => {
                    method_router.layer(from_fn_with_state(app.clone(), require_admin))
                }
                Namespace::Store => {
                    method_router.layer(from_fn_with_state(app.clone(), require_publishable_key))
                }
                Namespace::Auth | Namespace::Other => method_router,
            };
        }
        let index = space as usize;
        let target = std::mem::take(&mut by_namespace[index]);
        by_namespace[index] = target.route(route.path(), method_router);
    }
    let [admin, store, auth, other] = by_namespace;
    let document = openapi::document(app);
    let routes: Router<App> = Router::new()
        .merge(admin.layer(cors(&http.admin_cors)))
        .merge(store.layer(cors(&http.store_cors)))
        .merge(auth.layer(cors(&http.auth_cors)))
        .merge(other)
        .route("/health", get(health))
        .merge(openapi::browser(document));
    let metrics_route = Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(metrics.clone());
    routes
        .with_state(app.clone())
        .merge(metrics_route)
        .fallback(not_found)
        .layer(from_fn_with_state(metrics, track))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(http.request_timeout),
        ))
        .layer(RequestBodyLimitLayer::new(http.body_limit))
        .layer(CompressionLayer::new())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
                let id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = %id,
                )
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Serves `app` on `listener` until `shutdown` resolves, letting requests in flight finish.
pub async fn serve(
    app: &App,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
