//! The generated service of a model: Medusa's `list`, `listAndCount`, `retrieve`, `create`,
//! `update`, `delete`, `softDelete` and `restore`, typed.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use sea_query::{Alias, Expr, ExprTrait, Query, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::db::Db;
use crate::error::{Error, Result};
use crate::graph::{self, Direction, Filter, Graph, Relations, Resolver};
use crate::model::{Column, Kind, Model, ModelMeta, RelationKind};
use crate::value;

/// The most parameters one statement binds (SQLite allows 32,766; PostgreSQL 65,535).
const MAX_PARAMETERS: usize = 30_000;

/// What [`Crud::soft_delete`], [`Crud::restore`] and [`Crud::delete`] touched, by linkable key:
/// `{"restock_order_id": [...], "restock_item_id": [...]}`, what Medusa's `softDelete` returns
/// so that links to those records can follow.
pub type LinkableKeys = BTreeMap<String, Vec<String>>;

/// How a list reads: Medusa's `FindConfig`.
#[derive(Debug, Clone, Default)]
pub struct FindConfig {
    /// Fields to read (`["id", "name", "items.quantity"]`); empty means every column.
    pub select: Vec<String>,
    /// Relations to read, nested with dots (`["items"]`).
    pub relations: Vec<String>,
    /// Columns to order by; the id breaks ties.
    pub order: Vec<(String, Direction)>,
    /// Records to skip.
    pub skip: Option<u64>,
    /// Most records to return.
    pub take: Option<u64>,
    /// Whether soft-deleted records are included.
    pub with_deleted: bool,
}

impl FindConfig {
    /// Every column, every record, ordered by id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads only these fields.
    pub fn select<I: IntoIterator<Item = S>, S: Into<String>>(mut self, fields: I) -> Self {
        self.select = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Also reads these relations.
    pub fn relations<I: IntoIterator<Item = S>, S: Into<String>>(mut self, relations: I) -> Self {
        self.relations = relations.into_iter().map(Into::into).collect();
        self
    }

    /// Orders by this column, then by those given after it.
    pub fn order_by(mut self, field: impl Into<String>, direction: Direction) -> Self {
        self.order.push((field.into(), direction));
        self
    }

    /// Skips this many records.
    pub fn skip(mut self, skip: u64) -> Self {
        self.skip = Some(skip);
        self
    }

    /// Returns at most this many records.
    pub fn take(mut self, take: u64) -> Self {
        self.take = Some(take);
        self
    }

    /// Includes soft-deleted records.
    pub fn with_deleted(mut self) -> Self {
        self.with_deleted = true;
        self
    }

    /// The nested read this configuration asks for.
    pub fn to_graph(&self, entity: &'static ModelMeta, filter: Filter) -> Graph {
        let mut fields = if self.select.is_empty() {
            vec!["*".to_owned()]
        } else {
            self.select.clone()
        };
        for relation in &self.relations {
            let prefix = format!("{relation}.");
            if !fields.iter().any(|field| field.starts_with(&prefix)) {
                fields.push(format!("{relation}.*"));
            }
        }
        Graph {
            entity,
            fields,
            filter,
            order: self.order.clone(),
            skip: self.skip,
            take: self.take,
            with_deleted: self.with_deleted,
            count: false,
        }
    }
}

/// The generated service of model `M`: a module service holds one per model
/// (`self.brands.list(…)`), all over the same [`Db`].
pub struct Crud<M> {
    db: Db,
    model: PhantomData<fn() -> M>,
}

impl<M> Clone for Crud<M> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            model: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Crud<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crud")
            .field("model", &std::any::type_name::<M>())
            .finish_non_exhaustive()
    }
}

