//! Per-module migrations: one SQL file per dialect, applied in order, tracked per module in
//! `gorgon_migrations` with a batch number, and reverted a batch at a time.
//!
//! A module keeps `migrations/postgres/NNNN_name.sql` and `migrations/sqlite/NNNN_name.sql` and
//! lists them with [`migration!`](crate::migration). A file may end with a `-- gorgon:down`
//! line followed by the SQL that undoes it; without one, the migration cannot be rolled back.

use sea_query::{Expr, ExprTrait, Func, Query};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::db::{Db, Dialect};
use crate::error::{Error, Result};
use crate::model::Kind;
use crate::value;

/// The line that separates a migration's SQL from the SQL that undoes it.
pub const DOWN_MARKER: &str = "-- gorgon:down";

/// The table that records applied migrations.
pub const TABLE: &str = "gorgon_migrations";

/// A fixed key for PostgreSQL's advisory lock, so two processes never apply the same migration.
const LOCK_KEY: i64 = 0x676f_7267_6f6e;

/// One migration of a module: its name and its SQL for each dialect.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The name, which orders the module's migrations (`0001_create_brand`).
    pub name: &'static str,
    /// The PostgreSQL file's text.
    pub postgres: &'static str,
    /// The SQLite file's text.
    pub sqlite: &'static str,
}

/// A migration from `migrations/postgres/NAME.sql` and `migrations/sqlite/NAME.sql` under the
/// calling crate, embedded at compile time.
///
/// ```ignore
/// pub const MIGRATIONS: &[Migration] = &[migration!("0001_create_brand")];
/// ```
#[macro_export]
macro_rules! migration {
    ($name:literal) => {
        $crate::Migration {
            name: $name,
            postgres: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/migrations/postgres/",
                $name,
                ".sql"
            )),
            sqlite: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/migrations/sqlite/",
                $name,
                ".sql"
            )),
        }
    };
}

impl Migration {
    fn text(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Postgres => self.postgres,
            Dialect::Sqlite => self.sqlite,
        }
    }

    /// The SQL that applies it.
    pub fn up(&self, dialect: Dialect) -> &'static str {
        let text = self.text(dialect);
        text.find(DOWN_MARKER).map_or(text, |at| &text[..at])
    }

    /// The SQL that undoes it, if the file has a down section.
    pub fn down(&self, dialect: Dialect) -> Option<&'static str> {
        let text = self.text(dialect);
        let at = text.find(DOWN_MARKER)?;
        let down = text[at + DOWN_MARKER.len()..].trim();
        (!down.is_empty()).then_some(down)
    }

    fn checksum(&self, dialect: Dialect) -> String {
        Sha256::digest(self.up(dialect).trim().as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// Where one migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Applied in this batch, at this time, and unchanged since.
    Applied {
        /// The batch (one `migrate` run) that applied it.
        batch: i64,
        /// When (RFC 3339).
        at: String,
    },
    /// Applied, but its file has changed since: the database may not match it.
    Changed {
        /// The batch that applied it.
        batch: i64,
    },
    /// Not applied yet.
    Pending,
    /// Recorded as applied, but the module no longer has it.
    Unknown {
        /// The batch that applied it.
        batch: i64,
    },
}

/// One line of [`Migrator::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The module.
    pub module: String,
    /// The migration.
    pub name: String,
    /// Where it stands.
    pub state: State,
}

