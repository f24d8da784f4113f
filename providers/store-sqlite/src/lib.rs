//! A SQLite [`Store`] for Gorgon's orchestrator, embedded in the process, in one file: every step
//! event is one append to a log table, committed before the engine goes on (or grouped with other
//! transactions' appends into one commit, in [`Durability::Batched`] mode), fenced by the
//! transaction's lease epoch. It is the store to use when nothing else is configured.
//!
//! How to use it:
//! 1. Pick the [`Options`] (deserializable from configuration; the default file is `gorgon.db`
//!    in the working directory; `:memory:` keeps everything in memory, for tests).
//! 2. [`SqliteStore::connect`]: it creates the file if needed (WAL journal, `synchronous=FULL`)
//!    and runs the migrations shipped with this crate (`migrations/`).
//! 3. Hand it to the engine: `EngineOptions { store: Arc::new(store), ..Default::default() }`.
//! 4. Read [`SqliteStore::stats`] to see how many appends and commits it made.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use gorgon_orchestration::EngineOptions;
//! use gorgon_store_sqlite::{Options, SqliteStore};
//!
//! let store = SqliteStore::connect(Options { path: "orders.db".into(), ..Options::default() }).await?;
//! let engine = EngineOptions { store: Arc::new(store), ..EngineOptions::default() }.build();
//! # let _ = engine; Ok(()) }
//! ```
//!
//! # Schema
//!
//! ```text
//!  transactions     one row per (workflow, transaction_id): run_id, state, payload (JSON text),
//!                   created_at, updated_at (ms), next_seq. The summary, for listings. Since
//!                   migration 0002_leases also: owner (NULL: no one holds it), lease_until (ms;
//!                   0 without a lease), epoch (from 1), wake_at (ms; NULL: due only by name).
//!  transaction_log  one row per record: (workflow, transaction_id, run_id, seq) primary key,
//!                   kind (transaction|step|response|error|timer), step, side (invoke|
//!                   compensate), attempt (step records), record (JSON text). Append-only: rows
//!                   are inserted, never updated; a new run of a finished id deletes the old
//!                   run's rows.
//!  indexes          transactions_by_state (workflow, state, created_at): listings;
//!                   transactions_due (workflow, CASE WHEN owner IS NULL THEN wake_at ELSE
//!                   lease_until + 1 END) over unfinished rows: claim_due;
//!                   transactions_by_owner (owner) over owned rows: renew.
//! ```
//!
//! Writes go through one connection (SQLite has one writer at a time anyway); reads use a pool
//! of read connections, which WAL lets run beside the writer. An append is one SQLite
//! transaction: it bumps the summary row's `next_seq` (appends of one transaction get
//! consecutive sequence numbers) *if the row's epoch is the append's*, sets the summary state
//! when a transaction record is among the records (a finished state also clears `owner` and
//! `wake_at`), and inserts the log rows joined on the same epoch. `create` is an `INSERT … ON
//! CONFLICT DO UPDATE … WHERE state IN (done, reverted, failed) RETURNING epoch`: of two creates
//! of one id (even from two processes on one file) exactly one wins, and the other gets
//! [`Error::AlreadyStarted`](gorgon_orchestration::Error::AlreadyStarted); a new run of a
//! finished id gets the old epoch plus one.
//!
//! # Leases, epochs and fencing
//!
//! The [`Store`] contract (see `gorgon_orchestration::store`) lets several workers share one
//! file; each write below is one statement (or one SQLite transaction) on the writer
//! connection, and SQLite's file lock serializes writers of different processes, so every
//! check-and-set is atomic:
//!
//! ```text
//!  create(lease)     owner = lease.owner, lease_until = now + lease.ms, wake_at NULL, epoch 1
//!  create(None)      owner NULL, wake_at = now: due at once for claim_due
//!  append(epoch)     UPDATE … WHERE epoch = ?  (no row: Fenced, or never created)
//!  claim             UPDATE … WHERE owner IS NULL OR owner = me OR lease_until < now
//!                    RETURNING epoch (+1 when the owner changes); else Leased / NotFound
//!  release(epoch)    UPDATE SET owner NULL, wake_at = now + ? WHERE epoch = ?  (no row: Fenced)
//!  claim_due         UPDATE … SET epoch = epoch + 1 WHERE (workflow, id) IN (SELECT … due
//!                    by the transactions_due index … LIMIT n) RETURNING workflow, id, epoch
//!  renew             UPDATE SET lease_until = now + ? WHERE owner = ? AND (workflow, id) named
//! ```
//!
//! Times are the store's: `now` is the clock of the machine holding the database file, which every
//! process sharing the file reads (engines hand over durations, never their own clock's times),
//! in Unix milliseconds stored as SQLite integers (saturating one below `i64::MAX`, so the due
//! index never overflows). In batched mode, appends of one transaction with one epoch in a batch are
//! written or refused together; an append whose epoch is stale gets
//! [`Error::Fenced`](gorgon_orchestration::Error::Fenced) alone, and the rest of its batch is
//! committed. Rows written before migration 0002 get epoch 1, no owner and no wake-up time:
//! a worker claims them by name, never by `claim_due`.
//!
//! Listing and retention (`Listing::list`, `Listing::purge_finished`) use the indexes of
//! `migrations/0002_listing.sql`; a purge is one SQLite transaction on the write connection.
//!
//! # Durability modes and what survives a crash
//!
//! - [`Durability::EveryStep`] (the default): each `append` is its own commit (an `fsync` of the
//!   WAL) and returns once it is on disk. Latency per step is one `fsync`; throughput is bounded
//!   by how many the disk makes per second.
//! - [`Durability::Batched`]: appends of many transactions are queued to one background writer,
//!   which writes everything queued so far in one SQLite transaction and one commit (up to
//!   [`Options::batch_max_appends`]). Each `append` resolves only after the commit holding its
//!   records succeeded; if that commit fails, every append in the batch gets the error. A single
//!   transaction sees about the same latency, but many concurrent transactions share one
//!   `fsync`, so throughput grows with concurrency.
//!
//! Either way an `append` that returned `Ok` is durable: it survives the process being killed
//! and, with `synchronous=FULL`, the machine losing power. An append that had not returned when
//! the process died is in the log whole or not at all. A `:memory:` store keeps nothing past the
//! process.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gorgon_orchestration::clock::now_millis;
use gorgon_orchestration::store::{
    Claim, Lease, StoredTransaction, TransactionHeader, TransactionSummary, fenced,
};
use gorgon_orchestration::{
    Error as StoreError, Purge, Record, TransactionFilter, TransactionKey, TransactionPage,
    WriteMode,
};
use gorgon_orchestration::{Leases, Listing, TransactionLog};
use gorgon_store_sql::log_rows::{self, NewTransaction, encode};
use gorgon_store_sql::sql_listing::{self, Dialect};
use gorgon_store_sql::{
    BatchAppend, BatchCommit, BatchQueue, Counters, Outcome, Reads, Reason, already_started,
    bind_all, claimed, query_error, store_error, untaken, with_taken,
};
use serde::Deserialize;
use sqlx::AssertSqlSafe;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

