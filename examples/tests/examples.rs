//! The seed examples: each demo runs to its checked end state, and the behaviours they show hold
//! when checked from outside (fresh services, the runs' step states, the files on disk).

use gorgon_examples::{brand, order, restock, run_as};
use gorgon_orchestration::StepState;
use gorgon_workflows::{App, Error, RunOptions, Services, TransactionState};

fn reverted_at(error: &Error, step: &str) -> bool {
    error.state() == Some(TransactionState::Reverted)
        && error.errors().first().is_some_and(|e| e.action == step)
}

#[tokio::test]
async fn the_three_demos_reach_their_expected_end_states() -> anyhow::Result<()> {
    restock::demo().await?;
    brand::demo().await?;
    order::demo().await?;
    Ok(())
}

#[tokio::test]
async fn a_refused_restock_leaves_no_order_and_no_items() -> anyhow::Result<()> {
    let (restocks, suppliers) = restock::services();
    let app = App::new(Services::new().with(restocks.clone()).with(suppliers));
    let workflow = restock::workflow()?;
    app.register(&workflow)?;

    let input = restock::RestockInput {
        supplier: "tiny".into(),
        lines: vec![restock::Line::new("tee", 30), restock::Line::new("mug", 30)],
    };
    let run = app
        .start(&workflow, input, RunOptions::transaction_id("refused"))
        .await?;
    let error = run.result().unwrap_err();
    assert!(reverted_at(&error, "confirm-restock-order"), "{error}");
    assert!(restocks.orders().is_empty());
    assert!(restocks.items().is_empty());
    for step in ["create-restock-order", "create-restock-items"] {
        let step_run = run.execution().step(step).expect(step);
        assert_eq!(step_run.compensate.state, StepState::Reverted, "{step}");
    }
    Ok(())
}

#[tokio::test]
async fn registering_without_a_service_names_its_type() -> anyhow::Result<()> {
    let (restocks, _suppliers) = restock::services();
    let app = App::new(Services::new().with(restocks));
    let error = app.register(&restock::workflow()?).unwrap_err();
    match error {
        Error::MissingService {
            type_name, step, ..
        } => {
            assert!(type_name.ends_with("restock::Suppliers"), "{type_name}");
            assert_eq!(step, "confirm-restock-order");
        }
        other => panic!("expected a missing service, got {other}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_failed_brand_run_deletes_its_file_and_restores_the_logo() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let services = brand::BrandServices::new(dir.path())?;
    let app = App::new(services.registry());
    let workflow = brand::workflow()?;
    app.register(&workflow)?;
    let input = |marker: &str| brand::BrandInput {
        handle: "acme".into(),
        name: "Acme".into(),
        logo_file_name: "logo.png".into(),
        logo: brand::logo_bytes(marker),
    };

    let acme = run_as(&app, &workflow, "first", input("v1")).await?;
    let first = dir.path().join("public/brands/acme/first-logo.png");
    assert_eq!(
        acme.logo.as_deref(),
        Some("public/brands/acme/first-logo.png")
    );
    assert_eq!(std::fs::read(&first)?, brand::logo_bytes("v1"));

    services.search.set_down(true);
    let run = app
        .start(&workflow, input("v2"), RunOptions::transaction_id("second"))
        .await?;
    let error = run.result().unwrap_err();
    assert!(reverted_at(&error, "index-brand"), "{error}");
    // Indexing was tried three times (max_retries(2)) before the run rolled back.
    assert_eq!(services.search.calls(), 1 + 3);
    // The second upload happened and was deleted again; the first file is untouched.
    let upload = run.execution().step("upload-brand-logo").expect("upload");
    assert_eq!(upload.compensate.state, StepState::Reverted);
    assert!(
        !dir.path()
            .join("public/brands/acme/second-logo.png")
            .exists()
    );
    assert_eq!(std::fs::read(&first)?, brand::logo_bytes("v1"));
    assert_eq!(services.brands.all(), vec![acme]);
    assert_eq!(
        services.files_on_disk()?,
        vec!["public/brands/acme/first-logo.png"]
    );
    Ok(())
}

#[tokio::test]
async fn the_confirmation_is_sent_only_for_a_captured_payment() -> anyhow::Result<()> {
    let services = order::OrderServices::default();
    let app = App::new(services.registry());
    let workflow = order::workflow()?;
    app.register(&workflow)?;

    let run = app
        .start(
            &workflow,
            order::input("bob@example.com", order::BANK_TRANSFER),
            RunOptions::transaction_id("bank-transfer"),
        )
        .await?;
    let placed = run.result()?;
    assert_eq!(
        placed.payment.status,
        order::PaymentStatus::AwaitingTransfer
    );
    assert_eq!(placed.order.status, order::OrderStatus::Placed);
    assert_eq!(placed.confirmation, None);
    let confirmation = run.execution().step("send-confirmation").expect("step");
    assert_eq!(confirmation.invoke.state, StepState::Skipped);
    assert!(services.mailer.sent().is_empty());

    let placed = run_as(
        &app,
        &workflow,
        "card",
        order::input("ann@example.com", "tok_visa"),
    )
    .await?;
    assert_eq!(placed.payment.status, order::PaymentStatus::Captured);
    assert_eq!(services.mailer.sent(), vec![placed.confirmation.unwrap()]);
    Ok(())
}

#[tokio::test]
async fn a_declined_card_releases_the_reservation_and_cancels_the_order() -> anyhow::Result<()> {
    let services = order::OrderServices::default();
    let app = App::new(services.registry());
    let workflow = order::workflow()?;
    app.register(&workflow)?;
    let stock_before = services.inventory.stock();

    let run = app
        .start(
            &workflow,
            order::input("cat@example.com", "tok_declined"),
            RunOptions::transaction_id("declined"),
        )
        .await?;
    let error = run.result().unwrap_err();
    assert!(reverted_at(&error, "process-payment"), "{error}");
    let orders = services.orders.all();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].status, order::OrderStatus::Cancelled);
    // The reservation was made (in parallel with the payment), then released.
    let reserve = run.execution().step("reserve-inventory").expect("step");
    assert_eq!(reserve.compensate.state, StepState::Reverted);
    assert!(services.inventory.reservations().is_empty());
    assert_eq!(services.inventory.stock(), stock_before);
    assert!(services.payments.all().is_empty());
    assert!(services.mailer.sent().is_empty());
    assert!(services.warehouses.allocations().is_empty());
    Ok(())
}

#[tokio::test]
async fn an_order_beyond_the_stock_fails_validation_and_creates_nothing() -> anyhow::Result<()> {
    let services = order::OrderServices::default();
    let app = App::new(services.registry());
    let workflow = order::workflow()?;
    app.register(&workflow)?;
    let mut input = order::input("dan@example.com", "tok_visa");
    input.lines[0].quantity = 11; // 10 tees on hand

    let error = run_as(&app, &workflow, "too-many", input)
        .await
        .unwrap_err();
    assert!(reverted_at(&error, "validate-inventory"), "{error}");
    assert!(services.orders.all().is_empty());
    assert!(services.payments.all().is_empty());
    Ok(())
}
