//! Three scheduler instances on PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): each with its own store and locker connections to
//! one test's schema and lock table, which the test drops at its end.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::Backend;
use gorgon_locking::Locker;
use gorgon_locking_postgres::PostgresLocker;
use gorgon_orchestration::Store;
use gorgon_store_postgres::PostgresStore;

fn database_url() -> String {
    gorgon_store_postgres::Options::default().url
}

/// One test's schema (store) and lock table (locker).
struct Postgres {
    schema: String,
    table: String,
}

impl Postgres {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Postgres {
            schema: format!("sched_test_{id}"),
            table: format!("sched_locks_{id}"),
        }
    }
}

/// Drops the schema and the lock table when the test ends, even by a panic (on its own
/// connection, since the test's runtime may be gone).
impl Drop for Postgres {
    fn drop(&mut self) {
        let statements = [
            format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema),
            format!("DROP TABLE IF EXISTS {} CASCADE", self.table),
            format!("DROP SEQUENCE IF EXISTS {}_fencing", self.table),
        ];
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&database_url()).await?;
                for sql in statements {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut connection)
                        .await?;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
    }
}

impl Backend for Postgres {
    fn store(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
        Box::pin(async {
            let options = gorgon_store_postgres::Options {
                schema: self.schema.clone(),
                max_connections: 2,
                ..gorgon_store_postgres::Options::default()
            };
            let store = PostgresStore::connect(options).await.expect(
                "PostgreSQL must run at DATABASE_URL or postgres://postgres@127.0.0.1:5432/test",
            );
            Arc::new(store) as Arc<dyn Store>
        })
    }
    fn locker(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Locker>> + Send + '_>> {
        Box::pin(async {
            let options = gorgon_locking_postgres::Options {
                table: self.table.clone(),
                max_connections: 2,
                listen: false,
                ..gorgon_locking_postgres::Options::new(database_url())
            };
            let locker = PostgresLocker::connect(&options).await.expect("locker");
            Arc::new(locker) as Arc<dyn Locker>
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_tick_fires_once_and_a_follower_takes_over() {
    common::every_tick_once_across_a_handover(&Postgres::new(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_crashed_leader_is_replaced_after_its_lease() {
    common::every_tick_once_across_a_handover(&Postgres::new(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_forbid_never_overlaps_runs() {
    common::forbid_holds_across_instances_and_a_leader_change(&Postgres::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_allow_overlaps_runs() {
    common::allow_lets_runs_overlap(&Postgres::new()).await;
}
