//! The HTTP listener `gorgon start` runs. The routes of Medusa's API come with the HTTP layer;
//! today it answers `GET /health` as Medusa does (`200 OK`), and JSON 404s elsewhere.

use std::future::Future;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use gorgon_framework::{App, BoxError};

async fn health() -> &'static str {
    "OK"
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "type": "not_found", "message": "no route here" })),
    )
}

/// The router of an application.
pub fn router(_app: App) -> Router {
    Router::new()
        .route("/health", get(health))
        .fallback(not_found)
}

/// Serves `app` on `project.http.host:port` until `shutdown` resolves, letting requests in
/// flight finish.
pub async fn serve(
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let http = &app.config().project.http;
    let address = format!("{}:{}", http.host, http.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|error| {
            format!("cannot listen on {address}: {error} (set project.http.port or --port)")
        })?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
