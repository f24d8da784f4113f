//! Rough throughput of the engine on SQLite: `seq10` workflows (ten steps in a row), many at
//! once. Ignored by default (timing on a shared machine is not a test); run with
//! `cargo test --release -p gorgon-store-sqlite --test throughput -- --ignored --nocapture`.

use gorgon_store_sqlite::{Durability, Options, SqliteStore};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run by hand with --release"]
async fn seq10_throughput() {
    let dir = tempfile::tempdir().expect("temp dir");
    let connect = async |durability: Durability| {
        let file = dir
            .path()
            .join(format!("bench-{}.db", uuid::Uuid::new_v4()));
        SqliteStore::connect(Options {
            durability,
            ..Options::file(file)
        })
        .await
        .expect("open")
    };
    let done = async |store: SqliteStore| store.close().await;
    gorgon_store_sql::testing::seq10_throughput(connect, SqliteStore::stats, 500, done).await;
}
