//! PostgreSQL provider of Gorgon locking: a [`Locker`] whose locks are lease rows in one table,
//! shared by every process that uses the same database and table.
//!
//! # How to use it
//! 1. Deserialize an [`Options`] from configuration (`url`, optionally `table`, pool size, polling).
//! 2. [`PostgresLocker::connect`] (or [`PostgresLocker::with_pool`] to share a pool); it creates
//!    the table and the fencing sequence if they are missing.
//! 3. Hold it as `Arc<dyn gorgon_locking::Locker>` and use it like any locker.
//!
//! # How it works
//! ```text
//!  acquire(keys)                       one SHORT transaction per attempt
//!    ├─ INSERT missing rows (sorted) ON CONFLICT DO NOTHING
//!    ├─ SELECT rows ORDER BY key FOR UPDATE NOWAIT  ← row locks in key order, never waited for
//!    ├─ any live row of another owner? → ROLLBACK, sleep (backoff, or woken by NOTIFY), retry
//!    └─ UPDATE owner/holds/expires_at, fencing_token = nextval(<table>_fencing) → COMMIT
//!  release(keys) → holds − 1, row deleted at 0, pg_notify(<table>_released)
//! ```
//! Unlike session advisory locks (`pg_advisory_lock`), nothing is held on a connection between
//! attempts: a waiter returns its pooled connection after each attempt, so a thousand waiters
//! need no more connections than the pool has. One extra connection per `PostgresLocker`
//! LISTENs on `<table>_released` to wake local waiters when a key is released anywhere; polling
//! with exponential backoff covers expiries and lost notifications.
//!
//! # Contract
//! The [`gorgon_locking`] contract, across processes. Leases are measured on the database clock
//! (`clock_timestamp()`), so application hosts' clocks do not matter. Fencing tokens come from one
//! sequence shared by all keys of the table: they grow per key and survive restarts. Locks survive
//! the crash of a holder (they expire with the lease) and a restart of PostgreSQL (they are rows).
//! Released rows are deleted; rows of expired holdings are removed by the next acquisition of the
//! key or by [`PostgresLocker::purge_expired`] (also run by `release_all`).
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gorgon_locking::{
    Error, FencingToken, Lease, LockKey, LockOptions, Locker, OwnerId, normalize_keys,
    validate_lease, validate_owner,
};
use serde::Deserialize;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Configuration of a [`PostgresLocker`], deserializable from the application config:
/// `{ "url": "postgres://...", "table": "gorgon_locks" }`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Connection URL, for example `postgres://postgres@127.0.0.1:5432/app`.
    pub url: String,
    /// Table holding the lease rows (a plain identifier: letters, digits, `_`). Processes that
    /// must exclude each other use the same table. Default `gorgon_locks`.
    #[serde(default = "default_table")]
    pub table: String,
    /// Size of the connection pool. Waiters do not hold connections while they wait. Default 5.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// First retry delay of a waiting acquisition, doubled up to `poll_max_ms`. Default 5 ms.
    #[serde(default = "default_poll_min_ms")]
    pub poll_min_ms: u64,
    /// Longest retry delay of a waiting acquisition. Default 200 ms.
    #[serde(default = "default_poll_max_ms")]
    pub poll_max_ms: u64,
    /// LISTEN for releases to wake waiters at once (one extra connection). Default true.
    #[serde(default = "default_listen")]
    pub listen: bool,
}

/// The URL may carry a password: it is shown as `[redacted]`.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &"[redacted]")
            .field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .field("poll_min_ms", &self.poll_min_ms)
            .field("poll_max_ms", &self.poll_max_ms)
            .field("listen", &self.listen)
            .finish()
    }
}

fn default_table() -> String {
    "gorgon_locks".into()
}
fn default_max_connections() -> u32 {
    5
}
fn default_poll_min_ms() -> u64 {
    5
}
fn default_poll_max_ms() -> u64 {
    200
}
fn default_listen() -> bool {
    true
}

impl Options {
    /// Options with the given URL and every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            table: default_table(),
            max_connections: default_max_connections(),
            poll_min_ms: default_poll_min_ms(),
            poll_max_ms: default_poll_max_ms(),
            listen: default_listen(),
        }
    }
}

/// SQL texts for one table, built once after the table name was validated.
struct Statements {
    insert_missing: Arc<str>,
    lock_rows: Arc<str>,
    take: Arc<str>,
    lock_live_rows_of_owner: Arc<str>,
    extend: Arc<str>,
    delete_keys: Arc<str>,
    decrement: Arc<str>,
    lock_all_rows_of_owner: Arc<str>,
    purge_expired: Arc<str>,
    notify: Arc<str>,
}

