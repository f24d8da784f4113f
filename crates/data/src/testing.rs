//! Fresh databases for tests: a SQLite file in a temporary folder, or a new schema in the
//! PostgreSQL at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

use crate::db::{Db, DbOptions};
use crate::error::Result;

/// The PostgreSQL tests use: `DATABASE_URL`, or the local `test` database.
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database for one test, and what keeps it alive.
pub struct TestDb {
    /// The database.
    pub db: Db,
    /// `"sqlite"` or `"postgres"`, for messages.
    pub name: &'static str,
    url: String,
    options: DbOptions,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A second, independent handle on the same database (as another process would have).
    pub async fn reconnect(&self) -> Result<Db> {
        Db::connect_with(&self.url, &self.options).await
    }

    /// The URL and options that open this database (a process started by the test uses them).
    pub fn url(&self) -> (&str, &DbOptions) {
        (&self.url, &self.options)
    }
}

/// A new SQLite file in a temporary folder, removed when the [`TestDb`] drops.
pub async fn sqlite() -> Result<TestDb> {
    let dir = tempfile::tempdir().map_err(|e| crate::Error::invalid("tempdir", e.to_string()))?;
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let options = DbOptions::default();
    Ok(TestDb {
        db: Db::connect_with(&url, &options).await?,
        name: "sqlite",
        url,
        options,
        _dir: Some(dir),
    })
}

/// A new, empty schema in the test PostgreSQL (left behind; names never repeat).
pub async fn postgres() -> Result<TestDb> {
    let schema = format!("t_{}", crate::id::generate("").to_lowercase());
    let options = DbOptions {
        schema: Some(schema),
        max_connections: 5,
        ..DbOptions::default()
    };
    let url = postgres_url();
    Ok(TestDb {
        db: Db::connect_with(&url, &options).await?,
        name: "postgres",
        url,
        options,
        _dir: None,
    })
}

/// One fresh database of each kind: SQLite, then PostgreSQL.
pub async fn each() -> Result<Vec<TestDb>> {
    Ok(vec![sqlite().await?, postgres().await?])
}
