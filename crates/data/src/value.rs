//! Values crossing the database boundary: JSON in (writes and filters, checked against the
//! column's kind), JSON out (rows read by kind), with each dialect's storage choices.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use sea_query::Value;
use serde_json::Value as Json;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::db::Dialect;
use crate::error::{Error, Result};
use crate::model::Kind;

/// Now, to the millisecond: what `created_at` and `updated_at` hold, the same on both databases.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// A timestamp as it is stored on SQLite and read on both: RFC 3339, milliseconds, `Z`
/// (`2026-12-07T18:30:00.000Z`, JavaScript's `toISOString`).
pub fn format_timestamp(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Reads an RFC 3339 timestamp, or a date (midnight UTC), as filters may give either.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc).trunc_subsecs(3));
    }
    if let Ok(at) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(at.and_utc().trunc_subsecs(3));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc())
}

/// A JSON value (from a write or a filter) as the value bound for a column of this kind, on
/// this dialect; an error names `field` when the value does not fit.
/// Nothing here is spliced into SQL: the result is a bound parameter.
pub fn to_sql(kind: Kind, dialect: Dialect, field: &str, json: &Json) -> Result<Value> {
    let wrong = || Error::invalid(field, format!("expected {}", kind.describe()));
    if json.is_null() {
        return Ok(null(kind, dialect));
    }
    Ok(match kind {
        Kind::Text => Value::String(Some(json.as_str().ok_or_else(wrong)?.to_owned())),
        Kind::Integer => Value::BigInt(Some(json.as_i64().ok_or_else(wrong)?)),
        Kind::Float => Value::Double(Some(json.as_f64().ok_or_else(wrong)?)),
        Kind::Boolean => Value::Bool(Some(json.as_bool().ok_or_else(wrong)?)),
        Kind::Decimal => {
            let decimal = decimal(json).ok_or_else(wrong)?;
            match dialect {
                Dialect::Postgres => Value::Decimal(Some(decimal)),
                Dialect::Sqlite => Value::String(Some(decimal.to_string())),
            }
        }
        Kind::Timestamp => {
            let at = json.as_str().and_then(parse_timestamp).ok_or_else(wrong)?;
            match dialect {
                Dialect::Postgres => Value::ChronoDateTimeUtc(Some(at)),
                Dialect::Sqlite => Value::String(Some(format_timestamp(&at))),
            }
        }
        Kind::Json => match dialect {
            Dialect::Postgres => Value::Json(Some(Box::new(json.clone()))),
            Dialect::Sqlite => Value::String(Some(json.to_string())),
        },
    })
}

/// The value a comparison binds: like [`to_sql`], except that SQLite compares decimals as
/// numbers (they are stored as text).
pub(crate) fn to_comparable(
    kind: Kind,
    dialect: Dialect,
    field: &str,
    json: &Json,
) -> Result<Value> {
    if kind == Kind::Decimal && dialect == Dialect::Sqlite && !json.is_null() {
        let decimal = decimal(json)
            .ok_or_else(|| Error::invalid(field, format!("expected {}", kind.describe())))?;
        let number = f64::from_str(&decimal.to_string())
            .map_err(|_| Error::invalid(field, "the number is out of range"))?;
        return Ok(Value::Double(Some(number)));
    }
    to_sql(kind, dialect, field, json)
}

fn decimal(json: &Json) -> Option<Decimal> {
    match json {
        Json::String(text) => Decimal::from_str_exact(text.trim()).ok(),
        // The number's shortest text form, parsed exactly: `19.99` stays 19.99.
        Json::Number(number) => Decimal::from_str_exact(&number.to_string())
            .or_else(|_| Decimal::from_scientific(&number.to_string()))
            .ok(),
        _ => None,
    }
}

