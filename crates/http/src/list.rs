//! Medusa's query-string conventions: `fields` (`*relation`, `+field`, `-field`, bare names),
//! `limit`, `offset`, `order` (`-created_at`), and filters in bracket syntax
//! (`id[]=a&id[]=b`, `created_at[$gte]=…`, `state[0]=done`), turned into the data layer's
//! filters and a [`GraphRequest`].

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, RawQuery};
use axum::http::request::Parts;
use gorgon_data::{Kind, ModelMeta};
use gorgon_framework::{GraphRequest, Pagination};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The query string of a list or retrieve route, parsed.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// `fields`, as given.
    pub fields: Option<String>,
    /// `limit`.
    pub limit: Option<u64>,
    /// `offset`.
    pub offset: Option<u64>,
    /// `order`: a field, `-` first for descending.
    pub order: Option<String>,
    /// `with_deleted=true`.
    pub with_deleted: bool,
    /// `q`: free text over the searchable fields.
    pub q: Option<String>,
    /// Every other parameter, as a filter (`{"id": ["a", "b"]}`,
    /// `{"created_at": {"$gte": "…"}}`).
    pub filters: Map<String, Value>,
}

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::invalid_data(rejection.to_string()))?;
        ListQuery::parse(query.as_deref().unwrap_or(""))
    }
}

/// Parses a query string in bracket syntax into JSON; every leaf is a string.
pub fn parse_query(query: &str) -> Result<Map<String, Value>, ApiError> {
    let config = serde_qs::Config::new().max_depth(5).use_form_encoding(true);
    let parsed: BTreeMap<String, Value> = config
        .deserialize_str(query)
        .map_err(|error| ApiError::invalid_data(format!("Invalid request: {error}")))?;
    Ok(parsed
        .into_iter()
        .map(|(key, value)| (key, arrays(value)))
        .collect())
}

/// `{"0": a, "1": b}` (from `x[0]=a&x[1]=b`) as the array it means.
fn arrays(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let map: Map<String, Value> = map.into_iter().map(|(k, v)| (k, arrays(v))).collect();
            if !map.is_empty() && map.keys().all(|k| k.parse::<usize>().is_ok()) {
                let mut items: Vec<(usize, Value)> = map
                    .into_iter()
                    .map(|(k, v)| (k.parse().unwrap_or_default(), v))
                    .collect();
                items.sort_by_key(|(index, _)| *index);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(map)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(arrays).collect()),
        other => other,
    }
}

fn number(field: &str, value: Value) -> Result<u64, ApiError> {
    let text = match &value {
        Value::String(text) => text.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    let number = text.trim().parse::<u64>().map_err(|_| {
        ApiError::invalid_data(format!(
            "Invalid request: Expected type: 'number' for field '{field}', got: '{text}'"
        ))
    })?;
    if number > i64::MAX as u64 {
        return Err(ApiError::invalid_data(format!(
            "Invalid request: Value for field '{field}' too big, expected at most: '{}'",
            i64::MAX
        )));
    }
    Ok(number)
}

fn string(field: &str, value: Value) -> Result<String, ApiError> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(ApiError::invalid_data(format!(
            "Invalid request: Expected type: 'string' for field '{field}', got: '{other}'"
        ))),
    }
}

impl ListQuery {
    /// Parses a raw query string.
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut list = ListQuery::default();
        for (key, value) in parse_query(query)? {
            match key.as_str() {
                "fields" => list.fields = Some(string("fields", value)?),
                "limit" => list.limit = Some(number("limit", value)?),
                "offset" => list.offset = Some(number("offset", value)?),
                "order" => list.order = Some(string("order", value)?),
                "q" => list.q = Some(string("q", value)?),
                "with_deleted" => list.with_deleted = string("with_deleted", value)? == "true",
                _ => {
                    list.filters.insert(key, value);
                }
            }
        }
        Ok(list)
    }

    /// Refuses a filter on a field not in `allowed`, as Medusa's validators do.
    pub fn allow(&self, allowed: &[&str]) -> Result<&Self, ApiError> {
        let unknown: Vec<String> = self
            .filters
            .keys()
            .filter(|key| !allowed.contains(&key.as_str()))
            .map(|key| format!("'{key}'"))
            .collect();
        if unknown.is_empty() {
            Ok(self)
        } else {
            Err(ApiError::invalid_data(format!(
                "Invalid request: Unrecognized fields: {}",
                unknown.join(", ")
            )))
        }
    }

    /// The fields asked for, from `defaults` and `fields`: `*rel` adds the relation with all
    /// its fields, `+f` adds, `-f` removes, and bare names replace the defaults; `id` always.
    pub fn resolve_fields(&self, defaults: &[&str]) -> Vec<String> {
        resolve_fields(self.fields.as_deref(), defaults)
    }

    /// `order` as the data layer's map.
    pub fn order_map(&self) -> BTreeMap<String, String> {
        let mut order = BTreeMap::new();
        if let Some(text) = &self.order {
            for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match part.strip_prefix('-') {
                    Some(field) => order.insert(field.to_owned(), "DESC".to_owned()),
                    None => order.insert(part.to_owned(), "ASC".to_owned()),
                };
            }
        }
        order
    }

    /// The record of `entity` with this id, with the fields asked for (`defaults` when none),
    /// read through Query; `None` when there is none.
    pub async fn retrieve(
        &self,
        app: &gorgon_framework::App,
        entity: &'static ModelMeta,
        defaults: &[&str],
        id: &str,
    ) -> Result<Option<Value>, ApiError> {
        let mut request = self.to_graph(entity, defaults, 1);
        request.filters = serde_json::json!({ "id": id });
        Ok(app.query().graph(request).await?.data.into_iter().next())
    }

    /// A Query request over `entity`: the fields resolved from `defaults`, the filters with
    /// each string converted to its column's kind, `q`, and the page (`default_limit` when
    /// `limit` is not given).
    pub fn to_graph(
        &self,
        entity: &'static ModelMeta,
        defaults: &[&str],
        default_limit: u64,
    ) -> GraphRequest {
        let mut filters = Map::new();
        for (key, value) in &self.filters {
            filters.insert(key.clone(), coerce(entity, key, value.clone()));
        }
        if let Some(q) = &self.q {
            filters.insert("q".into(), Value::String(q.clone()));
        }
        GraphRequest {
            entity: entity.name.to_owned(),
            fields: self.resolve_fields(defaults),
            filters: Value::Object(filters),
            pagination: Some(Pagination {
                skip: Some(self.offset.unwrap_or(0)),
                take: Some(self.limit.unwrap_or(default_limit)),
                order: self.order_map(),
            }),
            with_deleted: self.with_deleted,
        }
    }
}

