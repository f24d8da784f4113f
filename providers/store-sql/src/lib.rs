//! What Gorgon's SQL stores share, generic over the sqlx database: the core that the driver
//! crates `gorgon-store-postgres` and `gorgon-store-sqlite` are thin layers on, as `sqlx-core` is
//! to sqlx's drivers.
//!
//! A driver crate keeps its SQL, its `connect` (pools, schema, migrations) and a thin
//! `impl Store`; from here it takes:
//! 1. [`log_rows`] (a record as a log row, and back) and [`sql_listing`] (listing and purge
//!    statements, with [`bind_all`] to bind their values).
//! 2. [`Durability`], and [`Stats`] with the [`Counters`] behind them.
//! 3. [`BatchQueue`]: the background writers of [`Durability::Batched`], committing through the
//!    driver's [`BatchCommit`].
//! 4. [`Reads`]: `load`, `summary` and `list` on the driver's pool.
//! 5. The errors callers see ([`store_error`], [`query_error`]): [`Reason`] sends the database's
//!    own text to the log and tells callers only its kind.
//!
//! ```text
//!  append ─► BatchQueue::write ─► queue ─► writer: recv_many(max) ─► BatchCommit::commit
//!            (waits for its reply)          (several writers:         one transaction,
//!                                            one fills a batch         one commit; tried again
//!                                            while another commits)    whole when retryable;
//!                                                                      failed: each half apart
//!            ◄──────────── an Outcome per append ◄────────────────────────┘
//! ```

mod batch;
mod error;
pub mod log_rows;
mod read;
pub mod sql_listing;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;

pub use batch::{
    BatchAppend, BatchCommit, BatchQueue, Outcome, WRITE_RETRIES, untaken, with_taken,
};
pub use error::{Reason, already_started, query_error, store_error};
pub use read::{Reads, bind_all, claimed};
pub use stats::{Counters, Stats};

use serde::Deserialize;

/// When an append is committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Each append is its own commit, made before `append` returns.
    #[default]
    EveryStep,
    /// Appends of many transactions share a commit made by a background writer; each `append`
    /// returns once the commit holding its records succeeded.
    Batched,
}
