//! The shop application, built as `gorgon start` builds it, on SQLite and on PostgreSQL: the
//! restock workflow and its rollback, the brand plugin's options and links, Query across
//! modules, the milestone email sent once, paying with points in one transaction, subscribers'
//! retries and dead letters, the job's worker mode, and boot problems reported together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gorgon_data::FindConfig;
use gorgon_example_brand::{BrandError, BrandService, NewBrand};
use gorgon_example_shop::flows::{Line, Redeem, RedeemError, RestockInput, redeem_points};
use gorgon_example_shop::loyalty::{LoyaltyError, LoyaltyService, POINTS_ADDED, PointsAdded};
use gorgon_example_shop::orders::{OrderError, OrderService, OrderStatus, ShopOrder};
use gorgon_example_shop::supplier::{RestockStatus, SupplierService};
use gorgon_framework::{
    App, AppBuilder, BoxError, Config, Error, Event, GraphRequest, Loader, Pagination, Profile,
    Subscriber, WorkerMode,
};
use gorgon_notification::LocalProvider;
use gorgon_workflows::{Service, TransactionState};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const DATABASES: [&str; 2] = ["sqlite", "postgres"];

struct TestApp {
    app: App,
    emails: Arc<LocalProvider>,
    _dir: tempfile::TempDir,
}

fn config(database: &str, dir: &std::path::Path, extra: &str) -> Config {
    let database = match database {
        "sqlite" => format!(
            "database_url = \"sqlite://{}\"",
            dir.join("shop.db").display()
        ),
        _ => format!(
            "database_url = \"{}\"\ndatabase_schema = \"t_{}\"",
            gorgon_data::testing::postgres_url(),
            gorgon_data::generate_id("").to_lowercase()
        ),
    };
    let toml = format!(
        r#"
[project]
{database}

[modules.notification]
channels = ["email"]

[modules.notification.templates.loyalty-milestone]
subject = "You reached {{{{ points }}}} points"
text = "Thank you, {{{{ customer_id }}}}: {{{{ points }}}} points!"

[plugins.brand]
max_name_length = 12
default_country = "fr"

[settings]
expire_every_ms = 50
{extra}
"#
    );
    std::fs::write(dir.join("gorgon.toml"), toml).unwrap();
    Loader::new()
        .root(dir)
        .profile(Profile::Dev)
        .env(BTreeMap::new())
        .load()
        .unwrap()
}

/// The shop with `more` registered after it, migrated and built, emails captured.
async fn boot_with(database: &str, extra: &str, more: impl FnOnce(&mut AppBuilder)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let config = config(database, dir.path(), extra);
    let mut builder = gorgon_example_shop::app(&config).unwrap();
    more(&mut builder);
    let emails = Arc::new(LocalProvider::new());
    let captured = emails.clone();
    builder.providers().notification("local", move |_| {
        let provider = captured.clone();
        async move { Ok(provider as Arc<dyn gorgon_notification::Provider>) }
    });
    let prepared = builder.prepare(config).await.unwrap();
    prepared.migrations().migrate(|_| {}).await.unwrap();
    let app = prepared
        .build()
        .await
        .unwrap_or_else(|e| panic!("{database}: {e}"));
    TestApp {
        app,
        emails,
        _dir: dir,
    }
}

async fn boot(database: &str) -> TestApp {
    boot_with(database, "", |_| {}).await
}