/// See [`ListQuery::resolve_fields`].
pub fn resolve_fields(fields: Option<&str>, defaults: &[&str]) -> Vec<String> {
    let tokens: Vec<&str> = fields
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let replaces = tokens.iter().any(|t| !t.starts_with(['+', '-', '*']));
    let mut out: Vec<String> = if replaces {
        Vec::new()
    } else {
        defaults.iter().map(|f| (*f).to_owned()).collect()
    };
    for token in tokens {
        if let Some(field) = token.strip_prefix('-') {
            out.retain(|f| f != field && !f.starts_with(&format!("{field}.")));
        } else if let Some(relation) = token.strip_prefix('*') {
            push(&mut out, format!("{relation}.*"));
        } else {
            push(&mut out, token.trim_start_matches('+').to_owned());
        }
    }
    if !out.iter().any(|f| f == "id" || f == "*") {
        out.insert(0, "id".to_owned());
    }
    out
}

fn push(fields: &mut Vec<String>, field: String) {
    if !fields.contains(&field) {
        fields.push(field);
    }
}

/// Query-string values are strings; a filter on a number or boolean column wants the value
/// as its column's kind. Nested operators and lists are converted leaf by leaf.
fn coerce(entity: &ModelMeta, field: &str, value: Value) -> Value {
    let Some(column) = entity.column(field) else {
        return value;
    };
    convert(column.kind, value)
}

fn convert(kind: Kind, value: Value) -> Value {
    match value {
        Value::String(text) => match kind {
            Kind::Integer => text
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or(Value::String(text)),
            Kind::Float => text
                .parse::<f64>()
                .map(Value::from)
                .unwrap_or(Value::String(text)),
            Kind::Boolean => match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(text),
            },
            _ => Value::String(text),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(|v| convert(kind, v)).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(op, v)| {
                    let v = if op == "$exists" {
                        convert(Kind::Boolean, v)
                    } else {
                        convert(kind, v)
                    };
                    (op, v)
                })
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_brackets_arrays_and_operators() {
        let query = ListQuery::parse(
            "limit=20&offset=0&order=-created_at&state[0]=failed&state[1]=reverted&id[]=a&id[]=b&created_at[$gte]=2000-01-01T00:00:00.000Z&fields=id,%20title,",
        )
        .unwrap();
        assert_eq!(query.limit, Some(20));
        assert_eq!(query.order_map().get("created_at").unwrap(), "DESC");
        assert_eq!(query.filters["state"], json!(["failed", "reverted"]));
        assert_eq!(query.filters["id"], json!(["a", "b"]));
        assert_eq!(
            query.filters["created_at"],
            json!({"$gte": "2000-01-01T00:00:00.000Z"})
        );
        assert_eq!(query.resolve_fields(&["id", "name"]), vec!["id", "title"]);
    }

    #[test]
    fn a_non_number_limit_names_the_field() {
        let error = ListQuery::parse("limit=abc").unwrap_err();
        assert_eq!(
            error.message(),
            "Invalid request: Expected type: 'number' for field 'limit', got: 'abc'"
        );
        let query = ListQuery::parse("not_a_param=1").unwrap();
        assert_eq!(
            query.allow(&["id"]).unwrap_err().message(),
            "Invalid request: Unrecognized fields: 'not_a_param'"
        );
    }

    #[test]
    fn fields_add_remove_and_expand() {
        let defaults = ["id", "name", "country"];
        assert_eq!(
            resolve_fields(Some("+metadata,-country,*suppliers"), &defaults),
            vec!["id", "name", "metadata", "suppliers.*"]
        );
        assert_eq!(
            resolve_fields(None, &defaults),
            vec!["id", "name", "country"]
        );
        assert_eq!(resolve_fields(Some("name"), &defaults), vec!["id", "name"]);
    }
}
