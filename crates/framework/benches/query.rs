//! Query over links at catalogue scale: 10,000 products, each linked to a brand, a tag and a
//! collection (30,000 link rows), read with a filter on the linked brand. Prints the latency of
//! each read on SQLite and on PostgreSQL, and how many statements it sent.
//!
//! `cargo bench -p gorgon-framework --bench query` (PostgreSQL at `DATABASE_URL`, default the
//! local `test` database; each run uses a new schema).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gorgon_data::{Crud, Migration, Model, ModelMeta};
use gorgon_framework::{
    App, AppBuilder, BoxError, GraphRequest, Loader, Module, ModuleContext, NoOptions, Pagination,
    Profile, Side, define_link,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

const PRODUCTS: usize = 10_000;
const BRANDS: usize = 100;
const TAGS: usize = 50;
const COLLECTIONS: usize = 20;
const ROUNDS: usize = 200;

macro_rules! entity {
    ($name:ident, $prefix:literal, $field:ident) => {
        #[derive(Debug, Clone, Serialize, Deserialize, Model)]
        #[model(prefix = $prefix)]
        struct $name {
            id: String,
            #[model(searchable)]
            $field: String,
            created_at: DateTime<Utc>,
            updated_at: DateTime<Utc>,
            deleted_at: Option<DateTime<Utc>>,
        }
    };
}

entity!(Product, "prod", title);
entity!(Brand, "brand", name);
entity!(Tag, "ptag", value);
entity!(Collection, "pcol", handle);

/// One module's tables, for each dialect, as a migration.
fn migration(name: &'static str, tables: &[(&str, &str)]) -> &'static [Migration] {
    let script = |timestamp: &str| -> &'static str {
        let sql: String = tables
            .iter()
            .map(|(table, field)| {
                format!(
                    "CREATE TABLE {table} (id TEXT PRIMARY KEY, {field} TEXT NOT NULL, created_at {timestamp} NOT NULL, \
                     updated_at {timestamp} NOT NULL, deleted_at {timestamp});\n"
                )
            })
            .collect();
        Box::leak(sql.into_boxed_str())
    };
    Box::leak(Box::new([Migration {
        name,
        postgres: script("TIMESTAMPTZ"),
        sqlite: script("TEXT"),
    }]))
}

struct Catalog(&'static [Migration]);
struct Brands(&'static [Migration]);

struct CatalogService {
    products: Crud<Product>,
    tags: Crud<Tag>,
    collections: Crud<Collection>,
}

impl Module for Catalog {
    type Service = CatalogService;
    type Options = NoOptions;
    fn name(&self) -> &'static str {
        "catalog"
    }
    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![Product::meta(), Tag::meta(), Collection::meta()]
    }
    fn migrations(&self) -> &'static [Migration] {
        self.0
    }
    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<CatalogService, BoxError> {
        Ok(CatalogService {
            products: Crud::new(cx.db.clone()),
            tags: Crud::new(cx.db.clone()),
            collections: Crud::new(cx.db),
        })
    }
}

impl Module for Brands {
    type Service = Crud<Brand>;
    type Options = NoOptions;
    fn name(&self) -> &'static str {
        "brands"
    }
    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![Brand::meta()]
    }
    fn migrations(&self) -> &'static [Migration] {
        self.0
    }
    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<Crud<Brand>, BoxError> {
        Ok(Crud::new(cx.db))
    }
}

async fn app(database: &str, dir: &std::path::Path) -> App {
    let database = match database {
        "sqlite" => format!(
            "database_url = \"sqlite://{}\"",
            dir.join("bench.db").display()
        ),
        _ => format!(
            "database_url = \"{}\"\ndatabase_schema = \"bench_{}\"",
            std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            gorgon_data::generate_id("").to_lowercase()
        ),
    };
    std::fs::write(
        dir.join("gorgon.toml"),
        format!("[project]\n{database}\n[modules.workflows]\nprovider = \"memory\"\n"),
    )
    .unwrap();
    let config = Loader::new()
        .root(dir)
        .profile(Profile::Dev)
        .env(BTreeMap::new())
        .load()
        .unwrap();
    let mut builder = AppBuilder::new();
    builder
        .module(Catalog(migration(
            "0001_catalog",
            &[
                ("product", "title"),
                ("tag", "value"),
                ("collection", "handle"),
            ],
        )))
        .module(Brands(migration("0001_brands", &[("brand", "name")])))
        .link(define_link(
            Side::of::<Product>().list(),
            Side::of::<Brand>(),
        ))
        .link(define_link(
            Side::of::<Product>().list(),
            Side::of::<Tag>().list(),
        ))
        .link(define_link(
            Side::of::<Product>().list(),
            Side::of::<Collection>(),
        ));
    let prepared = builder.prepare(config).await.unwrap();
    prepared.migrations().migrate(|_| {}).await.unwrap();
    prepared.build().await.unwrap()
}

