//! Nested reads: a root entity filtered, ordered and paginated in one statement, then each
//! related level fetched in one batched statement. Filters on related entities become
//! semi-joins (`id IN (SELECT …)`), so the root's page and count are right without reading what it is
//! related to. The same code serves a module's own relations and, through a [`Resolver`] the
//! framework supplies, links between modules.

use std::collections::HashMap;
use std::sync::Arc;

use sea_query::{
    Alias, BinOper, Condition, Expr, ExprTrait, Func, JoinType, Order, Query, SelectStatement,
};
use serde_json::{Map, Value as Json};

use crate::db::{Db, Dialect};
use crate::error::{Error, Result};
use crate::model::{Column, Kind, ModelMeta, RelationKind};
use crate::value;

/// How many keys one batched `IN (…)` carries.
const BATCH: usize = 1000;

/// The conditions of a read, as data: a JSON object in Medusa's filter syntax.
///
/// `{"name": "Acme"}`, `{"id": ["a", "b"]}`, `{"points": {"$gte": 100}}`,
/// `{"$or": [{"status": "draft"}, {"status": null}]}`, `{"q": "acme"}`, and a relation or link
/// name holding a filter on it: `{"items": {"quantity": {"$gt": 5}}}`. Every field and operator
/// is checked against the model when the read runs; nothing is spliced into SQL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter(Json);

impl Filter {
    /// No condition: every (not deleted) record.
    pub fn all() -> Self {
        Self(Json::Null)
    }

    /// The record with this id.
    pub fn id(id: impl Into<String>) -> Self {
        Self(serde_json::json!({ "id": id.into() }))
    }

    /// The records with these ids.
    pub fn ids<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let ids: Vec<Json> = ids.into_iter().map(|id| Json::String(id.into())).collect();
        Self(serde_json::json!({ "id": ids }))
    }

    /// Adds `field` = `value` (an array means "one of").
    pub fn eq(mut self, field: &str, value: impl Into<Json>) -> Self {
        if !self.0.is_object() {
            self.0 = Json::Object(Map::new());
        }
        if let Json::Object(map) = &mut self.0 {
            map.insert(field.to_owned(), value.into());
        }
        self
    }

    /// The filter as JSON.
    pub fn as_json(&self) -> &Json {
        &self.0
    }

    fn mentions(&self, field: &str) -> bool {
        self.0
            .as_object()
            .is_some_and(|map| map.contains_key(field))
    }
}

impl From<Json> for Filter {
    fn from(json: Json) -> Self {
        Self(json)
    }
}

/// Which way a field orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// How one entity reaches another in a read.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The related entity.
    pub target: &'static ModelMeta,
    /// Whether there are many (read into an array) or at most one (an object or `null`).
    pub many: bool,
    /// Which columns or table connect them.
    pub path: Path,
}

/// The columns, or the link table, that connect two entities.
#[derive(Debug, Clone)]
pub enum Path {
    /// `target.remote = source.local` (a relation inside a module).
    Columns {
        /// The source's column.
        local: &'static str,
        /// The target's column.
        remote: &'static str,
    },
    /// Through a link table: `link.near = source.local` and `link.far = target.remote`.
    Table {
        /// The link table.
        table: Arc<str>,
        /// The source's column (its id).
        local: &'static str,
        /// The link table's column holding the source's key.
        near: Arc<str>,
        /// The link table's column holding the target's key.
        far: Arc<str>,
        /// The target's column (its id).
        remote: &'static str,
    },
}

