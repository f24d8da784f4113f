//! Gorgon's HTTP layer, as Medusa's API speaks:
//!
//! - [`ApiError`]: `{type, message}` with Medusa's status per type; a 500 hides its detail,
//!   which the request's log line carries with the request id.
//! - [`Body`]: strict JSON bodies ("Invalid request: Unrecognized fields: 'x'"), validated
//!   with `garde`.
//! - [`ListQuery`]: `fields`, `limit`, `offset`, `order`, `q` and bracket filters, turned into
//!   a Query request; [`List`] is the `{<plural>, count, offset, limit}` envelope.
//! - [`auth`]: bearer tokens, sessions, secret and publishable keys, and the namespace guards.
//! - [`router`]: the application's routes with request ids, tracing, per-namespace CORS,
//!   body limit, timeout, compression, panic catching, `/health`, `/metrics`,
//!   `/openapi.json` and `/docs`.

pub mod auth;
mod body;
mod error;
mod list;
pub mod metrics;
pub mod openapi;
mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{Auth, AuthContext, Credentials, Jwt, MaybeAuth, PublishableKey};
pub use body::{Body, from_value};
pub use error::{ApiError, ApiResult, ErrorBody, ErrorType, InternalDetail};
pub use list::{ListQuery, parse_query, resolve_fields};
pub use server::{REQUEST_ID, router, serve};

use serde::Serialize;
use serde_json::{Map, Value};

/// Medusa's list envelope: `{<plural>: [...], count, offset, limit}`.
#[derive(Debug, Clone)]
pub struct List {
    /// The key the records go under (`brands`).
    pub key: &'static str,
    /// The records.
    pub items: Vec<Value>,
    /// How many match in all.
    pub count: u64,
    /// Records skipped.
    pub offset: u64,
    /// Most records per page.
    pub limit: u64,
}

impl List {
    /// The envelope of a Query page: its records under `key`, its count, offset and limit
    /// (`default_limit` when the request set none).
    pub fn page(
        key: &'static str,
        page: gorgon_framework::GraphResponse,
        default_limit: u64,
    ) -> Self {
        let (count, offset, limit) = match page.metadata {
            Some(meta) => (meta.count, meta.skip, meta.take.unwrap_or(default_limit)),
            None => (page.data.len() as u64, 0, default_limit),
        };
        List {
            key,
            items: page.data,
            count,
            offset,
            limit,
        }
    }
}

impl Serialize for List {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry(self.key, &self.items)?;
        map.serialize_entry("count", &self.count)?;
        map.serialize_entry("offset", &self.offset)?;
        map.serialize_entry("limit", &self.limit)?;
        map.end()
    }
}

impl axum::response::IntoResponse for List {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self).into_response()
    }
}

/// Medusa's answer to a deletion: `{id, object, deleted: true}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The id.
    pub id: String,
    /// What was deleted (`api_key`, `brand`, `sales-channel`).
    pub object: String,
    /// Always true.
    pub deleted: bool,
}

impl Deleted {
    /// The answer to deleting the `object` with this `id`.
    pub fn new(id: impl Into<String>, object: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            object: object.into(),
            deleted: true,
        }
    }
}

/// `{<key>: value}`: how Medusa returns one resource (`{brand}`).
pub fn one(key: &str, value: impl Serialize) -> Result<axum::Json<Value>, ApiError> {
    let value = serde_json::to_value(value).map_err(ApiError::internal)?;
    let mut map = Map::new();
    map.insert(key.to_owned(), value);
    Ok(axum::Json(Value::Object(map)))
}
