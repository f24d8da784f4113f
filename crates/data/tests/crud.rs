//! The generated service on SQLite and on PostgreSQL: every test runs on a fresh database of
//! each kind and expects the same answers from both.

use chrono::{DateTime, Utc};
use gorgon_data::{
    Crud, Db, Direction, Error, ErrorKind, Filter, FindConfig, Migration, Migrator, Model, testing,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Draft,
    Sent,
    Received,
}

#[derive(Debug, Clone, Serialize, Deserialize, Model)]
#[model(prefix = "rsord")]
struct RestockOrder {
    id: String,
    #[model(searchable)]
    supplier: String,
    #[model(searchable)]
    reference: String,
    #[model(kind = "text", default)]
    status: Status,
    total: Decimal,
    #[model(default)]
    urgent: bool,
    metadata: Option<Value>,
    expected_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    #[model(has_many(RestockItem, by = "restock_order_id"), cascade)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    items: Option<Vec<RestockItem>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Model)]
#[model(prefix = "rsitem")]
struct RestockItem {
    id: String,
    restock_order_id: String,
    sku: String,
    quantity: i64,
    unit_price: Decimal,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    #[model(belongs_to(RestockOrder, by = "restock_order_id"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restock_order: Option<Box<RestockOrder>>,
}

const MIGRATIONS: &[Migration] = &[Migration {
    name: "0001_restock",
    postgres: include_str!("migrations/postgres/0001_restock.sql"),
    sqlite: include_str!("migrations/sqlite/0001_restock.sql"),
}];

struct Service {
    orders: Crud<RestockOrder>,
    items: Crud<RestockItem>,
}

async fn each() -> Vec<(testing::TestDb, Service)> {
    let mut out = Vec::new();
    for test in testing::each()
        .await
        .expect("PostgreSQL runs at DATABASE_URL")
    {
        Migrator::new(test.db.clone())
            .module("restock", MIGRATIONS)
            .migrate(|_| {})
            .await
            .expect("migrations apply");
        let service = Service {
            orders: Crud::new(test.db.clone()),
            items: Crud::new(test.db.clone()),
        };
        out.push((test, service));
    }
    out
}

/// Three orders (acme ×2, globex), the first two with items.
async fn seed(s: &Service) -> Vec<RestockOrder> {
    let orders = s
        .orders
        .create_many(&[
            json!({ "supplier": "Acme Corp", "reference": "PO-1", "total": "19.99", "urgent": true,
                    "expected_at": "2026-12-01T10:00:00Z", "metadata": { "dock": 3 } }),
            json!({ "supplier": "Acme Corp", "reference": "PO-2", "total": 250, "status": "sent" }),
            json!({ "supplier": "Globex", "reference": "PO_3", "total": "5.5",
                    "expected_at": "2026-12-20T10:00:00.123Z" }),
        ])
        .await
        .unwrap();
    s.items
        .create_many(&[
            json!({ "restock_order_id": orders[0].id, "sku": "SHIRT-S", "quantity": 10, "unit_price": "1.999" }),
            json!({ "restock_order_id": orders[0].id, "sku": "SHIRT-M", "quantity": 3, "unit_price": "2" }),
            json!({ "restock_order_id": orders[1].id, "sku": "HAT", "quantity": 50, "unit_price": "5" }),
        ])
        .await
        .unwrap();
    orders
}

fn refs(orders: &[RestockOrder]) -> Vec<&str> {
    orders.iter().map(|o| o.reference.as_str()).collect()
}

#[tokio::test]
async fn create_fills_ids_and_timestamps_and_reads_back_the_same_on_both_databases() {
    for (test, s) in each().await {
        let orders = seed(&s).await;
        let first = &orders[0];
        assert!(
            first.id.starts_with("rsord_"),
            "{}: {}",
            test.name,
            first.id
        );
        assert_eq!(first.id.len(), "rsord_".len() + 26);
        assert!(
            orders[0].id < orders[1].id && orders[1].id < orders[2].id,
            "ids increase"
        );
        assert_eq!(first.status, Status::Draft, "the database default");
        assert!(first.urgent);
        assert!(!orders[1].urgent, "the database default");
        assert_eq!(first.total, Decimal::new(1999, 2), "money is exact");
        assert_eq!(orders[1].total, Decimal::from(250));
        assert_eq!(first.metadata, Some(json!({ "dock": 3 })));
        assert_eq!(first.created_at, first.updated_at);
        assert_eq!(first.deleted_at, None);

        let again = s
            .orders
            .retrieve(&first.id, FindConfig::new())
            .await
            .unwrap();
        assert_eq!(again.total.to_string(), "19.99");
        assert_eq!(again.created_at, first.created_at);
        assert_eq!(
            again
                .expected_at
                .map(|at| gorgon_data::format_timestamp(&at)),
            Some("2026-12-01T10:00:00.000Z".to_owned())
        );
        let raw: Vec<Value> = s
            .orders
            .list_as(
                Filter::id(&orders[2].id),
                FindConfig::new().select(["id", "total", "expected_at"]),
            )
            .await
            .unwrap();
        assert_eq!(
            raw,
            vec![
                json!({ "id": orders[2].id, "total": "5.5", "expected_at": "2026-12-20T10:00:00.123Z" })
            ],
            "{}: select reads only those fields, timestamps as toISOString writes them",
            test.name
        );
    }
}

#[tokio::test]
async fn filters_use_medusas_operators() {
    for (test, s) in each().await {
        seed(&s).await;
        let list = |filter: Value| {
            let orders = s.orders.clone();
            async move { orders.list(filter, FindConfig::new()).await.unwrap() }
        };
        let name = test.name;
        assert_eq!(
            refs(&list(json!({ "supplier": "Globex" })).await),
            ["PO_3"],
            "{name}"
        );
        assert_eq!(
            refs(&list(json!({ "reference": ["PO-1", "PO_3"] })).await),
            ["PO-1", "PO_3"]
        );
        assert_eq!(
            refs(&list(json!({ "reference": { "$in": ["PO-2"] } })).await),
            ["PO-2"]
        );
        assert_eq!(
            refs(&list(json!({ "reference": { "$nin": ["PO-2"] } })).await),
            ["PO-1", "PO_3"]
        );
        assert_eq!(
            refs(&list(json!({ "reference": { "$in": [] } })).await),
            Vec::<&str>::new()
        );
        assert_eq!(
            refs(&list(json!({ "status": { "$ne": "draft" } })).await),
            ["PO-2"]
        );
        assert_eq!(
            refs(&list(json!({ "total": { "$gt": 19.99 } })).await),
            ["PO-2"],
            "{name}: decimals compare as numbers"
        );
        assert_eq!(
            refs(&list(json!({ "total": { "$gte": "19.99", "$lt": 250 } })).await),
            ["PO-1"]
        );
        assert_eq!(
            refs(&list(json!({ "total": { "$lte": "5.50" } })).await),
            ["PO_3"]
        );
        assert_eq!(refs(&list(json!({ "urgent": true })).await), ["PO-1"]);
        assert_eq!(
            refs(&list(json!({ "expected_at": { "$gte": "2026-12-10" } })).await),
            ["PO_3"]
        );
        assert_eq!(refs(&list(json!({ "expected_at": null })).await), ["PO-2"]);
        assert_eq!(
            refs(&list(json!({ "expected_at": { "$exists": true } })).await),
            ["PO-1", "PO_3"]
        );
        assert_eq!(
            refs(&list(json!({ "metadata": { "$exists": false } })).await),
            ["PO-2", "PO_3"]
        );
        assert_eq!(
            refs(&list(json!({ "supplier": { "$like": "Acme%" } })).await),
            ["PO-1", "PO-2"]
        );
        assert_eq!(
            refs(&list(json!({ "supplier": { "$like": "acme%" } })).await),
            Vec::<&str>::new(),
            "{name}: $like is case-sensitive"
        );
        assert_eq!(
            refs(&list(json!({ "supplier": { "$ilike": "acme%" } })).await),
            ["PO-1", "PO-2"]
        );
        assert_eq!(
            refs(&list(json!({ "$or": [{ "supplier": "Globex" }, { "status": "sent" }] })).await),
            ["PO-2", "PO_3"]
        );
        assert_eq!(
            refs(
                &list(json!({ "$and": [{ "supplier": "Acme Corp" }, { "urgent": false }] })).await
            ),
            ["PO-2"]
        );
        assert_eq!(
            refs(&list(json!({ "q": "glob" })).await),
            ["PO_3"],
            "{name}: q searches searchable fields"
        );
        assert_eq!(
            refs(&list(json!({ "q": "PO_" })).await),
            ["PO_3"],
            "{name}: q takes _ literally"
        );
        assert_eq!(
            refs(&list(json!({ "q": "%" })).await),
            Vec::<&str>::new(),
            "q takes % literally"
        );
        // A filter on a relation: orders with an item of more than 20.
        assert_eq!(
            refs(&list(json!({ "items": { "quantity": { "$gt": 20 } } })).await),
            ["PO-2"]
        );
        assert_eq!(
            refs(&list(json!({ "items": { "sku": { "$like": "SHIRT%" } } })).await),
            ["PO-1"]
        );
        let items = s
            .items
            .list(
                json!({ "restock_order": { "supplier": "Acme Corp", "urgent": true } }),
                FindConfig::new(),
            )
            .await
            .unwrap();
        assert_eq!(items.len(), 2, "{name}: a filter through belongs_to");
    }
}

#[tokio::test]
async fn bad_filters_are_typed_errors_naming_the_field() {
    for (test, s) in each().await {
        seed(&s).await;
        let error = |filter: Value| {
            let orders = s.orders.clone();
            async move { orders.list(filter, FindConfig::new()).await.unwrap_err() }
        };
        let e = error(json!({ "colour": "red" })).await;
        assert!(
            matches!(&e, Error::UnknownField { field, .. } if field == "colour"),
            "{e}"
        );
        assert!(
            e.to_string().contains("supplier"),
            "the message lists the fields: {e}"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidData);
        let e = error(json!({ "total": { "$between": [1, 2] } })).await;
        assert!(
            matches!(&e, Error::UnknownOperator { field, operator } if field == "total" && operator == "$between"),
            "{e}"
        );
        let e = error(json!({ "total": { "$gt": "lots" } })).await;
        assert!(
            matches!(&e, Error::InvalidValue { field, .. } if field == "total"),
            "{e}"
        );
        let e = error(json!({ "urgent": "yes" })).await;
        assert!(
            matches!(&e, Error::InvalidValue { field, .. } if field == "urgent"),
            "{e}"
        );
        let e = error(json!({ "expected_at": { "$gt": "next tuesday" } })).await;
        assert!(
            matches!(&e, Error::InvalidValue { field, .. } if field == "expected_at"),
            "{e}"
        );
        let e = error(json!({ "items": { "colour": 1 } })).await;
        assert!(
            matches!(&e, Error::UnknownField { field, entity, .. } if field == "items.colour" && *entity == "RestockItem"),
            "{e}"
        );
        let e = error(json!({ "reference": { "$in": "PO-1" } })).await;
        assert!(
            matches!(&e, Error::InvalidValue { field, .. } if field == "reference"),
            "{e}"
        );
        let e = error(json!({ "total": { "$like": "1%" } })).await;
        assert!(matches!(&e, Error::InvalidValue { .. }), "{e}");
        let e = error(json!({ "$or": { "a": 1 } })).await;
        assert!(
            matches!(&e, Error::InvalidValue { field, .. } if field == "$or"),
            "{e}"
        );
        let e = error(json!(["not", "an", "object"])).await;
        assert!(matches!(&e, Error::InvalidValue { .. }), "{e}");
        // Field names are never SQL: a quote in one is just an unknown field.
        let e = error(json!({ "supplier\" OR 1=1 --": "x" })).await;
        assert!(matches!(&e, Error::UnknownField { .. }), "{e}");
        let e = s
            .orders
            .list(
                Filter::all(),
                FindConfig::new().order_by("colour", Direction::Asc),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::UnknownField { field, .. } if field == "colour"),
            "{e}"
        );
        let e = s
            .orders
            .list(Filter::all(), FindConfig::new().relations(["lines"]))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::UnknownField { field, .. } if field == "lines.*"),
            "{}: {e}",
            test.name
        );
    }
}