/// Finds how an entity reaches a named neighbour. The data layer resolves a module's own
/// relations ([`Relations`]); the framework adds links between modules.
pub trait Resolver: Send + Sync {
    /// The hop from `from` through the field `name`, if there is one.
    fn hop(&self, from: &'static ModelMeta, name: &str) -> Option<Hop>;

    /// The names `from` reaches others through, for messages (its relations by default).
    fn hop_names(&self, from: &'static ModelMeta) -> Vec<String> {
        from.relations
            .iter()
            .map(|relation| relation.name.to_owned())
            .collect()
    }
}

/// The [`Resolver`] of a module's own relations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relations;

impl Resolver for Relations {
    fn hop(&self, from: &'static ModelMeta, name: &str) -> Option<Hop> {
        relation_hop(from, name)
    }
}

/// The hop through one of `from`'s relations.
pub fn relation_hop(from: &'static ModelMeta, name: &str) -> Option<Hop> {
    let relation = from.relation(name)?;
    let (local, remote) = match relation.kind {
        RelationKind::HasMany | RelationKind::HasOne => ("id", relation.foreign_key),
        RelationKind::BelongsTo => (relation.foreign_key, "id"),
    };
    Some(Hop {
        target: (relation.target)(),
        many: relation.kind == RelationKind::HasMany,
        path: Path::Columns { local, remote },
    })
}

/// A nested read: which entity, which fields (`["id", "title", "items.*", "brand.name"]`),
/// which records, in which order, which page.
#[derive(Debug, Clone)]
pub struct Graph {
    /// The root entity.
    pub entity: &'static ModelMeta,
    /// Field paths; empty means every column of the root (`*`).
    pub fields: Vec<String>,
    /// Conditions on the root (and, through relation or link names, on related entities).
    pub filter: Filter,
    /// Root columns to order by; the id breaks ties, so pages never overlap.
    pub order: Vec<(String, Direction)>,
    /// Root records to skip.
    pub skip: Option<u64>,
    /// Most root records to return.
    pub take: Option<u64>,
    /// Whether soft-deleted root records are included (filtering on `deleted_at` implies it).
    pub with_deleted: bool,
    /// Whether to count every root record the filter matches (ignoring the page).
    pub count: bool,
}

impl Graph {
    /// Every column of every record of `entity`.
    pub fn new(entity: &'static ModelMeta) -> Self {
        Self {
            entity,
            fields: Vec::new(),
            filter: Filter::all(),
            order: Vec::new(),
            skip: None,
            take: None,
            with_deleted: false,
            count: false,
        }
    }
}

/// What a [`Graph`] read returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The root records, related records nested under their field names.
    pub data: Vec<Json>,
    /// How many root records match, when asked.
    pub count: Option<u64>,
}

/// Which fields of one entity to read, and which neighbours below it.
#[derive(Debug)]
struct Selection {
    entity: &'static ModelMeta,
    columns: Vec<&'static Column>,
    /// Columns read only to join on, removed from the output.
    hidden: Vec<&'static str>,
    children: Vec<(String, Hop, Selection)>,
}

impl Selection {
    fn new(entity: &'static ModelMeta) -> Self {
        Self {
            entity,
            columns: Vec::new(),
            hidden: Vec::new(),
            children: Vec::new(),
        }
    }

    fn add_column(&mut self, column: &'static Column) {
        if !self.columns.iter().any(|c| c.name == column.name) {
            self.columns.push(column);
        }
    }

    fn add_all(&mut self) {
        for column in self.entity.columns {
            self.add_column(column);
        }
    }

    /// Adds a column needed to join, hidden unless it was asked for.
    fn need(&mut self, name: &'static str) {
        if let Some(column) = self.entity.column(name)
            && !self.columns.iter().any(|c| c.name == name)
        {
            self.columns.push(column);
            self.hidden.push(name);
        }
    }

    fn child(&mut self, name: &str, hop: Hop) -> &mut Selection {
        let index = match self.children.iter().position(|(n, _, _)| n == name) {
            Some(index) => index,
            None => {
                let target = hop.target;
                self.children
                    .push((name.to_owned(), hop, Selection::new(target)));
                self.children.len() - 1
            }
        };
        &mut self.children[index].2
    }

    /// Every selection has its id; each hop's key columns are read on both sides.
    fn complete(&mut self) {
        if self.columns.is_empty() {
            self.add_all();
        }
        // Every record carries its id, as Medusa's do, asked for or not.
        if let Some(id) = self.entity.column("id") {
            self.add_column(id);
        }
        let mut needs = Vec::new();
        for (_, hop, child) in &mut self.children {
            let (local, remote) = match &hop.path {
                Path::Columns { local, remote } => (*local, Some(*remote)),
                Path::Table { local, .. } => (*local, None),
            };
            needs.push(local);
            child.complete();
            if let Some(remote) = remote {
                child.need(remote);
            }
        }
        for local in needs {
            self.need(local);
        }
    }
}