pub use gorgon_store_sql::{Durability, Stats};

/// The file used when the options name none.
pub const DEFAULT_PATH: &str = "gorgon.db";

/// The path that keeps the store in memory.
pub const MEMORY: &str = ":memory:";

/// Where the database is and how to use it. Deserializable, so the store is chosen by
/// configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// The database file (default `gorgon.db`), created if missing; `:memory:` for a store that
    /// lives as long as the process.
    pub path: String,
    /// When appends are committed (default [`Durability::EveryStep`]).
    pub durability: Durability,
    /// In batched mode, the most appends one commit holds (default 1024).
    pub batch_max_appends: usize,
    /// How many read connections to open (default 4; a `:memory:` store has one connection).
    pub max_readers: u32,
    /// How long a write waits for another process holding the file's write lock, in
    /// milliseconds (default 5,000).
    pub busy_timeout_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            path: DEFAULT_PATH.to_string(),
            durability: Durability::EveryStep,
            batch_max_appends: 1024,
            max_readers: 4,
            busy_timeout_ms: 5_000,
        }
    }
}

impl Options {
    /// Options for a store in memory, living as long as the process (tests, development).
    pub fn in_memory() -> Self {
        Options {
            path: MEMORY.to_string(),
            ..Options::default()
        }
    }

    /// Options for a store in the file at `path`.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Options {
            path: path.as_ref().to_string_lossy().into_owned(),
            ..Options::default()
        }
    }
}

