//! Executions listing and retention on the sorted-set indexes.
//!
//! ```text
//!  list   one workflow: <prefix>by-workflow:<workflow>, states filtered on the headers
//!         otherwise:    the <prefix>by-state:<state> indexes asked for (all seven when none),
//!                       merged (every transaction is in exactly one state index)
//!         each index is read newest first with ZREVRANGEBYSCORE … WITHSCORES LIMIT, after the
//!         cursor: order is (created_at, member) descending, members compared as bytes, as
//!         Redis orders equal scores
//!  purge  candidates: one workflow's index, or the done/reverted/failed indexes, with
//!         created_at before the cut (a run cannot finish before it was created); each is
//!         deleted by the PURGE script, which checks again that it is finished and was last
//!         updated before the cut
//! ```
//!
//! A listing reads the indexes and then the headers, not in one snapshot: a transaction that
//! changes state meanwhile may be missed or show its newer state.

use gorgon_orchestration::store::{TransactionKey, TransactionSummary};
use gorgon_orchestration::{Error, Purge, TransactionFilter, TransactionPage};

use crate::scripts;
use crate::{RedisStore, member, parse_state};

/// Index entries read per round trip.
const CHUNK: usize = 200;

fn query_error(operation: &'static str, error: impl crate::Reason) -> Error {
    Error::StoreQuery {
        operation,
        reason: error.reason(operation),
    }
}

/// An index entry with the transaction's summary.
struct Entry {
    member: String,
    summary: TransactionSummary,
}

