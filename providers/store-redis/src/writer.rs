//! The writes the store sends, and the batched mode's writer that pipelines them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisResult};
use tokio::sync::{mpsc, oneshot};

use crate::Counters;
use crate::scripts;

/// The keys every write names besides its own: the prefix and the seven state indexes.
pub(crate) struct StoreKeys {
    /// The store's key prefix (scripts compute owner sets and headers from it).
    pub(crate) prefix: String,
    /// The state indexes, in the order of [`scripts::STATES`].
    pub(crate) states: [String; 7],
}

/// One create, ready for the create script.
pub(crate) struct CreateCall {
    pub(crate) header: String,
    pub(crate) log: String,
    pub(crate) workflow_index: String,
    pub(crate) parked: String,
    pub(crate) leased: String,
    pub(crate) member: String,
    pub(crate) run_id: String,
    pub(crate) payload: String,
    pub(crate) created_at: u64,
    pub(crate) workflow: String,
    pub(crate) id: String,
    /// The creator's lease (owner, until), if it takes one.
    pub(crate) lease: Option<(String, u64)>,
}

/// One append: the records as JSON, the state the batch leaves the transaction in, and the
/// epoch it is written with.
pub(crate) struct AppendCall {
    pub(crate) header: String,
    pub(crate) log: String,
    pub(crate) parked: String,
    pub(crate) leased: String,
    pub(crate) member: String,
    pub(crate) epoch: u64,
    pub(crate) state: Option<&'static str>,
    pub(crate) records: Vec<String>,
}

/// A write. Its reply is the epoch (at least 1) or 0 (already started) for a create; for an
/// append, the log length (at least 1: the log always holds its run marker), -1 when the
/// transaction was never created, -2 when the epoch is stale.
pub(crate) enum Call {
    /// A create.
    Create(CreateCall),
    /// An append.
    Append(AppendCall),
}

impl Call {
    /// The command: a Lua script sent whole with `EVAL` (so a Redis that restarted or flushed
    /// its script cache needs nothing reloaded). Every append is a script, so its epoch check
    /// and its write are one atomic step, in a pipeline too.
    pub(crate) fn command(&self, keys: &StoreKeys) -> Cmd {
        match self {
            Call::Create(c) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(scripts::CREATE)
                    .arg(12)
                    .arg(&c.header)
                    .arg(&c.log)
                    .arg(&c.workflow_index)
                    .arg(keys.states.as_slice())
                    .arg(&c.parked)
                    .arg(&c.leased)
                    .arg(&c.member)
                    .arg(&c.run_id)
                    .arg(&c.payload)
                    .arg(c.created_at)
                    .arg(&c.workflow)
                    .arg(&c.id)
                    .arg(&keys.prefix);
                match &c.lease {
                    Some((owner, until)) => cmd.arg("1").arg(owner).arg(*until),
                    None => cmd.arg("0").arg("").arg(0),
                };
                cmd
            }
            Call::Append(a) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(scripts::APPEND)
                    .arg(11)
                    .arg(&a.header)
                    .arg(&a.log)
                    .arg(keys.states.as_slice())
                    .arg(&a.parked)
                    .arg(&a.leased)
                    .arg(&a.member)
                    .arg(a.state.unwrap_or(""))
                    .arg(a.epoch)
                    .arg(&keys.prefix)
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
    keys: Arc<StoreKeys>,
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
            pipe.add_command(job.call.command(&keys));
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