/// A typed SQL `NULL`: PostgreSQL types every parameter, so a `NULL` must carry its column's type.
fn null(kind: Kind, dialect: Dialect) -> Value {
    match (kind, dialect) {
        (Kind::Integer, _) => Value::BigInt(None),
        (Kind::Float, _) => Value::Double(None),
        (Kind::Boolean, _) => Value::Bool(None),
        (Kind::Decimal, Dialect::Postgres) => Value::Decimal(None),
        (Kind::Timestamp, Dialect::Postgres) => Value::ChronoDateTimeUtc(None),
        (Kind::Json, Dialect::Postgres) => Value::Json(None),
        _ => Value::String(None),
    }
}

fn number(value: f64) -> Json {
    serde_json::Number::from_f64(value).map_or(Json::Null, Json::Number)
}

/// Reads column `index` of a PostgreSQL row as JSON.
pub(crate) fn read_pg(row: &PgRow, index: usize, kind: Kind) -> Result<Json> {
    let get = |e: sqlx::Error| Error::Database(e);
    Ok(match kind {
        Kind::Text => row
            .try_get::<Option<String>, _>(index)
            .map_err(get)?
            .map_or(Json::Null, Json::String),
        Kind::Integer => match row.try_get::<Option<i64>, _>(index) {
            Ok(value) => value.map_or(Json::Null, Json::from),
            Err(_) => match row.try_get::<Option<i32>, _>(index) {
                Ok(value) => value.map_or(Json::Null, Json::from),
                Err(_) => row
                    .try_get::<Option<i16>, _>(index)
                    .map_err(get)?
                    .map_or(Json::Null, Json::from),
            },
        },
        Kind::Float => match row.try_get::<Option<f64>, _>(index) {
            Ok(value) => value.map_or(Json::Null, number),
            Err(_) => row
                .try_get::<Option<f32>, _>(index)
                .map_err(get)?
                .map_or(Json::Null, |value| number(f64::from(value))),
        },
        Kind::Boolean => row
            .try_get::<Option<bool>, _>(index)
            .map_err(get)?
            .map_or(Json::Null, Json::Bool),
        Kind::Decimal => row
            .try_get::<Option<Decimal>, _>(index)
            .map_err(get)?
            .map_or(Json::Null, |value| Json::String(value.to_string())),
        Kind::Timestamp => match row.try_get::<Option<DateTime<Utc>>, _>(index) {
            Ok(value) => value.map_or(Json::Null, |at| Json::String(format_timestamp(&at))),
            Err(_) => row
                .try_get::<Option<NaiveDateTime>, _>(index)
                .map_err(get)?
                .map_or(Json::Null, |at| {
                    Json::String(format_timestamp(&at.and_utc()))
                }),
        },
        Kind::Json => row
            .try_get::<Option<Json>, _>(index)
            .map_err(get)?
            .unwrap_or(Json::Null),
    })
}

/// Reads column `index` of a SQLite row as JSON.
pub(crate) fn read_sqlite(row: &SqliteRow, index: usize, kind: Kind) -> Result<Json> {
    let get = |e: sqlx::Error| Error::Database(e);
    Ok(match kind {
        Kind::Text | Kind::Timestamp => row
            .try_get::<Option<String>, _>(index)
            .map_err(get)?
            .map_or(Json::Null, Json::String),
        Kind::Integer => row
            .try_get::<Option<i64>, _>(index)
            .map_err(get)?
            .map_or(Json::Null, Json::from),
        Kind::Float => row
            .try_get::<Option<f64>, _>(index)
            .map_err(get)?
            .map_or(Json::Null, number),
        Kind::Boolean => row
            .try_get::<Option<bool>, _>(index)
            .map_err(get)?
            .map_or(Json::Null, Json::Bool),
        // Stored as text; a number written by hand is read through its text form.
        Kind::Decimal => match row.try_get::<Option<String>, _>(index) {
            Ok(value) => value.map_or(Json::Null, Json::String),
            Err(_) => row
                .try_get::<Option<f64>, _>(index)
                .map_err(get)?
                .map_or(Json::Null, |value| Json::String(value.to_string())),
        },
        Kind::Json => match row.try_get::<Option<String>, _>(index).map_err(get)? {
            None => Json::Null,
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e))))?,
        },
    })
}
