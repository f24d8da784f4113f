//! Per-module migrations on SQLite and PostgreSQL: apply, track, refuse a changed file,
//! roll a module's last batch back, and never apply one twice when two processes race.

use gorgon_data::{Error, Migration, MigrationState, Migrator, testing};

const RESTOCK: Migration = Migration {
    name: "0001_restock",
    postgres: include_str!("migrations/postgres/0001_restock.sql"),
    sqlite: include_str!("migrations/sqlite/0001_restock.sql"),
};
const NOTE: Migration = Migration {
    name: "0002_note",
    postgres: include_str!("migrations/postgres/0002_note.sql"),
    sqlite: include_str!("migrations/sqlite/0002_note.sql"),
};
const BOTH: &[Migration] = &[RESTOCK, NOTE];
const FIRST: &[Migration] = &[RESTOCK];
const OTHER: &[Migration] = &[Migration {
    name: "0001_other",
    postgres: "CREATE TABLE other_thing (id TEXT PRIMARY KEY);\n-- gorgon:down\nDROP TABLE other_thing;",
    sqlite: "CREATE TABLE other_thing (id TEXT PRIMARY KEY);\n-- gorgon:down\nDROP TABLE other_thing;",
}];
const CHANGED: &[Migration] = &[Migration {
    name: "0001_restock",
    postgres: "CREATE TABLE restock_order (id TEXT);",
    sqlite: "CREATE TABLE restock_order (id TEXT);",
}];

async fn table_exists(db: &gorgon_data::Db, table: &str) -> bool {
    db.run_script(&format!("SELECT 1 FROM {table} WHERE 1 = 0"))
        .await
        .is_ok()
}

#[tokio::test]
async fn migrations_apply_once_in_batches_and_roll_back_by_module() {
    for test in testing::each().await.unwrap() {
        let db = &test.db;
        let migrator = Migrator::new(db.clone())
            .module("restock", FIRST)
            .module("other", OTHER);
        let pending = migrator.pending().await.unwrap();
        assert_eq!(pending.len(), 2, "{}", test.name);
        let mut seen = Vec::new();
        let applied = migrator
            .migrate(|s| seen.push(s.name.clone()))
            .await
            .unwrap();
        assert_eq!(seen, ["0001_restock", "0001_other"]);
        assert_eq!(applied.len(), 2);
        assert!(table_exists(db, "restock_item").await);
        assert!(
            migrator.migrate(|_| {}).await.unwrap().is_empty(),
            "nothing is applied twice"
        );

        // A later migration of one module is the next batch.
        let migrator = Migrator::new(db.clone())
            .module("restock", BOTH)
            .module("other", OTHER);
        let applied = migrator.migrate(|_| {}).await.unwrap();
        assert_eq!(applied.len(), 1);
        let status = migrator.status().await.unwrap();
        let batches: Vec<(String, i64)> = status
            .iter()
            .map(|s| match s.state {
                MigrationState::Applied { batch, .. } => (s.name.clone(), batch),
                ref other => panic!("{}: {other:?}", s.name),
            })
            .collect();
        assert_eq!(
            batches,
            [
                ("0001_restock".to_owned(), 1),
                ("0002_note".to_owned(), 2),
                ("0001_other".to_owned(), 1)
            ],
            "{}",
            test.name
        );

        // 0002 has no down section: rolling "restock" back stops there, having changed nothing.
        let error = migrator.rollback("restock", |_| {}).await.unwrap_err();
        assert!(
            matches!(&error, Error::Migration { name, reason, .. } if name == "0002_note" && reason.contains("gorgon:down")),
            "{error}"
        );
        // "other" rolls back alone; "restock" is untouched.
        let reverted = migrator.rollback("other", |_| {}).await.unwrap();
        assert_eq!(reverted.len(), 1);
        assert!(!table_exists(db, "other_thing").await, "{}", test.name);
        assert!(table_exists(db, "restock_order").await);
        assert!(
            migrator.rollback("other", |_| {}).await.unwrap().is_empty(),
            "nothing left to revert"
        );
        let error = migrator.rollback("nope", |_| {}).await.unwrap_err();
        assert!(error.to_string().contains("restock, other"), "{error}");
        // Re-applied as a new batch.
        assert_eq!(migrator.migrate(|_| {}).await.unwrap().len(), 1);
        assert!(table_exists(db, "other_thing").await);
    }
}

#[tokio::test]
async fn a_migration_whose_file_changed_stops_migrate() {
    for test in testing::each().await.unwrap() {
        Migrator::new(test.db.clone())
            .module("restock", FIRST)
            .migrate(|_| {})
            .await
            .unwrap();
        let migrator = Migrator::new(test.db.clone())
            .module("restock", CHANGED)
            .module("other", OTHER);
        let status = migrator.status().await.unwrap();
        assert!(
            matches!(status[0].state, MigrationState::Changed { batch: 1 }),
            "{status:?}"
        );
        let error = migrator.migrate(|_| {}).await.unwrap_err();
        assert!(
            matches!(&error, Error::Migration { name, module, .. } if name == "0001_restock" && module == "restock"),
            "{error}"
        );
        assert!(
            !table_exists(&test.db, "other_thing").await,
            "{}: nothing else was applied",
            test.name
        );
        // A module that lost a migration shows it as unknown.
        let status = Migrator::new(test.db.clone())
            .module("restock", &[])
            .status()
            .await
            .unwrap();
        assert!(
            matches!(status[0].state, MigrationState::Unknown { batch: 1 }),
            "{status:?}"
        );
    }
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_half_applied() {
    const BROKEN: &[Migration] = &[Migration {
        name: "0001_broken",
        postgres: "CREATE TABLE half (id TEXT); CREATE TABLE half (id TEXT);",
        sqlite: "CREATE TABLE half (id TEXT); CREATE TABLE half (id TEXT);",
    }];
    for test in testing::each().await.unwrap() {
        let migrator = Migrator::new(test.db.clone()).module("broken", BROKEN);
        let error = migrator.migrate(|_| {}).await.unwrap_err();
        assert!(
            matches!(&error, Error::Migration { name, .. } if name == "0001_broken"),
            "{error}"
        );
        assert!(
            !table_exists(&test.db, "half").await,
            "{}: the first statement was undone",
            test.name
        );
        assert_eq!(migrator.pending().await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn two_processes_migrating_at_once_apply_each_migration_once() {
    for test in testing::each().await.unwrap() {
        let other = test.reconnect().await.unwrap();
        let a = Migrator::new(test.db.clone())
            .module("restock", BOTH)
            .module("other", OTHER);
        let b = Migrator::new(other)
            .module("restock", BOTH)
            .module("other", OTHER);
        let (left, right) = tokio::join!(a.migrate(|_| {}), b.migrate(|_| {}));
        let (left, right) = (left.unwrap(), right.unwrap());
        assert_eq!(
            left.len() + right.len(),
            3,
            "{}: {left:?} {right:?}",
            test.name
        );
        assert!(a.pending().await.unwrap().is_empty());
    }
}
