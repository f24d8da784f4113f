//! The writes the store sends, and the batched mode's writer that pipelines them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisResult};
use tokio::sync::{mpsc, oneshot};

use crate::Counters;
use crate::scripts;

/// One create, ready for the create script.
pub(crate) struct CreateCall {
    pub(crate) header: String,
    pub(crate) log: String,
    pub(crate) workflow_index: String,
    pub(crate) member: String,
    pub(crate) run_id: String,
    pub(crate) payload: String,
    pub(crate) created_at: u64,
    pub(crate) workflow: String,
    pub(crate) id: String,
}

/// One append: the records as JSON, and the state the batch leaves the transaction in.
pub(crate) struct AppendCall {
    pub(crate) header: String,
    pub(crate) log: String,
    pub(crate) member: String,
    pub(crate) state: Option<&'static str>,
    pub(crate) records: Vec<String>,
}

/// A write. Its reply is 1/0 for a create (created / already started); for an append, the log
/// length, which is below 1 when the transaction was never created (the log always holds its
/// run marker).
pub(crate) enum Call {
    /// A create.
    Create(CreateCall),
    /// An append.
    Append(AppendCall),
}

impl Call {
    /// The command: a Lua script sent whole with `EVAL` (so a Redis that restarted or flushed
    /// its script cache needs nothing reloaded), or, for an append that does not change the
    /// state, a plain `RPUSHX` (atomic on its own, refused by Redis when the log does not exist).
    pub(crate) fn command(&self, state_keys: &[String; 7]) -> Cmd {
        match self {
            Call::Create(c) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(scripts::CREATE)
                    .arg(10)
                    .arg(&c.header)
                    .arg(&c.log)
                    .arg(&c.workflow_index)
                    .arg(state_keys.as_slice())
                    .arg(&c.member)
                    .arg(&c.run_id)
                    .arg(&c.payload)
                    .arg(c.created_at)
                    .arg(&c.workflow)
                    .arg(&c.id);
                cmd
            }
            Call::Append(a) if a.state.is_none() && !a.records.is_empty() => {
                let mut cmd = redis::cmd("RPUSHX");
                cmd.arg(&a.log).arg(a.records.as_slice());
                cmd
            }
            Call::Append(a) if a.state.is_none() => {
                let mut cmd = redis::cmd("LLEN");
                cmd.arg(&a.log);
                cmd
            }
            Call::Append(a) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(scripts::APPEND)
                    .arg(9)
                    .arg(&a.header)
                    .arg(&a.log)
                    .arg(state_keys.as_slice())
                    .arg(&a.member)
                    .arg(a.state.unwrap_or(""))
                    .arg(a.records.as_slice());
                cmd
            }
        }
    }
}

/// A write waiting for its batch: the call and where its reply (or the error message) goes.
pub(crate) struct Job {
    pub(crate) call: Call,
    pub(crate) reply: oneshot::Sender<Result<i64, String>>,
}

/// Runs until every sender is dropped: takes the writes queued (up to `max_batch`), sends them as
/// one pipeline, answers each job with its own command's reply.
pub(crate) async fn run(
    mut receiver: mpsc::Receiver<Job>,
    mut connection: ConnectionManager,
    state_keys: Arc<[String; 7]>,
    stats: Arc<Counters>,
    max_batch: usize,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while receiver.recv_many(&mut batch, max_batch).await > 0 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in &batch {
            let counter = match job.call {
                Call::Create(_) => &stats.creates,
                Call::Append(_) => &stats.appends,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            pipe.add_command(job.call.command(&state_keys));
        }
        stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let results: RedisResult<Vec<RedisResult<i64>>> = pipe.query_async(&mut connection).await;
        match results {
            Ok(rs) => {
                for (job, r) in batch.drain(..).zip(rs) {
                    let _ = job.reply.send(r.map_err(|e| e.to_string()));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(reason.clone()));
                }
            }
        }
    }
}
