//! A PostgreSQL [`Store`] for Gorgon's orchestrator: every step event is one append to a log
//! table, committed before the engine goes on (or grouped with other transactions' appends into
//! one commit, in [`Durability::Batched`] mode).
//!
//! How to use it:
//! 1. Pick the [`Options`] (deserializable from configuration; the default URL is
//!    `postgres://postgres@127.0.0.1:5432/test`, or `DATABASE_URL` when set; the default schema
//!    is `gorgon`).
//! 2. [`PostgresStore::connect`]: it creates the schema if needed and runs the migrations shipped
//!    with this crate (`migrations/`).
//! 3. Hand it to the engine: `EngineOptions { store: Arc::new(store), ..Default::default() }`.
//! 4. Read [`PostgresStore::stats`] to see how many appends and commits it made.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use gorgon_orchestration::EngineOptions;
//! use gorgon_store_postgres::{Durability, Options, PostgresStore};
//!
//! let store = PostgresStore::connect(Options {
//!     durability: Durability::Batched,
//!     ..Options::default()
//! })
//! .await?;
//! let engine = EngineOptions { store: Arc::new(store), ..EngineOptions::default() }.build();
//! # let _ = engine; Ok(()) }
//! ```
//!
//! # Schema
//!
//! All tables live in the PostgreSQL schema named by [`Options::schema`] (the connections'
//! `search_path`), so several stores (or tests) share one database without meeting:
//!
//! ```text
//!  transactions     one row per (workflow, transaction_id): run_id, state, payload (json),
//!                   created_at, updated_at (ms), next_seq; owner, lease_until, epoch, wake_at
//!                   (leases, migrations/0003). The summary, for listings and for claims.
//!  transaction_log  one row per record: (workflow, transaction_id, run_id, seq) primary key,
//!                   kind (transaction|step|response|error|timer), step, side
//!                   (invoke|compensate), attempt (step records), record (json). In batched
//!                   mode one row holds a whole append (kind `records`, a JSON array), since an
//!                   append then spans many step events. Append-only: rows are inserted, never
//!                   updated; a new run of a finished id deletes the old run's rows.
//! ```
//!
//! # Leases and fencing
//!
//! Each append's statement matches the summary row on its epoch as well as its key, so an append
//! from a worker whose lease was taken over writes nothing and gets
//! [`Error::Fenced`](gorgon_orchestration::Error::Fenced), alone in its batch. `claim` is one
//! conditional `UPDATE … RETURNING epoch`; `claim_due` picks due rows with `FOR UPDATE SKIP
//! LOCKED` (partial indexes on `wake_at` of parked rows and `lease_until` of owned ones), so
//! workers polling at once never claim a transaction twice; `renew` is one `UPDATE` per worker.
//!
//! An append is one SQL statement in its own transaction: it bumps the summary row's `next_seq`
//! (which row-locks it, so appends of one transaction get consecutive sequence numbers), sets the
//! summary state when a transaction record is among the records, and inserts the log rows. A
//! `create` is one statement too: an `INSERT … ON CONFLICT DO UPDATE … WHERE state IN (done,
//! reverted, failed)`, so of two concurrent creates of one id exactly one wins, and the other
//! gets [`Error::AlreadyStarted`](gorgon_orchestration::Error::AlreadyStarted).
//!
//! Listing and retention (`Listing::list`, `Listing::purge_finished`) use the indexes of
//! `migrations/0002_listing.sql`; [`PostgresRelay`] carries engine events over `LISTEN/NOTIFY`.
//!
//! # Durability modes and what survives a crash
//!
//! - [`Durability::EveryStep`] (the default): each `append` is its own commit and returns once
//!   PostgreSQL has committed it. Latency per step is one commit (about 2 ms with the default
//!   `fsync` here); throughput is bounded by how many commits the server makes per second.
//! - [`Durability::Batched`]: the store is *pipelined* (`TransactionLog::write_mode` is
//!   [`WriteMode::Pipelined`]): the engine does not wait for each append before the next step,
//!   keeps one append per transaction in flight, and returns a run's outcome only once all of it
//!   is committed. Appends of many transactions are queued to background writers
//!   ([`Options::batch_writers`], default 2, so one batch fills while another commits); a writer
//!   takes everything queued so far (up to [`Options::batch_max_appends`]) and writes it in one
//!   statement and one commit. Each `append` resolves only after the commit holding its
//!   records succeeded; if that commit fails, every append in the batch gets the error. A single
//!   transaction sees the same latency (often a little more: it waits for the commit in
//!   flight), but a thousand concurrent transactions share one commit instead of making a
//!   thousand, so throughput grows with concurrency.
//!
//! A transaction with a generated id is created in the commit of its first append
//! (`TransactionLog::create_and_append`), in both modes.
//!
//! Either way an `append` that returned `Ok` is durable: it survives a crash of the process and
//! (with PostgreSQL's default `fsync = on`, `synchronous_commit = on`) of the database host. An
//! append that had not returned when the process died may or may not be in the log, whole or not
//! at all (one append is one database transaction); the engine re-runs from the last durable
//! record.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
use gorgon_store_sql::log_rows::{self, NewTransaction, encode, encode_packed};
use gorgon_store_sql::sql_listing::{self, Dialect};
use gorgon_store_sql::{
    BatchAppend, BatchCommit, BatchQueue, Counters, Outcome, Reads, Reason, WRITE_RETRIES,
    already_started, bind_all, claimed, query_error, store_error, untaken, with_taken,
};
use serde::Deserialize;
use sqlx::AssertSqlSafe;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};

