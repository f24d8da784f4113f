//! What a model is: a serde struct with a table, typed columns and relations inside its module.
//! `#[derive(Model)]` writes the metadata; nothing here is needed by hand.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A row type of a module: the derive's output. Its metadata says which table, columns and
/// relations it has, so data that arrives as text (filters, field lists, writes) is checked
/// against it before any SQL is built.
///
/// ```ignore
/// #[derive(Clone, Debug, Serialize, Deserialize, Model)]
/// #[model(prefix = "brand")]
/// pub struct Brand {
///     pub id: String,
///     #[model(searchable)]
///     pub name: String,
///     pub created_at: DateTime<Utc>,
///     pub updated_at: DateTime<Utc>,
///     pub deleted_at: Option<DateTime<Utc>>,
/// }
/// ```
pub trait Model: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The model's table, columns and relations.
    fn meta() -> &'static ModelMeta;
}

/// A model's table, columns and relations, as the derive writes them.
#[derive(Debug)]
pub struct ModelMeta {
    /// The Rust type's name, used in messages (`RestockOrder`), as Medusa names its entities.
    pub type_name: &'static str,
    /// The entity's name in field paths and queries (`restock_order`).
    pub name: &'static str,
    /// The plural name (`restock_orders`), how a relation or a link to many of it is named.
    pub plural: &'static str,
    /// The table.
    pub table: &'static str,
    /// The prefix of generated ids (`rsord` makes `rsord_01H…`); empty for bare ULIDs.
    pub id_prefix: &'static str,
    /// Every stored column, `id`, `created_at`, `updated_at` and `deleted_at` included.
    pub columns: &'static [Column],
    /// The relations to other models of the same module.
    pub relations: &'static [Relation],
}

impl ModelMeta {
    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|column| column.name == name)
    }

    /// The relation with this name.
    pub fn relation(&self, name: &str) -> Option<&'static Relation> {
        self.relations.iter().find(|relation| relation.name == name)
    }

    /// The key other modules link this model by: `{name}_id` (`brand_id`), as in Medusa.
    pub fn linkable_key(&self) -> String {
        format!("{}_id", self.name)
    }

    /// The columns `q` searches.
    pub fn searchable(&self) -> impl Iterator<Item = &'static Column> + use<'_> {
        self.columns.iter().filter(|column| column.searchable)
    }

    pub(crate) fn field_list(&self) -> String {
        let names: Vec<_> = self.columns.iter().map(|column| column.name).collect();
        let mut list = names.join(", ");
        if !self.relations.is_empty() {
            let relations: Vec<_> = self
                .relations
                .iter()
                .map(|relation| relation.name)
                .collect();
            list.push_str("; relations: ");
            list.push_str(&relations.join(", "));
        }
        list
    }
}

/// One stored column.
#[derive(Debug)]
pub struct Column {
    /// The column's name, which is also the field's name in JSON.
    pub name: &'static str,
    /// How values are stored and compared.
    pub kind: Kind,
    /// Whether the column takes `NULL` (the field is an `Option`).
    pub nullable: bool,
    /// Whether the database supplies a value when a create leaves it out.
    pub has_default: bool,
    /// Whether `q` searches it.
    pub searchable: bool,
}

/// How a column's values are stored on each database and compared in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `TEXT` on both databases (strings, ids, enums).
    Text,
    /// `BIGINT` / `INTEGER`.
    Integer,
    /// `DOUBLE PRECISION` / `REAL`.
    Float,
    /// `BOOLEAN` / `INTEGER` 0 or 1.
    Boolean,
    /// Exact decimals (money): `NUMERIC` / `TEXT`. Read as a string, so nothing passes
    /// through `f64`. SQLite compares them as numbers (`CAST(… AS REAL)`).
    Decimal,
    /// `TIMESTAMPTZ` / `TEXT` in RFC 3339 with milliseconds and `Z`, which sorts as time does.
    Timestamp,
    /// `JSONB` / `TEXT` holding JSON: any serde value.
    Json,
}

impl Kind {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Integer => "an integer",
            Kind::Float => "a number",
            Kind::Boolean => "true or false",
            Kind::Decimal => "a decimal number (as a number or a string)",
            Kind::Timestamp => "an RFC 3339 timestamp",
            Kind::Json => "JSON",
        }
    }
}

/// A relation between two models of the same module.
#[derive(Debug)]
pub struct Relation {
    /// The field the related records are read into (`items`).
    pub name: &'static str,
    /// Which side holds the foreign key, and how many are related.
    pub kind: RelationKind,
    /// The related model.
    pub target: fn() -> &'static ModelMeta,
    /// The foreign key column: on the target for `HasMany`/`HasOne`, on this model for
    /// `BelongsTo`.
    pub foreign_key: &'static str,
    /// Whether deleting, soft-deleting or restoring this model does the same to the related
    /// records (`HasMany`/`HasOne` only).
    pub cascade: bool,
}

/// The shape of a [`Relation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// Many targets hold this model's id in `foreign_key`.
    HasMany,
    /// One target holds this model's id in `foreign_key`.
    HasOne,
    /// This model holds the target's id in `foreign_key`.
    BelongsTo,
}

/// How a Rust field type is stored. Implemented for the usual types; a field of another type
/// names its kind with `#[model(kind = "text" | "json" | …)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no column kind",
    note = "name it on the field: #[model(kind = \"text\")] for an enum stored by name, #[model(kind = \"json\")] for a struct stored as JSON"
)]
pub trait ColumnType {
    /// How the values are stored.
    const KIND: Kind;
    /// Whether `NULL` is allowed.
    const NULLABLE: bool = false;
}

macro_rules! column_types {
    ($($ty:ty => $kind:ident),* $(,)?) => {
        $(impl ColumnType for $ty { const KIND: Kind = Kind::$kind; })*
    };
}

column_types! {
    String => Text,
    i64 => Integer, i32 => Integer, i16 => Integer, u32 => Integer, u16 => Integer,
    f64 => Float, f32 => Float,
    bool => Boolean,
    rust_decimal::Decimal => Decimal,
    chrono::DateTime<chrono::Utc> => Timestamp,
    serde_json::Value => Json,
    serde_json::Map<String, serde_json::Value> => Json,
}

impl<T: Serialize> ColumnType for Vec<T> {
    const KIND: Kind = Kind::Json;
}

impl<K: Serialize, V: Serialize> ColumnType for std::collections::BTreeMap<K, V> {
    const KIND: Kind = Kind::Json;
}

impl<K: Serialize, V: Serialize, S> ColumnType for std::collections::HashMap<K, V, S> {
    const KIND: Kind = Kind::Json;
}

impl<T: ColumnType> ColumnType for Option<T> {
    const KIND: Kind = T::KIND;
    const NULLABLE: bool = true;
}
