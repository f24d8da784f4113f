//! Plugins: a crate that contributes modules, links, workflows, subscribers, jobs and scripts,
//! with typed options from `[plugins.<name>]`, registered by one line. The application
//! registers last and overrides what a plugin registered under the same name.

use serde::de::DeserializeOwned;

use crate::app::AppBuilder;
use crate::error::BoxError;

/// A plugin.
///
/// ```ignore
/// pub struct BrandPlugin;
///
/// impl Plugin for BrandPlugin {
///     type Options = BrandOptions;                       // from [plugins.brand]
///     fn name(&self) -> &'static str { "brand" }
///     fn register(&self, app: &mut AppBuilder, options: BrandOptions) -> Result<(), BoxError> {
///         app.module_with(BrandModule, options.clone())
///            .link(define_link(Side::of::<Product>().list(), Side::of::<Brand>()))
///            .workflow(&create_brand_workflow()?);
///         Ok(())
///     }
/// }
/// // in main: AppBuilder::new().plugin(BrandPlugin)
/// ```
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's options, read from `[plugins.<name>]` unless given in code.
    type Options: DeserializeOwned + Send + 'static;

    /// The plugin's name.
    fn name(&self) -> &'static str;

    /// Registers what the plugin contributes.
    fn register(&self, app: &mut AppBuilder, options: Self::Options) -> Result<(), BoxError>;
}
