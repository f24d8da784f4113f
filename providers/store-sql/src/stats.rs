//! The write counters of a store.

use std::sync::atomic::{AtomicU64, Ordering};

use gorgon_orchestration::store::fenced;
use gorgon_orchestration::{Result, TransactionKey};

use crate::batch::Outcome;
use crate::error::{already_started, store_error};

/// Counters of the store's writes since it was connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `append` calls that succeeded.
    pub appends: u64,
    /// Records written by them.
    pub records: u64,
    /// Database commits that wrote appends (in batched mode, fewer than `appends`).
    pub commits: u64,
    /// Writes tried again after the database aborted them for a deadlock or a serialization
    /// failure (in batched mode, the whole commit); PostgreSQL only.
    pub retries: u64,
}

/// The live counters behind [`Stats`], shared by a store and its batch writers.
#[derive(Debug, Default)]
pub struct Counters {
    appends: AtomicU64,
    records: AtomicU64,
    commits: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    /// What the counters read now.
    pub fn stats(&self) -> Stats {
        Stats {
            appends: self.appends.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// Counts a commit that wrote appends.
    pub fn commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a write tried again.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an append of `records` records that was written; one that was not becomes the
    /// caller's error.
    pub fn appended(
        &self,
        key: &TransactionKey,
        epoch: u64,
        records: u64,
        outcome: Outcome,
    ) -> Result<()> {
        match outcome {
            Outcome::Written => {
                self.appends.fetch_add(1, Ordering::Relaxed);
                self.records.fetch_add(records, Ordering::Relaxed);
                Ok(())
            }
            Outcome::Fenced => Err(fenced(key, epoch)),
            Outcome::Missing => Err(store_error(
                "append",
                key,
                "the transaction was never created",
            )),
            Outcome::Taken => Err(already_started(key)),
        }
    }
}