#[tokio::test]
async fn order_pages_and_counts_apply_to_the_root() {
    for (test, s) in each().await {
        seed(&s).await;
        let by_total = s
            .orders
            .list(
                Filter::all(),
                FindConfig::new().order_by("total", Direction::Desc),
            )
            .await
            .unwrap();
        assert_eq!(
            refs(&by_total),
            ["PO-2", "PO-1", "PO_3"],
            "{}: decimals order as numbers",
            test.name
        );
        let (page, count) = s
            .orders
            .list_and_count(
                json!({ "supplier": { "$ne": "Nobody" } }),
                FindConfig::new()
                    .order_by("reference", Direction::Asc)
                    .skip(1)
                    .take(1)
                    .relations(["items"]),
            )
            .await
            .unwrap();
        assert_eq!(count, 3);
        assert_eq!(refs(&page), ["PO-2"]);
        assert_eq!(page[0].items.as_ref().map(Vec::len), Some(1));
        let skipped = s
            .orders
            .list(Filter::all(), FindConfig::new().skip(2))
            .await
            .unwrap();
        assert_eq!(refs(&skipped), ["PO_3"], "{}: skip without take", test.name);
        // Beyond a signed 64-bit count: a typed error naming the field, not a panic.
        let error = s
            .orders
            .list(Filter::all(), FindConfig::new().skip(u64::MAX))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("skip"), "{}: {error}", test.name);
    }
}

