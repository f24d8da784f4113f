//! The OpenAPI document, assembled from the application's routes (each documented with
//! `#[utoipa::path]`), served at `/openapi.json`, and browsable at `/docs` with Swagger UI
//! embedded in the binary (no CDN).

use axum::Router;
use gorgon_framework::{Access, App};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref,
};
use utoipa::{PartialSchema, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{ErrorBody, ErrorType};

/// The document of `app`'s documented routes.
pub fn document(app: &App) -> OpenApi {
    let mut paths = Paths::new();
    let mut components = ComponentsBuilder::new()
        .schema(ErrorBody::name(), ErrorBody::schema())
        .schema(ErrorType::name(), ErrorType::schema())
        .security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        )
        .security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        )
        .security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        )
        .security_scheme(
            "publishable_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(
                crate::auth::PUBLISHABLE_KEY_HEADER,
            ))),
        );
    for route in app.routes() {
        for (name, schema) in route.schemas() {
            components = components.schema(name.clone(), schema.clone());
        }
        let mut route_paths = route.paths().clone();
        for item in route_paths.paths.values_mut() {
            for operation in operations(item) {
                decorate(operation, route.path(), route.access());
            }
        }
        paths.merge(route_paths);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Gorgon API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Medusa's API conventions: lists are {<plural>, count, offset, limit}; \
                     errors are {type, message}; `fields`, `limit`, `offset`, `order` and \
                     bracket filters in query strings.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components.build()))
        .build()
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.patch.as_mut(),
        item.delete.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Adds what every operation has: Medusa's error body for every other status, and the
/// namespace's credentials.
fn decorate(operation: &mut Operation, path: &str, access: Access) {
    if !operation.responses.responses.contains_key("default") {
        operation.responses.responses.insert(
            "default".into(),
            ResponseBuilder::new()
                .description("An error: {type, message}")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                        .build(),
                )
                .build()
                .into(),
        );
    }
    if access == Access::Public || operation.security.is_some() {
        return;
    }
    let requirement = |name: &str| SecurityRequirement::new::<_, [&str; 0], &str>(name, []);
    if path.starts_with("/admin") {
        operation.security = Some(vec![
            requirement("bearer"),
            requirement("api_key"),
            requirement("session"),
        ]);
    } else if path.starts_with("/store") {
        operation.security = Some(vec![requirement("publishable_key")]);
    }
}

/// `/openapi.json` and the API browser at `/docs`.
pub fn browser(document: OpenApi) -> Router<App> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", document)
        .into()
}
