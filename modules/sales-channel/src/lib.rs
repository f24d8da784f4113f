//! The `sales_channel` module: the channels a store sells through (a web shop, an app, a
//! marketplace). A publishable API key is linked to the channels it scopes a storefront to
//! (the link is the core API's, `gorgon-api`); the commerce modules scope products, carts and
//! stock by channel.

use chrono::{DateTime, Utc};
use gorgon_data::{Crud, Migration, Model, ModelMeta, migration};
use gorgon_framework::{BoxError, Module, ModuleContext, NoOptions};
use serde::{Deserialize, Serialize};

/// A sales channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "sc")]
pub struct SalesChannel {
    /// `sc_…`.
    pub id: String,
    /// Its name.
    #[model(searchable)]
    pub name: String,
    /// What it is for.
    #[model(searchable)]
    pub description: Option<String>,
    /// A disabled channel sells nothing.
    #[model(default)]
    pub is_disabled: bool,
    /// Free-form data.
    pub metadata: Option<serde_json::Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The module's service: the generated service of [`SalesChannel`].
pub type SalesChannelService = Crud<SalesChannel>;

/// The module's migrations.
pub const MIGRATIONS: &[Migration] = &[migration!("0001_sales_channel")];

/// The `sales_channel` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct SalesChannelModule;

impl Module for SalesChannelModule {
    type Service = SalesChannelService;
    type Options = NoOptions;

    fn name(&self) -> &'static str {
        "sales_channel"
    }

    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![SalesChannel::meta()]
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<SalesChannelService, BoxError> {
        Ok(Crud::new(cx.db))
    }
}
