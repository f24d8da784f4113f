//! Links between modules' models: `define_link`, the link tables `db migrate` creates for
//! enabled modules, and the `Links` service (Medusa's `link`: create, dismiss, delete with
//! cascade, restore, list).
//!
//! A link table is named `{moduleA}_{entityA}_{moduleB}_{entityB}` and holds `id`, one column
//! per side (`product_id`, `brand_id`), any extra columns, and the timestamps; it has no foreign
//! keys across modules. Which side is a list decides the uniqueness:
//!
//! | left `.list()` | right `.list()` | shape | unique |
//! |---|---|---|---|
//! | no | no | one-to-one | each column |
//! | yes | no | one right has many lefts | left column |
//! | no | yes | one left has many rights | right column |
//! | yes | yes | many-to-many | the pair |

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gorgon_data::{Db, Dialect, Kind, LinkableKeys, Model, ModelMeta};
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::error::{Error, Problem};

/// The table that records which link tables `db migrate` created, and from which definition.
pub const TRACKING_TABLE: &str = "gorgon_link_tables";

/// One side of a link: a model, and how the other side sees it.
#[derive(Debug, Clone)]
pub struct Side {
    model: &'static ModelMeta,
    list: bool,
    delete_cascade: bool,
    alias: Option<String>,
}

impl Side {
    /// The model `M` (`Side::of::<Product>()`).
    pub fn of<M: Model>() -> Self {
        Self::meta(M::meta())
    }

    /// The model with this metadata.
    pub fn meta(model: &'static ModelMeta) -> Self {
        Self {
            model,
            list: false,
            delete_cascade: false,
            alias: None,
        }
    }

    /// The other side sees many of this one (Medusa's `isList: true`).
    pub fn list(mut self) -> Self {
        self.list = true;
        self
    }

    /// Deleting a linked record of the other side deletes this side's record too
    /// (Medusa's `deleteCascade`).
    pub fn delete_cascade(mut self) -> Self {
        self.delete_cascade = true;
        self
    }

    /// The field the other side reads this one through (default: the entity's name, or its
    /// plural when a list).
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.alias = Some(alias.into());
        self
    }

    fn field(&self) -> String {
        self.alias.clone().unwrap_or_else(|| {
            if self.list {
                self.model.plural.to_owned()
            } else {
                self.model.name.to_owned()
            }
        })
    }
}

/// An extra column of a link table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraColumn {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Whether it may be left out.
    pub nullable: bool,
}

/// A link between two modules' models, as `define_link` makes it.
#[derive(Debug, Clone)]
pub struct LinkDef {
    pub(crate) left: Side,
    pub(crate) right: Side,
    pub(crate) extra: Vec<ExtraColumn>,
    pub(crate) table: Option<String>,
}

/// Links two models of two modules (Medusa's `defineLink`).
///
/// ```ignore
/// // A brand has many products; a product has one brand.
/// define_link(Side::of::<Product>().list(), Side::of::<Brand>())
/// ```
pub fn define_link(left: Side, right: Side) -> LinkDef {
    LinkDef {
        left,
        right,
        extra: Vec::new(),
        table: None,
    }
}

impl LinkDef {
    /// Adds a column to the link table (`database.extraColumns`).
    pub fn extra_column(mut self, name: impl Into<String>, kind: Kind, nullable: bool) -> Self {
        self.extra.push(ExtraColumn {
            name: name.into(),
            kind,
            nullable,
        });
        self
    }

    /// Names the link table instead of the default.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// The two models it links.
    pub fn models(&self) -> (&'static ModelMeta, &'static ModelMeta) {
        (self.left.model, self.right.model)
    }
}

/// One side of an active link.
#[derive(Debug, Clone)]
pub struct LinkEnd {
    /// The module owning the model.
    pub module: &'static str,
    /// The model.
    pub model: &'static ModelMeta,
    /// The link table's column holding this side's id (`product_id`).
    pub column: String,
    /// Whether the other side sees many of this one.
    pub list: bool,
    /// Whether deleting the other side's record deletes this side's.
    pub delete_cascade: bool,
    /// The field the other side reads this one through.
    pub field: String,
}