impl Statements {
    fn new(table: &str) -> Self {
        let live = "expires_at > clock_timestamp()";
        let sql = |text: String| Arc::<str>::from(text);
        Self {
            insert_missing: sql(format!(
                "INSERT INTO {table} (key) SELECT k FROM unnest($1::text[]) AS k ORDER BY k \
                 ON CONFLICT (key) DO NOTHING"
            )),
            lock_rows: sql(format!(
                "SELECT key, owner, {live} AS live FROM {table} \
                 WHERE key = ANY($1) ORDER BY key FOR UPDATE NOWAIT"
            )),
            take: sql(format!(
                "UPDATE {table} AS t SET \
                   fencing_token = CASE WHEN t.owner = $2 AND t.expires_at > c.now \
                     THEN t.fencing_token ELSE nextval('{table}_fencing') END, \
                   holds = CASE WHEN t.owner = $2 AND t.expires_at > c.now \
                     THEN t.holds + 1 ELSE 1 END, \
                   expires_at = CASE WHEN t.owner = $2 AND t.expires_at > c.now \
                     THEN GREATEST(t.expires_at, c.now + $3::float8 * interval '1 millisecond') \
                     ELSE c.now + $3::float8 * interval '1 millisecond' END, \
                   owner = $2 \
                 FROM (SELECT clock_timestamp() AS now) AS c \
                 WHERE t.key = ANY($1) RETURNING t.key, t.fencing_token"
            )),
            lock_live_rows_of_owner: sql(format!(
                "SELECT key, holds FROM {table} \
                 WHERE key = ANY($1) AND owner = $2 AND {live} ORDER BY key FOR UPDATE"
            )),
            extend: sql(format!(
                "UPDATE {table} SET expires_at = \
                   GREATEST(expires_at, clock_timestamp() + $2::float8 * interval '1 millisecond') \
                 WHERE key = ANY($1)"
            )),
            delete_keys: sql(format!("DELETE FROM {table} WHERE key = ANY($1)")),
            decrement: sql(format!(
                "UPDATE {table} SET holds = holds - 1 WHERE key = ANY($1)"
            )),
            lock_all_rows_of_owner: sql(format!(
                "SELECT key, {live} AS live FROM {table} WHERE owner = $1 ORDER BY key FOR UPDATE"
            )),
            purge_expired: sql(format!(
                "DELETE FROM {table} WHERE key IN (SELECT key FROM {table} \
                 WHERE expires_at <= clock_timestamp() ORDER BY key FOR UPDATE SKIP LOCKED)"
            )),
            notify: sql(format!("SELECT pg_notify('{table}_released', '')")),
        }
    }
}

/// A [`Locker`] backed by PostgreSQL lease rows. Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct PostgresLocker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    sql: Statements,
    released: Arc<Notify>,
    poll_min: Duration,
    poll_max: Duration,
    listener: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

/// One acquisition attempt's outcome.
enum Attempt {
    Acquired(Vec<(LockKey, FencingToken)>),
    Busy,
}

/// Errors after which an acquisition attempt counts as "busy" and is retried: a row locked by a
/// concurrent attempt (`lock_not_available`, from `FOR UPDATE NOWAIT`), `deadlock_detected`,
/// `serialization_failure`.
fn is_transient(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| matches!(code.as_ref(), "55P03" | "40P01" | "40001"))
}

