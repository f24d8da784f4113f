//! The [`Store`] trait: where transactions are kept, as an append-only log of step events.
//!
//! Every step event of a transaction (a round prepared, a handler's outcome, a cancel, the
//! finish) becomes one [`append`](Store::append) of the few [`Record`]s that changed; a store
//! never rewrites a whole transaction. [`Transaction::replay`](crate::Transaction::replay) folds
//! the log back into a transaction. A summary per transaction (state, times) serves listings.
//!
//! Contract every store keeps:
//! - `append` is durable when it returns (for the store's own meaning of durable: the memory
//!   store keeps the log until the process ends) and records of one transaction are returned by
//!   `load` in append order;
//! - `create` refuses a second *unfinished* transaction with the same workflow and id
//!   ([`Error::AlreadyStarted`]); a finished one is replaced by the new run.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::error::{Error, Result};
use crate::machine::Record;
use crate::state::TransactionState;

/// Identifies a transaction: its workflow and its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TransactionKey {
    /// The workflow name.
    pub workflow: Arc<str>,
    /// The transaction id.
    pub id: Arc<str>,
}

impl TransactionKey {
    /// A key from its parts.
    pub fn new(workflow: impl Into<Arc<str>>, id: impl Into<Arc<str>>) -> Self {
        TransactionKey {
            workflow: workflow.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for TransactionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.workflow, self.id)
    }
}

/// What is written once when a transaction is created.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransactionHeader {
    /// The workflow and transaction id.
    pub key: TransactionKey,
    /// The run id of this run of the transaction id.
    pub run_id: Arc<str>,
    /// The workflow input.
    pub payload: Data,
    /// When it was created (clock milliseconds).
    pub created_at: u64,
}

/// A transaction as a store returns it: its header and its log.
#[derive(Clone, Debug)]
pub struct StoredTransaction {
    /// The header written at creation.
    pub header: TransactionHeader,
    /// Every record appended since, in order.
    pub records: Vec<Record>,
}

/// The latest known state of a transaction, for listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionSummary {
    /// The workflow and transaction id.
    pub key: TransactionKey,
    /// The run id.
    pub run_id: Arc<str>,
    /// The transaction state after the last append.
    pub state: TransactionState,
    /// When it was created.
    pub created_at: u64,
}

/// Where transactions live. Object-safe; held as `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes the header of a new transaction (or of a new run of a finished one).
    async fn create(&self, header: &TransactionHeader) -> Result<()>;
    /// Appends records to a transaction's log, in one durable write.
    async fn append(&self, key: &TransactionKey, records: &[Record]) -> Result<()>;
    /// Reads a transaction's header and log, if it exists.
    async fn load(&self, key: &TransactionKey) -> Result<Option<StoredTransaction>>;
    /// The summary of a transaction, if it exists.
    async fn summary(&self, key: &TransactionKey) -> Result<Option<TransactionSummary>>;
}

/// The in-memory store: a log per transaction in a map, for development and tests.
///
/// Finished transactions are kept up to `keep_finished` (the oldest are dropped first), so a
/// long-running process does not grow without bound.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
    keep_finished: usize,
}

#[derive(Debug, Default)]
struct MemoryInner {
    transactions: foldhash::HashMap<TransactionKey, MemoryEntry>,
    finished: VecDeque<(TransactionKey, Arc<str>)>,
}

#[derive(Debug)]
struct MemoryEntry {
    header: TransactionHeader,
    records: Vec<Record>,
    state: TransactionState,
}

impl MemoryStore {
    /// A store keeping at most 10,000 finished transactions.
    pub fn new() -> Self {
        Self::keeping_finished(10_000)
    }
    /// A store keeping at most `keep_finished` finished transactions.
    pub fn keeping_finished(keep_finished: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(MemoryInner::default()),
            keep_finished,
        }
    }
    /// How many transactions the store holds.
    pub fn len(&self) -> usize {
        self.inner.lock().transactions.len()
    }
    /// Whether the store holds no transaction.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(&self, header: &TransactionHeader) -> Result<()> {
        let mut inner = self.inner.lock();
        if let Some(existing) = inner.transactions.get(&header.key)
            && !existing.state.is_finished()
        {
            return Err(Error::AlreadyStarted {
                workflow: header.key.workflow.to_string(),
                transaction: header.key.id.to_string(),
            });
        }
        inner.transactions.insert(
            header.key.clone(),
            MemoryEntry {
                header: header.clone(),
                records: Vec::with_capacity(64),
                state: TransactionState::NotStarted,
            },
        );
        Ok(())
    }

    async fn append(&self, key: &TransactionKey, records: &[Record]) -> Result<()> {
        let mut inner = self.inner.lock();
        let MemoryInner {
            transactions,
            finished,
        } = &mut *inner;
        let entry = transactions.get_mut(key).ok_or_else(|| Error::Store {
            operation: "append",
            transaction: key.to_string(),
            reason: "the transaction was never created".into(),
        })?;
        let was_finished = entry.state.is_finished();
        for record in records {
            if let Record::Transaction(fields) = record {
                entry.state = fields.state;
            }
        }
        entry.records.extend_from_slice(records);
        if !was_finished && entry.state.is_finished() {
            finished.push_back((key.clone(), entry.header.run_id.clone()));
            while finished.len() > self.keep_finished {
                let (old, run) = finished.pop_front().expect("not empty");
                // Only drop the run that finished, not a newer run of the same id.
                if transactions
                    .get(&old)
                    .is_some_and(|e| e.header.run_id == run && e.state.is_finished())
                {
                    transactions.remove(&old);
                }
            }
        }
        Ok(())
    }

    async fn load(&self, key: &TransactionKey) -> Result<Option<StoredTransaction>> {
        let inner = self.inner.lock();
        Ok(inner.transactions.get(key).map(|e| StoredTransaction {
            header: e.header.clone(),
            records: e.records.clone(),
        }))
    }

    async fn summary(&self, key: &TransactionKey) -> Result<Option<TransactionSummary>> {
        let inner = self.inner.lock();
        Ok(inner.transactions.get(key).map(|e| TransactionSummary {
            key: key.clone(),
            run_id: e.header.run_id.clone(),
            state: e.state,
            created_at: e.header.created_at,
        }))
    }
}