pub mod relay;
pub use gorgon_store_sql::{Durability, Stats};
pub use relay::PostgresRelay;

/// The URL used when neither the options nor `DATABASE_URL` give one.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How to reach and use the database. Deserializable, so the store is chosen by configuration.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// The connection URL (default: `DATABASE_URL`, else [`DEFAULT_URL`]).
    pub url: String,
    /// The PostgreSQL schema holding the tables (default `gorgon`): lowercase letters, digits
    /// and `_`, not starting with a digit, at most 63 characters.
    pub schema: String,
    /// The most connections the store opens (default 10). In every-step mode, up to half of
    /// them are kept for appends outside the pool, which is that much smaller.
    pub max_connections: u32,
    /// When appends are committed (default [`Durability::EveryStep`]).
    pub durability: Durability,
    /// In batched mode, the most appends one commit holds (default 1024).
    pub batch_max_appends: usize,
    /// In batched mode, how many commits may be in flight at once (default 2). Appends of one
    /// transaction stay in order as long as each is awaited before the next is made (the
    /// engine does); appends of different transactions may land in either order.
    pub batch_writers: usize,
    /// How long to wait for a connection, connecting included, in milliseconds (default 30,000).
    pub acquire_timeout_ms: u64,
}

/// The URL may carry a password: it is shown without it.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("durability", &self.durability)
            .field("batch_max_appends", &self.batch_max_appends)
            .field("batch_writers", &self.batch_writers)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string()),
            schema: "gorgon".to_string(),
            max_connections: 10,
            durability: Durability::EveryStep,
            batch_max_appends: 1024,
            batch_writers: 2,
            acquire_timeout_ms: 30_000,
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
    /// The database could not be reached.
    #[error("connecting to {url} failed: {source}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A statement outside the store operations failed.
    #[error("{operation} on schema {schema} failed: {source}")]
    Database {
        /// What the store was doing.
        operation: &'static str,
        /// The schema concerned.
        schema: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The migrations could not be applied.
    #[error("migrating schema {schema} failed: {source}")]
    Migrate {
        /// The schema concerned.
        schema: String,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
}

/// Whether PostgreSQL aborted a statement for a deadlock or a serialization failure: trying the
/// whole transaction again may succeed.
fn retryable(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if matches!(e.code().as_deref(), Some("40P01" | "40001")))
}

/// A [`Store`] in PostgreSQL. Cheap to clone; clones share the pool and the batch writer.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    /// Connections kept out of the pool between every-step appends (see [`Held`]).
    idle: parking_lot::Mutex<Vec<sqlx::PgConnection>>,
    /// How many connections are detached from the pool (idle, or in use by an append).
    detached: AtomicUsize,
    /// How many connections the store detaches at most (the pool is that much smaller).
    max_idle: usize,
    schema: String,
    queue: Option<BatchQueue>,
    counters: Arc<Counters>,
}

/// A connection for one every-step append, taken from the store's own idle list or else from
/// the pool. sqlx pings a connection each time it goes back to the pool (one more round trip
/// per step, which made a step's commit about a fifth slower), so a connection whose statement
/// completed is kept, detached from the pool, instead ([`Held::keep`]). The store keeps at
/// most `max_idle` such connections and sizes its pool `max_idle` smaller, so it never holds
/// more than `max_connections` in all. One that failed, or whose statement was cancelled
/// halfway, is closed (a pooled one goes back to the pool, which checks it).
struct Held<'a> {
    inner: &'a Inner,
    conn: Option<Conn>,
}

/// Where a [`Held`] connection came from.
enum Conn {
    /// From the store's idle list (detached from the pool).
    Kept(sqlx::PgConnection),
    /// From the pool.
    Pooled(PoolConnection<Postgres>),
}

