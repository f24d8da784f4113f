//! HTTP routes as values: what an application, a module's API crate or a plugin contributes to
//! the server. The HTTP layer (`gorgon-http`) turns the kept routes into one axum router and
//! one OpenAPI document.
//!
//! A route is built from a handler documented with `#[utoipa::path]`, through utoipa-axum's
//! `routes!` macro, so that its path, method, parameters and bodies are written once:
//!
//! ```ignore
//! #[utoipa::path(get, path = "/admin/brands", responses((status = 200, body = BrandList)))]
//! async fn list_brands(State(app): State<App>, query: ListQuery) -> ApiResult<Json<BrandList>> { … }
//!
//! app.route(Route::new(routes!(list_brands)));
//! ```
//!
//! Registering a route with the same methods and path as a route of an earlier layer (a plugin,
//! the core) replaces it: the application's own routes are registered last and win.

use axum::http::Method;
use axum::routing::MethodRouter;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::{HttpMethod, Paths};
use utoipa::openapi::schema::Schema;

use crate::App;

/// Who may call a route, beyond what its namespace (`/admin`, `/store`, `/auth`) requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The namespace's rule: `/admin` needs a user (bearer token, session or secret key),
    /// `/store` a publishable key; other paths are open.
    Namespace,
    /// Open to anyone, even under `/admin` (Medusa's `AUTHENTICATE = false`), such as
    /// accepting an invite.
    Public,
}

/// One route: a method router at a path, with its OpenAPI operations.
#[derive(Clone)]
pub struct Route {
    path: String,
    methods: Vec<Method>,
    router: MethodRouter<App>,
    paths: Paths,
    schemas: Vec<(String, RefOr<Schema>)>,
    access: Access,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("methods", &self.methods)
            .field("path", &self.path)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

/// What utoipa-axum's `routes!` macro returns: schemas, paths and the method router.
pub type Documented = (Vec<(String, RefOr<Schema>)>, Paths, MethodRouter<App>);

impl Route {
    /// A documented route, from `routes!(handler)` (one path per call).
    ///
    /// # Panics
    /// When `routes!` was given handlers of different paths, or none: a programming error
    /// found the first time the application is built.
    pub fn new((schemas, paths, router): Documented) -> Self {
        let mut items = paths.paths.iter();
        let (path, item) = items
            .next()
            .expect("Route::new takes routes!(…) with one handler or more");
        assert!(
            items.next().is_none(),
            "Route::new takes the handlers of one path; call it once per path"
        );
        let methods = [
            (HttpMethod::Get, Method::GET, item.get.is_some()),
            (HttpMethod::Post, Method::POST, item.post.is_some()),
            (HttpMethod::Put, Method::PUT, item.put.is_some()),
            (HttpMethod::Patch, Method::PATCH, item.patch.is_some()),
            (HttpMethod::Delete, Method::DELETE, item.delete.is_some()),
            (HttpMethod::Head, Method::HEAD, item.head.is_some()),
            (HttpMethod::Options, Method::OPTIONS, item.options.is_some()),
        ]
        .into_iter()
        .filter(|(_, _, present)| *present)
        .map(|(_, method, _)| method)
        .collect();
        Self {
            path: path.clone(),
            methods,
            router,
            paths,
            schemas,
            access: Access::Namespace,
        }
    }

    /// A route left out of the OpenAPI document (the API browser, metrics).
    pub fn undocumented(
        method: Method,
        path: impl Into<String>,
        router: MethodRouter<App>,
    ) -> Self {
        Self {
            path: path.into(),
            methods: vec![method],
            router,
            paths: Paths::new(),
            schemas: Vec::new(),
            access: Access::Namespace,
        }
    }

    /// Opens the route to callers without credentials.
    pub fn public(mut self) -> Self {
        self.access = Access::Public;
        self
    }

    /// The path, in axum's syntax (`/admin/brands/{id}`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The methods it answers.
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// Who may call it.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The method router.
    pub fn router(&self) -> &MethodRouter<App> {
        &self.router
    }

    /// Its OpenAPI paths (empty when undocumented).
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The schemas its operations refer to.
    pub fn schemas(&self) -> &[(String, RefOr<Schema>)] {
        &self.schemas
    }

    /// `GET,POST /admin/brands`: what an override must match.
    pub(crate) fn key(&self) -> String {
        let methods: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
        format!("{} {}", methods.join(","), self.path)
    }
}