impl TestApp {
    fn service<T: Send + Sync + 'static>(&self) -> Arc<T> {
        self.app.service::<T>().expect("the service is registered")
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn the_restock_workflow_creates_an_order_and_rolls_back_when_the_supplier_refuses() {
    for database in DATABASES {
        let t = boot(database).await;
        let suppliers = t.service::<SupplierService>();
        let acme = suppliers
            .suppliers
            .create(json!({ "name": "Acme", "email": "orders@acme.test" }))
            .await
            .unwrap();
        let closed = suppliers
            .suppliers
            .create(
                json!({ "name": "Closed Co", "email": "x@closed.test", "accepts_orders": false }),
            )
            .await
            .unwrap();
        let restock = gorgon_example_shop::flows::restock_workflow().unwrap();
        let lines = vec![
            Line {
                product_id: "SHIRT-S".into(),
                quantity: 10,
                unit_cost: Decimal::new(499, 2),
            },
            Line {
                product_id: "SHIRT-M".into(),
                quantity: 5,
                unit_cost: Decimal::new(525, 2),
            },
        ];
        let order = t
            .app
            .workflows()
            .run(
                &restock,
                RestockInput {
                    supplier_id: acme.id.clone(),
                    items: lines.clone(),
                    notes: None,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{database}: {e}"));
        assert_eq!(order.status, RestockStatus::Sent, "{database}");
        let items = order.items.unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].unit_cost.to_string(), "4.99");

        let error = t
            .app
            .workflows()
            .run(
                &restock,
                RestockInput {
                    supplier_id: closed.id.clone(),
                    items: lines,
                    notes: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            error.state(),
            Some(TransactionState::Reverted),
            "{database}: {error}"
        );
        let left = suppliers
            .restock_orders
            .list(
                json!({ "supplier_id": closed.id }),
                FindConfig::new().with_deleted(),
            )
            .await
            .unwrap();
        assert!(left.is_empty(), "{database}: the order was deleted again");
        let all_items = suppliers
            .restock_items
            .list(json!(null), FindConfig::new().with_deleted())
            .await
            .unwrap();
        assert_eq!(
            all_items.len(),
            2,
            "{database}: only the first run's items remain"
        );
    }
}

#[tokio::test]
async fn the_brand_plugin_takes_its_options_and_query_reads_across_the_link() {
    for database in DATABASES {
        let t = boot(database).await;
        let brands = t.service::<BrandService>();
        let suppliers = t.service::<SupplierService>();
        let error = brands
            .create_brand(NewBrand {
                name: "A name far too long".into(),
                country: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(error, BrandError::Name { max: 12 }),
            "{database}: [plugins.brand] max_name_length"
        );
        let northwind = brands
            .create_brand(NewBrand {
                name: "Northwind".into(),
                country: None,
            })
            .await
            .unwrap();
        assert_eq!(
            northwind.country.as_deref(),
            Some("fr"),
            "[plugins.brand] default_country"
        );
        let contoso = brands
            .create_brand(NewBrand {
                name: "Contoso".into(),
                country: Some("us".into()),
            })
            .await
            .unwrap();
        let acme = suppliers
            .suppliers
            .create(json!({ "name": "Acme", "email": "a@acme.test" }))
            .await
            .unwrap();
        let globex = suppliers
            .suppliers
            .create(json!({ "name": "Globex", "email": "g@globex.test" }))
            .await
            .unwrap();
        let links = t.app.links();
        links
            .create([
                json!({ "supplier": { "supplier_id": acme.id }, "brand": { "brand_id": northwind.id } }),
                json!({ "supplier": { "supplier_id": acme.id }, "brand": { "brand_id": contoso.id } }),
                json!({ "supplier": { "supplier_id": globex.id }, "brand": { "brand_id": contoso.id } }),
                // Again: already linked, nothing new.
                json!({ "supplier": { "supplier_id": globex.id }, "brand": { "brand_id": contoso.id } }),
            ])
            .await
            .unwrap();
        assert_eq!(
            links
                .list(json!({ "supplier": { "supplier_id": acme.id } }))
                .await
                .unwrap()
                .len(),
            2
        );

        let query = t.app.query();
        let response = query
            .graph(GraphRequest {
                entity: "supplier".into(),
                fields: vec!["name".into(), "brands.name".into(), "brands.country".into()],
                filters: json!({ "brands": { "country": "fr" } }),
                ..GraphRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(
            response.data.len(),
            1,
            "{database}: a filter on the linked brand"
        );
        assert_eq!(response.data[0]["name"], "Acme");
        let names: Vec<&str> = response.data[0]["brands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["Northwind", "Contoso"],
            "{database}: every brand of the matching supplier"
        );

        let response = query
            .graph(GraphRequest {
                entity: "brand".into(),
                fields: vec!["name".into(), "suppliers.name".into()],
                pagination: Some(Pagination {
                    skip: Some(0),
                    take: Some(1),
                    order: BTreeMap::from([("name".into(), "ASC".into())]),
                }),
                ..GraphRequest::default()
            })
            .await
            .unwrap();
        let metadata = response.metadata.unwrap();
        assert_eq!(
            (metadata.count, metadata.take),
            (2, Some(1)),
            "{database}: count and page on the root"
        );
        assert_eq!(response.data[0]["name"], "Contoso");
        assert_eq!(response.data[0]["suppliers"].as_array().unwrap().len(), 2);

        // Bad input names what is wrong.
        let unknown = query
            .graph(GraphRequest {
                entity: "product".into(),
                ..GraphRequest::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&unknown, Error::UnknownEntity { entity, known } if entity == "product" && known.contains("supplier")),
            "{unknown}"
        );
        let bad = query
            .graph(GraphRequest {
                entity: "supplier".into(),
                fields: vec!["brands.colour".into()],
                ..GraphRequest::default()
            })
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("brands.colour"), "{bad}");
        let bad = links.create([json!({ "supplier": { "supplier_id": acme.id }, "loyalty": { "loyalty_account_id": "x" } })]).await.unwrap_err();
        assert!(bad.to_string().contains("no link between"), "{bad}");

        // Soft-deleting a brand soft-deletes its links; restoring brings them back.
        let removed = brands.brands.soft_delete([&contoso.id]).await.unwrap();
        let touched = links.delete(&removed).await.unwrap();
        assert_eq!(touched["brand_id"], vec![contoso.id.clone()]);
        assert_eq!(
            links
                .list(json!({ "brand": { "brand_id": contoso.id } }))
                .await
                .unwrap()
                .len(),
            0
        );
        let restored = brands.brands.restore([&contoso.id]).await.unwrap();
        links.restore(&restored).await.unwrap();
        assert_eq!(
            links
                .list(json!({ "brand": { "brand_id": contoso.id } }))
                .await
                .unwrap()
                .len(),
            2,
            "{database}"
        );
    }
}

#[tokio::test]
async fn a_milestone_email_is_sent_once_even_when_the_event_comes_twice() {
    for database in DATABASES {
        let t = boot(database).await;
        let running = t.app.start(WorkerMode::Shared).await.unwrap();
        let loyalty = t.service::<LoyaltyService>();
        loyalty
            .add_points("cus_1", "ada@example.test", 950)
            .await
            .unwrap();
        let account = loyalty
            .add_points("cus_1", "ada@example.test", 100)
            .await
            .unwrap();
        assert_eq!(account.points, 1050);
        let emails = t.emails.clone();
        eventually("the 1000-point email", || emails.sent().len() == 1).await;
        // The same event delivered again (a redelivery after a crash, say).
        let again = PointsAdded {
            customer_id: "cus_1".into(),
            email: "ada@example.test".into(),
            added: 100,
            total: 1050,
        };
        t.app
            .infrastructure()
            .events
            .emit_one(gorgon_event_bus::Message::new(
                POINTS_ADDED,
                serde_json::to_value(&again).unwrap(),
            ))
            .await
            .unwrap();
        loyalty
            .add_points("cus_1", "ada@example.test", 1000)
            .await
            .unwrap();
        eventually("the 2000-point email", || emails.sent().len() >= 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = t.emails.sent();
        let subjects: Vec<&str> = sent.iter().map(|m| m.content.subject.as_str()).collect();
        assert_eq!(
            subjects,
            ["You reached 1000 points", "You reached 2000 points"],
            "{database}"
        );
        assert_eq!(sent[0].to, "ada@example.test");
        running.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn paying_with_points_deducts_and_updates_in_one_transaction() {
    for database in DATABASES {
        let t = boot(database).await;
        let loyalty = t.service::<LoyaltyService>();
        let orders = t.service::<OrderService>();
        loyalty
            .add_points("cus_2", "bo@example.test", 500)
            .await
            .unwrap();
        let order: ShopOrder = orders
            .orders
            .create(json!({ "customer_id": "cus_2", "total": "42.00" }))
            .await
            .unwrap();
        let redeem = Redeem {
            order_id: order.id.clone(),
            customer_id: "cus_2".into(),
            points: 200,
        };
        let paid = redeem_points(t.app.db(), &loyalty, &orders, &redeem)
            .await
            .unwrap();
        assert_eq!(paid.status, OrderStatus::Paid);
        assert_eq!(paid.points_used, 200);
        assert_eq!(loyalty.account("cus_2").await.unwrap().unwrap().points, 300);

        // The second write fails (the order is paid already): the deduction is undone.
        let error = redeem_points(t.app.db(), &loyalty, &orders, &redeem)
            .await
            .unwrap_err();
        assert!(
            matches!(error, RedeemError::Order(OrderError::AlreadyPaid(_))),
            "{database}: {error}"
        );
        assert_eq!(
            loyalty.account("cus_2").await.unwrap().unwrap().points,
            300,
            "{database}: nothing was deducted"
        );

        // The first write fails: the order is untouched.
        let other: ShopOrder = orders
            .orders
            .create(json!({ "customer_id": "cus_2", "total": 10 }))
            .await
            .unwrap();
        let too_many = Redeem {
            order_id: other.id.clone(),
            customer_id: "cus_2".into(),
            points: 301,
        };
        let error = redeem_points(t.app.db(), &loyalty, &orders, &too_many)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                RedeemError::Loyalty(LoyaltyError::InsufficientPoints { .. })
            ),
            "{error}"
        );
        let other = orders
            .orders
            .retrieve(&other.id, FindConfig::new())
            .await
            .unwrap();
        assert_eq!(other.status, OrderStatus::Pending);

        // The same through the workflow, which runs it as one step.
        let workflow = gorgon_example_shop::flows::redeem_workflow().unwrap();
        let ok = Redeem {
            order_id: other.id.clone(),
            customer_id: "cus_2".into(),
            points: 300,
        };
        let paid = t.app.workflows().run(&workflow, ok).await.unwrap();
        assert_eq!(paid.points_used, 300, "{database}");
        assert_eq!(loyalty.account("cus_2").await.unwrap().unwrap().points, 0);
    }
}

async fn always_fails(_event: Event<Value>) -> Result<(), BoxError> {
    Err("the downstream system is down".into())
}

async fn counts(
    _event: Event<PointsAdded>,
    counter: Service<std::sync::atomic::AtomicUsize>,
) -> Result<(), BoxError> {
    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn a_failing_subscriber_is_retried_alone_then_dead_lettered() {
    for database in DATABASES {
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let registered = counter.clone();
        let t = boot_with(database, "", move |app| {
            app.service(registered)
                .subscriber(
                    Subscriber::new("flaky-crm", "loyalty.*", always_fails)
                        .attempts(3)
                        .backoff(Duration::from_millis(5)),
                )
                .subscriber(Subscriber::new("points-counter", POINTS_ADDED, counts));
        })
        .await;
        let running = t.app.start(WorkerMode::Worker).await.unwrap();
        t.service::<LoyaltyService>()
            .add_points("cus_3", "cy@example.test", 10)
            .await
            .unwrap();
        let dead = t.app.dead_letters().clone();
        let mut letters = Vec::new();
        for _ in 0..200 {
            letters = dead.list(Some("flaky-crm")).await.unwrap();
            if !letters.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(letters.len(), 1, "{database}");
        assert_eq!(letters[0].attempts, 3);
        assert_eq!(letters[0].event_name, POINTS_ADDED);
        assert_eq!(letters[0].error, "the downstream system is down");
        assert_eq!(
            counter.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{database}: the other subscriber ran once"
        );
        running.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn the_job_runs_in_worker_and_shared_mode_only() {
    for database in DATABASES {
        let t = boot_with(database, "draft_ttl_secs = 0", |_| {}).await;
        let suppliers = t.service::<SupplierService>();
        let acme = suppliers
            .suppliers
            .create(json!({ "name": "Acme", "email": "a@acme.test" }))
            .await
            .unwrap();
        let draft = suppliers
            .restock_orders
            .create(json!({ "supplier_id": acme.id }))
            .await
            .unwrap();
        let server = t.app.start(WorkerMode::Server).await.unwrap();
        assert!(
            server.scheduler().is_none(),
            "a server instance runs no jobs"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let still = suppliers
            .restock_orders
            .retrieve(&draft.id, FindConfig::new())
            .await
            .unwrap();
        assert_eq!(still.status, RestockStatus::Draft, "{database}");
        server.shutdown(Duration::from_secs(5)).await;

        let worker = t.app.start(WorkerMode::Worker).await.unwrap();
        let mut status = RestockStatus::Draft;
        for _ in 0..100 {
            status = suppliers
                .restock_orders
                .retrieve(&draft.id, FindConfig::new())
                .await
                .unwrap()
                .status;
            if status == RestockStatus::Expired {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            status,
            RestockStatus::Expired,
            "{database}: the worker's job expired the draft"
        );
        let fired = worker
            .scheduler()
            .unwrap()
            .stats("expire-restock-drafts")
            .unwrap()
            .fired;
        assert!(fired >= 1);
        worker.shutdown(Duration::from_secs(5)).await;
    }
}

struct Missing;

async fn needs_missing(_input: (), _missing: Service<Missing>) -> gorgon_workflows::StepResult<()> {
    Ok(gorgon_workflows::StepResponse::new(()))
}

#[tokio::test]
async fn boot_reports_every_problem_at_once_with_help() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        "sqlite",
        dir.path(),
        "\n[modules.cache]\nprovider = \"memcached\"\n",
    );
    let mut builder = gorgon_example_shop::app(&config).unwrap();
    let step = gorgon_workflows::Step::new("needs-missing", needs_missing);
    let workflow =
        gorgon_workflows::Workflow::define("broken", move |b, input| b.step(&step, input)).unwrap();
    builder
        .workflow(&workflow)
        .subscriber(Subscriber::new("points-counter", POINTS_ADDED, counts))
        .subscriber(Subscriber::new("points-counter", POINTS_ADDED, counts))
        .link(gorgon_framework::define_link(
            gorgon_framework::Side::of::<gorgon_example_shop::supplier::Supplier>(),
            gorgon_framework::Side::of::<gorgon_framework::DeadLetter>().list(),
        ));
    // Not migrated either.
    let error = builder.build(config).await.unwrap_err();
    let Error::Boot(problems) = &error else {
        panic!("{error}")
    };
    let text = error.to_string();
    for expected in [
        "no provider named `memcached`",
        "the cache providers compiled in are: memory",
        "subscriber `points-counter on loyalty.points_added` is registered twice",
        "DeadLetter belongs to no registered module",
        "has migrations not applied",
        "link table `supplier_supplier_brand_brand` is not created",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(problems.len() >= 6, "{text}");
    assert!(problems.iter().all(|p| !p.help.is_empty()));

    // Once migrated and with a known provider, what is left is the step's missing service.
    let dir = tempfile::tempdir().unwrap();
    let config = config_for_missing(dir.path());
    let mut builder = gorgon_example_shop::app(&config).unwrap();
    let step = gorgon_workflows::Step::new("needs-missing", needs_missing);
    let workflow =
        gorgon_workflows::Workflow::define("broken", move |b, input| b.step(&step, input)).unwrap();
    builder.workflow(&workflow);
    let prepared = builder.prepare(config).await.unwrap();
    prepared.migrations().migrate(|_| {}).await.unwrap();
    let error = prepared.build().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("workflow `broken`: step `needs-missing` needs the service shop::Missing"),
        "{error}"
    );
}

fn config_for_missing(dir: &std::path::Path) -> Config {
    config("sqlite", dir, "")
}

#[tokio::test]
async fn the_application_overrides_a_plugins_workflow_and_a_plugin_registers_once() {
    async fn mine(input: NewBrand) -> gorgon_workflows::StepResult<gorgon_example_brand::Brand> {
        Err(gorgon_workflows::StepFailure::permanent(format!(
            "the application's own create-brand refused {}",
            input.name
        )))
    }
    let t = boot_with("sqlite", "", |app| {
        let step = gorgon_workflows::Step::new("app-create-brand", mine);
        let workflow = gorgon_workflows::Workflow::define("create-brand", move |b, input| {
            b.step(&step, input)
        })
        .unwrap();
        app.workflow(&workflow);
    })
    .await;
    let workflow = gorgon_example_brand::create_brand_workflow().unwrap();
    // The registered flow is the application's: running the plugin's definition by the same
    // name is refused as a different flow, and the application's runs.
    let error = t
        .app
        .workflows()
        .run(
            &workflow,
            NewBrand {
                name: "X".into(),
                country: None,
            },
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("create-brand"), "{error}");

    let dir = tempfile::tempdir().unwrap();
    let config = config("sqlite", dir.path(), "");
    let mut builder = gorgon_example_shop::app(&config).unwrap();
    builder.plugin(gorgon_example_brand::BrandPlugin);
    let error = builder.prepare(config).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("plugin `brand` is registered twice"),
        "{error}"
    );
}

#[test]
fn configuration_profiles_and_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Config::dev(dir.path()).unwrap();
    assert_eq!(dev.database_url(), "sqlite://gorgon.db");
    assert_eq!(dev.project.worker_mode, WorkerMode::Shared);
    let error = Loader::new()
        .root(dir.path())
        .profile(Profile::Prod)
        .env(BTreeMap::new())
        .load()
        .unwrap_err();
    let text = error.to_string();
    for key in [
        "project.database_url",
        "project.http.jwt_secret",
        "project.http.cookie_secret",
    ] {
        assert!(text.contains(key), "{text}");
    }
    let env = BTreeMap::from([
        ("DATABASE_URL".to_owned(), "postgres://db/shop".to_owned()),
        (
            "GORGON__PROJECT__HTTP__JWT_SECRET".to_owned(),
            "supersecret".to_owned(),
        ),
        (
            "GORGON__PROJECT__HTTP__COOKIE_SECRET".to_owned(),
            "a-long-random-cookie-secret".to_owned(),
        ),
        (
            "GORGON__PROJECT__WORKER_MODE".to_owned(),
            "worker".to_owned(),
        ),
    ]);
    let error = Loader::new()
        .root(dir.path())
        .profile(Profile::Prod)
        .env(env.clone())
        .load()
        .unwrap_err();
    assert!(
        error.to_string().contains("development secret is refused"),
        "{error}"
    );
    let mut env = env;
    env.insert(
        "GORGON__PROJECT__HTTP__JWT_SECRET".into(),
        "another-long-random-secret".into(),
    );
    let prod = Loader::new()
        .root(dir.path())
        .profile(Profile::Prod)
        .env(env)
        .load()
        .unwrap();
    assert_eq!(prod.project.worker_mode, WorkerMode::Worker);
    assert_eq!(prod.provider_name("event_bus", "local", "redis"), "redis");
    std::fs::write(dir.path().join("gorgon.toml"), "[project]\nport = 1\n").unwrap();
    let error = Config::dev(dir.path()).unwrap_err();
    assert!(error.to_string().contains("port"), "{error}");
}

/// The shop as `gorgon start` serves it (the core API first), with an admin logged in.
async fn boot_http(database: &str) -> (TestApp, gorgon_http::testing::Client) {
    let test = boot_with(database, "", |builder| {
        builder.plugin_first(gorgon_api::CorePlugin);
    })
    .await;
    let auth = test.service::<gorgon_api::auth_module::AuthService>();
    let identity = auth
        .register("admin@shop.test", "supersecret")
        .await
        .unwrap();
    let user = test
        .service::<gorgon_api::user::UserService>()
        .create_user(gorgon_api::user::NewUser {
            email: "admin@shop.test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    auth.link_actor(&identity.id, "user", &user.id)
        .await
        .unwrap();
    let mut client = gorgon_http::testing::Client::new(gorgon_http::router(&test.app));
    client.login("admin@shop.test", "supersecret").await;
    (test, client)
}

#[tokio::test]
async fn restock_orders_route_validates_runs_the_workflow_and_rolls_back() {
    use axum::http::{Method, StatusCode};
    for database in DATABASES {
        let (test, client) = boot_http(database).await;
        let suppliers = test.service::<SupplierService>();
        let open = suppliers
            .suppliers
            .create(json!({ "name": "Acme", "email": "orders@acme.test" }))
            .await
            .unwrap();
        let closed = suppliers
            .suppliers
            .create(
                json!({ "name": "Closed Co", "email": "no@closed.test", "accepts_orders": false }),
            )
            .await
            .unwrap();
        let body = json!({
            "supplier_id": open.id,
            "items": [
                { "product_id": "prod_shirt", "quantity": 3, "unit_cost": 4.5 },
                { "product_id": "prod_mug", "quantity": 1, "unit_cost": 0 }
            ],
            "notes": "before Friday"
        });
        let (status, created) = client
            .admin(Method::POST, "/admin/restock-orders", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::OK, "{database}: {created}");
        let order = &created["restock_order"];
        assert_eq!(order["status"], "sent");
        assert_eq!(order["notes"], "before Friday");
        assert_eq!(order["items"].as_array().unwrap().len(), 2);

        // The seed's schema, each violation naming its field.
        for (bad, message) in [
            (
                json!({ "supplier_id": open.id, "items": [{ "product_id": "p", "quantity": 0, "unit_cost": 1 }] }),
                "Invalid request: Value for field 'items.0.quantity' too small, expected at least: '1'",
            ),
            (
                json!({ "supplier_id": open.id, "items": [{ "product_id": "p", "quantity": 1, "unit_cost": -1 }] }),
                "Invalid request: Value for field 'items.0.unit_cost' too small, expected at least: '0'",
            ),
            (
                json!({ "items": [] }),
                "Invalid request: Field 'supplier_id' is required",
            ),
            (
                json!({ "supplier_id": open.id, "items": [{ "product_id": "p", "quantity": "two", "unit_cost": 1 }] }),
                "Invalid request: Expected type: 'number' for field 'items.0.quantity', got: 'string'",
            ),
            (
                json!({ "supplier_id": open.id, "items": [], "discount": 5 }),
                "Invalid request: Unrecognized fields: 'discount'",
            ),
        ] {
            let (status, error) = client
                .admin(Method::POST, "/admin/restock-orders", Some(bad))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
            assert_eq!(error["type"], "invalid_data");
            assert_eq!(error["message"], message);
        }
        let (status, error) = client
            .admin(
                Method::POST,
                "/admin/restock-orders",
                Some(json!({ "supplier_id": "sup_nope", "items": [{ "product_id": "p", "quantity": 1, "unit_cost": 1 }] })),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
        // A supplier that refuses: the workflow rolls back, nothing is left.
        let before = suppliers
            .restock_orders
            .list(json!({}), FindConfig::new())
            .await
            .unwrap()
            .len();
        let mut refused = body.clone();
        refused["supplier_id"] = json!(closed.id);
        let (status, error) = client
            .admin(Method::POST, "/admin/restock-orders", Some(refused))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["type"], "not_allowed");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("does not take orders"),
            "{error}"
        );
        let after = suppliers
            .restock_orders
            .list(json!({}), FindConfig::new())
            .await
            .unwrap()
            .len();
        assert_eq!(before, after);

        // The restock runs are listed with Medusa's keys and nesting.
        let (status, list) = client
            .admin(
                Method::GET,
                "/admin/workflows-executions?workflow_id=restock",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["count"], 2, "{list}");
        gorgon_http::testing::assert_same_shape(
            &list,
            &gorgon_http::testing::golden("list_default"),
        );
        let reverted = list["workflow_executions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["state"] == "reverted")
            .unwrap();
        let (_, detail) = client
            .admin(
                Method::GET,
                &format!(
                    "/admin/workflows-executions/{}",
                    reverted["id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        gorgon_http::testing::assert_same_shape(
            &detail,
            &gorgon_http::testing::golden("retrieve_failed_complete_cart"),
        );
        let done = list["workflow_executions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["state"] == "done")
            .unwrap();
        let (_, detail) = client
            .admin(
                Method::GET,
                &format!(
                    "/admin/workflows-executions/restock/{}",
                    done["transaction_id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        gorgon_http::testing::assert_same_shape(
            &detail,
            &gorgon_http::testing::golden("retrieve_complete_cart"),
        );
    }
}

#[tokio::test]
async fn brand_routes_create_list_update_delete() {
    use axum::http::{Method, StatusCode};
    for database in DATABASES {
        let (_test, client) = boot_http(database).await;
        let (status, created) = client
            .admin(
                Method::POST,
                "/admin/brands",
                Some(json!({ "name": "Northwind" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let id = created["brand"]["id"].as_str().unwrap().to_owned();
        assert_eq!(
            created["brand"]["country"], "fr",
            "the plugin's default_country"
        );
        let (status, error) = client
            .admin(
                Method::POST,
                "/admin/brands",
                Some(json!({ "name": "A name far too long" })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        let (_, list) = client
            .admin(
                Method::GET,
                "/admin/brands?fields=name&order=-created_at",
                None,
            )
            .await;
        assert_eq!(list["count"], 1);
        assert_eq!(list["brands"][0], json!({ "id": id, "name": "Northwind" }));
        let (status, updated) = client
            .admin(
                Method::POST,
                &format!("/admin/brands/{id}"),
                Some(json!({ "country": "de" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{updated}");
        assert_eq!(updated["brand"]["country"], "de");
        let (status, deleted) = client
            .admin(Method::DELETE, &format!("/admin/brands/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            deleted,
            json!({ "id": id, "object": "brand", "deleted": true })
        );
        let (status, _) = client
            .admin(Method::GET, &format!("/admin/brands/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn a_customer_reads_only_their_own_loyalty_account() {
    use axum::http::{Method, StatusCode};
    let (test, client) = boot_http("sqlite").await;
    let loyalty = test.service::<LoyaltyService>();
    let ada = loyalty
        .add_points("cus_ada", "ada@example.test", 100)
        .await
        .unwrap();
    let bob = loyalty
        .add_points("cus_bob", "bob@example.test", 200)
        .await
        .unwrap();
    let (_, key) = client
        .admin(
            Method::POST,
            "/admin/api-keys",
            Some(json!({ "title": "storefront", "type": "publishable" })),
        )
        .await;
    let pk = key["api_key"]["token"].as_str().unwrap().to_owned();
    // Customers come from the customer module with the commerce modules; a token for one is
    // what `/auth/customer/emailpass` issues once it exists.
    let token = |actor: &str| {
        gorgon_http::Jwt::of(&test.app)
            .issue(
                &gorgon_http::AuthContext {
                    actor_id: actor.into(),
                    actor_type: "customer".into(),
                    auth_identity_id: format!("authid_{actor}"),
                    app_metadata: json!({ "customer_id": actor }),
                    method: None,
                },
                Value::Null,
            )
            .unwrap()
    };
    let as_ada = format!("Bearer {}", token("cus_ada"));
    let get = |path: String, headers: Vec<(&'static str, String)>| {
        let client = client.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client.call(Method::GET, &path, &headers, None).await
        }
    };
    let (status, _, own) = get(
        "/store/loyalty-accounts/me".into(),
        vec![
            ("x-publishable-api-key", pk.clone()),
            ("authorization", as_ada.clone()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(own["loyalty_account"]["points"], 100);
    let (status, _, _) = get(
        format!("/store/loyalty-accounts/{}", ada.id),
        vec![
            ("x-publishable-api-key", pk.clone()),
            ("authorization", as_ada.clone()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, other) = get(
        format!("/store/loyalty-accounts/{}", bob.id),
        vec![
            ("x-publishable-api-key", pk.clone()),
            ("authorization", as_ada.clone()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{other}");
    // A user's token is not a customer's; no token is a guest.
    let (status, _, _) = get(
        "/store/loyalty-accounts/me".into(),
        vec![
            ("x-publishable-api-key", pk.clone()),
            ("authorization", format!("Bearer {}", client.token)),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get(
        "/store/loyalty-accounts/me".into(),
        vec![("x-publishable-api-key", pk.clone())],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get(
        "/store/loyalty-accounts/me".into(),
        vec![("authorization", as_ada.clone())],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no publishable key");
    // Every store route refuses a missing or unknown publishable key, token or not.
    let store_routes: Vec<String> = test
        .app
        .routes()
        .iter()
        .filter(|r| r.path().starts_with("/store"))
        .map(|r| r.path().replace("{id}", &ada.id))
        .collect();
    assert!(store_routes.len() >= 2);
    for path in store_routes {
        for key in [None, Some("pk_unknown"), Some("not-a-key")] {
            let mut headers = vec![("authorization", as_ada.clone())];
            if let Some(key) = key {
                headers.push(("x-publishable-api-key", key.to_owned()));
            }
            let (status, _, body) = get(path.clone(), headers).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{path} with {key:?}: {body}"
            );
            assert_eq!(body["type"], "not_allowed");
        }
    }
}
