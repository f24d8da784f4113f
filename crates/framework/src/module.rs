//! Modules: a domain's models, migrations and service, built at boot with what a module may
//! see (its options, the database, the event bus, the cache, the locker), never another module.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use gorgon_cache::Cache;
use gorgon_data::{Db, Migration, ModelMeta};
use gorgon_event_bus::EventBus;
use gorgon_locking::Locker;
use gorgon_workflows::{Requirement, Services};
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::error::BoxError;

/// A module: a name, its models and migrations, and the service it builds.
///
/// The service is what steps, subscribers, jobs and scripts ask for by type
/// (`Service<BrandService>`). A module sees only its [`ModuleContext`]: it cannot resolve
/// another module; links and Query join modules, workflows combine them.
///
/// ```ignore
/// pub struct BrandModule;
///
/// impl Module for BrandModule {
///     type Service = BrandService;
///     type Options = BrandOptions;                 // from [modules.brand]
///     fn name(&self) -> &'static str { "brand" }
///     fn models(&self) -> Vec<&'static ModelMeta> { vec![Brand::meta()] }
///     fn migrations(&self) -> &'static [Migration] { MIGRATIONS }
///     async fn build(&self, cx: ModuleContext<BrandOptions>) -> Result<BrandService, BoxError> {
///         Ok(BrandService { brands: Crud::new(cx.db), options: cx.options })
///     }
/// }
/// ```
pub trait Module: Send + Sync + 'static {
    /// The service the module builds.
    type Service: Send + Sync + 'static;
    /// The module's options, read from `[modules.<name>]` unless given in code.
    type Options: DeserializeOwned + Send + 'static;

    /// The module's name: letters, digits and `_`, not starting with a digit (`brand`).
    fn name(&self) -> &'static str;

    /// The module's models, which Query and links can reach.
    fn models(&self) -> Vec<&'static ModelMeta> {
        Vec::new()
    }

    /// The module's migrations, in order.
    fn migrations(&self) -> &'static [Migration] {
        &[]
    }

    /// Builds the service.
    fn build(
        &self,
        cx: ModuleContext<Self::Options>,
    ) -> impl Future<Output = Result<Self::Service, BoxError>> + Send;

    /// Runs once the whole application is built, before it serves (Medusa's
    /// `onApplicationStart`). An error stops the start.
    fn on_start(
        &self,
        service: Arc<Self::Service>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = service;
        async { Ok(()) }
    }

    /// Runs when shutdown begins, while everything still works (`onApplicationPrepareShutdown`).
    fn on_prepare_shutdown(&self, service: Arc<Self::Service>) -> impl Future<Output = ()> + Send {
        let _ = service;
        async {}
    }

    /// Runs last, after the application stopped serving (`onApplicationShutdown`).
    fn on_shutdown(&self, service: Arc<Self::Service>) -> impl Future<Output = ()> + Send {
        let _ = service;
        async {}
    }
}

/// The options of a module that takes none: `[modules.<name>]` must be empty (a key there is
/// a typo, reported at boot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// What a module is built with.
#[non_exhaustive]
pub struct ModuleContext<O> {
    /// The module's name.
    pub name: &'static str,
    /// Its options.
    pub options: O,
    /// The application database.
    pub db: Db,
    /// The event bus.
    pub events: Arc<dyn EventBus>,
    /// The cache.
    pub cache: Arc<dyn Cache>,
    /// The locker.
    pub locker: Arc<dyn Locker>,
    /// The configuration (read-only).
    pub config: Arc<Config>,
}

/// What the builder keeps of a module until boot.
pub(crate) struct ModuleEntry {
    pub name: &'static str,
    pub models: Vec<&'static ModelMeta>,
    pub migrations: &'static [Migration],
    pub service: Requirement,
    pub build: Box<dyn FnOnce(BuildInput) -> BoxFuture<'static, Result<Built, BoxError>> + Send>,
}

pub(crate) struct BuildInput {
    pub db: Db,
    pub events: Arc<dyn EventBus>,
    pub cache: Arc<dyn Cache>,
    pub locker: Arc<dyn Locker>,
    pub config: Arc<Config>,
}

/// A built module: how to put its service in the registry, and its lifecycle hooks.
pub(crate) struct Built {
    pub insert: Box<dyn FnOnce(&mut Services) + Send>,
    pub hooks: Arc<dyn Hooks>,
}

pub(crate) trait Hooks: Send + Sync {
    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>>;
    fn prepare_shutdown(&self) -> BoxFuture<'_, ()>;
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

struct ModuleHooks<M: Module> {
    module: Arc<M>,
    service: Arc<M::Service>,
}

impl<M: Module> Hooks for ModuleHooks<M> {
    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(self.module.on_start(self.service.clone()))
    }
    fn prepare_shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.module.on_prepare_shutdown(self.service.clone()))
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.module.on_shutdown(self.service.clone()))
    }
}

/// Whether `name` is a module name Medusa would accept.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

impl ModuleEntry {
    pub(crate) fn new<M: Module>(module: M, options: Option<M::Options>) -> Self {
        let module = Arc::new(module);
        let name = module.name();
        Self {
            name,
            models: module.models(),
            migrations: module.migrations(),
            service: Requirement::of::<M::Service>(),
            build: Box::new(move |input: BuildInput| {
                Box::pin(async move {
                    let options = match options {
                        Some(options) => options,
                        None => input.config.module_options::<M::Options>(name)?,
                    };
                    let cx = ModuleContext {
                        name,
                        options,
                        db: input.db,
                        events: input.events,
                        cache: input.cache,
                        locker: input.locker,
                        config: input.config,
                    };
                    let service = Arc::new(module.build(cx).await?);
                    let hooks: Arc<dyn Hooks> = Arc::new(ModuleHooks {
                        module,
                        service: service.clone(),
                    });
                    Ok(Built {
                        insert: Box::new(move |services: &mut Services| {
                            services.insert(service);
                        }),
                        hooks,
                    })
                })
            }),
        }
    }
}