/// What can go wrong setting the store up. (Store operations report
/// [`gorgon_orchestration::Error::Store`].)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is out of range.
    #[error("invalid store option {field}: {reason}")]
    InvalidOptions {
        /// The option's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The database file could not be opened or created.
    #[error("opening {path} failed: {source}")]
    Open {
        /// The file.
        path: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The migrations could not be applied.
    #[error("migrating {path} failed: {source}")]
    Migrate {
        /// The file.
        path: String,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
}

/// A [`Store`] in a SQLite file. Cheap to clone; clones share the connections and batch writer.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    writer: SqlitePool,
    reader: SqlitePool,
    path: String,
    queue: Option<BatchQueue>,
    counters: Arc<Counters>,
}

/// Inserts a transaction created with its first append (a generated id); no row when taken.
const CREATE_NEW_SQL: &str = "INSERT INTO transactions
    (workflow, transaction_id, run_id, state, payload, created_at, updated_at, next_seq,
     owner, lease_until, epoch, wake_at)
VALUES (?1, ?2, ?3, 'not_started', ?4, ?5, ?6, 0, ?7, ?8, 1, NULL)
ON CONFLICT (workflow, transaction_id) DO NOTHING
RETURNING epoch";

impl SqliteStore {
    /// Opens (or creates) the database and applies the migrations; in batched mode it also
    /// starts the batch writer (so call it inside a tokio runtime).
    pub async fn connect(options: Options) -> Result<Self, Error> {
        if options.path.is_empty() {
            return Err(Error::InvalidOptions {
                field: "path",
                reason: "must name a file or `:memory:`".into(),
            });
        }
        if options.batch_max_appends == 0 {
            return Err(Error::InvalidOptions {
                field: "batch_max_appends",
                reason: "must be at least 1".into(),
            });
        }
        if options.max_readers == 0 {
            return Err(Error::InvalidOptions {
                field: "max_readers",
                reason: "must be at least 1".into(),
            });
        }
        let path = options.path.clone();
        let open = |source| Error::Open {
            path: path.clone(),
            source,
        };
        let (writer, reader) = if path == MEMORY {
            let connect = SqliteConnectOptions::from_str("sqlite::memory:").map_err(open)?;
            // One connection, kept for the store's life: a memory database dies with it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(connect)
                .await
                .map_err(open)?;
            (pool.clone(), pool)
        } else {
            let connect = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_millis(options.busy_timeout_ms));
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(connect.clone())
                .await
                .map_err(open)?;
            let reader = SqlitePoolOptions::new()
                .max_connections(options.max_readers)
                .connect_with(connect.read_only(true))
                .await
                .map_err(open)?;
            (writer, reader)
        };
        sqlx::migrate!("./migrations")
            .run(&writer)
            .await
            .map_err(|source| Error::Migrate {
                path: path.clone(),
                source,
            })?;
        let counters = Arc::new(Counters::default());
        let queue = match options.durability {
            Durability::EveryStep => None,
            Durability::Batched => Some(BatchQueue::start(
                Commits(writer.clone()),
                1,
                options.batch_max_appends,
                counters.clone(),
            )),
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer,
                reader,
                path,
                queue,
                counters,
            }),
        })
    }

    /// The write connection's pool (one connection).
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.writer
    }

    /// The database file (or `:memory:`).
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The store's write counters.
    pub fn stats(&self) -> Stats {
        self.inner.counters.stats()
    }

    /// Closes the connections (pending appends of a batched store fail). Dropping the store
    /// without closing is safe too: every acknowledged append is already on disk.
    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.reader.close().await;
    }
}

/// Bumps the summary row of every (transaction, epoch) group of the batch whose epoch is the
/// transaction's (`?1`: a JSON array of `[workflow, transaction_id, records, state|null,
/// epoch]`), returning the groups it wrote. A group whose records finish the transaction ends
/// its lease (no owner, no wake-up time).
const BUMP_SQL: &str = "UPDATE transactions
    SET next_seq = next_seq + (d.value ->> 2),
        state = COALESCE(d.value ->> 3, state),
        owner = CASE WHEN COALESCE(d.value ->> 3, state) IN ('done', 'reverted', 'failed') THEN NULL ELSE owner END,
        wake_at = CASE WHEN COALESCE(d.value ->> 3, state) IN ('done', 'reverted', 'failed') THEN NULL ELSE wake_at END,
        updated_at = ?2
   FROM json_each(?1) AS d
  WHERE workflow = d.value ->> 0 AND transaction_id = d.value ->> 1 AND epoch = d.value ->> 4
