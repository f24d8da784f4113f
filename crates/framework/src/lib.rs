//! Gorgon's application layer: what turns the workflow engine and the infrastructure traits
//! into an application a Medusa developer recognises.
//!
//! 1. **Configure**: `gorgon.toml` + `gorgon.<profile>.toml` + `GORGON__SECTION__KEY`
//!    ([`Loader`]); `dev` needs nothing installed, `prod` runs on PostgreSQL and Redis.
//! 2. **Declare modules** ([`Module`]): models with `#[derive(Model)]`, migrations, a service
//!    built with its [`ModuleContext`] (the database, event bus, cache, locker; never another
//!    module).
//! 3. **Link** modules' models ([`define_link`]) and read across them with [`Query`].
//! 4. **React and schedule**: [`Subscriber`]s (retried each on its own, then dead-lettered) and
//!    [`Job`]s (once per tick across the cluster).
//! 5. **Compose** with [`AppBuilder`] (modules, [`Plugin`]s, links, workflows, subscribers,
//!    jobs, scripts), which checks the whole graph at boot and reports every problem at once.
//!
//! ```text
//!   gorgon.toml ─► Config ─► AppBuilder ── plugins expanded, last registration wins
//!                               │ prepare: database opened ─► Migrations (db migrate/status/rollback)
//!                               │ build:   migrations applied? providers by name, modules built,
//!                               │          workflows registered, every service named is there
//!                               ▼
//!                              App ── start(worker_mode) ─► Running: engine worker,
//!                                     subscribers + jobs (worker/shared) ── shutdown(grace)
//! ```

mod app;
pub mod config;
mod context;
mod error;
mod job;
pub mod link;
mod module;
mod plugin;
pub mod providers;
mod query;
pub mod route;
mod subscriber;

pub use app::{
    App, AppBuilder, FRAMEWORK_MIGRATIONS, FRAMEWORK_MODULE, MigrationLine, Migrations, Prepared,
    Running, Script, ScriptArgs,
};
pub use config::{Config, ConfigError, Loader, Profile, WorkerMode};
pub use context::{Context, FromContext, Handler};
pub use error::{BoxError, Error, Problem};
pub use job::{Job, Tick, When};
pub use link::{Links, Side, define_link};
pub use module::{Module, ModuleContext, NoOptions};
pub use plugin::Plugin;
pub use providers::{Infrastructure, Providers, WorkflowBackend};
pub use query::{GraphRequest, GraphResponse, PageMetadata, Pagination, Query};
pub use route::{Access, Route};
pub use subscriber::{DeadLetter, DeadLetters, Event, Subscriber};

/// What an application or a module usually needs.
pub mod prelude {
    pub use crate::{
        App, AppBuilder, BoxError, Config, Event, Job, Module, ModuleContext, Plugin, Query,
        Script, ScriptArgs, Side, Subscriber, Tick, define_link,
    };
    pub use gorgon_data::{Crud, Db, Filter, FindConfig, Migration, Model, ModelMeta, migration};
    pub use gorgon_workflows::Service;
}
