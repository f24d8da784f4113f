//! Query: nested reads across modules (Medusa's `query.graph`). Modules share one database, so
//! a filter on a linked entity is an `EXISTS` over the link table in the root's statement, and
//! each level below the root is one batched statement: no in-memory joins, pagination and count
//! on the root.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gorgon_data::{Db, Direction, Filter, Graph, Hop, ModelMeta, Path, Resolver, relation_hop};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::Error;
use crate::link::ActiveLink;

/// The [`Resolver`] of an application: a module's own relations, then the active links.
pub(crate) struct LinkResolver {
    hops: HashMap<(usize, String), Hop>,
}

impl LinkResolver {
    pub(crate) fn new(links: &[ActiveLink]) -> Self {
        let mut hops = HashMap::new();
        for link in links {
            for (from, to) in [(&link.left, &link.right), (&link.right, &link.left)] {
                hops.insert(
                    (from.model as *const ModelMeta as usize, to.field.clone()),
                    Hop {
                        target: to.model,
                        many: to.list,
                        path: Path::Table {
                            table: link.table.clone(),
                            local: "id",
                            near: from.column.as_str().into(),
                            far: to.column.as_str().into(),
                            remote: "id",
                        },
                    },
                );
            }
        }
        Self { hops }
    }
}

impl Resolver for LinkResolver {
    fn hop(&self, from: &'static ModelMeta, name: &str) -> Option<Hop> {
        relation_hop(from, name).or_else(|| {
            self.hops
                .get(&(from as *const ModelMeta as usize, name.to_owned()))
                .cloned()
        })
    }

    fn hop_names(&self, from: &'static ModelMeta) -> Vec<String> {
        let key = from as *const ModelMeta as usize;
        let mut names: Vec<String> = from.relations.iter().map(|r| r.name.to_owned()).collect();
        names.extend(
            self.hops
                .keys()
                .filter(|(model, _)| *model == key)
                .map(|(_, name)| name.clone()),
        );
        names.sort();
        names
    }
}

/// A nested read, in Medusa's shape:
/// `{ entity, fields: ["id", "brand.*"], filters: {…}, pagination: { skip, take, order } }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct GraphRequest {
    /// The root entity (`product`).
    pub entity: String,
    /// Field paths: columns, `*`, and relation or link names with their fields
    /// (`brand.*`, `variants.prices.amount`). Empty: every column of the root.
    pub fields: Vec<String>,
    /// Filters in Medusa's syntax; a relation or link name holds a filter on it.
    pub filters: Json,
    /// The page of the root.
    pub pagination: Option<Pagination>,
    /// Whether soft-deleted root records are included.
    pub with_deleted: bool,
}

/// A page of the root entity.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Pagination {
    /// Records to skip.
    pub skip: Option<u64>,
    /// Most records to return.
    pub take: Option<u64>,
    /// Root fields to order by: `{"created_at": "DESC"}`.
    pub order: BTreeMap<String, String>,
}

/// What [`Query::graph`] returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphResponse {
    /// The root records with their related records nested.
    pub data: Vec<Json>,
    /// The page and the number of root records matching, when a page was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PageMetadata>,
}

/// The page of a [`GraphResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageMetadata {
    /// How many root records match in all.
    pub count: u64,
    /// Records skipped.
    pub skip: u64,
    /// Most records returned.
    pub take: Option<u64>,
}

/// The Query service: nested reads over every enabled module and link.
#[derive(Clone)]
pub struct Query {
    db: Db,
    entities: Arc<BTreeMap<String, &'static ModelMeta>>,
    resolver: Arc<LinkResolver>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("entities", &self.entities.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Query {
    pub(crate) fn new(
        db: Db,
        entities: BTreeMap<String, &'static ModelMeta>,
        resolver: LinkResolver,
    ) -> Self {
        Self {
            db,
            entities: Arc::new(entities),
            resolver: Arc::new(resolver),
        }
    }

    /// The entities Query knows, by name.
    pub fn entities(&self) -> impl Iterator<Item = &str> {
        self.entities.keys().map(String::as_str)
    }

    /// The model behind an entity name.
    pub fn entity(&self, name: &str) -> Result<&'static ModelMeta, Error> {
        self.entities
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownEntity {
                entity: name.to_owned(),
                known: self.entities.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Reads a graph. Unknown entities, fields, relations, links and operators are typed errors
    /// naming them.
    pub async fn graph(&self, request: GraphRequest) -> Result<GraphResponse, Error> {
        let entity = self.entity(&request.entity)?;
        let pagination = request.pagination.clone();
        let mut order = Vec::new();
        if let Some(page) = &pagination {
            for (field, direction) in &page.order {
                let direction = match direction.to_ascii_uppercase().as_str() {
                    "ASC" => Direction::Asc,
                    "DESC" => Direction::Desc,
                    _ => {
                        return Err(gorgon_data::Error::InvalidValue {
                            field: format!("order.{field}"),
                            reason: "expected ASC or DESC".into(),
                        }
                        .into());
                    }
                };
                order.push((field.clone(), direction));
            }
        }
        let graph = Graph {
            entity,
            fields: request.fields,
            filter: Filter::from(request.filters),
            order,
            skip: pagination.as_ref().and_then(|p| p.skip),
            take: pagination.as_ref().and_then(|p| p.take),
            with_deleted: request.with_deleted,
            count: pagination.is_some(),
        };
        let page = gorgon_data::read(&self.db, self.resolver.as_ref(), &graph).await?;
        Ok(GraphResponse {
            data: page.data,
            metadata: pagination.map(|p| PageMetadata {
                count: page.count.unwrap_or(0),
                skip: p.skip.unwrap_or(0),
                take: p.take,
            }),
        })
    }
}
