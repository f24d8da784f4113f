//! The seed's `brand` module as a plugin crate: an application adds it with one line,
//! `app.plugin(BrandPlugin)`, and configures it in `[plugins.brand]`:
//!
//! ```toml
//! [plugins.brand]
//! max_name_length = 60          # longer names are refused (default 100)
//! default_country = "fr"        # given to brands created without one
//! ```
//!
//! It contributes the `brand` module (model, migration, service), the `create-brand`
//! workflow, whose step undoes itself when a later step fails, and the admin routes of
//! [`api`] (`/admin/brands`).

pub mod api;

use chrono::{DateTime, Utc};
use gorgon_data::{Crud, FindConfig, Migration, Model, ModelMeta, migration};
use gorgon_framework::{AppBuilder, BoxError, Module, ModuleContext, Plugin};
use gorgon_workflows::{Service, Step, StepFailure, StepResponse, StepResult, Workflow};
use serde::{Deserialize, Serialize};

/// A brand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "brand")]
pub struct Brand {
    /// `brand_…`.
    pub id: String,
    /// Its name, unique among live brands.
    #[model(searchable)]
    pub name: String,
    /// Its country (ISO code), if known.
    pub country: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The plugin's options, from `[plugins.brand]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrandOptions {
    /// The longest name accepted.
    pub max_name_length: usize,
    /// The country of brands created without one.
    pub default_country: Option<String>,
}

impl Default for BrandOptions {
    fn default() -> Self {
        Self {
            max_name_length: 100,
            default_country: None,
        }
    }
}

/// What the brand service refuses.
#[derive(Debug, thiserror::Error)]
pub enum BrandError {
    /// The name is empty or longer than `max_name_length`.
    #[error("name: must be 1 to {max} characters")]
    Name {
        /// The limit.
        max: usize,
    },
    /// The data layer's error (a duplicate name, the database…).
    #[error(transparent)]
    Data(#[from] gorgon_data::Error),
}

/// The brand module's service.
#[derive(Debug, Clone)]
pub struct BrandService {
    /// The generated service of [`Brand`].
    pub brands: Crud<Brand>,
    options: BrandOptions,
}

/// A new brand.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewBrand {
    /// Its name.
    pub name: String,
    /// Its country; the plugin's `default_country` when left out.
    pub country: Option<String>,
}

impl BrandService {
    /// Refuses a name outside the plugin's rules (empty, or longer than `max_name_length`).
    pub fn check_name(&self, name: &str) -> Result<(), BrandError> {
        let length = name.chars().count();
        if length == 0 || length > self.options.max_name_length {
            return Err(BrandError::Name {
                max: self.options.max_name_length,
            });
        }
        Ok(())
    }

    /// Creates a brand within the plugin's rules.
    pub async fn create_brand(&self, brand: NewBrand) -> Result<Brand, BrandError> {
        self.check_name(&brand.name)?;
        let country = brand
            .country
            .or_else(|| self.options.default_country.clone());
        Ok(self
            .brands
            .create(NewBrand {
                name: brand.name,
                country,
            })
            .await?)
    }

    /// The brand with this id.
    pub async fn retrieve(&self, id: &str) -> Result<Brand, gorgon_data::Error> {
        self.brands.retrieve(id, FindConfig::new()).await
    }
}

/// The module's migrations.
pub const MIGRATIONS: &[Migration] = &[migration!("0001_create_brand")];

/// The `brand` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrandModule;

impl Module for BrandModule {
    type Service = BrandService;
    type Options = BrandOptions;

    fn name(&self) -> &'static str {
        "brand"
    }

    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![Brand::meta()]
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn build(&self, cx: ModuleContext<BrandOptions>) -> Result<BrandService, BoxError> {
        Ok(BrandService {
            brands: Crud::new(cx.db),
            options: cx.options,
        })
    }
}

async fn create_brand(input: NewBrand, brands: Service<BrandService>) -> StepResult<Brand, String> {
    let brand = brands
        .create_brand(input)
        .await
        .map_err(|error| StepFailure::permanent(error.to_string()))?;
    let id = brand.id.clone();
    Ok(StepResponse::new(brand).with_compensation(id))
}

async fn delete_brand(
    id: Option<String>,
    brands: Service<BrandService>,
) -> Result<(), StepFailure> {
    if let Some(id) = id {
        brands
            .brands
            .delete([id])
            .await
            .map_err(|error| StepFailure::new(error.to_string()))?;
    }
    Ok(())
}

/// The step that creates a brand (and deletes it when the run rolls back).
pub fn create_brand_step() -> Step<NewBrand, Brand, String> {
    Step::new("create-brand", create_brand).compensate(delete_brand)
}

/// The `create-brand` workflow.
pub fn create_brand_workflow() -> Result<Workflow<NewBrand, Brand>, gorgon_workflows::Error> {
    let step = create_brand_step();
    Workflow::define("create-brand", move |b, input| b.step(&step, input))
}

/// The plugin: the `brand` module and the `create-brand` workflow.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrandPlugin;

impl Plugin for BrandPlugin {
    type Options = BrandOptions;

    fn name(&self) -> &'static str {
        "brand"
    }

    fn register(&self, app: &mut AppBuilder, options: BrandOptions) -> Result<(), BoxError> {
        app.module_with(BrandModule, options)
            .workflow(api::create_brand_flow());
        for route in api::routes() {
            app.route(route);
        }
        Ok(())
    }
}