fn key_strings(keys: &[LockKey]) -> Vec<String> {
    keys.iter().map(|key| key.as_str().to_owned()).collect()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl PostgresLocker {
    /// Connects a new pool from `options`, creates the table if needed, and starts the listener.
    pub async fn connect(options: &Options) -> Result<Self, Error> {
        validate_options(options)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .connect(&options.url)
            .await
            .map_err(|error| Error::backend("connect", &[], error))?;
        Self::with_pool(pool, options).await
    }

    /// Uses an existing pool for the lock rows (`options.url` and `max_connections` are then
    /// ignored). With `options.listen`, one more connection, outside that pool, LISTENs.
    pub async fn with_pool(pool: PgPool, options: &Options) -> Result<Self, Error> {
        validate_options(options)?;
        migrate(&pool, &options.table).await?;
        let released = Arc::new(Notify::new());
        let listener = if options.listen {
            // The listener gets its own one-connection pool, outside the pool of attempts.
            let listener_pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with((*pool.connect_options()).clone());
            let mut listener = PgListener::connect_with(&listener_pool)
                .await
                .map_err(|error| Error::backend("listen", &[], error))?;
            listener
                .listen(&format!("{}_released", options.table))
                .await
                .map_err(|error| Error::backend("listen", &[], error))?;
            Some(tokio::spawn(wake_on_release(listener, released.clone())))
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                sql: Statements::new(&options.table),
                released,
                poll_min: Duration::from_millis(options.poll_min_ms.max(1)),
                poll_max: Duration::from_millis(options.poll_max_ms.max(options.poll_min_ms)),
                listener,
            }),
        })
    }

    /// The pool this locker uses.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Deletes the rows of expired holdings (skipping rows another transaction has locked).
    /// Returns how many were deleted.
    pub async fn purge_expired(&self) -> Result<u64, Error> {
        let done = sqlx::query(AssertSqlSafe(self.inner.sql.purge_expired.clone()))
            .execute(&self.inner.pool)
            .await
            .map_err(|error| Error::backend("purge_expired", &[], error))?;
        Ok(done.rows_affected())
    }

    async fn begin(
        &self,
        operation: &'static str,
        keys: &[LockKey],
    ) -> Result<Transaction<'static, Postgres>, Error> {
        self.inner
            .pool
            .begin()
            .await
            .map_err(|error| Error::backend(operation, keys, error))
    }

    async fn try_acquire(
        &self,
        keys: &[LockKey],
        owner: &OwnerId,
        lease: Duration,
    ) -> Result<Attempt, sqlx::Error> {
        let sql = &self.inner.sql;
        let names = key_strings(keys);
        let mut tx = self.inner.pool.begin().await?;
        sqlx::query(AssertSqlSafe(sql.insert_missing.clone()))
            .bind(&names)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(AssertSqlSafe(sql.lock_rows.clone()))
            .bind(&names)
            .fetch_all(&mut *tx)
            .await?;
        let mut busy = rows.len() != keys.len(); // a row released and deleted meanwhile: retry
        for row in &rows {
            let live: bool = row.try_get("live")?;
            let holder: Option<String> = row.try_get("owner")?;
            if live && holder.as_deref() != Some(owner.as_str()) {
                busy = true;
            }
        }
        if busy {
            tx.rollback().await?;
            return Ok(Attempt::Busy);
        }
        let taken = sqlx::query(AssertSqlSafe(sql.take.clone()))
            .bind(&names)
            .bind(owner.as_str())
            .bind(millis(lease))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut tokens = Vec::with_capacity(taken.len());
        for row in taken {
            let key: String = row.try_get("key")?;
            let token: i64 = row.try_get("fencing_token")?;
            let token = u64::try_from(token).map_err(|error| sqlx::Error::Decode(error.into()))?;
            tokens.push((LockKey::new(key), FencingToken::new(token)));
        }
        tokens.sort();
        Ok(Attempt::Acquired(tokens))
    }

    async fn notify_released(
        &self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(self.inner.sql.notify.clone()))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

fn validate_options(options: &Options) -> Result<(), Error> {
    let table = &options.table;
    let valid = !table.is_empty()
        && table.len() <= 48
        && table.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(Error::InvalidRequest {
            operation: "connect",
            reason: format!(
                "table name {table:?} must be 1-48 ASCII letters, digits or '_', not starting with a digit"
            ),
        });
    }
    if options.max_connections == 0 {
        return Err(Error::InvalidRequest {
            operation: "connect",
            reason: "max_connections must be at least 1".into(),
        });
    }
    Ok(())
}

/// Creates the sequence, table and indexes if they are missing. Serialized by a transaction-level
/// advisory lock so concurrent starts do not race on `CREATE ... IF NOT EXISTS`.
async fn migrate(pool: &PgPool, table: &str) -> Result<(), Error> {
    let fail = |error: sqlx::Error| Error::backend("migrate", &[], error);
    let mut tx = pool.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('gorgon-locking-postgres migrate'))")
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    let statements = [
        format!("CREATE SEQUENCE IF NOT EXISTS {table}_fencing"),
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
               key text PRIMARY KEY, \
               owner text, \
               holds integer NOT NULL DEFAULT 0, \
               fencing_token bigint NOT NULL DEFAULT 0, \
               expires_at timestamptz NOT NULL DEFAULT '-infinity')"
        ),
        format!("CREATE INDEX IF NOT EXISTS {table}_owner ON {table} (owner)"),
        format!("CREATE INDEX IF NOT EXISTS {table}_expires_at ON {table} (expires_at)"),
    ];
    for statement in statements {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)
}