RETURNING workflow, transaction_id, epoch";

/// Inserts the log rows of the batch (`?1`: a JSON array of `[workflow, transaction_id, records
/// of that group in the batch, offset, kind, step, side, attempt, record, epoch]`) after the
/// sequence numbers the bump reserved; rows of a fenced group match no summary row.
const INSERT_SQL: &str = "INSERT INTO transaction_log
    (workflow, transaction_id, run_id, seq, kind, step, side, attempt, record)
SELECT t.workflow, t.transaction_id, t.run_id, t.next_seq - (r.value ->> 2) + (r.value ->> 3),
       r.value ->> 4, r.value ->> 5, r.value ->> 6, r.value ->> 7, r.value ->> 8
  FROM json_each(?1) AS r
  JOIN transactions t ON t.workflow = r.value ->> 0 AND t.transaction_id = r.value ->> 1
                     AND t.epoch = r.value ->> 9";

/// Which of the transactions named in `?1` (a JSON array of `[workflow, transaction_id]`) exist.
const EXISTING_SQL: &str = "SELECT t.workflow, t.transaction_id
  FROM json_each(?1) AS d
  JOIN transactions t ON t.workflow = d.value ->> 0 AND t.transaction_id = d.value ->> 1";

/// A `u64` of the trait (epoch, time) as a SQLite integer, saturating.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The store's clock, in Unix milliseconds: the system clock of the machine holding the
/// database file, which every process sharing the file reads (leases and wake-up times are
/// the store's time, never an engine's clock).
fn store_now() -> u64 {
    u64::try_from(now_millis()).unwrap_or(0)
}

/// When a lease of `ms` taken now ends, as stored.
fn lease_until(ms: u64) -> i64 {
    until(store_now().saturating_add(ms))
}

/// A lease's `until` as stored: saturating one below `i64::MAX`, so the index's
/// `lease_until + 1` never overflows.
fn until(value: u64) -> i64 {
    int(value).min(i64::MAX - 1)
}

/// The batch writer's commits, on the write connection.
struct Commits(SqlitePool);

