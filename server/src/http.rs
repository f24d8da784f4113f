//! The HTTP listener `gorgon start` runs: the application's router (`gorgon-http`) on
//! `project.http.host:port` (port 9000 by default, Medusa's).

use std::future::Future;

use gorgon_framework::{App, BoxError};

/// Serves `app` until `shutdown` resolves, letting requests in flight finish.
pub async fn serve(
    app: &App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let http = &app.config().project.http;
    let address = format!("{}:{}", http.host, http.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|error| {
            format!("cannot listen on {address}: {error} (set project.http.port or --port)")
        })?;
    gorgon_http::serve(app, listener, shutdown).await
}
