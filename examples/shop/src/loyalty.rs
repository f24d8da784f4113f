//! The `loyalty` module: points per customer. Adding points emits `loyalty.points_added`;
//! deducting them is a conditional write that never goes below zero. (The seed's
//! event-driven pattern; the milestone email is a subscriber, in [`crate::subscribers`].)

use std::sync::Arc;

use chrono::{DateTime, Utc};
use gorgon_data::sql::{Expr, ExprTrait, Query};
use gorgon_data::{Crud, Db, Filter, FindConfig, Migration, Model, ModelMeta, migration};
use gorgon_event_bus::{EventBus, Message};
use gorgon_framework::{BoxError, Module, ModuleContext, NoOptions};
use serde::{Deserialize, Serialize};

/// The event a points change emits.
pub const POINTS_ADDED: &str = "loyalty.points_added";

/// A customer's points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "loyacc")]
pub struct LoyaltyAccount {
    /// `loyacc_…`.
    pub id: String,
    /// The customer.
    pub customer_id: String,
    /// Where milestone emails go.
    pub email: String,
    /// The balance.
    #[model(default)]
    pub points: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// `loyalty.points_added`'s data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsAdded {
    /// The customer.
    pub customer_id: String,
    /// Their email.
    pub email: String,
    /// How many were added.
    pub added: i64,
    /// The balance after.
    pub total: i64,
}

/// What the loyalty service refuses.
#[derive(Debug, thiserror::Error)]
pub enum LoyaltyError {
    /// A deduction larger than the balance.
    #[error("customer {customer_id} has fewer than {points} points")]
    InsufficientPoints {
        /// The customer.
        customer_id: String,
        /// The points asked for.
        points: i64,
    },
    /// Points are added and deducted in positive amounts.
    #[error("points: must be positive")]
    NotPositive,
    /// The data layer's error.
    #[error(transparent)]
    Data(#[from] gorgon_data::Error),
    /// The event could not be emitted.
    #[error("emitting {POINTS_ADDED}: {0}")]
    Emit(#[from] gorgon_event_bus::Error),
}

/// The loyalty module's service.
#[derive(Clone)]
pub struct LoyaltyService {
    /// The generated service of [`LoyaltyAccount`].
    pub accounts: Crud<LoyaltyAccount>,
    db: Db,
    events: Arc<dyn EventBus>,
}

impl std::fmt::Debug for LoyaltyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoyaltyService").finish_non_exhaustive()
    }
}

impl LoyaltyService {
    /// The customer's account.
    pub async fn account(
        &self,
        customer_id: &str,
    ) -> Result<Option<LoyaltyAccount>, gorgon_data::Error> {
        let mut found = self
            .accounts
            .list(
                Filter::all().eq("customer_id", customer_id),
                FindConfig::new().take(1),
            )
            .await?;
        Ok(found.pop())
    }

    /// Adds points (opening the account if needed), then emits `loyalty.points_added`.
    pub async fn add_points(
        &self,
        customer_id: &str,
        email: &str,
        points: i64,
    ) -> Result<LoyaltyAccount, LoyaltyError> {
        if points <= 0 {
            return Err(LoyaltyError::NotPositive);
        }
        let account = self
            .db
            .transaction(|| async {
                if self.account(customer_id).await?.is_none() {
                    self.accounts
                        .create(serde_json::json!({ "customer_id": customer_id, "email": email }))
                        .await?;
                }
                self.change(customer_id, points).await?;
                let account = self.account(customer_id).await?;
                account.ok_or_else(|| gorgon_data::Error::NotFound {
                    entity: "LoyaltyAccount",
                    id: customer_id.to_owned(),
                })
            })
            .await?;
        let data = PointsAdded {
            customer_id: customer_id.to_owned(),
            email: account.email.clone(),
            added: points,
            total: account.points,
        };
        self.events
            .emit_one(Message::new(
                POINTS_ADDED,
                serde_json::to_value(&data).unwrap_or_default(),
            ))
            .await?;
        Ok(account)
    }

    /// Takes points away, never below zero: one conditional `UPDATE`, so two concurrent
    /// deductions cannot both spend the same points. Joins the caller's transaction.
    pub async fn deduct_points(&self, customer_id: &str, points: i64) -> Result<(), LoyaltyError> {
        if points <= 0 {
            return Err(LoyaltyError::NotPositive);
        }
        if self.change(customer_id, -points).await? == 0 {
            return Err(LoyaltyError::InsufficientPoints {
                customer_id: customer_id.to_owned(),
                points,
            });
        }
        Ok(())
    }

    /// `points = points + delta` where the balance allows it; returns the rows changed.
    async fn change(&self, customer_id: &str, delta: i64) -> Result<u64, gorgon_data::Error> {
        let mut update = Query::update();
        update
            .table(LoyaltyAccount::meta().table)
            .value("points", Expr::col("points").add(delta))
            .value(
                "updated_at",
                Expr::val(gorgon_data::bind(
                    gorgon_data::Kind::Timestamp,
                    self.db.dialect(),
                    "updated_at",
                    &serde_json::Value::String(gorgon_data::format_timestamp(&gorgon_data::now())),
                )?),
            )
            .and_where(Expr::col("customer_id").eq(customer_id))
            .and_where(Expr::col("deleted_at").is_null())
            .and_where(Expr::col("points").add(delta).gte(0));
        self.db.execute("LoyaltyAccount", &update).await
    }
}

/// The module's migrations.
pub const MIGRATIONS: &[Migration] = &[migration!("0001_loyalty")];

/// The `loyalty` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoyaltyModule;

impl Module for LoyaltyModule {
    type Service = LoyaltyService;
    type Options = NoOptions;

    fn name(&self) -> &'static str {
        "loyalty"
    }

    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![LoyaltyAccount::meta()]
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<LoyaltyService, BoxError> {
        Ok(LoyaltyService {
            accounts: Crud::new(cx.db.clone()),
            db: cx.db,
            events: cx.events,
        })
    }
}
