//! Links between two modules on SQLite and PostgreSQL: shapes and their uniqueness, extra
//! columns, delete cascade across modules, tables only for enabled modules, and Query through
//! a link and a module's own relation in one read.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use gorgon_data::{Crud, FindConfig, Kind, Migration, Model, ModelMeta};
use gorgon_framework::{
    AppBuilder, BoxError, Config, GraphRequest, Links, Loader, MigrationLine, Module,
    ModuleContext, NoOptions, Profile, Side, define_link,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Serialize, Deserialize, Model)]
#[model(prefix = "auth")]
struct Author {
    id: String,
    name: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    #[model(has_many(Book, by = "author_id"), cascade)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    books: Option<Vec<Book>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Model)]
#[model(prefix = "book")]
struct Book {
    id: String,
    author_id: String,
    title: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Model)]
#[model(prefix = "bio")]
struct Biography {
    id: String,
    bio: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Model)]
#[model(prefix = "shelf")]
struct Shelf {
    id: String,
    label: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

const TABLES: &str = "
CREATE TABLE author (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT);
CREATE TABLE book (id TEXT PRIMARY KEY, author_id TEXT NOT NULL, title TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT);
";
const PG_TABLES: &str = "
CREATE TABLE author (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, deleted_at TIMESTAMPTZ);
CREATE TABLE book (id TEXT PRIMARY KEY, author_id TEXT NOT NULL, title TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, deleted_at TIMESTAMPTZ);
";
const OTHER: &str = "
CREATE TABLE biography (id TEXT PRIMARY KEY, bio TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT);
CREATE TABLE shelf (id TEXT PRIMARY KEY, label TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT);
";
const PG_OTHER: &str = "
CREATE TABLE biography (id TEXT PRIMARY KEY, bio TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, deleted_at TIMESTAMPTZ);
CREATE TABLE shelf (id TEXT PRIMARY KEY, label TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, deleted_at TIMESTAMPTZ);
";

struct Library;
struct Catalog;

/// What the lifecycle hooks saw, in order.
static HOOKS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

fn saw(hook: &'static str) {
    HOOKS.lock().unwrap().push(hook);
}

#[derive(Debug)]
struct LibraryService {
    authors: Crud<Author>,
    books: Crud<Book>,
}

#[derive(Debug)]
struct CatalogService {
    profiles: Crud<Biography>,
    shelves: Crud<Shelf>,
}

impl Module for Library {
    type Service = LibraryService;
    type Options = NoOptions;
    fn name(&self) -> &'static str {
        "library"
    }
    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![Author::meta(), Book::meta()]
    }
    fn migrations(&self) -> &'static [Migration] {
        &[Migration {
            name: "0001",
            postgres: PG_TABLES,
            sqlite: TABLES,
        }]
    }
    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<LibraryService, BoxError> {
        Ok(LibraryService {
            authors: Crud::new(cx.db.clone()),
            books: Crud::new(cx.db),
        })
    }
    async fn on_start(&self, _service: std::sync::Arc<LibraryService>) -> Result<(), BoxError> {
        saw("library start");
        Ok(())
    }
    async fn on_prepare_shutdown(&self, _service: std::sync::Arc<LibraryService>) {
        saw("library prepare shutdown");
    }
    async fn on_shutdown(&self, _service: std::sync::Arc<LibraryService>) {
        saw("library shutdown");
    }
}

impl Module for Catalog {
    type Service = CatalogService;
    type Options = NoOptions;
    fn name(&self) -> &'static str {
        "catalog"
    }
    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![Biography::meta(), Shelf::meta()]
    }
    fn migrations(&self) -> &'static [Migration] {
        &[Migration {
            name: "0001",
            postgres: PG_OTHER,
            sqlite: OTHER,
        }]
    }
    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<CatalogService, BoxError> {
        Ok(CatalogService {
            profiles: Crud::new(cx.db.clone()),
            shelves: Crud::new(cx.db),
        })
    }
}

