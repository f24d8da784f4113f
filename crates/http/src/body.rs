//! `Body<T>`: a JSON body read strictly, as Medusa's validators do: every unknown field, a
//! missing field or a value of the wrong type is a `400 invalid_data` naming the field
//! ("Invalid request: Unrecognized fields: 'x'"), then `garde` rules (`quantity ≥ 1`) apply.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A validated JSON body. `T` denies unknown fields (`#[serde(deny_unknown_fields)]`) and
/// derives `garde::Validate`.
#[derive(Debug, Clone)]
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: DeserializeOwned + garde::Validate<Context = ()>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::invalid_data(rejection.body_text()))?;
        let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|error| ApiError::invalid_data(error.to_string()))?
        };
        let body: T = from_value(value)?;
        body.validate().map_err(|report| {
            let problems: Vec<String> = report
                .iter()
                .map(|(path, error)| rule_message(&path.to_string(), error.message()))
                .collect();
            ApiError::invalid_data(format!("Invalid request: {}", problems.join("; ")))
        })?;
        Ok(Body(body))
    }
}

/// A `garde` rule's failure in Medusa's words: "Value for field 'items.0.quantity' too small,
/// expected at least: '1'".
fn rule_message(path: &str, message: &str) -> String {
    // garde writes `items[0].quantity`; serde errors and Medusa write `items.0.quantity`.
    let path = path.replace('[', ".").replace(']', "");
    if path.is_empty() {
        return message.to_owned();
    }
    if let Some(min) = message.strip_prefix("lower than ") {
        return format!("Value for field '{path}' too small, expected at least: '{min}'");
    }
    if let Some(max) = message.strip_prefix("greater than ") {
        return format!("Value for field '{path}' too big, expected at most: '{max}'");
    }
    format!("Field '{path}': {message}")
}

/// Decodes `value` as `T`, answering Medusa's messages: every unknown field at once, else the
/// first missing field or wrong type, each named by its path (`items.0.quantity`).
pub fn from_value<T: DeserializeOwned>(mut value: Value) -> Result<T, ApiError> {
    let mut unknown = Vec::new();
    // Each round finds one unknown field; drop it and look again, to name them all.
    for _ in 0..32 {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(body) if unknown.is_empty() => return Ok(body),
            Ok(_) => break,
            Err(error) => {
                let path = dotted(error.path());
                let message = error.inner().to_string();
                if let Some(field) = unknown_field(&message) {
                    // The path ends with the unknown field itself.
                    let parent = match path.rsplit_once('.') {
                        Some((parent, last)) if last == field => parent.to_owned(),
                        None if path == field => String::new(),
                        _ => path.clone(),
                    };
                    let full = join(&parent, &field);
                    if !remove(&mut value, &parent, &field) {
                        unknown.push(full);
                        break;
                    }
                    unknown.push(full);
                    continue;
                }
                if !unknown.is_empty() {
                    break;
                }
                return Err(ApiError::invalid_data(describe(&path, &message)));
            }
        }
    }
    let names: Vec<String> = unknown.iter().map(|f| format!("'{f}'")).collect();
    Err(ApiError::invalid_data(format!(
        "Invalid request: Unrecognized fields: {}",
        names.join(", ")
    )))
}

/// `items.0.quantity`, as Medusa names nested fields.
fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() || path == "." {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// serde's "unknown field `x`, expected …".
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// Removes `field` from the object at `path` (dotted, indexes as numbers).
fn remove(value: &mut Value, path: &str, field: &str) -> bool {
    let mut at = value;
    if !(path.is_empty() || path == ".") {
        for segment in path.split('.') {
            at = match at {
                Value::Object(map) => match map.get_mut(segment) {
                    Some(next) => next,
                    None => return false,
                },
                Value::Array(items) => {
                    match segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                        Some(next) => next,
                        None => return false,
                    }
                }
                _ => return false,
            };
        }
    }
    at.as_object_mut()
        .and_then(|map| map.remove(field))
        .is_some()
}

/// serde's messages in Medusa's words.
fn describe(path: &str, message: &str) -> String {
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = &rest[..rest.find('`').unwrap_or(rest.len())];
        return format!("Invalid request: Field '{}' is required", join(path, field));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (got, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        return format!(
            "Invalid request: Expected type: '{}' for field '{}', got: '{}'",
            json_type(expected),
            if path.is_empty() { "body" } else { path },
            json_type(got)
        );
    }
    if message.starts_with("invalid value: ") || message.starts_with("unknown variant") {
        return format!("Invalid request: Invalid value for field '{path}': {message}");
    }
    format!("Invalid request: {message} at '{path}'")
}

/// The JSON type a serde description names.
fn json_type(description: &str) -> &'static str {
    let d = description.trim();
    if d.starts_with("string") || d.contains("a string") || d.starts_with("a borrowed string") {
        "string"
    } else if d.starts_with("integer")
        || d.starts_with("floating")
        || d.starts_with('u')
        || d.starts_with('i')
        || d.starts_with('f')
        || d.contains("number")
        || d.contains("integer")
    {
        "number"
    } else if d.starts_with("boolean") || d.contains("bool") {
        "boolean"
    } else if d.starts_with("sequence") || d.contains("sequence") || d.contains("array") {
        "array"
    } else if d.starts_with("null") || d.starts_with("unit") {
        "null"
    } else {
        "object"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        product_id: String,
        quantity: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Order {
        supplier_id: String,
        items: Vec<Item>,
    }

    fn message(value: Value) -> String {
        from_value::<Order>(value).unwrap_err().message().to_owned()
    }

    #[test]
    fn names_every_unknown_field_with_its_path() {
        let got = message(serde_json::json!({
            "supplier_id": "s", "x": 1,
            "items": [{"product_id": "p", "quantity": 1, "y": 2}]
        }));
        assert_eq!(
            got,
            "Invalid request: Unrecognized fields: 'items.0.y', 'x'"
        );
    }

    #[test]
    fn names_a_missing_field_and_a_wrong_type() {
        assert_eq!(
            message(serde_json::json!({ "items": [] })),
            "Invalid request: Field 'supplier_id' is required"
        );
        assert_eq!(
            message(
                serde_json::json!({ "supplier_id": "s", "items": [{"product_id": "p", "quantity": "abc"}] })
            ),
            "Invalid request: Expected type: 'number' for field 'items.0.quantity', got: 'string'"
        );
    }
}