impl<'a> Held<'a> {
    async fn take(inner: &'a Inner) -> Result<Held<'a>, sqlx::Error> {
        let idle = inner.idle.lock().pop();
        let conn = match idle {
            Some(conn) => Conn::Kept(conn),
            None => Conn::Pooled(inner.pool.acquire().await?),
        };
        Ok(Held {
            inner,
            conn: Some(conn),
        })
    }

    fn conn(&mut self) -> &mut sqlx::PgConnection {
        match self.conn.as_mut().expect("held until kept or dropped") {
            Conn::Kept(conn) => conn,
            Conn::Pooled(conn) => conn,
        }
    }

    /// Keeps the connection for the next append (its statement completed).
    fn keep(mut self) {
        let inner = self.inner;
        match self.conn.take() {
            Some(Conn::Kept(conn)) => inner.idle.lock().push(conn),
            Some(Conn::Pooled(conn)) => {
                let room = inner
                    .detached
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < inner.max_idle).then_some(n + 1)
                    })
                    .is_ok();
                if room {
                    inner.idle.lock().push(conn.detach());
                }
            }
            None => {}
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(Conn::Kept(conn)) = self.conn.take() {
            // Failed or cancelled: closed, which makes room for another.
            drop(conn);
            self.inner.detached.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
}

impl PostgresStore {
    /// Connects, creates the schema if needed and applies the migrations; in batched mode it
    /// also starts the batch writer (so call it inside a tokio runtime).
    pub async fn connect(options: Options) -> Result<Self, Error> {
        if !valid_schema(&options.schema) {
            return Err(Error::InvalidOptions {
                field: "schema",
                reason: format!(
                    "`{}` is not lowercase letters, digits and `_` (at most 63, not starting with a digit)",
                    options.schema
                ),
            });
        }
        if options.max_connections == 0 {
            return Err(Error::InvalidOptions {
                field: "max_connections",
                reason: "must be at least 1".into(),
            });
        }
        if options.batch_writers == 0 {
            return Err(Error::InvalidOptions {
                field: "batch_writers",
                reason: "must be at least 1".into(),
            });
        }
        if options.batch_max_appends == 0 {
            return Err(Error::InvalidOptions {
                field: "batch_max_appends",
                reason: "must be at least 1".into(),
            });
        }
        let url = redact(&options.url);
        let connect = PgConnectOptions::from_str(&options.url)
            .map_err(|source| Error::Connect {
                url: url.clone(),
                source,
            })?
            .options([("search_path", options.schema.as_str())]);
        // Half the connections may be kept out of the pool for every-step appends (see `Held`).
        let max_idle = match options.durability {
            Durability::EveryStep => options.max_connections as usize / 2,
            Durability::Batched => 0,
        };
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections - max_idle as u32)
            // A ping per acquire would be one more round trip per step; a broken connection
            // fails its statement instead, which the engine reports like any store error.
            .test_before_acquire(false)
            .acquire_timeout(std::time::Duration::from_millis(options.acquire_timeout_ms))
            .connect_with(connect)
            .await
            .map_err(|source| Error::Connect {
                url: url.clone(),
                source,
            })?;
        let schema = options.schema.clone();
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        if let Err(source) = sqlx::query(AssertSqlSafe(create)).execute(&pool).await {
            // Two connects racing on one new schema: the loser sees a unique violation.
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_namespace WHERE nspname = $1")
                    .bind(&schema)
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
            if exists.is_none() {
                return Err(Error::Database {
                    operation: "create schema",
                    schema,
                    source,
                });
            }
        }
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| Error::Migrate {
                schema: schema.clone(),
                source,
            })?;
        let counters = Arc::new(Counters::default());
        let queue = match options.durability {
            Durability::EveryStep => None,
            Durability::Batched => Some(BatchQueue::start(
                Commits(pool.clone()),
                options.batch_writers,
                options.batch_max_appends,
                counters.clone(),
            )),
        };
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                idle: parking_lot::Mutex::new(Vec::new()),
                detached: AtomicUsize::new(0),
                max_idle,
                schema,
                queue,
                counters,
            }),
        })
    }

    /// The connection pool (its connections' `search_path` is the store's schema).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The store's write counters.
    pub fn stats(&self) -> Stats {
        self.inner.counters.stats()
    }

    /// Drops the store's schema with everything in it (for tests and throwaway stores).
    pub async fn drop_schema(&self) -> Result<(), Error> {
        let schema = &self.inner.schema;
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        sqlx::query(AssertSqlSafe(sql))
            .execute(&self.inner.pool)
            .await
            .map_err(|source| Error::Database {
                operation: "drop schema",
                schema: schema.clone(),
                source,
            })?;
        Ok(())
    }
}