/// A link whose two modules are enabled: its table exists (once migrated) and Query uses it.
#[derive(Debug, Clone)]
pub struct ActiveLink {
    /// The link table.
    pub table: Arc<str>,
    /// The left side.
    pub left: LinkEnd,
    /// The right side.
    pub right: LinkEnd,
    /// Extra columns.
    pub extra: Vec<ExtraColumn>,
}

fn identifier(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !text.starts_with(|c: char| c.is_ascii_digit())
}

/// Resolves link definitions against the enabled modules. A link naming a model of no
/// registered module is a problem; one naming a disabled module is inactive (no table).
pub(crate) fn resolve(
    defs: &[LinkDef],
    owners: &BTreeMap<usize, &'static str>,
    registered_models: &BTreeSet<usize>,
    problems: &mut Vec<Problem>,
) -> Vec<ActiveLink> {
    let mut active: Vec<ActiveLink> = Vec::new();
    for def in defs {
        let (left, right) = (def.left.model, def.right.model);
        let label = format!("link {} ↔ {}", left.type_name, right.type_name);
        let mut ok = true;
        for model in [left, right] {
            let key = model as *const ModelMeta as usize;
            if !registered_models.contains(&key) {
                problems.push(Problem::new(
                    format!("{label}: {} belongs to no registered module", model.type_name),
                    format!(
                        "register the module that declares {} (its `models()` lists it), or remove the link",
                        model.type_name
                    ),
                ));
                ok = false;
            }
        }
        if !ok {
            continue;
        }
        let (Some(left_module), Some(right_module)) = (
            owners.get(&(left as *const ModelMeta as usize)),
            owners.get(&(right as *const ModelMeta as usize)),
        ) else {
            // A disabled module: the link is inactive.
            continue;
        };
        let (left_column, right_column) = (left.linkable_key(), right.linkable_key());
        if left_column == right_column {
            problems.push(Problem::new(
                format!("{label}: both sides are named `{}`", left.name),
                "link two different entities",
            ));
            continue;
        }
        let table = def.table.clone().unwrap_or_else(|| {
            format!("{left_module}_{}_{right_module}_{}", left.name, right.name)
        });
        if !identifier(&table) {
            problems.push(Problem::new(
                format!("{label}: the table name `{table}` is not a plain SQL name of at most 63 characters"),
                "name the table with `.table(\"…\")`",
            ));
            continue;
        }
        for extra in &def.extra {
            let reserved = [
                "id",
                "created_at",
                "updated_at",
                "deleted_at",
                &left_column,
                &right_column,
            ];
            if !identifier(&extra.name) || reserved.contains(&extra.name.as_str()) {
                problems.push(Problem::new(
                    format!("{label}: the extra column `{}` is not usable", extra.name),
                    "use a plain SQL name that is not id, a timestamp or a side's column",
                ));
                ok = false;
            }
        }
        if !ok {
            continue;
        }
        if active.iter().any(|link| *link.table == *table) {
            problems.push(Problem::new(
                format!("{label}: another link already uses the table `{table}`"),
                "name one of them with `.table(\"…\")`",
            ));
            continue;
        }
        active.push(ActiveLink {
            table: table.into(),
            left: LinkEnd {
                module: left_module,
                model: left,
                column: left_column,
                list: def.left.list,
                delete_cascade: def.left.delete_cascade,
                field: def.left.field(),
            },
            right: LinkEnd {
                module: right_module,
                model: right,
                column: right_column,
                list: def.right.list,
                delete_cascade: def.right.delete_cascade,
                field: def.right.field(),
            },
            extra: def.extra.clone(),
        });
    }
    active
}

fn sql_type(kind: Kind, dialect: Dialect) -> &'static str {
    match (kind, dialect) {
        (Kind::Text, _) => "TEXT",
        (Kind::Integer, _) => "BIGINT",
        (Kind::Float, Dialect::Postgres) => "DOUBLE PRECISION",
        (Kind::Float, Dialect::Sqlite) => "REAL",
        (Kind::Boolean, Dialect::Postgres) => "BOOLEAN",
        (Kind::Boolean, Dialect::Sqlite) => "INTEGER",
        (Kind::Decimal, Dialect::Postgres) => "NUMERIC",
        (Kind::Timestamp, Dialect::Postgres) => "TIMESTAMPTZ",
        (Kind::Json, Dialect::Postgres) => "JSONB",
        (Kind::Decimal | Kind::Timestamp | Kind::Json, Dialect::Sqlite) => "TEXT",
    }
}

