//! The database handle: one type over a PostgreSQL or a SQLite pool, and transactions that the
//! services called inside them join without being told.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_query::{PostgresQueryBuilder, SqliteQueryBuilder};
use sea_query_sqlx::{SqlxBinder, SqlxValues};
use serde_json::Value as Json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection};
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::model::Kind;
use crate::value;

/// Which SQL dialect a [`Db`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL (production).
    Postgres,
    /// SQLite (development, tests, single-machine deployments).
    Sqlite,
}

/// How to open a [`Db`].
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// The most connections the pool opens (default 10; an in-memory SQLite database has one).
    pub max_connections: u32,
    /// How long a query waits for a free connection before failing (default 30 s).
    pub acquire_timeout: Duration,
    /// How long a SQLite statement waits for another writer to finish (default 10 s).
    pub busy_timeout: Duration,
    /// PostgreSQL only: the schema every connection works in (created when missing), so that
    /// several applications or tests share one database without meeting. Default: the
    /// database's own (`public`).
    pub schema: Option<String>,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(10),
            schema: None,
        }
    }
}

/// A handle on the application's database, PostgreSQL or SQLite; cheap to clone.
///
/// Every module service holds one; they all hold the same, so a [`Db::transaction`] opened by a
/// caller is joined by every service call made inside it.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Statements sent, for tests and metrics.
    statements: AtomicU64,
}

enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// An open transaction on one connection. `None` once committed or rolled back.
enum Conn {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

type Shared = Arc<Mutex<Option<Conn>>>;

tokio::task_local! {
    /// The transactions open in this task, one per database at most.
    static OPEN: Arc<[(usize, Shared)]>;
}

static SAVEPOINTS: AtomicU64 = AtomicU64::new(0);

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dialect", &self.dialect())
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens `postgres://…` or `sqlite:…` (`sqlite://gorgon.db`, `sqlite::memory:`) with default
    /// options. A SQLite file is created when missing, in WAL mode, with foreign keys on.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &DbOptions::default()).await
    }

    /// Opens a database with these options.
    pub async fn connect_with(url: &str, options: &DbOptions) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut connect = PgConnectOptions::from_str(url).map_err(Error::Database)?;
            if let Some(schema) = &options.schema {
                if schema.is_empty()
                    || !schema
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(Error::invalid("schema", "letters, digits and _ only"));
                }
                let mut conn = sqlx::PgConnection::connect_with(&connect)
                    .await
                    .map_err(Error::Database)?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
                )))
                .execute(&mut conn)
                .await
                .map_err(Error::Database)?;
                conn.close().await.map_err(Error::Database)?;
                connect = connect.options([("search_path", schema.as_str())]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await
                .map_err(Error::Database)?;
            Ok(Self::from_postgres(pool))
        } else if url.starts_with("sqlite:") {
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let mut connect = SqliteConnectOptions::from_str(url)
                .map_err(Error::Database)?
                .create_if_missing(true)
                .foreign_keys(true)
                .busy_timeout(options.busy_timeout)
                // `$like` is case-sensitive on both databases; `$ilike` is the insensitive one.
                .pragma("case_sensitive_like", "ON");
            if !memory {
                connect = connect
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal);
            }
            let mut pool = SqlitePoolOptions::new().acquire_timeout(options.acquire_timeout);
            pool = if memory {
                // Every connection to `:memory:` is its own database: keep exactly one, forever.
                pool.max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
            } else {
                pool.max_connections(options.max_connections)
            };
            let pool = pool.connect_with(connect).await.map_err(Error::Database)?;
            Ok(Self::from_sqlite(pool))
        } else {
            Err(Error::UnsupportedUrl(redact(url)))
        }
    }

    /// Wraps a PostgreSQL pool the application already has.
    pub fn from_postgres(pool: PgPool) -> Self {
        Self::with(Pool::Postgres(pool))
    }

    /// Wraps a SQLite pool the application already has.
    pub fn from_sqlite(pool: SqlitePool) -> Self {
        Self::with(Pool::Sqlite(pool))
    }

    fn with(pool: Pool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                statements: AtomicU64::new(0),
            }),
        }
    }

    /// The dialect this database speaks.
    pub fn dialect(&self) -> Dialect {
        match self.inner.pool {
            Pool::Postgres(_) => Dialect::Postgres,
            Pool::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// The PostgreSQL pool, for code that needs sqlx directly.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.inner.pool {
            Pool::Postgres(pool) => Some(pool),
            Pool::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, for code that needs sqlx directly.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.inner.pool {
            Pool::Sqlite(pool) => Some(pool),
            Pool::Postgres(_) => None,
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match &self.inner.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }

    /// Runs `work` in one database transaction: every statement that any service issues on this
    /// database while `work` runs, in this task, belongs to it. `Ok` commits; `Err` (or a panic,
    /// or dropping the future) rolls all of it back.
    ///
    /// Called inside another transaction on the same database, it joins it through a savepoint:
    /// its `Err` undoes only its own writes, and nothing is committed before the outermost
    /// transaction commits. Work spawned onto other tasks runs outside the transaction.
    ///
    /// ```ignore
    /// db.transaction(|| async {
    ///     loyalty.deduct_points(&customer, 100).await?;
    ///     orders.update(&order, json!({ "status": "paid_with_points" })).await?;
    ///     Ok::<_, gorgon_data::Error>(())
    /// }).await?;
    /// ```
    pub async fn transaction<T, E, F, Fut>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        if let Some(open) = self.open() {
            let name = format!(
                "gorgon_savepoint_{}",
                SAVEPOINTS.fetch_add(1, Ordering::Relaxed)
            );
            self.script_on(&open, &format!("SAVEPOINT {name}")).await?;
            let result = work().await;
            let end = match result {
                Ok(_) => format!("RELEASE SAVEPOINT {name}"),
                Err(_) => format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
            };
            self.script_on(&open, &end).await?;
            return result;
        }
        let conn = match &self.inner.pool {
            Pool::Postgres(pool) => Conn::Postgres(pool.begin().await.map_err(Error::Database)?),
            // IMMEDIATE takes the write lock at once, so two transactions never both read and
            // then fail to upgrade (SQLite's "database is locked" in the middle of a transaction).
            Pool::Sqlite(pool) => Conn::Sqlite(
                pool.begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(Error::Database)?,
            ),
        };
        let shared: Shared = Arc::new(Mutex::new(Some(conn)));
        let mut open: Vec<(usize, Shared)> =
            OPEN.try_with(|open| open.to_vec()).unwrap_or_default();
        open.push((self.id(), shared.clone()));
        let result = OPEN.scope(open.into(), work()).await;
        let conn = shared.lock().await.take();
        match (result, conn) {
            (Ok(value), Some(Conn::Postgres(tx))) => {
                tx.commit().await.map_err(|e| Error::from_sqlx("", e))?;
                Ok(value)
            }
            (Ok(value), Some(Conn::Sqlite(tx))) => {
                tx.commit().await.map_err(|e| Error::from_sqlx("", e))?;
                Ok(value)
            }
            (Ok(_), None) => Err(Error::TransactionClosed.into()),
            (Err(error), conn) => {
                let rolled_back = match conn {
                    Some(Conn::Postgres(tx)) => tx.rollback().await,
                    Some(Conn::Sqlite(tx)) => tx.rollback().await,
                    None => Ok(()),
                };
                if let Err(rollback) = rolled_back {
                    tracing::warn!(%rollback, "rolling back a failed transaction failed; the connection is dropped");
                }
                Err(error)
            }
        }
    }

    /// Whether the calling task is inside a [`Db::transaction`] on this database.
    pub fn in_transaction(&self) -> bool {
        self.open().is_some()
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    fn open(&self) -> Option<Shared> {
        let id = self.id();
        OPEN.try_with(|open| {
            open.iter()
                .find(|(db, _)| *db == id)
                .map(|(_, conn)| conn.clone())
        })
        .ok()
        .flatten()
    }

    /// How many statements this database handle (and its clones) has sent: what a test counts
    /// to check that a read is one statement.
    pub fn statements(&self) -> u64 {
        self.inner.statements.load(Ordering::Relaxed)
    }

    fn build<S: SqlxBinder>(&self, statement: &S) -> (String, SqlxValues) {
        self.inner.statements.fetch_add(1, Ordering::Relaxed);
        match self.dialect() {
            Dialect::Postgres => statement.build_sqlx(PostgresQueryBuilder),
            Dialect::Sqlite => statement.build_sqlx(SqliteQueryBuilder),
        }
    }

    /// Runs a statement built with [`sea_query`](crate::sql) and returns the rows it yields,
    /// each as one JSON value per column, read as `kinds` says (one kind per selected column).
    /// `entity` names the model in errors.
    pub async fn fetch<S: SqlxBinder>(
        &self,
        entity: &'static str,
        statement: &S,
        kinds: &[Kind],
    ) -> Result<Vec<Vec<Json>>> {
        let (sql, values) = self.build(statement);
        tracing::trace!(%sql, "fetch");
        let sql = AssertSqlSafe(sql);
        let map = |e| Error::from_sqlx(entity, e);
        if let Some(open) = self.open() {
            let mut guard = open.lock().await;
            match guard.as_mut().ok_or(Error::TransactionClosed)? {
                Conn::Postgres(tx) => {
                    let rows = sqlx::query_with(sql, values).fetch_all(&mut **tx).await;
                    decode_pg(&rows.map_err(map)?, kinds)
                }
                Conn::Sqlite(tx) => {
                    let rows = sqlx::query_with(sql, values).fetch_all(&mut **tx).await;
                    decode_sqlite(&rows.map_err(map)?, kinds)
                }
            }
        } else {
            match &self.inner.pool {
                Pool::Postgres(pool) => {
                    let rows = sqlx::query_with(sql, values).fetch_all(pool).await;
                    decode_pg(&rows.map_err(map)?, kinds)
                }
                Pool::Sqlite(pool) => {
                    let rows = sqlx::query_with(sql, values).fetch_all(pool).await;
                    decode_sqlite(&rows.map_err(map)?, kinds)
                }
            }
        }
    }

    /// Runs a statement that returns no rows; returns how many rows it changed.
    pub async fn execute<S: SqlxBinder>(&self, entity: &'static str, statement: &S) -> Result<u64> {
        let (sql, values) = self.build(statement);
        tracing::trace!(%sql, "execute");
        let map = |e| Error::from_sqlx(entity, e);
        if let Some(open) = self.open() {
            let mut guard = open.lock().await;
            match guard.as_mut().ok_or(Error::TransactionClosed)? {
                Conn::Postgres(tx) => Ok(sqlx::query_with(AssertSqlSafe(sql), values)
                    .execute(&mut **tx)
                    .await
                    .map_err(map)?
                    .rows_affected()),
                Conn::Sqlite(tx) => Ok(sqlx::query_with(AssertSqlSafe(sql), values)
                    .execute(&mut **tx)
                    .await
                    .map_err(map)?
                    .rows_affected()),
            }
        } else {
            match &self.inner.pool {
                Pool::Postgres(pool) => Ok(sqlx::query_with(AssertSqlSafe(sql), values)
                    .execute(pool)
                    .await
                    .map_err(map)?
                    .rows_affected()),
                Pool::Sqlite(pool) => Ok(sqlx::query_with(AssertSqlSafe(sql), values)
                    .execute(pool)
                    .await
                    .map_err(map)?
                    .rows_affected()),
            }
        }
    }

    /// Runs SQL text written by the application (a migration, a `CREATE TABLE`), which may hold
    /// several statements, in the open transaction if there is one. Never pass it input.
    pub async fn run_script(&self, sql: &str) -> Result<()> {
        match self.open() {
            Some(open) => self.script_on(&open, sql).await,
            None => {
                let sql = AssertSqlSafe(sql.to_owned());
                match &self.inner.pool {
                    Pool::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
                    Pool::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
                }
                .map_err(Error::Database)
            }
        }
    }

    async fn script_on(&self, open: &Shared, sql: &str) -> Result<()> {
        let sql = AssertSqlSafe(sql.to_owned());
        let mut guard = open.lock().await;
        match guard.as_mut().ok_or(Error::TransactionClosed)? {
            Conn::Postgres(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await.map(drop),
            Conn::Sqlite(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await.map(drop),
        }
        .map_err(Error::Database)
    }
}

fn decode_pg(rows: &[PgRow], kinds: &[Kind]) -> Result<Vec<Vec<Json>>> {
    rows.iter()
        .map(|row| {
            kinds
                .iter()
                .enumerate()
                .map(|(index, kind)| value::read_pg(row, index, *kind))
                .collect()
        })
        .collect()
}

fn decode_sqlite(rows: &[SqliteRow], kinds: &[Kind]) -> Result<Vec<Vec<Json>>> {
    rows.iter()
        .map(|row| {
            kinds
                .iter()
                .enumerate()
                .map(|(index, kind)| value::read_sqlite(row, index, *kind))
                .collect()
        })
        .collect()
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
