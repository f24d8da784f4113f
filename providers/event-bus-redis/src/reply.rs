//! Parsing of stream replies from raw [`redis::Value`]s (RESP2 and RESP3 shapes).

use std::collections::HashMap;

use redis::Value;

/// One stream entry: its id and its fields, `None` when the entry was trimmed away.
pub(crate) struct Entry {
    pub id: String,
    pub fields: Option<HashMap<String, String>>,
}

pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(crate) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

fn fields(value: &Value) -> Option<HashMap<String, String>> {
    match value {
        Value::Array(flat) => Some(
            flat.chunks(2)
                .filter_map(|pair| match pair {
                    [k, v] => Some((text(k)?, text(v)?)),
                    _ => None,
                })
                .collect(),
        ),
        Value::Map(pairs) => Some(
            pairs
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                .collect(),
        ),
        _ => None,
    }
}

/// `[[id, [field, value, ...] | nil], ...]`
pub(crate) fn entries(value: &Value) -> Vec<Entry> {
    items(value)
        .iter()
        .filter_map(|entry| {
            let parts = items(entry);
            Some(Entry {
                id: text(parts.first()?)?,
                fields: parts.get(1).and_then(fields),
            })
        })
        .collect()
}

/// `XREADGROUP` reply for one stream: nil, `[[key, entries]]` or `{key: entries}`.
pub(crate) fn read_reply(value: &Value) -> Vec<Entry> {
    match value {
        Value::Map(pairs) => pairs.iter().flat_map(|(_, e)| entries(e)).collect(),
        Value::Array(streams) => streams
            .iter()
            .flat_map(|stream| items(stream).get(1).map(entries).unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    }
}

/// `XAUTOCLAIM` reply: `[next cursor, entries, deleted ids]`.
pub(crate) fn autoclaim_reply(value: &Value) -> (String, Vec<Entry>) {
    let parts = items(value);
    let cursor = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
    let claimed = parts.get(1).map(entries).unwrap_or_default();
    (cursor, claimed)
}
