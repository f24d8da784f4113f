//! Listing and purge statements of the SQL stores (SQLite and PostgreSQL), built from a
//! [`TransactionFilter`] or a [`Purge`]: the SQL text with numbered placeholders and the values
//! to bind, in order. Only values are bound; nothing from the caller lands in the SQL text.
//!
//! Listing order is `created_at` descending, then workflow and id descending in byte order
//! (PostgreSQL compares them `COLLATE "C"`), the same order as the memory store; the cursor
//! condition is a row comparison on those columns, so a page is one index range scan.

use std::fmt::Write;
use std::sync::Arc;

use gorgon_orchestration::{
    Error, Purge, Result, TransactionFilter, TransactionKey, TransactionState, TransactionSummary,
};

use crate::log_rows;

/// The SQL dialect: how placeholders and byte-order comparisons are spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `$1`, `COLLATE "C"`.
    Postgres,
    /// `?1`, the default `BINARY` collation.
    Sqlite,
}

/// A value to bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlParam {
    /// A text value.
    Text(String),
    /// An integer value.
    Int(i64),
}

/// A statement and its values, in placeholder order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlStatement {
    /// The SQL text.
    pub sql: String,
    /// The values for `$1`/`?1`, `$2`/`?2`, ...
    pub params: Vec<SqlParam>,
}

/// The finished states, as stored.
pub const FINISHED: [&str; 3] = ["done", "reverted", "failed"];

struct Builder {
    dialect: Dialect,
    sql: String,
    params: Vec<SqlParam>,
}

impl Builder {
    fn bind(&mut self, param: SqlParam) -> String {
        self.params.push(param);
        match self.dialect {
            Dialect::Postgres => format!("${}", self.params.len()),
            Dialect::Sqlite => format!("?{}", self.params.len()),
        }
    }
    fn bytes(&self, column: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("{column} COLLATE \"C\""),
            Dialect::Sqlite => column.to_string(),
        }
    }
}

