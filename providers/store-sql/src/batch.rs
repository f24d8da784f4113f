//! The batch writers of a store in [`Durability::Batched`](crate::Durability::Batched) mode:
//! appends of many transactions wait in one queue; a writer takes everything queued so far (up to
//! a maximum) and commits it at once through the driver's [`BatchCommit`].

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use gorgon_orchestration::{Result, TransactionKey};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::{Reason, store_error};
use crate::log_rows::{EncodedAppend, NewTransaction};
use crate::stats::Counters;

/// How many times a write the database aborted for a deadlock or a serialization failure is
/// tried again.
pub const WRITE_RETRIES: u32 = 3;

/// What became of one append of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its records are in the log.
    Written,
    /// Its epoch is not the transaction's current one: nothing written.
    Fenced,
    /// The transaction was never created: nothing written.
    Missing,
    /// Its transaction was to be created with it, but the id is taken: nothing written.
    Taken,
}

/// One append of a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchAppend<'a> {
    /// Its transaction.
    pub key: &'a TransactionKey,
    /// The epoch it is written with.
    pub epoch: u64,
    /// Its rows.
    pub append: &'a EncodedAppend,
    /// The transaction to create in the same commit (a generated id), if any.
    pub create: Option<&'a NewTransaction>,
}

/// How a driver commits a batch: what the [`BatchQueue`]'s writers call.
pub trait BatchCommit: Send + Sync + 'static {
    /// Writes the batch in one database transaction and one commit (first the transactions
    /// created with their first append, then every append); the outcome of each append, in order.
    fn commit(
        &self,
        batch: &[BatchAppend<'_>],
    ) -> impl Future<Output = std::result::Result<Vec<Outcome>, sqlx::Error>> + Send;

    /// Whether a commit that failed with `error` may succeed when tried again whole (by
    /// default, never).
    fn retryable(&self, error: &sqlx::Error) -> bool {
        let _ = error;
        false
    }
}

/// The appends of `batch` to write once its creations are made: those whose transaction was
/// not `taken` (aligned with `batch`).
pub fn untaken<'a>(batch: &[BatchAppend<'a>], taken: &[bool]) -> Vec<BatchAppend<'a>> {
    batch
        .iter()
        .zip(taken)
        .filter(|(_, taken)| !**taken)
        .map(|(append, _)| *append)
        .collect()
}

/// The outcome of each append of a batch: [`Outcome::Taken`] where its transaction was `taken`,
/// else the next of `written` (the outcomes of the [`untaken`] appends, in order).
pub fn with_taken(taken: Vec<bool>, written: Vec<Outcome>) -> Vec<Outcome> {
    let mut written = written.into_iter();
    taken
        .into_iter()
        .map(|taken| {
            if taken {
                Outcome::Taken
            } else {
                written.next().unwrap_or(Outcome::Missing)
            }
        })
        .collect()
}

/// One append waiting for a batch writer.
#[derive(Debug)]
struct Pending {
    key: TransactionKey,
    create: Option<NewTransaction>,
    epoch: u64,
    append: EncodedAppend,
    reply: oneshot::Sender<AppendOutcome>,
}

/// What one append of a batch came to: written (or refused), or the error of the commit it
/// failed in.
type AppendOutcome = std::result::Result<Outcome, String>;

/// The queue of a batched store and its background writers. Dropping it stops the writers once
/// they have answered what was queued.
#[derive(Debug)]
pub struct BatchQueue {
    sender: mpsc::Sender<Pending>,
}

impl BatchQueue {
    /// Starts `writers` background writers (so call it inside a tokio runtime), each taking up
    /// to `max_appends` queued appends into one commit made by `commit`.
    pub fn start(
        commit: impl BatchCommit,
        writers: usize,
        max_appends: usize,
        counters: Arc<Counters>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(max_appends * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let commit = Arc::new(commit);
        for _ in 0..writers {
            tokio::spawn(run_writer(
                commit.clone(),
                receiver.clone(),
                max_appends,
                counters.clone(),
            ));
        }
        BatchQueue { sender }
    }

    /// Queues an append (with the creation of its transaction, if any) and waits for the commit
    /// holding it.
    pub async fn write(
        &self,
        key: &TransactionKey,
        epoch: u64,
        append: EncodedAppend,
        create: Option<NewTransaction>,
    ) -> Result<Outcome> {
        let stopped = || store_error("append", key, "the batch writer has stopped");
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            key: key.clone(),
            create,
            epoch,
            append,
            reply,
        };
        self.sender.send(pending).await.map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(|reason| store_error("append", key, reason))
    }
}

/// A batch writer: takes everything queued (up to `max`), writes it in one commit, answers.
/// Several writers share the queue; each takes the next batch while the others commit theirs.
async fn run_writer<C: BatchCommit>(
    commit: Arc<C>,
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max: usize,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::with_capacity(max);
    loop {
        if queue.lock().await.recv_many(&mut batch, max).await == 0 {
            return;
        }
        let refs: Vec<BatchAppend<'_>> = batch
            .iter()
            .map(|p| BatchAppend {
                key: &p.key,
                epoch: p.epoch,
                append: &p.append,
                create: p.create.as_ref(),
            })
            .collect();
        let outcomes = write_isolating(&*commit, &refs, &counters).await;
        drop(refs);
        for (pending, outcome) in batch.drain(..).zip(outcomes) {
            let _ = pending.reply.send(outcome);
        }
    }
}

/// Writes a batch in one commit; when that commit fails, writes each half on its own, down to
/// single appends, so an append the database refuses (a value it cannot hold) fails alone and
/// the others of its batch are written.
fn write_isolating<'a, C: BatchCommit>(
    commit: &'a C,
    batch: &'a [BatchAppend<'a>],
    counters: &'a Counters,
) -> BoxFuture<'a, Vec<AppendOutcome>> {
    Box::pin(async move {
        let mut result = commit.commit(batch).await;
        // A deadlock aborts the whole database transaction: it is the commit that is tried
        // again, never a statement inside the aborted transaction.
        let mut tries = 0;
        while tries < WRITE_RETRIES && result.as_ref().is_err_and(|e| commit.retryable(e)) {
            tries += 1;
            counters.retry();
            result = commit.commit(batch).await;
        }
        match result {
            Ok(outcomes) => {
                counters.commit();
                outcomes.into_iter().map(Ok).collect()
            }
            Err(error) if batch.len() == 1 => {
                tracing::warn!(transaction = %batch[0].key, %error, "an append was refused");
                vec![Err(error.reason("append"))]
            }
            Err(error) => {
                tracing::warn!(%error, appends = batch.len(), "a batched commit failed; writing its halves apart");
                let (first, second) = batch.split_at(batch.len() / 2);
                let mut outcomes = write_isolating(commit, first, counters).await;
                outcomes.extend(write_isolating(commit, second, counters).await);
                outcomes
            }
        }
    })
}
