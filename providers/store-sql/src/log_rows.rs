//! How a [`Record`] becomes a row of a SQL log table, and back.
//!
//! A row carries the record as JSON plus the columns a query filters on: the record's kind, the
//! step, the side and the attempt.

use gorgon_orchestration::store::{Lease, TransactionHeader, check_size};
use gorgon_orchestration::{Error as StoreError, Record, TransactionKey, TransactionState};

use crate::error::store_error;

/// One record, encoded for the log table.
#[derive(Clone, Debug)]
pub struct LogRow {
    /// `transaction`, `step`, `response`, `error`, `timer`, or `records` for a packed row.
    pub kind: &'static str,
    /// The step index, for step and response records.
    pub step: Option<i64>,
    /// `invoke` or `compensate`, for step, response and error records.
    pub side: Option<&'static str>,
    /// The handler calls of the current side, for step records.
    pub attempt: Option<i64>,
    /// The record as JSON.
    pub record: String,
}

/// An append, encoded: the rows in order and the state of the last transaction record, if any.
#[derive(Debug)]
pub struct EncodedAppend {
    /// The rows, in append order.
    pub rows: Vec<LogRow>,
    /// The state of the last transaction record of the append, if it has one.
    pub state: Option<&'static str>,
}

/// Encodes the records of one append.
pub fn encode(key: &TransactionKey, records: &[Record]) -> Result<EncodedAppend, StoreError> {
    let mut rows = Vec::with_capacity(records.len());
    let mut state = None;
    for record in records {
        let json =
            serde_json::to_string(record).map_err(|e| store_error("append", key, e.to_string()))?;
        check_size("record", key, json.len())?;
        let row = match record {
            Record::Transaction(fields) => {
                state = Some(fields.state.as_str());
                LogRow {
                    kind: "transaction",
                    step: None,
                    side: None,
                    attempt: None,
                    record: json,
                }
            }
            Record::Step { step, run } => LogRow {
                kind: "step",
                step: i64::try_from(*step).ok(),
                side: Some(if run.compensating {
                    "compensate"
                } else {
                    "invoke"
                }),
                attempt: Some(i64::from(run.attempts)),
                record: json,
            },
            Record::Response { step, handler, .. } => LogRow {
                kind: "response",
                step: i64::try_from(*step).ok(),
                side: Some(handler.as_str()),
                attempt: None,
                record: json,
            },
            Record::Timer { .. } => LogRow {
                kind: "timer",
                step: None,
                side: None,
                attempt: None,
                record: json,
            },
            Record::Error(error) => LogRow {
                kind: "error",
                step: None,
                side: Some(error.handler_type.as_str()),
                attempt: None,
                record: json,
            },
        };
        rows.push(row);
    }
    Ok(EncodedAppend { rows, state })
}

/// Encodes the records of one append as a single row of kind `records` (a JSON array): for
/// batched writes, where one append spans many step events and rows are what a commit costs.
pub fn encode_packed(
    key: &TransactionKey,
    records: &[Record],
) -> Result<EncodedAppend, StoreError> {
    let state = records.iter().rev().find_map(|r| match r {
        Record::Transaction(fields) => Some(fields.state.as_str()),
        _ => None,
    });
    let record =
        serde_json::to_string(records).map_err(|e| store_error("append", key, e.to_string()))?;
    check_size("record", key, record.len())?;
    Ok(EncodedAppend {
        rows: vec![LogRow {
            kind: "records",
            step: None,
            side: None,
            attempt: None,
            record,
        }],
        state,
    })
}

/// Decodes one log row: a record, or the JSON array of a packed row.
pub fn decode_row(
    key: &TransactionKey,
    json: &str,
    into: &mut Vec<Record>,
) -> Result<(), StoreError> {
    if json.trim_start().starts_with('[') {
        let records: Vec<Record> = serde_json::from_str(json).map_err(|e| {
            store_error(
                "load",
                key,
                format!("a packed log row does not decode: {e}"),
            )
        })?;
        into.extend(records);
    } else {
        into.push(decode(key, json)?);
    }
    Ok(())
}

/// Decodes one log record.
pub fn decode(key: &TransactionKey, json: &str) -> Result<Record, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| store_error("load", key, format!("a log record does not decode: {e}")))
}

/// The state named by a summary row.
pub fn state(key: &TransactionKey, name: &str) -> Result<TransactionState, StoreError> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| store_error("summary", key, format!("unknown state `{name}`")))
}

/// A header's payload as JSON text, refused when it is larger than a stored value may be.
pub fn payload(header: &TransactionHeader) -> Result<String, StoreError> {
    let payload = header
        .payload
        .to_json()
        .map_err(|e| {
            store_error(
                "create",
                &header.key,
                format!("the payload is not JSON: {e}"),
            )
        })?
        .to_string();
    check_size("payload", &header.key, payload.len())?;
    Ok(payload)
}

/// A transaction to create in the commit of its first append (a generated id), encoded for the
/// summary row.
#[derive(Debug)]
pub struct NewTransaction {
    /// The run id.
    pub run_id: String,
    /// The workflow input, as JSON text.
    pub payload: String,
    /// When it was created (clock ms, saturated to `i64::MAX`).
    pub created_at: i64,
    /// The creator's worker id, when it takes the lease.
    pub owner: Option<String>,
    /// How long that lease runs from the commit, in milliseconds of the database's clock
    /// (saturated to `i64::MAX`; 0 without a lease).
    pub lease_ms: i64,
}

impl NewTransaction {
    /// Encodes a header and the creator's lease.
    pub fn encode(header: &TransactionHeader, lease: Option<&Lease>) -> Result<Self, StoreError> {
        let saturate = |at: u64| i64::try_from(at).unwrap_or(i64::MAX);
        Ok(NewTransaction {
            run_id: header.run_id.to_string(),
            payload: payload(header)?,
            created_at: saturate(header.created_at),
            owner: lease.map(|l| l.owner.to_string()),
            // Ten years at most: the database adds it to its clock.
            lease_ms: lease.map_or(0, |l| saturate(l.ms.min(315_576_000_000))),
        })
    }
}