fn config(database: &str, dir: &std::path::Path, extra: &str) -> Config {
    let database = match database {
        "sqlite" => format!(
            "database_url = \"sqlite://{}\"",
            dir.join("app.db").display()
        ),
        _ => format!(
            "database_url = \"{}\"\ndatabase_schema = \"t_{}\"",
            gorgon_data::testing::postgres_url(),
            gorgon_data::generate_id("").to_lowercase()
        ),
    };
    std::fs::write(
        dir.join("gorgon.toml"),
        format!("[project]\n{database}\n[modules.workflows]\nprovider = \"memory\"\n{extra}"),
    )
    .unwrap();
    Loader::new()
        .root(dir)
        .profile(Profile::Dev)
        .env(BTreeMap::new())
        .load()
        .unwrap()
}

fn builder() -> AppBuilder {
    let mut app = AppBuilder::new();
    app.module(Library)
        .module(Catalog)
        // One author, one profile (deleting the author deletes the profile).
        .link(define_link(
            Side::of::<Author>(),
            Side::of::<Biography>().delete_cascade(),
        ))
        // A shelf holds many books; a book is on many shelves, with a position.
        .link(
            define_link(Side::of::<Book>().list(), Side::of::<Shelf>().list()).extra_column(
                "position",
                Kind::Integer,
                false,
            ),
        );
    app
}