fn int(value: u64) -> SqlParam {
    SqlParam::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

fn state_name(state: TransactionState) -> String {
    state.as_str().to_string()
}

/// The listing statement: columns `workflow, transaction_id, run_id, state, created_at,
/// updated_at`, at most `limit + 1` rows (the extra one says a next page exists).
pub fn list(filter: &TransactionFilter, dialect: Dialect) -> Result<SqlStatement> {
    filter.check()?;
    let mut b = Builder {
        dialect,
        sql: String::from(
            "SELECT workflow, transaction_id, run_id, state, created_at, updated_at \
             FROM transactions WHERE TRUE",
        ),
        params: Vec::new(),
    };
    if let Some(workflow) = &filter.workflow {
        let p = b.bind(SqlParam::Text(workflow.to_string()));
        let _ = write!(b.sql, " AND workflow = {p}");
    }
    if !filter.states.is_empty() {
        let list: Vec<String> = filter
            .states
            .iter()
            .map(|s| b.bind(SqlParam::Text(state_name(*s))))
            .collect();
        let _ = write!(b.sql, " AND state IN ({})", list.join(", "));
    }
    if let Some(from) = filter.created_from {
        let p = b.bind(int(from));
        let _ = write!(b.sql, " AND created_at >= {p}");
    }
    if let Some(before) = filter.created_before {
        let p = b.bind(int(before));
        let _ = write!(b.sql, " AND created_at < {p}");
    }
    let (id, workflow) = (b.bytes("transaction_id"), b.bytes("workflow"));
    // With one workflow, the workflow column is constant: leave it out of the order (so the
    // (workflow, created_at, id) index serves the scan).
    let one_workflow = filter.workflow.is_some();
    if let Some(after) = &filter.after {
        let at = b.bind(int(after.created_at));
        if one_workflow {
            let i = b.bind(SqlParam::Text(after.key.id.to_string()));
            let _ = write!(b.sql, " AND (created_at, {id}) < ({at}, {i})");
        } else {
            let w = b.bind(SqlParam::Text(after.key.workflow.to_string()));
            let i = b.bind(SqlParam::Text(after.key.id.to_string()));
            let _ = write!(
                b.sql,
                " AND (created_at, {workflow}, {id}) < ({at}, {w}, {i})"
            );
        }
    }
    if one_workflow {
        let _ = write!(b.sql, " ORDER BY created_at DESC, {id} DESC");
    } else {
        let _ = write!(
            b.sql,
            " ORDER BY created_at DESC, {workflow} DESC, {id} DESC"
        );
    }
    let limit = b.bind(int(filter.limit as u64 + 1));
    let _ = write!(b.sql, " LIMIT {limit}");
    Ok(SqlStatement {
        sql: b.sql,
        params: b.params,
    })
}

/// The statement choosing one purge batch: columns `workflow, transaction_id` of finished
/// transactions updated before the cut, oldest first, at most `limit`. PostgreSQL locks them
/// (`FOR UPDATE SKIP LOCKED`), so two purges in parallel take different rows.
pub fn purge_candidates(purge: &Purge, dialect: Dialect) -> SqlStatement {
    let mut b = Builder {
        dialect,
        sql: String::new(),
        params: Vec::new(),
    };
    let states: Vec<String> = FINISHED
        .iter()
        .map(|s| b.bind(SqlParam::Text(s.to_string())))
        .collect();
    let cut = b.bind(int(purge.older_than));
    b.sql = format!(
        "SELECT workflow, transaction_id FROM transactions \
         WHERE state IN ({}) AND updated_at < {cut}",
        states.join(", ")
    );
    if let Some(workflow) = &purge.workflow {
        let p = b.bind(SqlParam::Text(workflow.to_string()));
        let _ = write!(b.sql, " AND workflow = {p}");
    }
    let limit = b.bind(int(purge.limit.max(1) as u64));
    let _ = write!(b.sql, " ORDER BY updated_at LIMIT {limit}");
    if dialect == Dialect::Postgres {
        b.sql.push_str(" FOR UPDATE SKIP LOCKED");
    }
    SqlStatement {
        sql: b.sql,
        params: b.params,
    }
}

/// A summary from a listing row's columns.
pub fn summary(
    workflow: String,
    id: String,
    run_id: String,
    state: &str,
    created_at: i64,
    updated_at: i64,
) -> Result<TransactionSummary> {
    let key = TransactionKey::new(workflow, id);
    let state = log_rows::state(&key, state).map_err(|_| Error::StoreQuery {
        operation: "list",
        reason: format!("{key} has an unknown state `{state}`"),
    })?;
    Ok(TransactionSummary {
        key,
        run_id: Arc::from(run_id),
        state,
        created_at: u64::try_from(created_at).unwrap_or(0),
        updated_at: u64::try_from(updated_at).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_orchestration::PageCursor;

    #[test]
    fn values_are_bound_never_spliced() {
        let filter = TransactionFilter {
            workflow: Some(Arc::from("w'; DROP TABLE transactions; --")),
            states: vec![TransactionState::Done, TransactionState::Failed],
            created_from: Some(5),
            created_before: Some(u64::MAX),
            after: Some(PageCursor {
                created_at: 9,
                key: TransactionKey::new("w", "x'"),
            }),
            limit: 10,
        };
        let pg = list(&filter, Dialect::Postgres).expect("statement");
        assert!(!pg.sql.contains("DROP"), "{}", pg.sql);
        assert!(
            pg.sql
                .contains("(created_at, transaction_id COLLATE \"C\") < ($6, $7)")
        );
        assert_eq!(pg.params.len(), 8);
        assert_eq!(pg.params[4], SqlParam::Int(i64::MAX));
        assert_eq!(pg.params[7], SqlParam::Int(11));
        let lite = list(
            &TransactionFilter {
                workflow: None,
                ..filter
            },
            Dialect::Sqlite,
        )
        .expect("statement");
        assert!(
            lite.sql
                .contains("(created_at, workflow, transaction_id) < (?5, ?6, ?7)")
        );
    }
}