impl BatchCommit for Commits {
    async fn commit(&self, batch: &[BatchAppend<'_>]) -> Result<Vec<Outcome>, sqlx::Error> {
        write_batch(&self.0, batch).await
    }
}

/// Writes appends (of any transactions) in one SQLite transaction, one commit, first creating
/// the transactions of the appends that come with a [`NewTransaction`]. Appends of one
/// transaction with one epoch form a group, written (or refused) together; for each append,
/// whether it was written, its id was taken, its transaction is missing, or its epoch is stale.
async fn write_batch(
    pool: &SqlitePool,
    batch: &[BatchAppend<'_>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut taken = vec![false; batch.len()];
    for (i, append) in batch.iter().enumerate() {
        let Some(new) = append.create else {
            continue;
        };
        let epoch: Option<i64> = sqlx::query_scalar(CREATE_NEW_SQL)
            .bind(append.key.workflow.as_ref())
            .bind(append.key.id.as_ref())
            .bind(&new.run_id)
            .bind(&new.payload)
            .bind(new.created_at)
            .bind(now_millis())
            .bind(new.owner.as_deref())
            .bind(lease_until(u64::try_from(new.lease_ms).unwrap_or(0)))
            .fetch_optional(&mut *tx)
            .await?;
        taken[i] = epoch.is_none();
    }
    let written = write_batch_in(&mut tx, &untaken(batch, &taken)).await?;
    tx.commit().await?;
    Ok(with_taken(taken, written))
}

/// The appends of a batch, inside the caller's SQLite transaction.
async fn write_batch_in(
    tx: &mut sqlx::SqliteConnection,
    batch: &[BatchAppend<'_>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut index: HashMap<(&TransactionKey, u64), usize> = HashMap::new();
    // workflow, transaction_id, records, state, epoch
    let mut groups: Vec<(&str, &str, i64, Option<&str>, i64)> = Vec::new();
    let mut of_append = Vec::with_capacity(batch.len());
    for a in batch {
        let (key, epoch, append) = (a.key, a.epoch, a.append);
        let g = *index.entry((key, epoch)).or_insert_with(|| {
            groups.push((key.workflow.as_ref(), key.id.as_ref(), 0, None, int(epoch)));
            groups.len() - 1
        });
        of_append.push(g);
        groups[g].2 += append.rows.len() as i64;
        if append.state.is_some() {
            groups[g].3 = append.state;
        }
    }
    let mut offsets = vec![0_i64; groups.len()];
    let mut rows = Vec::new();
    for (a, &g) in batch.iter().zip(&of_append) {
        let (workflow, id, total, _, epoch) = groups[g];
        for row in &a.append.rows {
            rows.push((
                workflow,
                id,
                total,
                offsets[g],
                row.kind,
                row.step,
                row.side,
                row.attempt,
                row.record.as_str(),
                epoch,
            ));
            offsets[g] += 1;
        }
    }
    let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    let groups_json = serde_json::to_string(&groups).map_err(encode)?;
    let rows_json = serde_json::to_string(&rows).map_err(encode)?;
    let written: Vec<(String, String, i64)> = sqlx::query_as(BUMP_SQL)
        .bind(groups_json)
        .bind(now_millis())
        .fetch_all(&mut *tx)
        .await?;
    if !rows.is_empty() && !written.is_empty() {
        sqlx::query(INSERT_SQL)
            .bind(rows_json)
            .execute(&mut *tx)
            .await?;
    }
    let by_group: HashMap<(&str, &str, i64), usize> = groups
        .iter()
        .enumerate()
        .map(|(g, &(workflow, id, _, _, epoch))| ((workflow, id, epoch), g))
        .collect();
    let mut outcome = vec![Outcome::Missing; groups.len()];
    for (workflow, id, epoch) in &written {
        if let Some(&g) = by_group.get(&(workflow.as_str(), id.as_str(), *epoch)) {
            outcome[g] = Outcome::Written;
        }
    }
    if written.len() < groups.len() {
        // Refused groups: stale epochs of existing transactions, or never created.
        let refused: Vec<(&str, &str)> = groups
            .iter()
            .zip(&outcome)
            .filter(|(_, o)| **o != Outcome::Written)
            .map(|(g, _)| (g.0, g.1))
            .collect();
        let existing: HashSet<(String, String)> = sqlx::query_as(EXISTING_SQL)
            .bind(serde_json::to_string(&refused).map_err(encode)?)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        for (g, o) in groups.iter().zip(outcome.iter_mut()) {
            if *o != Outcome::Written && existing.contains(&(g.0.to_string(), g.1.to_string())) {
                *o = Outcome::Fenced;
            }
        }
    }
    Ok(of_append.into_iter().map(|g| outcome[g]).collect())
}

/// Creates a transaction, or replaces a finished one with a new run (one epoch later);
/// returns the epoch, or no row when an unfinished run holds the id.
const CREATE_SQL: &str = "INSERT INTO transactions
    (workflow, transaction_id, run_id, state, payload, created_at, updated_at, next_seq,
     owner, lease_until, epoch, wake_at)
VALUES (?1, ?2, ?3, 'not_started', ?4, ?5, ?6, 0, ?7, ?8, 1, ?9)
ON CONFLICT (workflow, transaction_id) DO UPDATE
   SET run_id = excluded.run_id, state = excluded.state, payload = excluded.payload,
       created_at = excluded.created_at, updated_at = excluded.updated_at, next_seq = 0,
       owner = excluded.owner, lease_until = excluded.lease_until,
       epoch = transactions.epoch + 1, wake_at = excluded.wake_at
 WHERE transactions.state IN ('done', 'reverted', 'failed')
RETURNING epoch";

/// Takes a transaction's lease (`?3` owner until `?4`) unless another owner's lease runs at
/// `?5`; the epoch moves on when the lease changes hands. Returns the epoch when granted.
const CLAIM_SQL: &str = "UPDATE transactions
   SET epoch = CASE WHEN owner IS ?3 THEN epoch ELSE epoch + 1 END,
       owner = ?3, lease_until = ?4, wake_at = NULL
 WHERE workflow = ?1 AND transaction_id = ?2
   AND (owner IS NULL OR owner = ?3 OR lease_until < ?5)
RETURNING epoch";

/// Gives a lease up if `?3` is the epoch; an unfinished transaction wakes at `?4`.
const RELEASE_SQL: &str = "UPDATE transactions
   SET owner = NULL, wake_at = CASE WHEN state IN ('done', 'reverted', 'failed') THEN NULL ELSE ?4 END
 WHERE workflow = ?1 AND transaction_id = ?2 AND epoch = ?3";

/// Extends every lease owner `?1` holds to `?2` (through the `transactions_by_owner` index).
/// Extends owner `?1`'s leases on the transactions named in `?3`, a JSON array of
/// `[workflow, transaction id]` pairs.
const RENEW_SQL: &str = "UPDATE transactions SET lease_until = ?2
 WHERE owner = ?1 AND EXISTS (
   SELECT 1 FROM json_each(?3) AS k
    WHERE k.value ->> 0 = transactions.workflow AND k.value ->> 1 = transactions.transaction_id)";

/// Claims up to `?5` unfinished transactions of the workflows in `?1` (a JSON array) due at
/// `?4` for owner `?2` until `?3`, each one epoch later. The inner query reads the
/// `transactions_due` index: the same expression and the same `state` term as the index.
const CLAIM_DUE_SQL: &str = "UPDATE transactions
   SET owner = ?2, lease_until = ?3, epoch = epoch + 1, wake_at = NULL
 WHERE (workflow, transaction_id) IN (
        SELECT workflow, transaction_id FROM transactions
         WHERE workflow IN (SELECT value FROM json_each(?1))
           AND (CASE WHEN owner IS NULL THEN wake_at ELSE lease_until + 1 END) <= ?4
           AND state NOT IN ('done', 'reverted', 'failed')
         LIMIT ?5)
RETURNING workflow, transaction_id, epoch";

/// A transaction's summary: `?1` the workflow, `?2` the id.
const SUMMARY_SQL: &str = "SELECT run_id, state, created_at, updated_at FROM transactions WHERE workflow = ?1 AND transaction_id = ?2";

/// A transaction's header row, then its log rows in order: `?1` the workflow, `?2` the id.
const LOAD_SQL: &str = "SELECT -1 AS seq, run_id, payload AS body, created_at
  FROM transactions WHERE workflow = ?1 AND transaction_id = ?2
UNION ALL
SELECT l.seq, l.run_id, l.record, 0
  FROM transaction_log l
  JOIN transactions t
    ON t.workflow = l.workflow AND t.transaction_id = l.transaction_id AND t.run_id = l.run_id
 WHERE t.workflow = ?1 AND t.transaction_id = ?2
ORDER BY seq";

#[async_trait]
impl TransactionLog for SqliteStore {
    async fn create(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
    ) -> gorgon_orchestration::Result<u64> {
        let key = &header.key;
        let payload = log_rows::payload(header)?;
        let created_at = i64::try_from(header.created_at)
            .map_err(|_| store_error("create", key, "created_at is out of range"))?;
        let result: Result<Option<i64>, sqlx::Error> = async {
            let mut tx = self.inner.writer.begin().await?;
            let epoch: Option<i64> = sqlx::query_scalar(CREATE_SQL)
                .bind(key.workflow.as_ref())
                .bind(key.id.as_ref())
                .bind(header.run_id.as_ref())
                .bind(payload)
                .bind(created_at)
                .bind(now_millis())
                .bind(lease.map(|l| l.owner.as_ref()))
                .bind(lease.map_or(0, |l| lease_until(l.ms)))
                // Without a lease, an enqueued start: due at once.
                .bind(lease.is_none().then(|| int(store_now())))
                .fetch_optional(&mut *tx)
                .await?;
            if epoch.is_some() {
                // The log of the finished run this one replaces.
                sqlx::query(
                    "DELETE FROM transaction_log WHERE workflow = ?1 AND transaction_id = ?2",
                )
                .bind(key.workflow.as_ref())
                .bind(key.id.as_ref())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(epoch)
        }
        .await;
        match result.map_err(|e| store_error("create", key, e))? {
            Some(epoch) => Ok(u64::try_from(epoch).unwrap_or(0)),
            None => Err(already_started(key)),
        }
    }

    async fn append(
        &self,
        key: &TransactionKey,
        epoch: u64,
        records: Vec<Record>,
    ) -> gorgon_orchestration::Result<()> {
        self.write(key, epoch, &records, None).await
    }

    async fn create_and_append(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
        records: Vec<Record>,
    ) -> gorgon_orchestration::Result<u64> {
        if self.inner.queue.is_none() {
            let epoch = self.create(header, lease).await?;
            self.append(&header.key, epoch, records).await?;
            return Ok(epoch);
        }
        let create = NewTransaction::encode(header, lease)?;
        self.write(&header.key, 1, &records, Some(create)).await?;
        Ok(1)
    }

    fn write_mode(&self) -> WriteMode {
        WriteMode::batched_if(self.inner.queue.is_some())
    }

    async fn load(
        &self,
        key: &TransactionKey,
    ) -> gorgon_orchestration::Result<Option<StoredTransaction>> {
        self.reads().load(LOAD_SQL, key).await
    }
}

#[async_trait]
impl Leases for SqliteStore {
    async fn claim(
        &self,
        key: &TransactionKey,
        lease: &Lease,
    ) -> gorgon_orchestration::Result<Claim> {
        let now = store_now();
        let result: Result<Claim, sqlx::Error> = async {
            // One SQLite transaction: the refusal reads the owner that refused.
            let mut tx = self.inner.writer.begin().await?;
            let epoch: Option<i64> = sqlx::query_scalar(CLAIM_SQL)
                .bind(key.workflow.as_ref())
                .bind(key.id.as_ref())
                .bind(lease.owner.as_ref())
                .bind(until(now.saturating_add(lease.ms)))
                .bind(int(now))
                .fetch_optional(&mut *tx)
                .await?;
            let claim = match epoch {
                Some(epoch) => Claim::Granted {
                    epoch: u64::try_from(epoch).unwrap_or(0),
                },
                None => {
                    let owner: Option<Option<String>> = sqlx::query_scalar(
                        "SELECT owner FROM transactions WHERE workflow = ?1 AND transaction_id = ?2",
                    )
                    .bind(key.workflow.as_ref())
                    .bind(key.id.as_ref())
                    .fetch_optional(&mut *tx)
                    .await?;
                    match owner {
                        None => Claim::NotFound,
                        Some(owner) => Claim::Leased {
                            owner: owner.unwrap_or_default(),
                        },
                    }
                }
            };
            tx.commit().await?;
            Ok(claim)
        }
        .await;
        result.map_err(|e| store_error("claim", key, e))
    }

    async fn release(
        &self,
        key: &TransactionKey,
        epoch: u64,
        wake_in: Option<u64>,
    ) -> gorgon_orchestration::Result<()> {
        let released = sqlx::query(RELEASE_SQL)
            .bind(key.workflow.as_ref())
            .bind(key.id.as_ref())
            .bind(int(epoch))
            .bind(wake_in.map(|ms| int(store_now().saturating_add(ms))))
            .execute(&self.inner.writer)
            .await
            .map_err(|e| store_error("release", key, e))?
            .rows_affected();
        if released == 1 {
            Ok(())
        } else {
            Err(fenced(key, epoch))
        }
    }

    async fn claim_due(
        &self,
        workflows: &[Arc<str>],
        lease: &Lease,
        limit: usize,
    ) -> gorgon_orchestration::Result<Vec<(TransactionKey, u64)>> {
        let now = store_now();
        if workflows.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = workflows.iter().map(|w| w.as_ref()).collect();
        let failed = |reason: String| StoreError::Store {
            operation: "claim_due",
            transaction: format!("any due of {}", names.join(", ")),
            reason,
        };
        let names_json = serde_json::to_string(&names).map_err(|e| failed(e.to_string()))?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(CLAIM_DUE_SQL)
            .bind(names_json)
            .bind(lease.owner.as_ref())
            .bind(until(now.saturating_add(lease.ms)))
            .bind(int(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.writer)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(claimed(rows))
    }

    async fn renew(
        &self,
        lease: &Lease,
        keys: &[TransactionKey],
    ) -> gorgon_orchestration::Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let pairs: Vec<[&str; 2]> = keys
            .iter()
            .map(|k| [k.workflow.as_ref(), k.id.as_ref()])
            .collect();
        let pairs = serde_json::to_string(&pairs).expect("strings serialize");
        let renewed = sqlx::query(RENEW_SQL)
            .bind(lease.owner.as_ref())
            .bind(lease_until(lease.ms))
            .bind(pairs)
            .execute(&self.inner.writer)
            .await
            .map_err(|e| StoreError::Store {
                operation: "renew",
                transaction: format!("every one leased by {}", lease.owner),
                reason: e.reason("renew"),
            })?
            .rows_affected();
        Ok(usize::try_from(renewed).unwrap_or(usize::MAX))
    }

    async fn summary(
        &self,
        key: &TransactionKey,
    ) -> gorgon_orchestration::Result<Option<TransactionSummary>> {
        self.reads().summary(SUMMARY_SQL, key).await
    }
}

#[async_trait]
impl Listing for SqliteStore {
    async fn list(
        &self,
        filter: &TransactionFilter,
    ) -> gorgon_orchestration::Result<TransactionPage> {
        self.reads().list(filter).await
    }

    async fn purge_finished(&self, purge: &Purge) -> gorgon_orchestration::Result<u64> {
        let candidates = sql_listing::purge_candidates(purge, Dialect::Sqlite);
        let result: Result<u64, sqlx::Error> = async {
            let mut tx = self.inner.writer.begin().await?;
            let doomed: Vec<(String, String)> = bind_all(
                sqlx::query_as(AssertSqlSafe(candidates.sql)),
                &candidates.params,
            )
            .fetch_all(&mut *tx)
            .await?;
            if doomed.is_empty() {
                return Ok(0);
            }
            let keys =
                serde_json::to_string(&doomed).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            sqlx::query(
                "DELETE FROM transaction_log WHERE (workflow, transaction_id) IN \
                 (SELECT value ->> 0, value ->> 1 FROM json_each(?1))",
            )
            .bind(&keys)
            .execute(&mut *tx)
            .await?;
            let deleted = sqlx::query(
                "DELETE FROM transactions WHERE (workflow, transaction_id) IN \
                 (SELECT value ->> 0, value ->> 1 FROM json_each(?1)) \
                 AND state IN ('done', 'reverted', 'failed')",
            )
            .bind(&keys)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(deleted)
        }
        .await;
        result.map_err(|e| query_error("purge", e))
    }
}

impl SqliteStore {
    /// An append (with, in batched mode, the creation of its transaction), in a commit of its
    /// own or through the batch writer.
    async fn write(
        &self,
        key: &TransactionKey,
        epoch: u64,
        records: &[Record],
        create: Option<NewTransaction>,
    ) -> gorgon_orchestration::Result<()> {
        let append = encode(key, records)?;
        let n = append.rows.len() as u64;
        let outcome = match &self.inner.queue {
            None => {
                let alone = BatchAppend {
                    key,
                    epoch,
                    append: &append,
                    create: None,
                };
                let outcome = write_batch(&self.inner.writer, &[alone])
                    .await
                    .map_err(|e| store_error("append", key, e))?;
                self.inner.counters.commit();
                outcome[0]
            }
            Some(queue) => queue.write(key, epoch, append, create).await?,
        };
        self.inner.counters.appended(key, epoch, n, outcome)
    }

    /// The reads, on the read connections.
    fn reads(&self) -> Reads<'_, Sqlite> {
        Reads {
            pool: &self.inner.reader,
            dialect: Dialect::Sqlite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of a statement, one detail per line.
    async fn plan(store: &SqliteStore, sql: &'static str) -> String {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind("[\"wf\"]")
                .bind("owner")
                .bind(10_i64)
                .bind(5_i64)
                .bind(3_i64)
                .fetch_all(store.pool())
                .await
                .expect("explain");
        rows.into_iter()
            .map(|(_, _, _, detail)| detail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `claim_due` seeks the due index (no scan of the table); `renew` the owner index.
    #[tokio::test]
    async fn claim_due_and_renew_read_their_indexes() {
        let store = SqliteStore::connect(Options::in_memory())
            .await
            .expect("open");
        let due = plan(&store, CLAIM_DUE_SQL).await;
        assert!(
            due.contains("USING INDEX transactions_due (workflow=? AND <expr><?)"),
            "{due}"
        );
        assert!(!due.contains("SCAN transactions"), "{due}");
        let renew = plan(&store, RENEW_SQL).await;
        assert!(renew.contains("transactions_by_owner"), "{renew}");
    }
}