#[tokio::test]
async fn links_keep_their_shape_cascade_and_read_through_query() {
    for database in ["sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let prepared = builder()
            .prepare(config(database, dir.path(), ""))
            .await
            .unwrap();
        prepared.migrations().migrate(|_| {}).await.unwrap();
        let app = prepared.build().await.unwrap();
        let library = app.service::<LibraryService>().unwrap();
        let catalog = app.service::<CatalogService>().unwrap();
        let links: &Links = app.links();

        let ada = library
            .authors
            .create(json!({ "name": "Ada" }))
            .await
            .unwrap();
        let bob = library
            .authors
            .create(json!({ "name": "Bob" }))
            .await
            .unwrap();
        let book = library
            .books
            .create(json!({ "author_id": ada.id, "title": "Notes" }))
            .await
            .unwrap();
        let profile = catalog
            .profiles
            .create(json!({ "bio": "first programmer" }))
            .await
            .unwrap();
        let shelf = catalog
            .shelves
            .create(json!({ "label": "History" }))
            .await
            .unwrap();

        links
            .create([json!({ "library": { "author_id": ada.id }, "catalog": { "biography_id": profile.id } })])
            .await
            .unwrap();
        // One-to-one: the profile is taken.
        let error = links
            .create([json!({ "library": { "author_id": bob.id }, "catalog": { "biography_id": profile.id } })])
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("already linked"),
            "{database}: {error}"
        );
        // Extra columns: required, typed.
        let error = links
            .create([
                json!({ "library": { "book_id": book.id }, "catalog": { "shelf_id": shelf.id } }),
            ])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("data.position"), "{error}");
        let error = links
            .create([json!({ "library": { "book_id": book.id }, "catalog": { "shelf_id": shelf.id }, "data": { "position": "top" } })])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("position"), "{error}");
        let created = links
            .create([json!({ "library": { "book_id": book.id }, "catalog": { "shelf_id": shelf.id }, "data": { "position": 3 } })])
            .await
            .unwrap();
        assert_eq!(created[0]["position"], 3);
        assert_eq!(
            links
                .list(json!({ "catalog": { "shelf_id": shelf.id } }))
                .await
                .unwrap()[0]["position"],
            3
        );

        // Query: author → its books (relation) → their shelves (link), and its profile (link).
        let read = app
            .query()
            .graph(GraphRequest {
                entity: "author".into(),
                fields: vec![
                    "name".into(),
                    "books.title".into(),
                    "books.shelves.label".into(),
                    "biography.bio".into(),
                ],
                filters: json!({ "books": { "shelves": { "label": "History" } } }),
                ..GraphRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(
            read.data,
            vec![json!({
                "id": ada.id, "name": "Ada",
                "books": [{ "id": book.id, "title": "Notes", "shelves": [{ "id": shelf.id, "label": "History" }] }],
                "biography": { "id": profile.id, "bio": "first programmer" },
            })],
            "{database}"
        );

        // A filter through a link and a relation, a page and its count: one statement.
        let before = app.db().statements();
        let page = app
            .query()
            .graph(GraphRequest {
                entity: "book".into(),
                fields: vec!["title".into()],
                filters: json!({ "shelves": { "label": { "$ilike": "hist%" } } }),
                pagination: Some(gorgon_framework::Pagination {
                    take: Some(10),
                    ..Default::default()
                }),
                ..GraphRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(app.db().statements() - before, 1, "{database}");
        assert_eq!(page.metadata.map(|m| m.count), Some(1));
        // A page past the end still counts (apart).
        let past = app
            .query()
            .graph(GraphRequest {
                entity: "book".into(),
                pagination: Some(gorgon_framework::Pagination {
                    skip: Some(5),
                    take: Some(10),
                    ..Default::default()
                }),
                ..GraphRequest::default()
            })
            .await
            .unwrap();
        assert!(past.data.is_empty());
        assert_eq!(past.metadata.map(|m| m.count), Some(1));

        // Deleting the author cascades to its profile through the link, and to its books
        // through the module's relation.
        let removed = library.authors.soft_delete([&ada.id]).await.unwrap();
        assert_eq!(removed["book_id"], vec![book.id.clone()]);
        let touched = links.delete(&removed).await.unwrap();
        assert_eq!(
            touched["biography_id"],
            vec![profile.id.clone()],
            "{database}"
        );
        assert!(
            catalog
                .profiles
                .retrieve(&profile.id, FindConfig::new())
                .await
                .is_err()
        );
        assert!(
            links
                .list(json!({ "catalog": { "shelf_id": shelf.id } }))
                .await
                .unwrap()
                .is_empty()
        );
        let restored = library.authors.restore([&ada.id]).await.unwrap();
        links.restore(&restored).await.unwrap();
        assert!(
            catalog
                .profiles
                .retrieve(&profile.id, FindConfig::new())
                .await
                .is_ok(),
            "{database}"
        );
        assert_eq!(
            links
                .list(json!({ "catalog": { "shelf_id": shelf.id } }))
                .await
                .unwrap()
                .len(),
            1
        );

        // dismiss removes for good.
        assert_eq!(
            links
                .dismiss([json!({ "library": { "book_id": book.id }, "catalog": { "shelf_id": shelf.id } })])
                .await
                .unwrap(),
            1
        );
    }
}

#[tokio::test]
async fn a_disabled_module_gets_no_link_tables() {
    let dir = tempfile::tempdir().unwrap();
    let prepared = builder()
        .prepare(config(
            "sqlite",
            dir.path(),
            "[modules.catalog]\ndisabled = true\n",
        ))
        .await
        .unwrap();
    let migrations = prepared.migrations();
    migrations.migrate(|_| {}).await.unwrap();
    let status = migrations.status().await.unwrap();
    assert!(
        !status
            .iter()
            .any(|line| matches!(line, MigrationLine::Link { .. })),
        "{status:?}"
    );
    assert!(
        !status
            .iter()
            .any(|line| matches!(line, MigrationLine::Module(s) if s.module == "catalog"))
    );
    let app = prepared.build().await.unwrap();
    assert_eq!(app.modules(), ["library"]);
    assert!(app.query().entity("shelf").is_err());
    let error = app
        .query()
        .graph(GraphRequest {
            entity: "author".into(),
            fields: vec!["biography.bio".into()],
            ..GraphRequest::default()
        })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("biography"), "{error}");
}

#[tokio::test]
async fn lifecycle_hooks_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut builder = builder();
    builder
        .on_start(|_app| async {
            saw("app start");
            Ok(())
        })
        .on_shutdown(|_app| async {
            saw("app shutdown");
            Ok(())
        });
    let prepared = builder
        .prepare(config("sqlite", dir.path(), ""))
        .await
        .unwrap();
    prepared.migrations().migrate(|_| {}).await.unwrap();
    let app = prepared.build().await.unwrap();
    HOOKS.lock().unwrap().clear();
    let running = app
        .start(gorgon_framework::WorkerMode::Shared)
        .await
        .unwrap();
    running.shutdown(std::time::Duration::from_secs(5)).await;
    // Only this test starts an application, so the hooks are its own.
    let seen = HOOKS.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "library start",
            "app start",
            "library prepare shutdown",
            "app shutdown",
            "library shutdown"
        ]
    );
}