async fn seed(app: &App) -> Duration {
    let started = Instant::now();
    let catalog = app.service::<CatalogService>().unwrap();
    let brands = app.service::<Crud<Brand>>().unwrap();
    let brand_rows: Vec<_> = (0..BRANDS)
        .map(|i| json!({ "name": format!("Brand {i}") }))
        .collect();
    let brands = brands.create_many(&brand_rows).await.unwrap();
    let tag_rows: Vec<_> = (0..TAGS)
        .map(|i| json!({ "value": format!("tag-{i}") }))
        .collect();
    let tags = catalog.tags.create_many(&tag_rows).await.unwrap();
    let collection_rows: Vec<_> = (0..COLLECTIONS)
        .map(|i| json!({ "handle": format!("col-{i}") }))
        .collect();
    let collections = catalog
        .collections
        .create_many(&collection_rows)
        .await
        .unwrap();
    let product_rows: Vec<_> = (0..PRODUCTS)
        .map(|i| json!({ "title": format!("Product {i}") }))
        .collect();
    let products = catalog.products.create_many(&product_rows).await.unwrap();
    let mut links = Vec::with_capacity(PRODUCTS * 3);
    for (i, product) in products.iter().enumerate() {
        links.push(json!({ "catalog": { "product_id": product.id }, "brands": { "brand_id": brands[i % BRANDS].id } }));
        links.push(json!({ "catalog": { "product_id": product.id, "tag_id": tags[i % TAGS].id } }));
        links.push(json!({ "catalog": { "product_id": product.id, "collection_id": collections[i % COLLECTIONS].id } }));
    }
    app.links().create(links).await.unwrap();
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn measure(app: &App, label: &str, request: GraphRequest, expect: usize) {
    let db = app.db();
    let mut samples = Vec::with_capacity(ROUNDS);
    let mut statements = 0;
    for _ in 0..ROUNDS {
        let before = db.statements();
        let started = Instant::now();
        let response = app.query().graph(request.clone()).await.unwrap();
        samples.push(started.elapsed());
        statements = db.statements() - before;
        assert_eq!(response.data.len(), expect, "{label}");
    }
    samples.sort();
    println!(
        "  {label:<58} p50 {:>8.2?}  p95 {:>8.2?}  statements {statements}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.95)
    );
}

#[tokio::main]
async fn main() {
    for database in ["sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let app = app(database, dir.path()).await;
        let seeded = seed(&app).await;
        println!(
            "{database}: {PRODUCTS} products, {} link rows, seeded in {seeded:.1?}",
            PRODUCTS * 3
        );
        let page = Some(Pagination {
            skip: Some(0),
            take: Some(20),
            order: BTreeMap::new(),
        });
        measure(
            &app,
            "products of one brand (root fields, page of 20 + count)",
            GraphRequest {
                entity: "product".into(),
                fields: vec!["id".into(), "title".into()],
                filters: json!({ "brand": { "name": "Brand 7" } }),
                pagination: page.clone(),
                ..GraphRequest::default()
            },
            20,
        )
        .await;
        measure(
            &app,
            "products of one brand and one tag (two semi-joins)",
            GraphRequest {
                entity: "product".into(),
                fields: vec!["id".into(), "title".into()],
                filters: json!({ "brand": { "name": "Brand 7" }, "tags": { "value": "tag-7" } }),
                pagination: page.clone(),
                ..GraphRequest::default()
            },
            20,
        )
        .await;
        measure(
            &app,
            "the same page with brand, tags and collection nested",
            GraphRequest {
                entity: "product".into(),
                fields: vec![
                    "title".into(),
                    "brand.name".into(),
                    "tags.value".into(),
                    "collection.handle".into(),
                ],
                filters: json!({ "brand": { "name": "Brand 7" } }),
                pagination: page,
                ..GraphRequest::default()
            },
            20,
        )
        .await;
    }
}
