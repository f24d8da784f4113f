//! The reads the SQL stores make alike: a transaction's log, its summary and listings.

use std::sync::Arc;

use gorgon_orchestration::store::{StoredTransaction, TransactionHeader, TransactionSummary};
use gorgon_orchestration::{Data, Result, TransactionFilter, TransactionKey, TransactionPage};
use sqlx::query::QueryAs;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type,
};

use crate::error::{query_error, store_error};
use crate::log_rows;
use crate::sql_listing::{self, Dialect, SqlParam};

/// The reads on a pool of `DB`, whose placeholders `dialect` spells.
pub struct Reads<'a, DB: Database> {
    /// The pool read from.
    pub pool: &'a Pool<DB>,
    /// How the pool's database spells placeholders.
    pub dialect: Dialect,
}

impl<DB> Reads<'_, DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    /// A transaction's header and log by `sql`, which takes the workflow and the id and returns
    /// columns `run_id`, `body` and `created_at`: first the header's row (`body` the payload),
    /// then each log row in order (`body` a record, or the records of a packed row).
    pub async fn load(
        &self,
        sql: &'static str,
        key: &TransactionKey,
    ) -> Result<Option<StoredTransaction>> {
        let rows = sqlx::query::<DB>(sql)
            .bind(key.workflow.as_ref())
            .bind(key.id.as_ref())
            .fetch_all(self.pool)
            .await
            .map_err(|e| store_error("load", key, e))?;
        let mut rows = rows.into_iter();
        let Some(first) = rows.next() else {
            return Ok(None);
        };
        let get = |row: &DB::Row, column: &str| -> Result<String> {
            row.try_get::<String, _>(column)
                .map_err(|e| store_error("load", key, e))
        };
        let payload: serde_json::Value = serde_json::from_str(&get(&first, "body")?)
            .map_err(|e| store_error("load", key, format!("the payload does not decode: {e}")))?;
        let created_at: i64 = first
            .try_get("created_at")
            .map_err(|e| store_error("load", key, e))?;
        let header = TransactionHeader {
            key: key.clone(),
            run_id: Arc::from(get(&first, "run_id")?),
            payload: Data::json(payload),
            created_at: u64::try_from(created_at).unwrap_or(0),
            keep: Default::default(),
        };
        let mut records = Vec::new();
        for row in rows {
            log_rows::decode_row(key, &get(&row, "body")?, &mut records)?;
        }
        Ok(Some(StoredTransaction { header, records }))
    }

    /// A transaction's summary by `sql`, which takes the workflow and the id and returns columns
    /// `run_id, state, created_at, updated_at`.
    pub async fn summary(
        &self,
        sql: &'static str,
        key: &TransactionKey,
    ) -> Result<Option<TransactionSummary>> {
        let row: Option<(String, String, i64, i64)> = sqlx::query_as(sql)
            .bind(key.workflow.as_ref())
            .bind(key.id.as_ref())
            .fetch_optional(self.pool)
            .await
            .map_err(|e| store_error("summary", key, e))?;
        let Some((run_id, state, created_at, updated_at)) = row else {
            return Ok(None);
        };
        Ok(Some(TransactionSummary {
            key: key.clone(),
            run_id: Arc::from(run_id),
            state: log_rows::state(key, &state)?,
            created_at: u64::try_from(created_at).unwrap_or(0),
            updated_at: u64::try_from(updated_at).unwrap_or(0),
        }))
    }

    /// A page of the listing `filter` asks for.
    pub async fn list(&self, filter: &TransactionFilter) -> Result<TransactionPage> {
        let statement = sql_listing::list(filter, self.dialect)?;
        let rows: Vec<(String, String, String, String, i64, i64)> = bind_all(
            sqlx::query_as(AssertSqlSafe(statement.sql)),
            &statement.params,
        )
        .fetch_all(self.pool)
        .await
        .map_err(|e| query_error("list", e))?;
        let items = rows
            .into_iter()
            .map(|(w, id, run, state, created, updated)| {
                sql_listing::summary(w, id, run, &state, created, updated)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TransactionPage::from_sorted(items, filter.limit))
    }
}

/// Binds a statement's values in order.
pub fn bind_all<'q, DB, O>(
    mut query: QueryAs<'q, DB, O, DB::Arguments>,
    params: &'q [SqlParam],
) -> QueryAs<'q, DB, O, DB::Arguments>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    for param in params {
        query = match param {
            SqlParam::Text(text) => query.bind(text.as_str()),
            SqlParam::Int(int) => query.bind(*int),
        };
    }
    query
}

/// The transactions a claim returned (rows of workflow, id and epoch), with their epochs.
pub fn claimed(rows: Vec<(String, String, i64)>) -> Vec<(TransactionKey, u64)> {
    rows.into_iter()
        .map(|(workflow, id, epoch)| {
            (
                TransactionKey::new(workflow, id),
                u64::try_from(epoch).unwrap_or(0),
            )
        })
        .collect()
}