fn unknown(entity: &'static ModelMeta, field: &str) -> Error {
    Error::UnknownField {
        entity: entity.type_name,
        field: field.to_owned(),
        help: format!("; its fields are {}", entity.field_list()),
    }
}

/// [`unknown`], listing what the resolver reaches too (links).
fn unknown_in(entity: &'static ModelMeta, field: &str, resolver: &dyn Resolver) -> Error {
    let columns: Vec<&str> = entity.columns.iter().map(|c| c.name).collect();
    let mut help = format!("; its fields are {}", columns.join(", "));
    let hops = resolver.hop_names(entity);
    if !hops.is_empty() {
        help.push_str("; it reaches ");
        help.push_str(&hops.join(", "));
    }
    Error::UnknownField {
        entity: entity.type_name,
        field: field.to_owned(),
        help,
    }
}

fn select(
    entity: &'static ModelMeta,
    fields: &[String],
    resolver: &dyn Resolver,
) -> Result<Selection> {
    let mut root = Selection::new(entity);
    for field in fields {
        let mut at = &mut root;
        let segments: Vec<&str> = field.split('.').collect();
        for (index, segment) in segments.iter().enumerate() {
            let last = index + 1 == segments.len();
            if last && *segment == "*" {
                at.add_all();
            } else if let Some(column) = at.entity.column(segment).filter(|_| last) {
                at.add_column(column);
            } else if let Some(hop) = resolver.hop(at.entity, segment) {
                at = at.child(segment, hop);
                if last {
                    at.add_all();
                }
            } else {
                return Err(unknown_in(at.entity, field, resolver));
            }
        }
    }
    root.complete();
    Ok(root)
}

/// Builds `WHERE` conditions from filters, checked against the models.
struct Compiler<'a> {
    dialect: Dialect,
    resolver: &'a dyn Resolver,
    next_alias: usize,
}