/// Applies and reverts the migrations of a set of modules on one database.
#[derive(Debug, Clone)]
pub struct Migrator {
    db: Db,
    modules: Vec<(String, &'static [Migration])>,
}

impl Migrator {
    /// A migrator for `db` with no modules yet.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            modules: Vec::new(),
        }
    }

    /// Adds a module's migrations; modules are migrated in the order added.
    pub fn module(mut self, name: impl Into<String>, migrations: &'static [Migration]) -> Self {
        self.modules.push((name.into(), migrations));
        self
    }

    async fn ensure_table(&self) -> Result<()> {
        // Two processes creating the table at once collide in PostgreSQL's catalog even with
        // IF NOT EXISTS: take the migration lock first.
        self.db
            .transaction(|| async {
                self.lock().await?;
                self.create_table().await
            })
            .await
    }

    /// Serializes migrators across processes (PostgreSQL; SQLite's write lock already does).
    async fn lock(&self) -> Result<()> {
        if self.db.dialect() == Dialect::Postgres {
            self.db
                .run_script(&format!("SELECT pg_advisory_xact_lock({LOCK_KEY})"))
                .await?;
        }
        Ok(())
    }

    async fn create_table(&self) -> Result<()> {
        self.db
            .run_script(&format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (module TEXT NOT NULL, name TEXT NOT NULL, \
                 batch BIGINT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL, \
                 PRIMARY KEY (module, name))"
            ))
            .await
    }

    /// Every applied migration: (module, name, batch, checksum, applied_at).
    async fn applied(&self) -> Result<Vec<(String, String, i64, String, String)>> {
        self.ensure_table().await?;
        let mut query = Query::select();
        query
            .columns(["module", "name", "batch", "checksum", "applied_at"])
            .from(TABLE)
            .order_by("batch", sea_query::Order::Asc)
            .order_by("name", sea_query::Order::Asc);
        let kinds = [
            Kind::Text,
            Kind::Text,
            Kind::Integer,
            Kind::Text,
            Kind::Text,
        ];
        let rows = self.db.fetch("Migration", &query, &kinds).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let text = |i: usize| row[i].as_str().unwrap_or_default().to_owned();
                (
                    text(0),
                    text(1),
                    row[2].as_i64().unwrap_or(0),
                    text(3),
                    text(4),
                )
            })
            .collect())
    }

    /// Where every migration of every module stands, in the order they apply, then those the
    /// database has but the modules do not.
    pub async fn status(&self) -> Result<Vec<Status>> {
        let applied = self.applied().await?;
        let dialect = self.db.dialect();
        let mut lines = Vec::new();
        for (module, migrations) in &self.modules {
            for migration in *migrations {
                let found = applied
                    .iter()
                    .find(|(m, n, ..)| m == module && n == migration.name);
                let state = match found {
                    None => State::Pending,
                    Some((_, _, batch, checksum, at)) => {
                        if *checksum == migration.checksum(dialect) {
                            State::Applied {
                                batch: *batch,
                                at: at.clone(),
                            }
                        } else {
                            State::Changed { batch: *batch }
                        }
                    }
                };
                lines.push(Status {
                    module: module.clone(),
                    name: migration.name.to_owned(),
                    state,
                });
            }
        }
        for (module, name, batch, ..) in &applied {
            let known = self.modules.iter().any(|(m, migrations)| {
                m == module && migrations.iter().any(|migration| migration.name == name)
            });
            // Modules not registered here are not this migrator's business.
            if !known && self.modules.iter().any(|(m, _)| m == module) {
                lines.push(Status {
                    module: module.clone(),
                    name: name.clone(),
                    state: State::Unknown { batch: *batch },
                });
            }
        }
        Ok(lines)
    }

    /// The migrations not applied yet, in the order they will apply.
    pub async fn pending(&self) -> Result<Vec<Status>> {
        Ok(self
            .status()
            .await?
            .into_iter()
            .filter(|status| status.state == State::Pending)
            .collect())
    }

    /// Applies every pending migration, each in its own transaction, as one batch; calls
    /// `applied` after each. Refuses to start when an applied migration's file has changed.
    pub async fn migrate(&self, mut applied: impl FnMut(&Status)) -> Result<Vec<Status>> {
        let status = self.status().await?;
        if let Some(changed) = status
            .iter()
            .find(|s| matches!(s.state, State::Changed { .. }))
        {
            return Err(Error::Migration {
                module: changed.module.clone(),
                name: changed.name.clone(),
                reason: "its file changed after it was applied; restore the file and add a new migration instead".to_owned(),
            });
        }
        let batch = status
            .iter()
            .filter_map(|s| match s.state {
                State::Applied { batch, .. }
                | State::Changed { batch }
                | State::Unknown { batch } => Some(batch),
                State::Pending => None,
            })
            .max()
            .unwrap_or(0)
            + 1;
        let dialect = self.db.dialect();
        let mut done = Vec::new();
        for line in status.into_iter().filter(|s| s.state == State::Pending) {
            let migration = self.find(&line.module, &line.name)?;
            let module = line.module.clone();
            let applied_now = self
                .db
                .transaction(|| async {
                    self.lock().await?;
                    // Another process may have applied it while this one waited.
                    if self.is_applied(&module, migration.name).await? {
                        return Ok::<_, Error>(false);
                    }
                    self.db
                        .run_script(migration.up(dialect))
                        .await
                        .map_err(|error| Error::Migration {
                            module: module.clone(),
                            name: migration.name.to_owned(),
                            reason: error.to_string(),
                        })?;
                    let mut insert = Query::insert();
                    insert
                        .into_table(TABLE)
                        .columns(["module", "name", "batch", "checksum", "applied_at"])
                        .values([
                            Expr::val(module.clone()),
                            Expr::val(migration.name),
                            Expr::val(batch),
                            Expr::val(migration.checksum(dialect)),
                            Expr::val(value::format_timestamp(&value::now())),
                        ])
                        .map_err(|e| Error::invalid("migration", e.to_string()))?;
                    self.db.execute("Migration", &insert).await?;
                    Ok(true)
                })
                .await?;
            if applied_now {
                let line = Status {
                    module,
                    name: migration.name.to_owned(),
                    state: State::Applied {
                        batch,
                        at: value::format_timestamp(&value::now()),
                    },
                };
                applied(&line);
                done.push(line);
            }
        }
        Ok(done)
    }

    /// Reverts the last batch applied to `module`, newest first, each in its own transaction;
    /// calls `reverted` after each. A migration without a down section stops it with an error.
    pub async fn rollback(
        &self,
        module: &str,
        mut reverted: impl FnMut(&Status),
    ) -> Result<Vec<Status>> {
        if !self.modules.iter().any(|(m, _)| m == module) {
            let known: Vec<&str> = self.modules.iter().map(|(m, _)| m.as_str()).collect();
            return Err(Error::Migration {
                module: module.to_owned(),
                name: String::new(),
                reason: format!("no such module; the modules are {}", known.join(", ")),
            });
        }
        let applied = self.applied().await?;
        let Some(last) = applied
            .iter()
            .filter(|(m, ..)| m == module)
            .map(|(_, _, batch, ..)| *batch)
            .max()
        else {
            return Ok(Vec::new());
        };
        let mut names: Vec<&String> = applied
            .iter()
            .filter(|(m, _, batch, ..)| m == module && *batch == last)
            .map(|(_, name, ..)| name)
            .collect();
        names.sort();
        names.reverse();
        let dialect = self.db.dialect();
        let mut done = Vec::new();
        for name in names {
            let migration = self.find(module, name)?;
            let down = migration.down(dialect).ok_or_else(|| Error::Migration {
                module: module.to_owned(),
                name: name.clone(),
                reason: format!("it has no `{DOWN_MARKER}` section, so it cannot be reverted"),
            })?;
            self.db
                .transaction(|| async {
                    self.db
                        .run_script(down)
                        .await
                        .map_err(|error| Error::Migration {
                            module: module.to_owned(),
                            name: name.clone(),
                            reason: error.to_string(),
                        })?;
                    let mut delete = Query::delete();
                    delete
                        .from_table(TABLE)
                        .and_where(Expr::col("module").eq(module))
                        .and_where(Expr::col("name").eq(name.as_str()));
                    self.db.execute("Migration", &delete).await?;
                    Ok::<_, Error>(())
                })
                .await?;
            let line = Status {
                module: module.to_owned(),
                name: name.clone(),
                state: State::Pending,
            };
            reverted(&line);
            done.push(line);
        }
        Ok(done)
    }

    fn find(&self, module: &str, name: &str) -> Result<&'static Migration> {
        self.modules
            .iter()
            .filter(|(m, _)| m == module)
            .flat_map(|(_, migrations)| migrations.iter())
            .find(|migration| migration.name == name)
            .ok_or_else(|| Error::Migration {
                module: module.to_owned(),
                name: name.to_owned(),
                reason: "the module no longer has this migration".to_owned(),
            })
    }

    async fn is_applied(&self, module: &str, name: &str) -> Result<bool> {
        let mut query = Query::select();
        query
            .expr(Func::count(Expr::col("name")))
            .from(TABLE)
            .and_where(Expr::col("module").eq(module))
            .and_where(Expr::col("name").eq(name));
        let rows = self.db.fetch("Migration", &query, &[Kind::Integer]).await?;
        Ok(rows
            .first()
            .and_then(|row| row.first())
            .and_then(Json::as_i64)
            .unwrap_or(0)
            > 0)
    }
}