impl ActiveLink {
    /// The SQL that creates the link table and its indexes. Every name in it comes from the
    /// code's definitions, checked to be plain identifiers.
    pub fn ddl(&self, dialect: Dialect) -> String {
        let table = &self.table;
        let (left, right) = (&self.left.column, &self.right.column);
        let timestamp = sql_type(Kind::Timestamp, dialect);
        let mut columns = vec![
            "id TEXT PRIMARY KEY".to_owned(),
            format!("{left} TEXT NOT NULL"),
            format!("{right} TEXT NOT NULL"),
        ];
        for extra in &self.extra {
            let null = if extra.nullable { "" } else { " NOT NULL" };
            columns.push(format!(
                "{} {}{null}",
                extra.name,
                sql_type(extra.kind, dialect)
            ));
        }
        columns.push(format!("created_at {timestamp} NOT NULL"));
        columns.push(format!("updated_at {timestamp} NOT NULL"));
        columns.push(format!("deleted_at {timestamp}"));
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {table} ({});\n",
            columns.join(", ")
        );
        sql.push_str(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {table}_pair ON {table} ({left}, {right}) WHERE deleted_at IS NULL;\n"
        ));
        for (column, unique) in [(left, !self.right.list), (right, !self.left.list)] {
            let unique_word = if unique { "UNIQUE " } else { "" };
            let filter = if unique {
                " WHERE deleted_at IS NULL"
            } else {
                ""
            };
            sql.push_str(&format!(
                "CREATE {unique_word}INDEX IF NOT EXISTS {table}_{column} ON {table} ({column}){filter};\n"
            ));
        }
        sql
    }

    /// What the definition looks like, to notice when it changes.
    pub fn signature(&self) -> String {
        let extra: Vec<String> = self
            .extra
            .iter()
            .map(|c| format!("{}:{:?}:{}", c.name, c.kind, c.nullable))
            .collect();
        format!(
            "{}({}{}) {}({}{}) [{}]",
            self.left.model.type_name,
            self.left.column,
            if self.left.list { ",list" } else { "" },
            self.right.model.type_name,
            self.right.column,
            if self.right.list { ",list" } else { "" },
            extra.join(",")
        )
    }

    fn end(&self, column: &str) -> Option<&LinkEnd> {
        [&self.left, &self.right]
            .into_iter()
            .find(|end| end.column == column)
    }
}

/// The link service (Medusa's `link`): records and removes links between modules' records.
#[derive(Clone)]
pub struct Links {
    db: Db,
    links: Arc<Vec<ActiveLink>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("links", &self.links.len())
            .finish()
    }
}

/// A link given in Medusa's shape: `{"product": {"product_id": "prod_1"}, "brand":
/// {"brand_id": "brand_1"}, "data": {…extra columns…}}`, keyed by module names.
struct Pair<'a> {
    link: &'a ActiveLink,
    left: String,
    right: String,
    data: Map<String, Json>,
}

impl Links {
    pub(crate) fn new(db: Db, links: Arc<Vec<ActiveLink>>) -> Self {
        Self { db, links }
    }

    /// The active links.
    pub fn definitions(&self) -> &[ActiveLink] {
        &self.links
    }

