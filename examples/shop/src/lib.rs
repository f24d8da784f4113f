//! The seed patterns as an application written with Gorgon (`../shared/reference/seed-patterns.md`):
//!
//! - [`supplier`]: suppliers, restock orders and items; the seed's three-step restock workflow
//!   ([`flows::restock_workflow`]), which rolls back when the supplier refuses.
//! - [`loyalty`]: points per customer; adding points emits `loyalty.points_added`, and the
//!   [`subscribers::milestone_subscriber`] emails each milestone exactly once.
//! - [`orders`]: orders paid with points: "deduct points + update order" in one transaction
//!   ([`flows::redeem_points`]).
//! - the `brand` plugin (`gorgon-example-brand`), configured in `[plugins.brand]`, and links
//!   supplier ↔ brand (many-to-many) and order → loyalty account, read with Query.
//! - a scheduled job ([`jobs`]) and a `seed` script (`shop exec seed`).
//!
//! Run it: `cargo run -p gorgon-example-shop -- db migrate`, then `… -- exec seed`, then
//! `… -- start`.

pub mod api;
pub mod flows;
pub mod jobs;
pub mod loyalty;
pub mod orders;
pub mod subscribers;
pub mod supplier;

use std::time::Duration;

use gorgon_example_brand::{Brand, BrandPlugin, BrandService, NewBrand};
use gorgon_framework::{
    AppBuilder, BoxError, Config, Links, Script, ScriptArgs, Side, define_link,
};
use gorgon_workflows::Service;
use serde_json::json;

use crate::loyalty::{LoyaltyAccount, LoyaltyService};
use crate::orders::ShopOrder;
use crate::supplier::{Supplier, SupplierService};

/// The application: what `main` hands to `gorgon_cli::run`, and what the tests build.
pub fn app(config: &Config) -> Result<AppBuilder, BoxError> {
    let settings: jobs::Settings = config.settings()?;
    let mut app = AppBuilder::new();
    app.plugin(BrandPlugin)
        .module(supplier::SupplierModule)
        .module(loyalty::LoyaltyModule)
        .module(orders::OrderModule)
        // A supplier supplies many brands; a brand has many suppliers.
        .link(define_link(
            Side::of::<Supplier>().list(),
            Side::of::<Brand>().list(),
        ))
        // A loyalty account has many orders; an order has one account.
        .link(define_link(
            Side::of::<ShopOrder>().list(),
            Side::of::<LoyaltyAccount>(),
        ))
        .workflow(api::restock())
        .workflow(&flows::review_workflow()?)
        .workflow(&flows::redeem_workflow()?)
        .subscriber(subscribers::milestone_subscriber())
        .job(jobs::expire_drafts_job(Duration::from_millis(
            settings.expire_every_ms,
        )))
        .script(Script::new("seed", seed))
        .script(Script::new("add-points", add_points));
    for route in api::routes() {
        app.route(route);
    }
    Ok(app)
}

/// `shop exec add-points CUSTOMER EMAIL POINTS [TIMES]`: adds points (TIMES times, default
/// once), each addition emitting `loyalty.points_added`.
async fn add_points(args: ScriptArgs, loyalty: Service<LoyaltyService>) -> Result<(), BoxError> {
    let [customer, email, points, rest @ ..] = args.args.as_slice() else {
        return Err("usage: add-points CUSTOMER EMAIL POINTS [TIMES]".into());
    };
    let points: i64 = points
        .parse()
        .map_err(|_| format!("POINTS: `{points}` is not a number"))?;
    let times: u32 = match rest.first() {
        Some(times) => times
            .parse()
            .map_err(|_| format!("TIMES: `{times}` is not a number"))?,
        None => 1,
    };
    for _ in 0..times {
        let account = loyalty.add_points(customer, email, points).await?;
        println!("{customer}: {} points", account.points);
    }
    Ok(())
}

async fn seed(
    _args: ScriptArgs,
    suppliers: Service<SupplierService>,
    brands: Service<BrandService>,
    links: Service<Links>,
    loyalty: Service<LoyaltyService>,
) -> Result<(), BoxError> {
    let acme = suppliers
        .suppliers
        .create(json!({ "name": "Acme Textiles", "email": "orders@acme.test" }))
        .await?;
    for name in ["Northwind", "Contoso"] {
        let brand = brands
            .create_brand(NewBrand {
                name: name.into(),
                country: None,
            })
            .await?;
        links
            .create([json!({ "supplier": { "supplier_id": acme.id }, "brand": { "brand_id": brand.id } })])
            .await?;
    }
    loyalty
        .add_points("cus_demo", "demo@example.test", 950)
        .await?;
    println!(
        "seeded: supplier {}, 2 brands linked to it, customer cus_demo with 950 points",
        acme.id
    );
    Ok(())
}