impl Compiler<'_> {
    fn alias(&mut self) -> Alias {
        self.next_alias += 1;
        Alias::new(format!("t{}", self.next_alias))
    }

    fn filter(
        &mut self,
        entity: &'static ModelMeta,
        alias: &Alias,
        json: &Json,
        path: &str,
    ) -> Result<Condition> {
        let mut all = Condition::all();
        let map = match json {
            Json::Null => return Ok(all),
            Json::Object(map) => map,
            _ => {
                return Err(Error::invalid(
                    display(path, "filter"),
                    "expected an object of conditions",
                ));
            }
        };
        for (key, value) in map {
            let here = join(path, key);
            match key.as_str() {
                "$and" | "$or" => {
                    let items = value
                        .as_array()
                        .ok_or_else(|| Error::invalid(&here, "expected an array of filters"))?;
                    let mut group = if key == "$and" {
                        Condition::all()
                    } else {
                        Condition::any()
                    };
                    for item in items {
                        group = group.add(self.filter(entity, alias, item, path)?);
                    }
                    if key == "$or" && items.is_empty() {
                        group = Condition::all().add(never());
                    }
                    all = all.add(group);
                }
                "q" if entity.column("q").is_none() => {
                    all = all.add(self.search(entity, alias, value, &here)?);
                }
                _ => {
                    if let Some(column) = entity.column(key) {
                        all = all.add(self.column(alias, column, value, &here)?);
                    } else if let Some(hop) = self.resolver.hop(entity, key) {
                        all = all.add(self.exists(alias, &hop, value, &here)?);
                    } else if key.starts_with('$') {
                        return Err(Error::UnknownOperator {
                            field: display(path, "filter"),
                            operator: key.clone(),
                        });
                    } else {
                        return Err(unknown_in(entity, &here, self.resolver));
                    }
                }
            }
        }
        Ok(all)
    }

    fn search(
        &mut self,
        entity: &'static ModelMeta,
        alias: &Alias,
        value: &Json,
        here: &str,
    ) -> Result<Condition> {
        let term = value
            .as_str()
            .ok_or_else(|| Error::invalid(here, "expected a string to search for"))?;
        let mut any = Condition::any();
        let mut searchable = entity.searchable().peekable();
        if searchable.peek().is_none() {
            return Err(Error::invalid(
                here,
                format!("{} has no searchable fields", entity.type_name),
            ));
        }
        let escaped: String = term
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        for column in searchable {
            any = any.add(ilike(col(alias, column.name), format!("%{escaped}%"), true));
        }
        Ok(any)
    }

    /// A condition on related records, as a semi-join: `local IN (SELECT key FROM related
    /// WHERE …)`. Uncorrelated, so each database plans it from the related side (the few
    /// records of one brand) rather than probing once per root row.
    fn exists(&mut self, alias: &Alias, hop: &Hop, value: &Json, here: &str) -> Result<Condition> {
        let target_alias = self.alias();
        let mut sub = Query::select();
        sub.from_as(hop.target.table, target_alias.clone());
        let local = match &hop.path {
            Path::Columns { local, remote } => {
                sub.expr(col(&target_alias, remote));
                *local
            }
            Path::Table {
                table,
                local,
                near,
                far,
                remote,
            } => {
                let link = self.alias();
                sub.expr(Expr::col((link.clone(), Alias::new(near.to_string()))));
                sub.join_as(
                    JoinType::InnerJoin,
                    Alias::new(table.to_string()),
                    link.clone(),
                    Expr::col((link.clone(), Alias::new(far.to_string())))
                        .equals((target_alias.clone(), *remote)),
                );
                sub.and_where(Expr::col((link, "deleted_at")).is_null());
                *local
            }
        };
        if hop.target.column("deleted_at").is_some() {
            sub.and_where(col(&target_alias, "deleted_at").is_null());
        }
        sub.cond_where(self.filter(hop.target, &target_alias, value, here)?);
        Ok(Condition::all().add(col(alias, local).in_subquery(sub)))
    }

    fn column(
        &mut self,
        alias: &Alias,
        column: &'static Column,
        value: &Json,
        here: &str,
    ) -> Result<Condition> {
        let operators = match value {
            Json::Object(map)
                if column.kind != Kind::Json || map.keys().all(|k| k.starts_with('$')) =>
            {
                map
            }
            _ => return self.operator(alias, column, "$eq", value, here),
        };
        let mut all = Condition::all();
        for (operator, operand) in operators {
            all = all.add(self.operator(alias, column, operator, operand, here)?);
        }
        Ok(all)
    }

    fn operator(
        &mut self,
        alias: &Alias,
        column: &'static Column,
        operator: &str,
        operand: &Json,
        here: &str,
    ) -> Result<Condition> {
        let field = col(alias, column.name);
        let dialect = self.dialect;
        let compared = || -> Expr {
            if column.kind == Kind::Decimal && dialect == Dialect::Sqlite {
                col(alias, column.name).cast_as("REAL")
            } else {
                col(alias, column.name)
            }
        };
        let bind = |json: &Json| value::to_comparable(column.kind, dialect, here, json);
        if column.kind == Kind::Json
            && operator != "$exists"
            && !(operator == "$eq" && operand.is_null())
        {
            return Err(Error::invalid(
                here,
                "JSON fields are filtered with $exists (or compared with null)",
            ));
        }
        let expr: Expr = match operator {
            "$eq" if operand.is_null() => field.is_null(),
            "$ne" if operand.is_null() => field.is_not_null(),
            "$eq" if operand.is_array() => {
                return self.operator(alias, column, "$in", operand, here);
            }
            "$eq" => compared().eq(bind(operand)?),
            "$ne" => compared().ne(bind(operand)?),
            "$lt" => compared().lt(bind(operand)?),
            "$lte" => compared().lte(bind(operand)?),
            "$gt" => compared().gt(bind(operand)?),
            "$gte" => compared().gte(bind(operand)?),
            "$in" | "$nin" => {
                let items = operand
                    .as_array()
                    .ok_or_else(|| Error::invalid(here, format!("{operator} takes an array")))?;
                if items.is_empty() {
                    return Ok(Condition::all().add(if operator == "$in" {
                        never()
                    } else {
                        always()
                    }));
                }
                let values = items.iter().map(bind).collect::<Result<Vec<_>>>()?;
                if operator == "$in" {
                    compared().is_in(values)
                } else {
                    compared().is_not_in(values)
                }
            }
            "$like" | "$ilike" => {
                if column.kind != Kind::Text {
                    return Err(Error::invalid(
                        here,
                        format!("{operator} applies to text fields"),
                    ));
                }
                let pattern = operand.as_str().ok_or_else(|| {
                    Error::invalid(here, format!("{operator} takes a string pattern"))
                })?;
                return Ok(Condition::all().add(ilike(
                    field,
                    pattern.to_owned(),
                    operator == "$ilike",
                )));
            }
            "$exists" => match operand.as_bool() {
                Some(true) => field.is_not_null(),
                Some(false) => field.is_null(),
                None => return Err(Error::invalid(here, "$exists takes true or false")),
            },
            _ => {
                return Err(Error::UnknownOperator {
                    field: here.to_owned(),
                    operator: operator.to_owned(),
                });
            }
        };
        Ok(Condition::all().add(expr))
    }
}

