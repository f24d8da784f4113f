//! Rough throughput of the engine on PostgreSQL: `seq10` workflows (ten steps in a row), many at
//! once. Ignored by default (timing on a shared machine is not a test); run with
//! `cargo test --release -p gorgon-store-postgres --test throughput -- --ignored --nocapture`.

use gorgon_store_postgres::{Durability, Options, PostgresStore};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run by hand with --release"]
async fn seq10_throughput() {
    let connect = async |durability: Durability| {
        PostgresStore::connect(Options {
            schema: format!("gorgon_bench_{}", uuid::Uuid::new_v4().simple()),
            durability,
            max_connections: 32,
            ..Options::default()
        })
        .await
        .expect("connect")
    };
    let done = async |store: PostgresStore| store.drop_schema().await.expect("drop");
    gorgon_store_sql::testing::seq10_throughput(connect, PostgresStore::stats, 2000, done).await;
}