/// Wakes this process's waiters whenever any process releases a key.
async fn wake_on_release(mut listener: PgListener, released: Arc<Notify>) {
    loop {
        match listener.recv().await {
            Ok(_) => released.notify_waiters(),
            Err(error) => {
                tracing::warn!(%error, "lock release listener failed; polling until it reconnects");
                released.notify_waiters();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A random delay in `[0, max)`, to spread retries of waiters that woke together.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(random % max_nanos)
}

#[async_trait]
impl Locker for PostgresLocker {
    async fn acquire(
        &self,
        keys: &[LockKey],
        owner: &OwnerId,
        options: &LockOptions,
    ) -> Result<Lease, Error> {
        let keys = normalize_keys("acquire", keys)?;
        validate_owner("acquire", owner)?;
        validate_lease("acquire", options.lease)?;
        let started = Instant::now();
        let deadline = started + options.wait_timeout;
        let mut delay = self.inner.poll_min;
        loop {
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_acquire(&keys, owner, options.lease).await {
                Ok(Attempt::Acquired(tokens)) => {
                    return Ok(Lease::new(owner.clone(), tokens, options.lease));
                }
                Ok(Attempt::Busy) => {}
                Err(error) if is_transient(&error) => {
                    tracing::debug!(%error, ?keys, "transient conflict while acquiring; retrying");
                }
                Err(error) => return Err(Error::backend("acquire", &keys, error)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::WaitTimeout {
                    operation: "acquire",
                    keys,
                    owner: owner.clone(),
                    waited: started.elapsed(),
                });
            }
            let sleep = (delay + jitter(delay)).min(deadline - now);
            tokio::select! {
                () = released => {}
                () = tokio::time::sleep(sleep) => {}
            }
            delay = (delay * 2).min(self.inner.poll_max);
        }
    }

    async fn renew(&self, keys: &[LockKey], owner: &OwnerId, lease: Duration) -> Result<(), Error> {
        let keys = normalize_keys("renew", keys)?;
        validate_owner("renew", owner)?;
        validate_lease("renew", lease)?;
        let fail = |error: sqlx::Error| Error::backend("renew", &keys, error);
        let sql = &self.inner.sql;
        let names = key_strings(&keys);
        let mut tx = self.begin("renew", &keys).await?;
        let held = sqlx::query(AssertSqlSafe(sql.lock_live_rows_of_owner.clone()))
            .bind(&names)
            .bind(owner.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        if held.len() != keys.len() {
            tx.rollback().await.map_err(fail)?;
            return Err(Error::LeaseLost {
                operation: "renew",
                keys,
                owner: owner.clone(),
            });
        }
        sqlx::query(AssertSqlSafe(sql.extend.clone()))
            .bind(&names)
            .bind(millis(lease))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn release(&self, keys: &[LockKey], owner: &OwnerId) -> Result<bool, Error> {
        let keys = normalize_keys("release", keys)?;
        validate_owner("release", owner)?;
        let fail = |error: sqlx::Error| Error::backend("release", &keys, error);
        let sql = &self.inner.sql;
        let mut tx = self.begin("release", &keys).await?;
        let held = sqlx::query(AssertSqlSafe(sql.lock_live_rows_of_owner.clone()))
            .bind(key_strings(&keys))
            .bind(owner.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        let mut freed = Vec::new();
        let mut still_held = Vec::new();
        for row in &held {
            let key: String = row.try_get("key").map_err(fail)?;
            let holds: i32 = row.try_get("holds").map_err(fail)?;
            if holds <= 1 {
                freed.push(key);
            } else {
                still_held.push(key);
            }
        }
        if !freed.is_empty() {
            sqlx::query(AssertSqlSafe(sql.delete_keys.clone()))
                .bind(&freed)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            self.notify_released(&mut tx).await.map_err(fail)?;
        }
        if !still_held.is_empty() {
            sqlx::query(AssertSqlSafe(sql.decrement.clone()))
                .bind(&still_held)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        if !freed.is_empty() {
            self.inner.released.notify_waiters();
        }
        Ok(held.len() == keys.len())
    }

    async fn release_all(&self, owner: &OwnerId) -> Result<usize, Error> {
        validate_owner("release_all", owner)?;
        let fail = |error: sqlx::Error| Error::backend("release_all", &[], error);
        let sql = &self.inner.sql;
        let mut tx = self.begin("release_all", &[]).await?;
        let rows = sqlx::query(AssertSqlSafe(sql.lock_all_rows_of_owner.clone()))
            .bind(owner.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        let mut keys = Vec::with_capacity(rows.len());
        let mut freed = 0;
        for row in &rows {
            keys.push(row.try_get::<String, _>("key").map_err(fail)?);
            if row.try_get::<bool, _>("live").map_err(fail)? {
                freed += 1;
            }
        }
        if !keys.is_empty() {
            sqlx::query(AssertSqlSafe(sql.delete_keys.clone()))
                .bind(&keys)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            self.notify_released(&mut tx).await.map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        if freed > 0 {
            self.inner.released.notify_waiters();
        }
        if let Err(error) = self.purge_expired().await {
            tracing::warn!(%error, "purging expired lock rows failed");
        }
        Ok(freed)
    }
}