fn col(alias: &Alias, name: &'static str) -> Expr {
    Expr::col((alias.clone(), name))
}

/// `field LIKE pattern`, or case-insensitively `LOWER(field) LIKE LOWER(pattern)` (the same on
/// both databases; SQLite lowercases ASCII only). Search patterns escape with `\`.
fn ilike(field: Expr, pattern: String, insensitive: bool) -> Expr {
    let escape = pattern.contains('\\');
    let (left, mut right): (Expr, Expr) = if insensitive {
        (
            Func::lower(field).into(),
            Func::lower(Expr::val(pattern)).into(),
        )
    } else {
        (field, Expr::val(pattern))
    };
    if escape {
        right = Expr::Binary(
            Box::new(right),
            BinOper::Escape,
            Box::new(Expr::Constant('\\'.into())),
        );
    }
    left.binary(BinOper::Like, right)
}

fn never() -> Expr {
    Expr::val(1).eq(0)
}

fn always() -> Expr {
    Expr::val(1).eq(1)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn display(path: &str, otherwise: &str) -> String {
    if path.is_empty() {
        otherwise.to_owned()
    } else {
        path.to_owned()
    }
}

/// The condition on the root (aliased `t0`): the filter, and "not deleted" unless asked otherwise.
fn root_condition(
    dialect: Dialect,
    resolver: &dyn Resolver,
    entity: &'static ModelMeta,
    root: &Alias,
    filter: &Filter,
    with_deleted: bool,
) -> Result<Condition> {
    let mut compiler = Compiler {
        dialect,
        resolver,
        next_alias: 0,
    };
    let mut condition = compiler.filter(entity, root, filter.as_json(), "")?;
    if !with_deleted && !filter.mentions("deleted_at") && entity.column("deleted_at").is_some() {
        condition = condition.add(col(root, "deleted_at").is_null());
    }
    Ok(condition)
}

/// `SELECT id FROM entity WHERE filter`: the records a filtered update or delete touches.
pub(crate) fn matching_ids(
    dialect: Dialect,
    resolver: &dyn Resolver,
    entity: &'static ModelMeta,
    filter: &Filter,
    with_deleted: bool,
) -> Result<SelectStatement> {
    let root = Alias::new("t0");
    let condition = root_condition(dialect, resolver, entity, &root, filter, with_deleted)?;
    let mut query = Query::select();
    query
        .column((root.clone(), "id"))
        .from_as(entity.table, root)
        .cond_where(condition);
    Ok(query)
}

/// Runs a nested read.
pub async fn read(db: &Db, resolver: &dyn Resolver, graph: &Graph) -> Result<Page> {
    let entity = graph.entity;
    let selection = select(entity, &graph.fields, resolver)?;
    let root = Alias::new("t0");
    let condition = root_condition(
        db.dialect(),
        resolver,
        entity,
        &root,
        &graph.filter,
        graph.with_deleted,
    )?;

    let mut query = Query::select();
    query.from_as(entity.table, root.clone());
    for column in &selection.columns {
        query.column((root.clone(), column.name));
    }
    query.cond_where(condition.clone());
    let mut ordered_by_id = false;
    for (field, direction) in &graph.order {
        let column = entity.column(field).ok_or_else(|| unknown(entity, field))?;
        ordered_by_id |= column.name == "id";
        let order = match direction {
            Direction::Asc => Order::Asc,
            Direction::Desc => Order::Desc,
        };
        if column.kind == Kind::Decimal && db.dialect() == Dialect::Sqlite {
            query.order_by_expr(col(&root, column.name).cast_as("REAL"), order);
        } else {
            query.order_by((root.clone(), column.name), order);
        }
    }
    if !ordered_by_id {
        query.order_by((root.clone(), "id"), Order::Asc);
    }
    // Both databases take a signed 64-bit count.
    for (name, value) in [("take", graph.take), ("skip", graph.skip)] {
        if value.is_some_and(|v| v > i64::MAX as u64) {
            return Err(Error::invalid(name, "expected at most 9223372036854775807"));
        }
    }
    if let Some(take) = graph.take {
        query.limit(take);
    }
    if let Some(skip) = graph.skip {
        if graph.take.is_none() && db.dialect() == Dialect::Sqlite {
            // SQLite only takes OFFSET after a LIMIT; -1 is "no limit".
            query.limit(i64::MAX as u64);
        }
        query.offset(skip);
    }
    if graph.count {
        // The total before the page, in the same statement.
        query.expr_as(Expr::cust("COUNT(*) OVER ()"), Alias::new(TOTAL));
    }
    let (rows, total) = fetch_rows(db, entity, &query, &selection.columns, graph.count).await?;

    let count = if !graph.count {
        None
    } else if let Some(total) = total {
        Some(total)
    } else if graph.skip.unwrap_or(0) == 0 {
        Some(0)
    } else {
        // A page past the end has no row to carry the total: count apart.
        let mut counting = Query::select();
        counting
            .expr(Expr::col(sea_query::Asterisk).count())
            .from_as(entity.table, root.clone())
            .cond_where(condition);
        let rows = db
            .fetch(entity.type_name, &counting, &[Kind::Integer])
            .await?;
        let count = rows
            .first()
            .and_then(|row| row.first())
            .and_then(Json::as_u64)
            .unwrap_or(0);
        Some(count)
    };

    let mut data = rows;
    attach(db, &selection, &mut data).await?;
    for record in &mut data {
        strip(&selection, record);
    }
    Ok(Page { data, count })
}

/// The alias of the window count a counted read adds as its last column.
const TOTAL: &str = "__gorgon_total";

/// The root's rows as records, and the window total when the query carries one.
async fn fetch_rows(
    db: &Db,
    entity: &'static ModelMeta,
    query: &SelectStatement,
    columns: &[&'static Column],
    counted: bool,
) -> Result<(Vec<Json>, Option<u64>)> {
    let mut kinds: Vec<Kind> = columns.iter().map(|c| c.kind).collect();
    if counted {
        kinds.push(Kind::Integer);
    }
    let rows = db.fetch(entity.type_name, query, &kinds).await?;
    let mut total = None;
    let records = rows
        .into_iter()
        .map(|mut row| {
            if counted {
                total = row.pop().and_then(|value| value.as_u64());
            }
            let map: Map<String, Json> = columns
                .iter()
                .zip(row)
                .map(|(column, value)| (column.name.to_owned(), value))
                .collect();
            Json::Object(map)
        })
        .collect();
    Ok((records, total))
}

/// Reads each child level of `selection` for `records` and nests it under its name.
fn attach<'a>(
    db: &'a Db,
    selection: &'a Selection,
    records: &'a mut [Json],
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        for (name, hop, child) in &selection.children {
            let local = match &hop.path {
                Path::Columns { local, .. } | Path::Table { local, .. } => *local,
            };
            let mut keys: Vec<Json> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for record in records.iter() {
                if let Some(key) = record.get(local).filter(|k| !k.is_null())
                    && seen.insert(key.to_string())
                {
                    keys.push(key.clone());
                }
            }
            let related = fetch_related(db, hop, child, &keys).await?;
            let sizes: Vec<(String, usize)> = related
                .iter()
                .map(|(parent, rows)| (parent.clone(), rows.len()))
                .collect();
            let mut flat: Vec<Json> = related.into_iter().flat_map(|(_, rows)| rows).collect();
            attach(db, child, &mut flat).await?;
            for item in &mut flat {
                strip(child, item);
            }
            // Put the now-complete children back under their parents' keys.
            let mut flat = flat.into_iter();
            let mut by_parent: HashMap<String, Vec<Json>> = HashMap::new();
            for (parent, size) in sizes {
                by_parent.insert(parent, flat.by_ref().take(size).collect());
            }
            for record in records.iter_mut() {
                let key = record.get(local).map(Json::to_string).unwrap_or_default();
                let group = by_parent.remove(&key).unwrap_or_default();
                let value = if hop.many {
                    Json::Array(group)
                } else {
                    group.into_iter().next().unwrap_or(Json::Null)
                };
                if let Json::Object(map) = record {
                    map.insert(name.clone(), value);
                }
            }
        }
        Ok(())
    })
}

