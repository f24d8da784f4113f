//! Gorgon's data layer: one code path for SQLite and PostgreSQL, under the modules.
//!
//! A module declares its models, gets Medusa's generated service for each, and ships its
//! migrations; filters arrive as data (from HTTP, in Medusa's syntax) and are checked against
//! the models before any SQL is built.
//!
//! 1. Declare a model: a serde struct with `#[derive(Model)]` (its table, prefixed ids,
//!    `created_at` / `updated_at` / `deleted_at`, relations inside the module).
//! 2. Open the database: [`Db::connect`]`("sqlite://gorgon.db")` or `("postgres://…")`.
//! 3. Apply the module's migrations: [`Migrator::new`]`(db).module("brand", MIGRATIONS).migrate(…)`.
//! 4. Use the generated service: [`Crud::<Brand>::new`]`(db)` and its `list`, `list_and_count`,
//!    `retrieve`, `create`, `update`, `delete`, `soft_delete`, `restore`.
//! 5. Make several calls atomic with [`Db::transaction`]: every service call inside joins it.
//!
//! ```ignore
//! let brands = Crud::<Brand>::new(db.clone());
//! let acme = brands.create(json!({ "name": "Acme" })).await?;           // brand_01J…
//! let found = brands
//!     .list(json!({ "name": { "$ilike": "ac%" } }), FindConfig::new().take(20))
//!     .await?;
//! ```
//!
//! ```text
//!   filter (JSON) ──check against ModelMeta──▶ sea-query Condition ──▶ SQL for the Db's dialect
//!   root:   SELECT … FROM t0 WHERE … [EXISTS (related…)] ORDER BY … LIMIT …     (one statement)
//!   nested: SELECT … FROM related WHERE key IN (…)                              (one per level)
//! ```
//!
//! **Storage on each database.** Text, integers, floats and booleans map directly. Money is
//! [`rust_decimal::Decimal`]: `NUMERIC` on PostgreSQL, text on SQLite (exact; compared and
//! ordered as numbers there, through `REAL`). Timestamps are `TIMESTAMPTZ` on PostgreSQL and
//! RFC 3339 text with milliseconds on SQLite, read the same from both
//! (`2026-12-07T18:30:00.000Z`). JSON is `JSONB` / text. `$like` is case-sensitive and `$ilike`
//! is not on both (SQLite lowercases ASCII only).

mod crud;
mod db;
mod error;
mod graph;
mod id;
mod migrate;
mod model;
mod value;

#[cfg(feature = "testing")]
pub mod testing;

pub use crud::{Crud, FindConfig, LinkableKeys, delete_ids, restore_ids, soft_delete_ids};
pub use db::{Db, DbOptions, Dialect};
pub use error::{Error, ErrorKind, Result};
pub use gorgon_macros::Model;
pub use graph::{
    Direction, Filter, Graph, Hop, Page, Path, Relations, Resolver, read, relation_hop,
};
pub use id::generate as generate_id;
pub use migrate::{
    DOWN_MARKER, Migration, Migrator, State as MigrationState, Status as MigrationStatus,
};
pub use model::{Column, ColumnType, Kind, Model, ModelMeta, Relation, RelationKind};
pub use value::{format_timestamp, now, parse_timestamp, to_sql as bind};

/// The query builder module services write their own statements with (`Query::select()`…),
/// run by [`Db::fetch`] and [`Db::execute`] on either database.
pub use sea_query as sql;

#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}