#[tokio::test]
async fn relations_nest_both_ways() {
    for (test, s) in each().await {
        let orders = seed(&s).await;
        let read = s
            .orders
            .retrieve(&orders[0].id, FindConfig::new().relations(["items"]))
            .await
            .unwrap();
        let items = read.items.unwrap();
        let skus: Vec<&str> = items.iter().map(|i| i.sku.as_str()).collect();
        assert_eq!(skus, ["SHIRT-S", "SHIRT-M"], "{}", test.name);
        assert_eq!(items[0].unit_price.to_string(), "1.999");
        let none = s
            .orders
            .retrieve(&orders[2].id, FindConfig::new().relations(["items"]))
            .await
            .unwrap();
        assert!(
            none.items.as_ref().is_some_and(Vec::is_empty),
            "no items is an empty list"
        );

        let items = s
            .items
            .list(
                Filter::all(),
                FindConfig::new().relations(["restock_order.items"]),
            )
            .await
            .unwrap();
        assert_eq!(items.len(), 3);
        let parent = items[0].restock_order.as_ref().unwrap();
        assert_eq!(parent.reference, "PO-1");
        assert_eq!(parent.items.as_ref().unwrap().len(), 2, "two levels deep");

        let partial: Vec<Value> = s
            .orders
            .list_as(
                Filter::id(&orders[1].id),
                FindConfig::new().select(["reference", "items.sku"]),
            )
            .await
            .unwrap();
        assert_eq!(
            partial,
            vec![
                json!({ "id": orders[1].id, "reference": "PO-2", "items": [{ "id": partial[0]["items"][0]["id"], "sku": "HAT" }] })
            ],
            "{}: join keys read only to join are not returned",
            test.name
        );
    }
}