impl RedisStore {
    /// Reads headers of index members: `(member, summary)` for those still present.
    async fn summaries(&self, members: &[(String, f64)]) -> Result<Vec<Entry>, Error> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (m, _) in members {
            pipe.cmd("HMGET").arg(self.header_key(m)).arg(&[
                "workflow",
                "id",
                "run_id",
                "state",
                "created_at",
                "updated_at",
            ]);
        }
        let mut connection = self.inner.connection.clone();
        let rows: Vec<Vec<Option<String>>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| query_error("list", e))?;
        let mut out = Vec::with_capacity(rows.len());
        for ((m, _), row) in members.iter().zip(rows) {
            let corrupt = |what: &str| query_error("list", format!("header {m}: {what}"));
            let [workflow, id, run_id, state, created_at, updated_at]: [Option<String>; 6] = row
                .try_into()
                .map_err(|_| corrupt("HMGET returned the wrong number of fields"))?;
            // Deleted or replaced between the index read and this one: skip it.
            let (Some(workflow), Some(id), Some(run_id), Some(state), Some(created_at)) =
                (workflow, id, run_id, state, created_at)
            else {
                continue;
            };
            let created_at: u64 = created_at
                .parse()
                .map_err(|_| corrupt("created_at is not a number"))?;
            out.push(Entry {
                member: m.clone(),
                summary: TransactionSummary {
                    key: TransactionKey::new(workflow, id),
                    run_id: run_id.into(),
                    state: parse_state(&state).ok_or_else(|| corrupt("unknown state"))?,
                    created_at,
                    updated_at: updated_at
                        .and_then(|u| u.parse::<f64>().ok())
                        .map_or(created_at, |u| u as u64),
                },
            });
        }
        Ok(out)
    }

    /// Up to `want` entries of one index that pass `filter`, newest first, after the cursor.
    async fn read_index(
        &self,
        index: &str,
        filter: &TransactionFilter,
        want: usize,
    ) -> Result<Vec<Entry>, Error> {
        let after = filter
            .after
            .as_ref()
            .map(|c| (c.created_at, member(&c.key)));
        let mut max = filter.created_before.map(|b| b.saturating_sub(1));
        if let Some((at, _)) = &after {
            max = Some(max.map_or(*at, |m| m.min(*at)));
        }
        if filter.created_before == Some(0) {
            return Ok(Vec::new());
        }
        let max = max.map_or_else(|| "+inf".to_string(), |m| m.to_string());
        let min = filter
            .created_from
            .map_or_else(|| "-inf".to_string(), |m| m.to_string());
        let mut connection = self.inner.connection.clone();
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let chunk: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(index)
                .arg(&max)
                .arg(&min)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(CHUNK)
                .query_async(&mut connection)
                .await
                .map_err(|e| query_error("list", e))?;
            offset += chunk.len();
            let exhausted = chunk.len() < CHUNK;
            let fresh: Vec<(String, f64)> = chunk
                .into_iter()
                .filter(|(m, score)| match &after {
                    Some((at, cursor)) => (*score as u64) < *at || m < cursor,
                    None => true,
                })
                .collect();
            for entry in self.summaries(&fresh).await? {
                if filter.states.is_empty() || filter.states.contains(&entry.summary.state) {
                    out.push(entry);
                    if out.len() >= want {
                        return Ok(out);
                    }
                }
            }
            if exhausted {
                return Ok(out);
            }
        }
    }

    /// [`Listing::list`](gorgon_orchestration::Listing::list) on the indexes.
    pub(crate) async fn list_page(
        &self,
        filter: &TransactionFilter,
    ) -> Result<TransactionPage, Error> {
        filter.check()?;
        let want = filter.limit + 1;
        let indexes: Vec<String> = match &filter.workflow {
            Some(workflow) => vec![self.workflow_key(workflow)],
            None if filter.states.is_empty() => self.inner.keys.states.to_vec(),
            None => filter
                .states
                .iter()
                .map(|s| format!("{}by-state:{}", self.inner.prefix, s.as_str()))
                .collect(),
        };
        let mut entries = Vec::new();
        for index in &indexes {
            entries.extend(self.read_index(index, filter, want).await?);
        }
        entries.sort_by(|a, b| {
            (b.summary.created_at, &b.member).cmp(&(a.summary.created_at, &a.member))
        });
        entries.dedup_by(|a, b| a.member == b.member);
        let items = entries.into_iter().map(|e| e.summary).collect();
        Ok(TransactionPage::from_sorted(items, filter.limit))
    }

    /// [`Listing::purge_finished`](gorgon_orchestration::Listing::purge_finished) on the indexes.
    pub(crate) async fn purge_page(&self, purge: &Purge) -> Result<u64, Error> {
        let limit = purge.limit.max(1);
        let finished: Vec<String> = ["done", "reverted", "failed"]
            .iter()
            .map(|s| format!("{}by-state:{s}", self.inner.prefix))
            .collect();
        let indexes = match &purge.workflow {
            Some(workflow) => vec![self.workflow_key(workflow)],
            None => finished.clone(),
        };
        let mut connection = self.inner.connection.clone();
        let mut doomed: Vec<Entry> = Vec::new();
        'indexes: for index in &indexes {
            let mut offset = 0;
            loop {
                let chunk: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
                    .arg(index)
                    .arg("-inf")
                    .arg(format!("({}", purge.older_than))
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(CHUNK)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| query_error("purge", e))?;
                offset += chunk.len();
                let exhausted = chunk.len() < CHUNK;
                for entry in self.summaries(&chunk).await? {
                    if entry.summary.state.is_finished()
                        && entry.summary.updated_at < purge.older_than
                    {
                        doomed.push(entry);
                        if doomed.len() >= limit {
                            break 'indexes;
                        }
                    }
                }
                if exhausted {
                    break;
                }
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for entry in &doomed {
            pipe.cmd("EVAL")
                .arg(scripts::PURGE)
                .arg(6)
                .arg(self.header_key(&entry.member))
                .arg(self.log_key(&entry.member))
                .arg(self.workflow_key(&entry.summary.key.workflow))
                .arg(finished.as_slice())
                .arg(&entry.member)
                .arg(purge.older_than);
        }
        let deleted: Vec<i64> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| query_error("purge", e))?;
        Ok(deleted.into_iter().filter(|d| *d == 1).count() as u64)
    }
}
