//! The admin dashboard under `/app`: workflow executions, live.
//!
//! - `/app/login` (an admin user's email and password; the session is a cookie, the same one the
//!   admin API accepts) and `POST /app/logout`;
//! - `/app/workflows`: the executions, filtered by workflow, state, time and transaction id,
//!   with their state and progress ("3 of 5 steps"), refreshed as runs change;
//! - `/app/workflows/{workflow_id}/{transaction_id}`: one run: its steps as a graph colored by
//!   state, the input, each step's output, compensation input, errors and attempts, and the
//!   operator's actions (retry, cancel, complete a waiting step), which call the admin API.
//!
//! Pages are rendered on the server (askama, checked at compile time); the one stylesheet and
//! the one script are in the binary. Nothing is loaded from another origin.

mod pages;
mod view;

use axum::http::Method;
use axum::routing::{get, post};
use gorgon_framework::{AppBuilder, BoxError, NoOptions, Plugin, Route};

/// The dashboard's routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::undocumented(Method::GET, "/app", get(pages::home)),
        Route::undocumented(Method::GET, "/app/login", get(pages::login_page)),
        Route::undocumented(Method::POST, "/app/login", post(pages::login)),
        Route::undocumented(Method::POST, "/app/logout", post(pages::logout)),
        Route::undocumented(Method::GET, "/app/workflows", get(pages::list)),
        Route::undocumented(
            Method::GET,
            "/app/workflows/{workflow_id}/{transaction_id}",
            get(pages::detail),
        ),
        Route::undocumented(Method::GET, "/app/events", get(pages::events)),
        Route::undocumented(Method::GET, "/app/assets/{file}", get(pages::asset)),
    ]
}

/// The dashboard as a plugin: `app.plugin(AdminUiPlugin)` (the `gorgon` command adds it).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminUiPlugin;

impl Plugin for AdminUiPlugin {
    type Options = NoOptions;

    fn name(&self) -> &'static str {
        "admin-ui"
    }

    fn register(&self, app: &mut AppBuilder, _: NoOptions) -> Result<(), BoxError> {
        for route in routes() {
            app.route(route);
        }
        Ok(())
    }
}