#[tokio::test]
async fn updates_by_id_and_by_selector() {
    for (test, s) in each().await {
        let orders = seed(&s).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let updated = s
            .orders
            .update(
                &orders[0].id,
                json!({ "status": "sent", "total": "21.00", "metadata": null }),
            )
            .await
            .unwrap();
        assert_eq!(updated.status, Status::Sent);
        assert_eq!(updated.total.to_string(), "21.00");
        assert_eq!(updated.metadata, None);
        assert!(updated.updated_at > updated.created_at, "{}", test.name);
        let all = s
            .orders
            .update_where(
                json!({ "supplier": "Acme Corp" }),
                json!({ "urgent": true }),
            )
            .await
            .unwrap();
        assert_eq!(refs(&all), ["PO-1", "PO-2"]);
        assert!(all.iter().all(|o| o.urgent));
        let e = s
            .orders
            .update("rsord_missing", json!({ "urgent": true }))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::NotFound { entity: "RestockOrder", id } if id == "rsord_missing"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "RestockOrder with id: rsord_missing was not found"
        );
        let e = s
            .orders
            .update(&orders[0].id, json!({ "id": "other" }))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidValue { field, .. } if field == "id"),
            "{e}"
        );
        let e = s
            .orders
            .update(&orders[0].id, json!({ "colour": "red" }))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::UnknownField { field, .. } if field == "colour"),
            "{e}"
        );
        let e = s
            .orders
            .update(&orders[0].id, json!({ "total": "abc" }))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidValue { field, .. } if field == "total"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn bad_writes_are_typed_errors_and_keep_what_was_there() {
    for (test, s) in each().await {
        seed(&s).await;
        let e = s
            .orders
            .create(json!({ "supplier": "Initech", "total": 1 }))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                Error::MissingField {
                    field: "reference",
                    ..
                }
            ),
            "{e}"
        );
        let e = s
            .orders
            .create(json!({ "supplier": "Initech", "reference": "PO-1", "total": 1 }))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Duplicate {
                    entity: "RestockOrder",
                    ..
                }
            ),
            "{}: {e}",
            test.name
        );
        assert_eq!(e.kind(), ErrorKind::Duplicate);
        let e = s
            .items
            .create(json!({ "restock_order_id": "rsord_nope", "sku": "X", "quantity": 1, "unit_price": 1 }))
            .await
            .unwrap_err();
        assert!(matches!(&e, Error::Constraint { .. }), "{}: {e}", test.name);
        // A batch with one bad row writes nothing.
        let e = s
            .orders
            .create_many(&[
                json!({ "supplier": "Initech", "reference": "PO-9", "total": 1 }),
                json!({ "supplier": "Initech", "reference": "PO-9", "total": 2 }),
            ])
            .await
            .unwrap_err();
        assert!(matches!(&e, Error::Duplicate { .. }), "{e}");
        let (_, count) = s
            .orders
            .list_and_count(Filter::all(), FindConfig::new())
            .await
            .unwrap();
        assert_eq!(
            count, 3,
            "{}: nothing of the failed batch was kept",
            test.name
        );
        let e = s
            .orders
            .create(
                json!({ "supplier": "I", "reference": "R", "total": 1, "items": [{ "sku": "x" }] }),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("their own model"), "{e}");
        let e = s.orders.retrieve("", FindConfig::new()).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidValue { field, .. } if field == "id"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn soft_delete_cascades_and_restore_brings_back_only_what_went_together() {
    for (test, s) in each().await {
        let orders = seed(&s).await;
        let shirt_m = s
            .items
            .list(json!({ "sku": "SHIRT-M" }), FindConfig::new())
            .await
            .unwrap()
            .remove(0);
        // An item deleted on its own first.
        s.items.soft_delete([&shirt_m.id]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let touched = s.orders.soft_delete([&orders[0].id]).await.unwrap();
        assert_eq!(
            touched["restock_order_id"],
            vec![orders[0].id.clone()],
            "{}",
            test.name
        );
        assert_eq!(
            touched["restock_item_id"].len(),
            1,
            "the still-live item cascades"
        );
        let e = s
            .orders
            .retrieve(&orders[0].id, FindConfig::new())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let deleted = s
            .orders
            .retrieve(&orders[0].id, FindConfig::new().with_deleted())
            .await
            .unwrap();
        assert!(deleted.deleted_at.is_some());
        let gone: Vec<RestockOrder> = s
            .orders
            .list(
                json!({ "deleted_at": { "$exists": true } }),
                FindConfig::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            refs(&gone),
            ["PO-1"],
            "filtering on deleted_at includes deleted records"
        );
        // The unique index spans live records only: the reference can be reused meanwhile.
        assert_eq!(
            s.orders.soft_delete([&orders[0].id]).await.unwrap().len(),
            0,
            "deleting twice touches nothing"
        );

        let restored = s.orders.restore([&orders[0].id]).await.unwrap();
        assert_eq!(restored["restock_order_id"], vec![orders[0].id.clone()]);
        assert_eq!(restored["restock_item_id"].len(), 1);
        let back = s
            .orders
            .retrieve(&orders[0].id, FindConfig::new().relations(["items"]))
            .await
            .unwrap();
        let skus: Vec<&str> = back
            .items
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| i.sku.as_str())
            .collect();
        assert_eq!(
            skus,
            ["SHIRT-S"],
            "{}: the item deleted on its own stays deleted",
            test.name
        );
    }
}