/// The single statement an append batch is: bump each summary row (locking it), then insert the
/// log rows after the sequence numbers reserved. Returns the keys (1-based) that exist.
const APPEND_SQL: &str = r#"
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $13::int8[])
        WITH ORDINALITY AS d(workflow, transaction_id, n, state, epoch, k)
), s AS (
    UPDATE transactions t
       SET next_seq = t.next_seq + d.n,
           state = COALESCE(NULLIF(d.state, ''), t.state),
           updated_at = CASE WHEN d.state <> '' AND d.state <> t.state THEN $5 ELSE t.updated_at END,
           owner = CASE WHEN d.state IN ('done', 'reverted', 'failed') THEN NULL ELSE t.owner END,
           wake_at = CASE WHEN d.state IN ('done', 'reverted', 'failed') THEN NULL ELSE t.wake_at END
      FROM d
     WHERE t.workflow = d.workflow AND t.transaction_id = d.transaction_id AND t.epoch = d.epoch
    RETURNING d.k, t.workflow, t.transaction_id, t.run_id, t.next_seq - d.n AS base
), ins AS (
    INSERT INTO transaction_log (workflow, transaction_id, run_id, seq, kind, step, side, attempt, record)
    SELECT s.workflow, s.transaction_id, s.run_id, s.base + r.off, r.kind,
           NULLIF(r.step, -1)::int4, NULLIF(r.side, ''), NULLIF(r.attempt, -1)::int4, r.record::json
      FROM unnest($6::int8[], $7::int8[], $8::text[], $9::int8[], $10::text[], $11::int8[], $12::text[])
           AS r(k, off, kind, step, side, attempt, record)
      JOIN s ON s.k = r.k
)
SELECT k FROM s
"#;

/// Inserts the transactions created with their first append (generated ids), returning the
/// keys inserted; a taken id is left alone.
const CREATE_MANY_SQL: &str = r#"
INSERT INTO transactions (workflow, transaction_id, run_id, state, payload, created_at,
                          updated_at, next_seq, owner, lease_until, epoch, wake_at)
SELECT d.workflow, d.transaction_id, d.run_id, 'not_started', d.payload::json, d.created_at,
       $6, 0, NULLIF(d.owner, ''), gorgon_now_ms() + d.lease_ms, 1, NULL
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $7::text[], $8::int8[])
       AS d(workflow, transaction_id, run_id, payload, created_at, owner, lease_ms)
ON CONFLICT (workflow, transaction_id) DO NOTHING
RETURNING workflow, transaction_id
"#;

/// Creates a transaction (a generated id) together with its first log rows, in one statement;
/// returns 1, or 0 when the id is taken (then nothing is written).
const CREATE_WITH_LOG_SQL: &str = r#"
WITH ins AS (
    INSERT INTO transactions (workflow, transaction_id, run_id, state, payload, created_at,
                              updated_at, next_seq, owner, lease_until, epoch, wake_at)
    VALUES ($1, $2, $3, COALESCE(NULLIF($9, ''), 'not_started'), $4::json, $5, $6, $10,
            CASE WHEN $9 IN ('done', 'reverted', 'failed') THEN NULL ELSE NULLIF($7, '') END,
            gorgon_now_ms() + $8, 1, NULL)
    ON CONFLICT (workflow, transaction_id) DO NOTHING
    RETURNING run_id
), log AS (
    INSERT INTO transaction_log (workflow, transaction_id, run_id, seq, kind, step, side, attempt, record)
    SELECT $1, $2, ins.run_id, r.off, r.kind, NULLIF(r.step, -1)::int4, NULLIF(r.side, ''),
           NULLIF(r.attempt, -1)::int4, r.record::json
      FROM ins, unnest($11::int8[], $12::text[], $13::int8[], $14::text[], $15::int8[], $16::text[])
           AS r(off, kind, step, side, attempt, record)
)
SELECT count(*) FROM ins
"#;

/// The batch writers' commits, on the pool.
struct Commits(PgPool);