/// The records related through `hop` to each key, grouped by key (as JSON text), in key order.
async fn fetch_related(
    db: &Db,
    hop: &Hop,
    child: &Selection,
    keys: &[Json],
) -> Result<Vec<(String, Vec<Json>)>> {
    let target = hop.target;
    let alias = Alias::new("t0");
    let mut groups: Vec<(String, Vec<Json>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for chunk in keys.chunks(BATCH) {
        let mut query = Query::select();
        query.from_as(target.table, alias.clone());
        let (parent_kind, parent_expr): (Kind, Expr) = match &hop.path {
            Path::Columns { remote, .. } => {
                let kind = target.column(remote).map_or(Kind::Text, |c| c.kind);
                (kind, col(&alias, remote))
            }
            Path::Table {
                table,
                near,
                far,
                remote,
                ..
            } => {
                let link = Alias::new("l");
                query.join_as(
                    JoinType::InnerJoin,
                    Alias::new(table.to_string()),
                    link.clone(),
                    Expr::col((link.clone(), Alias::new(far.to_string())))
                        .equals((alias.clone(), *remote)),
                );
                query.and_where(Expr::col((link.clone(), "deleted_at")).is_null());
                (Kind::Text, Expr::col((link, Alias::new(near.to_string()))))
            }
        };
        let values = chunk
            .iter()
            .map(|key| value::to_sql(parent_kind, db.dialect(), "key", key))
            .collect::<Result<Vec<_>>>()?;
        query.expr(parent_expr.clone());
        for column in &child.columns {
            query.column((alias.clone(), column.name));
        }
        query.and_where(parent_expr.is_in(values));
        if target.column("deleted_at").is_some() {
            query.and_where(col(&alias, "deleted_at").is_null());
        }
        query.order_by((alias.clone(), "id"), Order::Asc);
        let mut kinds = vec![parent_kind];
        kinds.extend(child.columns.iter().map(|c| c.kind));
        for row in db.fetch(target.type_name, &query, &kinds).await? {
            let mut row = row.into_iter();
            let parent = row.next().unwrap_or(Json::Null).to_string();
            let map: Map<String, Json> = child
                .columns
                .iter()
                .zip(row)
                .map(|(column, value)| (column.name.to_owned(), value))
                .collect();
            let slot = *index.entry(parent.clone()).or_insert_with(|| {
                groups.push((parent, Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push(Json::Object(map));
        }
    }
    Ok(groups)
}

/// Removes the columns read only to join.
fn strip(selection: &Selection, record: &mut Json) {
    if let Json::Object(map) = record {
        for hidden in &selection.hidden {
            map.remove(*hidden);
        }
    }
}