#[tokio::test]
async fn delete_removes_for_good_with_cascading_relations() {
    for (test, s) in each().await {
        let orders = seed(&s).await;
        let removed = s
            .orders
            .delete([&orders[0].id, &orders[2].id])
            .await
            .unwrap();
        assert_eq!(removed["restock_order_id"].len(), 2, "{}", test.name);
        assert_eq!(removed["restock_item_id"].len(), 2);
        let left = s
            .items
            .list(Filter::all(), FindConfig::new().with_deleted())
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].sku, "HAT");
        assert!(
            s.orders
                .delete(Vec::<String>::new())
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn a_transaction_is_joined_by_every_call_inside_it() {
    for (test, s) in each().await {
        let orders = seed(&s).await;
        let db: Db = s.orders.db().clone();
        // The second write fails: the first is undone with it.
        let result: Result<(), Error> = db
            .transaction(|| async {
                s.orders.update(&orders[0].id, json!({ "status": "received" })).await?;
                assert!(db.in_transaction());
                s.items
                    .create(json!({ "restock_order_id": "rsord_nope", "sku": "X", "quantity": 1, "unit_price": 1 }))
                    .await?;
                Ok(())
            })
            .await;
        assert!(result.is_err());
        let first = s
            .orders
            .retrieve(&orders[0].id, FindConfig::new())
            .await
            .unwrap();
        assert_eq!(
            first.status,
            Status::Draft,
            "{}: the first write was rolled back",
            test.name
        );

        // A nested transaction joins through a savepoint: its failure undoes only itself.
        db.transaction(|| async {
            s.orders
                .update(&orders[0].id, json!({ "status": "sent" }))
                .await?;
            let inner: Result<(), Error> = db
                .transaction(|| async {
                    s.orders
                        .update(&orders[1].id, json!({ "status": "received" }))
                        .await?;
                    Err(Error::Conflict)
                })
                .await;
            assert!(inner.is_err());
            // Seen inside the transaction, not outside it yet.
            let inside = s.orders.retrieve(&orders[0].id, FindConfig::new()).await?;
            assert_eq!(inside.status, Status::Sent);
            let outside = tokio::spawn({
                let orders = s.orders.clone();
                let id = inside.id.clone();
                async move {
                    orders
                        .retrieve(&id, FindConfig::new())
                        .await
                        .map(|o| o.status)
                }
            });
            // Another task reads outside the transaction: the last commit.
            assert_eq!(outside.await.unwrap()?, Status::Draft, "not committed yet");
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        let first = s
            .orders
            .retrieve(&orders[0].id, FindConfig::new())
            .await
            .unwrap();
        let second = s
            .orders
            .retrieve(&orders[1].id, FindConfig::new())
            .await
            .unwrap();
        assert_eq!(first.status, Status::Sent, "{}", test.name);
        assert_eq!(
            second.status,
            Status::Sent,
            "the failed nested update was undone"
        );

        // A panic inside rolls back too.
        let db2 = db.clone();
        let orders2 = s.orders.clone();
        let id = orders[2].id.clone();
        let panicked = tokio::spawn(async move {
            db2.transaction(|| async {
                orders2.update(&id, json!({ "status": "received" })).await?;
                panic!("the handler crashed");
                #[allow(unreachable_code)]
                Ok::<_, Error>(())
            })
            .await
        })
        .await;
        assert!(panicked.is_err());
        let third = s
            .orders
            .retrieve(&orders[2].id, FindConfig::new())
            .await
            .unwrap();
        assert_eq!(third.status, Status::Draft, "{}", test.name);
    }
}