impl BatchCommit for Commits {
    async fn commit(&self, batch: &[BatchAppend<'_>]) -> Result<Vec<Outcome>, sqlx::Error> {
        write_batch_creating(&self.0, batch).await
    }

    fn retryable(&self, error: &sqlx::Error) -> bool {
        retryable(error)
    }
}

/// Writes a batch in one database transaction: first the transactions created with their
/// first append, then every append.
async fn write_batch_creating(
    pool: &PgPool,
    batch: &[BatchAppend<'_>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut conn = pool.begin().await?;
    let mut taken = vec![false; batch.len()];
    let creates: Vec<usize> = (0..batch.len())
        .filter(|&i| batch[i].create.is_some())
        .collect();
    if !creates.is_empty() {
        let column = |f: &dyn Fn(&TransactionKey, &NewTransaction) -> String| -> Vec<String> {
            creates
                .iter()
                .map(|&i| f(batch[i].key, batch[i].create.expect("a create")))
                .collect()
        };
        let workflows = column(&|k, _| k.workflow.to_string());
        let ids = column(&|k, _| k.id.to_string());
        let runs = column(&|_, n| n.run_id.clone());
        let payloads = column(&|_, n| n.payload.clone());
        let owners = column(&|_, n| n.owner.clone().unwrap_or_default());
        let created: Vec<i64> = creates
            .iter()
            .map(|&i| batch[i].create.expect("a create").created_at)
            .collect();
        let lease_ms: Vec<i64> = creates
            .iter()
            .map(|&i| batch[i].create.expect("a create").lease_ms)
            .collect();
        let inserted: Vec<(String, String)> = sqlx::query_as(CREATE_MANY_SQL)
            .bind(&workflows)
            .bind(&ids)
            .bind(&runs)
            .bind(&payloads)
            .bind(&created)
            .bind(now_millis())
            .bind(&owners)
            .bind(&lease_ms)
            .fetch_all(&mut *conn)
            .await?;
        let inserted: std::collections::HashSet<(String, String)> = inserted.into_iter().collect();
        for (n, &i) in creates.iter().enumerate() {
            if !inserted.contains(&(workflows[n].clone(), ids[n].clone())) {
                taken[i] = true;
            }
        }
    }
    let written = write_batch(&mut conn, &untaken(batch, &taken)).await?;
    conn.commit().await?;
    Ok(with_taken(taken, written))
}

/// Writes appends (of any transactions) in one statement, one commit. An append whose epoch is
/// stale, or whose transaction does not exist, writes nothing; the others are unaffected.
async fn write_batch(
    conn: &mut sqlx::PgConnection,
    batch: &[BatchAppend<'_>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut index: HashMap<&TransactionKey, usize> = HashMap::new();
    let (mut workflows, mut ids, mut counts, mut states, mut epochs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut rk, mut off, mut kind, mut step, mut side, mut attempt, mut record) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut of_append = Vec::with_capacity(batch.len());
    for a in batch {
        let (key, epoch, append) = (a.key, a.epoch, a.append);
        let k = *index.entry(key).or_insert_with(|| {
            workflows.push(key.workflow.as_ref());
            ids.push(key.id.as_ref());
            counts.push(0_i64);
            states.push("");
            epochs.push(i64::try_from(epoch).unwrap_or(i64::MAX));
            workflows.len() - 1
        });
        of_append.push(k);
        if let Some(state) = append.state {
            states[k] = state;
        }
        for row in &append.rows {
            rk.push(k as i64 + 1);
            off.push(counts[k]);
            counts[k] += 1;
            kind.push(row.kind);
            step.push(row.step.unwrap_or(-1));
            side.push(row.side.unwrap_or(""));
            attempt.push(row.attempt.unwrap_or(-1));
            record.push(row.record.as_str());
        }
    }
    let found: Vec<i64> = {
        let result = sqlx::query_scalar(APPEND_SQL)
            .bind(&workflows)
            .bind(&ids)
            .bind(&counts)
            .bind(&states)
            .bind(now_millis())
            .bind(&rk)
            .bind(&off)
            .bind(&kind)
            .bind(&step)
            .bind(&side)
            .bind(&attempt)
            .bind(&record)
            .bind(&epochs)
            .fetch_all(&mut *conn)
            .await;
        // A deadlock is left to the caller, who tries the whole transaction again (retrying
        // here, inside an aborted transaction, could never succeed).
        result?
    };
    let mut written = vec![Outcome::Missing; workflows.len()];
    for k in found {
        if let Some(slot) = usize::try_from(k - 1).ok().and_then(|i| written.get_mut(i)) {
            *slot = Outcome::Written;
        }
    }
    // The rare refused appends: tell a stale epoch from a missing transaction.
    for k in 0..written.len() {
        if written[k] == Outcome::Missing {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT epoch FROM transactions WHERE workflow = $1 AND transaction_id = $2",
            )
            .bind(workflows[k])
            .bind(ids[k])
            .fetch_optional(&mut *conn)
            .await?;
            if exists.is_some() {
                written[k] = Outcome::Fenced;
            }
        }
    }
    Ok(of_append.into_iter().map(|k| written[k]).collect())
}

const CREATE_SQL: &str = r#"
WITH up AS (
    INSERT INTO transactions (workflow, transaction_id, run_id, state, payload, created_at,
                              updated_at, next_seq, owner, lease_until, epoch, wake_at)
    VALUES ($1, $2, $3, 'not_started', $4::json, $5, $6, 0, $7,
            CASE WHEN $7::text IS NULL THEN 0 ELSE gorgon_now_ms() + $8 END, 1,
            CASE WHEN $7::text IS NULL THEN gorgon_now_ms() END)
    ON CONFLICT (workflow, transaction_id) DO UPDATE
       SET run_id = EXCLUDED.run_id, state = EXCLUDED.state, payload = EXCLUDED.payload,
           created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, next_seq = 0,
           owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until,
           epoch = transactions.epoch + 1, wake_at = EXCLUDED.wake_at
     WHERE transactions.state IN ('done', 'reverted', 'failed')
    RETURNING epoch
), gone AS (
    DELETE FROM transaction_log
     WHERE workflow = $1 AND transaction_id = $2 AND EXISTS (SELECT 1 FROM up)
)
SELECT epoch FROM up
"#;

/// A transaction's summary: `$1` the workflow, `$2` the id.
const SUMMARY_SQL: &str = "SELECT run_id, state, created_at, updated_at FROM transactions WHERE workflow = $1 AND transaction_id = $2";

/// A transaction's header row, then its log rows in order: `$1` the workflow, `$2` the id.
const LOAD_SQL: &str = r#"
SELECT -1::int8 AS seq, run_id, payload::text AS body, created_at
  FROM transactions WHERE workflow = $1 AND transaction_id = $2
UNION ALL
SELECT l.seq, l.run_id, l.record::text, 0::int8
  FROM transaction_log l
  JOIN transactions t
    ON t.workflow = l.workflow AND t.transaction_id = l.transaction_id AND t.run_id = l.run_id
 WHERE t.workflow = $1 AND t.transaction_id = $2
ORDER BY seq
"#;

#[async_trait]
impl TransactionLog for PostgresStore {
    async fn create(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
    ) -> gorgon_orchestration::Result<u64> {
        let key = &header.key;
        let payload = log_rows::payload(header)?;
        let created_at = i64::try_from(header.created_at)
            .map_err(|_| store_error("create", key, "created_at is out of range"))?;
        let epoch: Option<i64> = sqlx::query_scalar(CREATE_SQL)
            .bind(key.workflow.as_ref())
            .bind(key.id.as_ref())
            .bind(header.run_id.as_ref())
            .bind(payload)
            .bind(created_at)
            .bind(now_millis())
            .bind(lease.map(|l| l.owner.as_ref()))
            .bind(lease.map_or(0, |l| duration_ms(l.ms)))
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| store_error("create", key, e))?;
        match epoch {
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

    fn write_mode(&self) -> WriteMode {
        WriteMode::batched_if(self.inner.queue.is_some())
    }

    async fn create_and_append(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
        records: Vec<Record>,
    ) -> gorgon_orchestration::Result<u64> {
        let create = NewTransaction::encode(header, lease)?;
        self.write(&header.key, 1, &records, Some(create)).await?;
        Ok(1)
    }

    async fn load(
        &self,
        key: &TransactionKey,
    ) -> gorgon_orchestration::Result<Option<StoredTransaction>> {
        self.reads().load(LOAD_SQL, key).await
    }
}

#[async_trait]
impl Leases for PostgresStore {
    async fn claim(
        &self,
        key: &TransactionKey,
        lease: &Lease,
    ) -> gorgon_orchestration::Result<Claim> {
        for _ in 0..3 {
            if let Some(claim) = self.claim_once(key, lease).await? {
                return Ok(claim);
            }
        }
        Err(store_error(
            "claim",
            key,
            "the lease kept changing hands; try again",
        ))
    }

    async fn release(
        &self,
        key: &TransactionKey,
        epoch: u64,
        wake_in: Option<u64>,
    ) -> gorgon_orchestration::Result<()> {
        let done = sqlx::query(RELEASE_SQL)
            .bind(key.workflow.as_ref())
            .bind(key.id.as_ref())
            .bind(millis(epoch))
            .bind(wake_in.map(duration_ms))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| store_error("release", key, e))?;
        if done.rows_affected() == 0 {
            return Err(fenced(key, epoch));
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        workflows: &[Arc<str>],
        lease: &Lease,
        limit: usize,
    ) -> gorgon_orchestration::Result<Vec<(TransactionKey, u64)>> {
        let names: Vec<&str> = workflows.iter().map(|w| w.as_ref()).collect();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(CLAIM_DUE_SQL)
            .bind(&names)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(lease.owner.as_ref())
            .bind(duration_ms(lease.ms))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| StoreError::Store {
                operation: "claim_due",
                transaction: String::new(),
                reason: e.reason("claim_due"),
            })?;
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
        let workflows: Vec<&str> = keys.iter().map(|k| k.workflow.as_ref()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.id.as_ref()).collect();
        let done = sqlx::query(RENEW_SQL)
            .bind(lease.owner.as_ref())
            .bind(duration_ms(lease.ms))
            .bind(&workflows)
            .bind(&ids)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| StoreError::Store {
                operation: "renew",
                transaction: format!("leases of {}", lease.owner),
                reason: e.reason("renew"),
            })?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn summary(
        &self,
        key: &TransactionKey,
    ) -> gorgon_orchestration::Result<Option<TransactionSummary>> {
        self.reads().summary(SUMMARY_SQL, key).await
    }
}

#[async_trait]
impl Listing for PostgresStore {
    async fn list(
        &self,
        filter: &TransactionFilter,
    ) -> gorgon_orchestration::Result<TransactionPage> {
        self.reads().list(filter).await
    }

    async fn purge_finished(&self, purge: &Purge) -> gorgon_orchestration::Result<u64> {
        // One statement, one commit: lock a batch of candidates (skipping rows another purge
        // or a create holds), delete their log rows and their summary rows.
        let candidates = sql_listing::purge_candidates(purge, Dialect::Postgres);
        let sql = format!(
            "WITH doomed AS ({}), \
             gone AS (DELETE FROM transaction_log l USING doomed d \
                       WHERE l.workflow = d.workflow AND l.transaction_id = d.transaction_id), \
             deleted AS (DELETE FROM transactions t USING doomed d \
                          WHERE t.workflow = d.workflow AND t.transaction_id = d.transaction_id \
                          RETURNING 1) \
             SELECT count(*) FROM deleted",
            candidates.sql
        );
        let (deleted,): (i64,) = bind_all(sqlx::query_as(AssertSqlSafe(sql)), &candidates.params)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| query_error("purge", e))?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }
}

/// Extends by `$2` ms owner `$1`'s leases on the transactions named by `$3` (workflows) and `$4`
/// (ids). Times here are the database's (`gorgon_now_ms()`, migration 0006).
const RENEW_SQL: &str = r#"
UPDATE transactions t SET lease_until = gorgon_now_ms() + $2
  FROM unnest($3::text[], $4::text[]) AS k(workflow, transaction_id)
 WHERE t.owner = $1 AND t.workflow = k.workflow AND t.transaction_id = k.transaction_id
"#;

/// Owner `$3` takes (or keeps) the lease for `$4` ms, unless another owner's runs.
const CLAIM_SQL: &str = r#"
UPDATE transactions
   SET epoch = CASE WHEN owner = $3 THEN epoch ELSE epoch + 1 END,
       owner = $3, lease_until = gorgon_now_ms() + $4, wake_at = NULL
 WHERE workflow = $1 AND transaction_id = $2
   AND (owner IS NULL OR owner = $3 OR lease_until < gorgon_now_ms())
RETURNING epoch
"#;

const RELEASE_SQL: &str = r#"
UPDATE transactions
   SET owner = NULL,
       wake_at = CASE WHEN state IN ('done', 'reverted', 'failed') THEN NULL
                      ELSE gorgon_now_ms() + $4 END
 WHERE workflow = $1 AND transaction_id = $2 AND epoch = $3
"#;

const CLAIM_DUE_SQL: &str = r#"
WITH due AS (
    SELECT workflow, transaction_id FROM transactions
     WHERE workflow = ANY($1) AND state NOT IN ('done', 'reverted', 'failed')
       AND ((owner IS NULL AND wake_at <= gorgon_now_ms())
            OR (owner IS NOT NULL AND lease_until < gorgon_now_ms()))
     LIMIT $2
     FOR UPDATE SKIP LOCKED
)
UPDATE transactions t
   SET epoch = t.epoch + 1, owner = $3, lease_until = gorgon_now_ms() + $4, wake_at = NULL
  FROM due
 WHERE t.workflow = due.workflow AND t.transaction_id = due.transaction_id
RETURNING t.workflow, t.transaction_id, t.epoch
"#;

/// A count (an epoch, a time) as a column value.
fn millis(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// A duration in milliseconds as a column value, capped to ten years (a lease or a delay that
/// long never runs out, and the database adds it to its clock without overflowing).
fn duration_ms(ms: u64) -> i64 {
    millis(ms.min(315_576_000_000))
}

impl PostgresStore {
    /// An append (with, in batched mode, the creation of its transaction), every-step or
    /// through the batch writers.
    async fn write(
        &self,
        key: &TransactionKey,
        epoch: u64,
        records: &[Record],
        create: Option<NewTransaction>,
    ) -> gorgon_orchestration::Result<()> {
        let n = records.len() as u64;
        let written = match &self.inner.queue {
            None if create.is_some() => {
                // The creation and the first append in one statement, one commit.
                let append = encode(key, records)?;
                let new = create.as_ref().expect("a create");
                let rows = &append.rows;
                let mut held = Held::take(&self.inner)
                    .await
                    .map_err(|e| store_error("create", key, e))?;
                let inserted: i64 = sqlx::query_scalar(CREATE_WITH_LOG_SQL)
                    .bind(key.workflow.as_ref())
                    .bind(key.id.as_ref())
                    .bind(&new.run_id)
                    .bind(&new.payload)
                    .bind(new.created_at)
                    .bind(now_millis())
                    .bind(new.owner.as_deref().unwrap_or(""))
                    .bind(new.lease_ms)
                    .bind(append.state.unwrap_or(""))
                    .bind(rows.len() as i64)
                    .bind((0..rows.len() as i64).collect::<Vec<_>>())
                    .bind(rows.iter().map(|r| r.kind).collect::<Vec<_>>())
                    .bind(
                        rows.iter()
                            .map(|r| r.step.unwrap_or(-1))
                            .collect::<Vec<_>>(),
                    )
                    .bind(
                        rows.iter()
                            .map(|r| r.side.unwrap_or(""))
                            .collect::<Vec<_>>(),
                    )
                    .bind(
                        rows.iter()
                            .map(|r| r.attempt.unwrap_or(-1))
                            .collect::<Vec<_>>(),
                    )
                    .bind(rows.iter().map(|r| r.record.as_str()).collect::<Vec<_>>())
                    .fetch_one(held.conn())
                    .await
                    .map_err(|e| store_error("create", key, e))?;
                held.keep();
                self.inner.counters.commit();
                if inserted == 1 {
                    Outcome::Written
                } else {
                    Outcome::Taken
                }
            }
            None => {
                let append = encode(key, records)?;
                let mut held = Held::take(&self.inner)
                    .await
                    .map_err(|e| store_error("append", key, e))?;
                // One statement in its own transaction: a deadlock aborts it alone.
                let alone = [BatchAppend {
                    key,
                    epoch,
                    append: &append,
                    create: None,
                }];
                let mut written = write_batch(held.conn(), &alone).await;
                let mut tries = 0;
                while tries < WRITE_RETRIES && written.as_ref().is_err_and(retryable) {
                    tries += 1;
                    self.inner.counters.retry();
                    written = write_batch(held.conn(), &alone).await;
                }
                let written = written.map_err(|e| store_error("append", key, e))?;
                held.keep();
                self.inner.counters.commit();
                written[0]
            }
            // Batched: one row holds the whole append (many step events of one transaction),
            // so a commit of many transactions stays small.
            Some(queue) => {
                let append = encode_packed(key, records)?;
                queue.write(key, epoch, append, create).await?
            }
        };
        self.inner.counters.appended(key, epoch, n, written)
    }

    /// The reads, on the pool.
    fn reads(&self) -> Reads<'_, Postgres> {
        Reads {
            pool: &self.inner.pool,
            dialect: Dialect::Postgres,
        }
    }

    async fn claim_once(
        &self,
        key: &TransactionKey,
        lease: &Lease,
    ) -> gorgon_orchestration::Result<Option<Claim>> {
        let pool = &self.inner.pool;
        let epoch: Option<i64> = sqlx::query_scalar(CLAIM_SQL)
            .bind(key.workflow.as_ref())
            .bind(key.id.as_ref())
            .bind(lease.owner.as_ref())
            .bind(duration_ms(lease.ms))
            .fetch_optional(pool)
            .await
            .map_err(|e| store_error("claim", key, e))?;
        if let Some(epoch) = epoch {
            return Ok(Some(Claim::Granted {
                epoch: u64::try_from(epoch).unwrap_or(0),
            }));
        }
        let row: Option<Option<String>> = sqlx::query_scalar(
            "SELECT owner FROM transactions WHERE workflow = $1 AND transaction_id = $2",
        )
        .bind(key.workflow.as_ref())
        .bind(key.id.as_ref())
        .fetch_optional(pool)
        .await
        .map_err(|e| store_error("claim", key, e))?;
        Ok(match row {
            None => Some(Claim::NotFound),
            Some(Some(owner)) => Some(Claim::Leased { owner }),
            // Released between the two statements: try again.
            Some(None) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema("gorgon_test_1"));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema("a\"; drop"));
        assert!(!valid_schema(""));
    }
}