impl<M: Model> Crud<M> {
    /// The service of `M` over `db`.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            model: PhantomData,
        }
    }

    /// The database it reads and writes.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn meta() -> &'static ModelMeta {
        M::meta()
    }

    /// The records matching `filter`, read as `config` says.
    pub async fn list(&self, filter: impl Into<Filter>, config: FindConfig) -> Result<Vec<M>> {
        self.list_as(filter, config).await
    }

    /// Like [`Crud::list`], read into another type: a struct of the selected fields, or
    /// `serde_json::Value`.
    pub async fn list_as<T: DeserializeOwned>(
        &self,
        filter: impl Into<Filter>,
        config: FindConfig,
    ) -> Result<Vec<T>> {
        let graph = config.to_graph(Self::meta(), filter.into());
        let page = graph::read(&self.db, &Relations, &graph).await?;
        decode(page.data)
    }

    /// One page of the records matching `filter`, and how many match in all.
    pub async fn list_and_count(
        &self,
        filter: impl Into<Filter>,
        config: FindConfig,
    ) -> Result<(Vec<M>, u64)> {
        let mut graph = config.to_graph(Self::meta(), filter.into());
        graph.count = true;
        let page = graph::read(&self.db, &Relations, &graph).await?;
        Ok((decode(page.data)?, page.count.unwrap_or(0)))
    }

    /// The record with this id; [`Error::NotFound`] when there is none (or it is soft-deleted,
    /// unless `config.with_deleted`).
    pub async fn retrieve(&self, id: &str, config: FindConfig) -> Result<M> {
        if id.is_empty() {
            return Err(Error::invalid("id", "must not be empty"));
        }
        let mut graph = config.to_graph(Self::meta(), Filter::id(id));
        graph.skip = None;
        graph.take = Some(1);
        let page = graph::read(&self.db, &Relations, &graph).await?;
        let record = page
            .data
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound {
                entity: Self::meta().type_name,
                id: id.to_owned(),
            })?;
        decode_one(record)
    }

    /// Creates one record from `data` (any serde value with the model's fields; the id and
    /// timestamps are filled in).
    pub async fn create(&self, data: impl Serialize) -> Result<M> {
        let mut created = self.create_many(std::slice::from_ref(&data)).await?;
        created
            .pop()
            .ok_or_else(|| Error::invalid("data", "nothing was created"))
    }

    /// Creates many records, in as few statements as their fields allow, all or none; returns
    /// them in the order given.
    pub async fn create_many<D: Serialize>(&self, data: &[D]) -> Result<Vec<M>> {
        let meta = Self::meta();
        let now = Json::String(value::format_timestamp(&value::now()));
        let mut rows = Vec::with_capacity(data.len());
        for (index, item) in data.iter().enumerate() {
            let json =
                serde_json::to_value(item).map_err(|e| Error::invalid("data", e.to_string()))?;
            let mut row = writable(meta, json, &format!("[{index}]"))?;
            row.entry("id".to_owned())
                .or_insert_with(|| Json::String(crate::id::generate(meta.id_prefix)));
            row.entry("created_at".to_owned())
                .or_insert_with(|| now.clone());
            row.entry("updated_at".to_owned())
                .or_insert_with(|| now.clone());
            for column in meta.columns {
                if !column.nullable && !column.has_default && !row.contains_key(column.name) {
                    return Err(Error::MissingField {
                        entity: meta.type_name,
                        field: column.name,
                    });
                }
            }
            rows.push(row);
        }
        let ids: Vec<String> = rows
            .iter()
            .map(|row| {
                row.get("id")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        // Rows giving the same fields go in one statement (a left-out field keeps its default).
        let mut groups: BTreeMap<Vec<&'static str>, Vec<Map<String, Json>>> = BTreeMap::new();
        for row in rows {
            let key: Vec<&'static str> = meta
                .columns
                .iter()
                .filter(|column| row.contains_key(column.name))
                .map(|column| column.name)
                .collect();
            groups.entry(key).or_default().push(row);
        }
        let dialect = self.db.dialect();
        let records = self
            .db
            .transaction(|| async {
                let mut created: Vec<Json> = Vec::new();
                for (names, rows) in &groups {
                    let per_statement = (MAX_PARAMETERS / names.len().max(1)).max(1);
                    for chunk in rows.chunks(per_statement) {
                        let mut insert = Query::insert();
                        insert.into_table(meta.table).columns(names.iter().copied());
                        for row in chunk {
                            let mut values = Vec::with_capacity(names.len());
                            for name in names {
                                let column =
                                    meta.column(name).ok_or_else(|| unknown(meta, name))?;
                                let json = &row[*name];
                                values.push(Expr::val(value::to_sql(
                                    column.kind,
                                    dialect,
                                    name,
                                    json,
                                )?));
                            }
                            insert
                                .values(values)
                                .map_err(|e| Error::invalid("data", e.to_string()))?;
                        }
                        insert.returning(
                            Query::returning().columns(meta.columns.iter().map(|c| c.name)),
                        );
                        created.extend(self.fetch_records(&insert).await?);
                    }
                }
                Ok::<_, Error>(created)
            })
            .await?;
        let mut by_id: BTreeMap<String, Json> = records
            .into_iter()
            .map(|record| {
                (
                    record
                        .get("id")
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    record,
                )
            })
            .collect();
        ids.iter()
            .map(|id| {
                by_id
                    .remove(id)
                    .ok_or_else(|| Error::invalid("id", "a created record was not returned"))
            })
            .map(|record| record.and_then(decode_one))
            .collect()
    }

    /// Updates the record with this id with the fields of `patch`; returns it as it is now.
    pub async fn update(&self, id: &str, patch: impl Serialize) -> Result<M> {
        let meta = Self::meta();
        let mut updated = self.update_where(Filter::id(id), patch).await?;
        updated.pop().ok_or_else(|| Error::NotFound {
            entity: meta.type_name,
            id: id.to_owned(),
        })
    }

    /// Updates every record matching `filter` with the fields of `patch` (Medusa's
    /// `update({ selector, data })`); returns them as they are now.
    pub async fn update_where(
        &self,
        filter: impl Into<Filter>,
        patch: impl Serialize,
    ) -> Result<Vec<M>> {
        let meta = Self::meta();
        let json =
            serde_json::to_value(patch).map_err(|e| Error::invalid("data", e.to_string()))?;
        let mut row = writable(meta, json, "")?;
        for fixed in ["id", "created_at"] {
            if row.contains_key(fixed) {
                return Err(Error::invalid(fixed, "cannot be changed"));
            }
        }
        row.insert(
            "updated_at".to_owned(),
            Json::String(value::format_timestamp(&value::now())),
        );
        let matching =
            graph::matching_ids(self.db.dialect(), &Relations, meta, &filter.into(), false)?;
        let dialect = self.db.dialect();
        let mut update = Query::update();
        update.table(meta.table);
        for (name, json) in &row {
            let column = meta.column(name).ok_or_else(|| unknown(meta, name))?;
            update.value(
                column.name,
                Expr::val(value::to_sql(column.kind, dialect, name, json)?),
            );
        }
        update.and_where(Expr::col("id").in_subquery(matching));
        update.returning(Query::returning().columns(meta.columns.iter().map(|c| c.name)));
        let mut records = self.fetch_records(&update).await?;
        records.sort_by_key(|record| record.get("id").and_then(Json::as_str).map(str::to_owned));
        decode(records)
    }

    /// Deletes these records for good, and the records of relations marked `cascade`; returns
    /// the linkable keys removed.
    pub async fn delete<I: IntoIterator<Item = S>, S: AsRef<str>>(
        &self,
        ids: I,
    ) -> Result<LinkableKeys> {
        let ids = owned(ids);
        self.db
            .transaction(|| cascade(&self.db, Self::meta(), ids, Change::Delete))
            .await
    }

    /// Marks these records deleted (`deleted_at`), and the records of relations marked
    /// `cascade`; returns the linkable keys it touched, for links to follow.
    pub async fn soft_delete<I: IntoIterator<Item = S>, S: AsRef<str>>(
        &self,
        ids: I,
    ) -> Result<LinkableKeys> {
        let ids = owned(ids);
        let at = Json::String(value::format_timestamp(&value::now()));
        self.db
            .transaction(|| cascade(&self.db, Self::meta(), ids, Change::SoftDelete(at)))
            .await
    }

    /// Brings soft-deleted records back, with the cascaded records deleted together with them
    /// (not those deleted on their own before); returns the linkable keys restored.
    pub async fn restore<I: IntoIterator<Item = S>, S: AsRef<str>>(
        &self,
        ids: I,
    ) -> Result<LinkableKeys> {
        let ids = owned(ids);
        self.db
            .transaction(|| cascade(&self.db, Self::meta(), ids, Change::Restore))
            .await
    }

    async fn fetch_records<S: sea_query_sqlx::SqlxBinder>(
        &self,
        statement: &S,
    ) -> Result<Vec<Json>> {
        let meta = Self::meta();
        let kinds: Vec<Kind> = meta.columns.iter().map(|c| c.kind).collect();
        let rows = self.db.fetch(meta.type_name, statement, &kinds).await?;
        Ok(rows
            .into_iter()
            .map(|row| record(meta.columns, row))
            .collect())
    }
}

/// Soft-deletes records of any model by id, with its cascading relations, in one transaction
/// (what [`Crud::soft_delete`] does, for code that holds a model's metadata rather than its type:
/// links cascading across modules).
pub async fn soft_delete_ids(
    db: &Db,
    meta: &'static ModelMeta,
    ids: Vec<String>,
) -> Result<LinkableKeys> {
    let at = Json::String(value::format_timestamp(&value::now()));
    db.transaction(|| cascade(db, meta, ids, Change::SoftDelete(at)))
        .await
}

/// Restores records of any model by id; see [`Crud::restore`].
pub async fn restore_ids(
    db: &Db,
    meta: &'static ModelMeta,
    ids: Vec<String>,
) -> Result<LinkableKeys> {
    db.transaction(|| cascade(db, meta, ids, Change::Restore))
        .await
}

/// Deletes records of any model by id for good; see [`Crud::delete`].
pub async fn delete_ids(
    db: &Db,
    meta: &'static ModelMeta,
    ids: Vec<String>,
) -> Result<LinkableKeys> {
    db.transaction(|| cascade(db, meta, ids, Change::Delete))
        .await
}

fn owned<I: IntoIterator<Item = S>, S: AsRef<str>>(ids: I) -> Vec<String> {
    ids.into_iter().map(|id| id.as_ref().to_owned()).collect()
}

fn record(columns: &[Column], row: Vec<Json>) -> Json {
    Json::Object(
        columns
            .iter()
            .zip(row)
            .map(|(c, v)| (c.name.to_owned(), v))
            .collect(),
    )
}

fn decode<T: DeserializeOwned>(records: Vec<Json>) -> Result<Vec<T>> {
    records.into_iter().map(decode_one).collect()
}

fn decode_one<T: DeserializeOwned>(record: Json) -> Result<T> {
    serde_json::from_value(record).map_err(|source| Error::Decode {
        entity: std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("record"),
        source,
    })
}

fn unknown(meta: &'static ModelMeta, field: &str) -> Error {
    Error::UnknownField {
        entity: meta.type_name,
        field: field.to_owned(),
        help: format!("; its fields are {}", meta.field_list()),
    }
}

/// The fields of a write, each a column of the model.
fn writable(meta: &'static ModelMeta, json: Json, at: &str) -> Result<Map<String, Json>> {
    let Json::Object(map) = json else {
        return Err(Error::invalid(
            if at.is_empty() { "data" } else { at },
            "expected an object of fields",
        ));
    };
    let mut row = Map::new();
    for (key, value) in map {
        if meta.column(&key).is_none() {
            // Unloaded relations serialize as null or an empty list: not a write.
            if meta.relation(&key).is_some()
                && (Json::is_null(&value) || value.as_array().is_some_and(Vec::is_empty))
            {
                continue;
            }
            let mut error = unknown(meta, &key);
            if meta.relation(&key).is_some()
                && let Error::UnknownField { help, .. } = &mut error
            {
                *help = "; related records are written through their own model".to_owned();
            }
            return Err(error);
        }
        if key == "deleted_at" {
            return Err(Error::invalid(key, "is set by soft_delete and restore"));
        }
        row.insert(key, value);
    }
    Ok(row)
}

/// What [`cascade`] does to each record.
#[derive(Clone)]
enum Change {
    Delete,
    SoftDelete(Json),
    Restore,
}

/// Applies a change to records of `meta` and, first, to the records of its cascading
/// relations; returns the linkable keys touched.
fn cascade<'a>(
    db: &'a Db,
    meta: &'static ModelMeta,
    ids: Vec<String>,
    change: Change,
) -> BoxFuture<'a, Result<LinkableKeys>> {
    Box::pin(async move {
        let mut touched = LinkableKeys::new();
        if ids.is_empty() {
            return Ok(touched);
        }
        let dialect = db.dialect();
        let id_values = |ids: &[String]| -> Vec<Value> {
            ids.iter()
                .map(|id| Value::String(Some(id.clone())))
                .collect()
        };
        // The records this change applies to: those that exist in the state it changes.
        let mut present = Query::select();
        present
            .column("id")
            .from(meta.table)
            .and_where(Expr::col("id").is_in(id_values(&ids)));
        match &change {
            Change::Delete => {}
            Change::SoftDelete(_) => {
                present.and_where(Expr::col("deleted_at").is_null());
            }
            Change::Restore => {
                present.and_where(Expr::col("deleted_at").is_not_null());
            }
        }
        let ids: Vec<String> = db
            .fetch(meta.type_name, &present, &[Kind::Text])
            .await?
            .into_iter()
            .filter_map(|row| {
                row.into_iter()
                    .next()
                    .and_then(|id| id.as_str().map(str::to_owned))
            })
            .collect();
        if ids.is_empty() {
            return Ok(touched);
        }
        for relation in meta
            .relations
            .iter()
            .filter(|r| r.cascade && r.kind != RelationKind::BelongsTo)
        {
            let target = (relation.target)();
            let child = Alias::new("c");
            let parent = Alias::new("p");
            let mut children = Query::select();
            children
                .column((child.clone(), "id"))
                .from_as(target.table, child.clone())
                .and_where(Expr::col((child.clone(), relation.foreign_key)).is_in(id_values(&ids)));
            match &change {
                Change::Delete => {}
                Change::SoftDelete(_) => {
                    children.and_where(Expr::col((child.clone(), "deleted_at")).is_null());
                }
                // Only the children deleted together with their parent.
                Change::Restore => {
                    children
                        .join_as(
                            sea_query::JoinType::InnerJoin,
                            meta.table,
                            parent.clone(),
                            Expr::col((parent.clone(), "id"))
                                .equals((child.clone(), relation.foreign_key)),
                        )
                        .and_where(
                            Expr::col((child.clone(), "deleted_at")).equals((parent, "deleted_at")),
                        );
                }
            }
            let child_ids: Vec<String> = db
                .fetch(target.type_name, &children, &[Kind::Text])
                .await?
                .into_iter()
                .filter_map(|row| {
                    row.into_iter()
                        .next()
                        .and_then(|id| id.as_str().map(str::to_owned))
                })
                .collect();
            let below = cascade(db, target, child_ids, change.clone()).await?;
            for (key, mut values) in below {
                touched.entry(key).or_default().append(&mut values);
            }
        }
        for chunk in ids.chunks(MAX_PARAMETERS) {
            match &change {
                Change::Delete => {
                    let mut delete = Query::delete();
                    delete
                        .from_table(meta.table)
                        .and_where(Expr::col("id").is_in(id_values(chunk)));
                    db.execute(meta.type_name, &delete).await?;
                }
                Change::SoftDelete(at) => {
                    let mut update = Query::update();
                    update
                        .table(meta.table)
                        .value(
                            "deleted_at",
                            Expr::val(value::to_sql(Kind::Timestamp, dialect, "deleted_at", at)?),
                        )
                        .and_where(Expr::col("id").is_in(id_values(chunk)));
                    db.execute(meta.type_name, &update).await?;
                }
                Change::Restore => {
                    let mut update = Query::update();
                    update
                        .table(meta.table)
                        .value(
                            "deleted_at",
                            Expr::val(value::to_sql(
                                Kind::Timestamp,
                                dialect,
                                "deleted_at",
                                &Json::Null,
                            )?),
                        )
                        .and_where(Expr::col("id").is_in(id_values(chunk)));
                    db.execute(meta.type_name, &update).await?;
                }
            }
        }
        touched.entry(meta.linkable_key()).or_default().extend(ids);
        Ok(touched)
    })
}

impl<M: Model> Crud<M> {
    /// Reads a nested graph rooted at this model with another [`Resolver`] (the framework's
    /// links); most callers use [`Crud::list`] or the framework's Query.
    pub async fn read(&self, resolver: &dyn Resolver, graph: &Graph) -> Result<graph::Page> {
        graph::read(&self.db, resolver, graph).await
    }
}