    fn pair(&self, item: Json) -> Result<Pair<'_>, Error> {
        let Json::Object(mut map) = item else {
            return Err(Error::Link(
                "a link is an object: {\"<module>\": {\"<entity>_id\": \"…\"}, …}".into(),
            ));
        };
        let data = match map.remove("data") {
            None | Some(Json::Null) => Map::new(),
            Some(Json::Object(data)) => data,
            Some(_) => return Err(Error::Link("`data` is an object of extra columns".into())),
        };
        // Each module entry holds one `<entity>_id`.
        let mut keys: Vec<(String, String, String)> = Vec::new();
        for (module, value) in map {
            let Json::Object(inner) = value else {
                return Err(Error::Link(format!(
                    "`{module}` holds {{\"<entity>_id\": \"…\"}}"
                )));
            };
            for (column, id) in inner {
                let id = id
                    .as_str()
                    .ok_or_else(|| Error::Link(format!("`{module}.{column}` is an id string")))?;
                keys.push((module.clone(), column, id.to_owned()));
            }
        }
        if keys.len() != 2 {
            return Err(Error::Link(format!(
                "a link names exactly two records, one per module; this one names {}",
                keys.len()
            )));
        }
        let link = self
            .links
            .iter()
            .find(|link| {
                keys.iter().all(|(module, column, _)| {
                    link.end(column).is_some_and(|end| end.module == module)
                })
            })
            .ok_or_else(|| {
                let named: Vec<String> = keys.iter().map(|(m, c, _)| format!("{m}.{c}")).collect();
                Error::Link(format!(
                    "no link between {}; the links are {}",
                    named.join(" and "),
                    self.known()
                ))
            })?;
        let id_of = |column: &str| {
            keys.iter()
                .find(|(_, c, _)| c == column)
                .map(|(_, _, id)| id.clone())
                .unwrap_or_default()
        };
        for key in data.keys() {
            if !link.extra.iter().any(|extra| &extra.name == key) {
                return Err(Error::Link(format!(
                    "the link table {} has no column `{key}`",
                    link.table
                )));
            }
        }
        Ok(Pair {
            left: id_of(&link.left.column),
            right: id_of(&link.right.column),
            link,
            data,
        })
    }

    fn known(&self) -> String {
        let names: Vec<String> = self
            .links
            .iter()
            .map(|l| {
                format!(
                    "{}.{} ↔ {}.{}",
                    l.left.module, l.left.column, l.right.module, l.right.column
                )
            })
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// Links records (Medusa's `link.create`); returns the rows created. A pair already linked
    /// is left as it is; a one-to-one or one-to-many side already taken is an error.
    pub async fn create<I, T>(&self, items: I) -> Result<Vec<Json>, Error>
    where
        I: IntoIterator<Item = T>,
        T: Serialize,
    {
        let pairs = self.pairs(items)?;
        let dialect = self.db.dialect();
        let now = Json::String(gorgon_data::format_timestamp(&gorgon_data::now()));
        let created = self
            .db
            .transaction(|| async {
                let mut created = Vec::new();
                for pair in &pairs {
                    let link = pair.link;
                    if self.linked(link, &pair.left, &pair.right).await? {
                        continue;
                    }
                    let id = gorgon_data::generate_id("link");
                    let mut columns: Vec<String> = vec!["id".into(), link.left.column.clone(), link.right.column.clone()];
                    let mut values = vec![
                        Expr::val(id.clone()),
                        Expr::val(pair.left.clone()),
                        Expr::val(pair.right.clone()),
                    ];
                    let mut row = Map::new();
                    row.insert("id".into(), Json::String(id));
                    row.insert(link.left.column.clone(), Json::String(pair.left.clone()));
                    row.insert(link.right.column.clone(), Json::String(pair.right.clone()));
                    for extra in &link.extra {
                        let value = pair.data.get(&extra.name).cloned().unwrap_or(Json::Null);
                        if Json::is_null(&value) && !extra.nullable {
                            return Err(Error::Link(format!("the link needs `data.{}`", extra.name)));
                        }
                        let bound = gorgon_data::bind(extra.kind, dialect, &extra.name, &value)?;
                        columns.push(extra.name.clone());
                        values.push(Expr::val(bound));
                        row.insert(extra.name.clone(), value);
                    }
                    for stamp in ["created_at", "updated_at"] {
                        columns.push(stamp.into());
                        values.push(Expr::val(gorgon_data::bind(Kind::Timestamp, dialect, stamp, &now)?));
                        row.insert(stamp.into(), now.clone());
                    }
                    let mut insert = Query::insert();
                    insert
                        .into_table(Alias::new(link.table.to_string()))
                        .columns(columns.into_iter().map(Alias::new))
                        .values(values)
                        .map_err(|e| Error::Link(e.to_string()))?;
                    self.db.execute("Link", &insert).await.map_err(|error| match error {
                        gorgon_data::Error::Duplicate { .. } => Error::Link(format!(
                            "cannot link {} {} to {} {}: the {} side is already linked and takes one link",
                            link.left.model.name, pair.left, link.right.model.name, pair.right,
                            if link.right.list { link.left.model.name } else { link.right.model.name },
                        )),
                        other => Error::Data(other),
                    })?;
                    row.insert("deleted_at".into(), Json::Null);
                    created.push(Json::Object(row));
                }
                Ok::<_, Error>(created)
            })
            .await?;
        Ok(created)
    }

    fn pairs<I, T>(&self, items: I) -> Result<Vec<Pair<'_>>, Error>
    where
        I: IntoIterator<Item = T>,
        T: Serialize,
    {
        items
            .into_iter()
            .map(|item| {
                let json = serde_json::to_value(item).map_err(|e| Error::Link(e.to_string()))?;
                self.pair(json)
            })
            .collect()
    }

    async fn linked(&self, link: &ActiveLink, left: &str, right: &str) -> Result<bool, Error> {
        let mut query = Query::select();
        query
            .column(Alias::new("id"))
            .from(Alias::new(link.table.to_string()))
            .and_where(Expr::col(Alias::new(link.left.column.clone())).eq(left))
            .and_where(Expr::col(Alias::new(link.right.column.clone())).eq(right))
            .and_where(Expr::col(Alias::new("deleted_at")).is_null());
        Ok(!self
            .db
            .fetch("Link", &query, &[Kind::Text])
            .await?
            .is_empty())
    }

    /// Removes links for good (Medusa's `link.dismiss`); returns how many rows went.
    pub async fn dismiss<I, T>(&self, items: I) -> Result<u64, Error>
    where
        I: IntoIterator<Item = T>,
        T: Serialize,
    {
        let pairs = self.pairs(items)?;
        self.db
            .transaction(|| async {
                let mut removed = 0;
                for pair in &pairs {
                    let mut delete = Query::delete();
                    delete
                        .from_table(Alias::new(pair.link.table.to_string()))
                        .and_where(
                            Expr::col(Alias::new(pair.link.left.column.clone()))
                                .eq(pair.left.as_str()),
                        )
                        .and_where(
                            Expr::col(Alias::new(pair.link.right.column.clone()))
                                .eq(pair.right.as_str()),
                        );
                    removed += self.db.execute("Link", &delete).await?;
                }
                Ok::<_, Error>(removed)
            })
            .await
    }

    /// Soft-deletes every link of the records whose keys are given (what a module's
    /// `soft_delete` returned), and, where the other side is marked `delete_cascade`, soft-deletes
    /// the linked records too (and their links, in turn). Returns every key touched.
    pub async fn delete(&self, keys: &LinkableKeys) -> Result<LinkableKeys, Error> {
        self.db
            .transaction(|| self.change(keys.clone(), true))
            .await
    }

    /// Restores the links of the records whose keys are given (what a module's `restore`
    /// returned), and the records restored through `delete_cascade`.
    pub async fn restore(&self, keys: &LinkableKeys) -> Result<LinkableKeys, Error> {
        self.db
            .transaction(|| self.change(keys.clone(), false))
            .await
    }

    async fn change(&self, keys: LinkableKeys, delete: bool) -> Result<LinkableKeys, Error> {
        let dialect = self.db.dialect();
        let mut touched = LinkableKeys::new();
        let mut queue: Vec<(String, Vec<String>)> = keys.into_iter().collect();
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        while let Some((column, ids)) = queue.pop() {
            let ids: Vec<String> = ids
                .into_iter()
                .filter(|id| seen.insert((column.clone(), id.clone())))
                .collect();
            if ids.is_empty() {
                continue;
            }
            for link in self.links.iter() {
                let Some(end) = link.end(&column) else {
                    continue;
                };
                let other = if std::ptr::eq(end, &link.left) {
                    &link.right
                } else {
                    &link.left
                };
                let values: Vec<sea_query::Value> = ids
                    .iter()
                    .map(|id| sea_query::Value::String(Some(id.clone())))
                    .collect();
                // The other side's ids, before the links change.
                let mut others = Query::select();
                others
                    .column(Alias::new(other.column.clone()))
                    .from(Alias::new(link.table.to_string()))
                    .and_where(Expr::col(Alias::new(end.column.clone())).is_in(values.clone()));
                others.and_where(if delete {
                    Expr::col(Alias::new("deleted_at")).is_null()
                } else {
                    Expr::col(Alias::new("deleted_at")).is_not_null()
                });
                let other_ids: Vec<String> = self
                    .db
                    .fetch("Link", &others, &[Kind::Text])
                    .await?
                    .into_iter()
                    .filter_map(|row| {
                        row.into_iter()
                            .next()
                            .and_then(|v| v.as_str().map(str::to_owned))
                    })
                    .collect();
                let stamp = if delete {
                    Json::String(gorgon_data::format_timestamp(&gorgon_data::now()))
                } else {
                    Json::Null
                };
                let mut update = Query::update();
                update
                    .table(Alias::new(link.table.to_string()))
                    .value(
                        Alias::new("deleted_at"),
                        Expr::val(gorgon_data::bind(
                            Kind::Timestamp,
                            dialect,
                            "deleted_at",
                            &stamp,
                        )?),
                    )
                    .and_where(Expr::col(Alias::new(end.column.clone())).is_in(values));
                update.and_where(if delete {
                    Expr::col(Alias::new("deleted_at")).is_null()
                } else {
                    Expr::col(Alias::new("deleted_at")).is_not_null()
                });
                self.db.execute("Link", &update).await?;
                if other.delete_cascade && !other_ids.is_empty() {
                    let cascaded = if delete {
                        gorgon_data::soft_delete_ids(&self.db, other.model, other_ids).await?
                    } else {
                        gorgon_data::restore_ids(&self.db, other.model, other_ids).await?
                    };
                    for (key, ids) in cascaded {
                        touched
                            .entry(key.clone())
                            .or_default()
                            .extend(ids.iter().cloned());
                        queue.push((key, ids));
                    }
                }
            }
            touched.entry(column).or_default().extend(ids);
        }
        for ids in touched.values_mut() {
            ids.sort();
            ids.dedup();
        }
        Ok(touched)
    }

    /// The live link rows matching a partial link (`{"product": {"product_id": "prod_1"}}`
    /// lists that product's links of every link that has a product side; add the other module
    /// with `{}` to pick one link).
    pub async fn list(&self, item: impl Serialize) -> Result<Vec<Json>, Error> {
        let json = serde_json::to_value(item).map_err(|e| Error::Link(e.to_string()))?;
        let Json::Object(map) = json else {
            return Err(Error::Link(
                "list takes {\"<module>\": {\"<entity>_id\": \"…\"}}".into(),
            ));
        };
        let mut conditions: Vec<(String, String, Option<String>)> = Vec::new();
        for (module, value) in map {
            let Json::Object(inner) = value else {
                return Err(Error::Link(format!(
                    "`{module}` holds {{\"<entity>_id\": \"…\"}} or {{}}"
                )));
            };
            if inner.is_empty() {
                conditions.push((module.clone(), String::new(), None));
            }
            for (column, id) in inner {
                let id = id
                    .as_str()
                    .ok_or_else(|| Error::Link(format!("`{module}.{column}` is an id string")))?;
                conditions.push((module.clone(), column, Some(id.to_owned())));
            }
        }
        let mut rows = Vec::new();
        for link in self.links.iter() {
            let fits = conditions.iter().all(|(module, column, _)| {
                if column.is_empty() {
                    link.left.module == module || link.right.module == module
                } else {
                    link.end(column).is_some_and(|end| end.module == module)
                }
            });
            if !fits || conditions.is_empty() {
                continue;
            }
            let mut columns: Vec<(String, Kind)> = vec![
                ("id".into(), Kind::Text),
                (link.left.column.clone(), Kind::Text),
                (link.right.column.clone(), Kind::Text),
            ];
            columns.extend(link.extra.iter().map(|c| (c.name.clone(), c.kind)));
            columns.extend(
                ["created_at", "updated_at", "deleted_at"].map(|c| (c.to_owned(), Kind::Timestamp)),
            );
            let mut query = Query::select();
            query
                .columns(columns.iter().map(|(name, _)| Alias::new(name.clone())))
                .from(Alias::new(link.table.to_string()))
                .and_where(Expr::col(Alias::new("deleted_at")).is_null())
                .order_by(Alias::new("id"), sea_query::Order::Asc);
            for (_, column, id) in &conditions {
                if let Some(id) = id {
                    query.and_where(Expr::col(Alias::new(column.clone())).eq(id.as_str()));
                }
            }
            let kinds: Vec<Kind> = columns.iter().map(|(_, kind)| *kind).collect();
            for row in self.db.fetch("Link", &query, &kinds).await? {
                let record: Map<String, Json> = columns
                    .iter()
                    .map(|(name, _)| name.clone())
                    .zip(row)
                    .collect();
                rows.push(Json::Object(record));
            }
        }
        Ok(rows)
    }
}
