//! The composition root: [`AppBuilder`] takes modules, plugins, links, workflows, subscribers,
//! jobs and scripts as values, checks the whole graph at boot and reports every problem at
//! once; [`App`] is the built application, and [`Running`] the started one.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use gorgon_data::{Db, DbOptions, Migration, MigrationState, Migrator, ModelMeta};
use gorgon_event_bus::EventBus;
use gorgon_orchestration::{EngineOptions, Store};
use gorgon_scheduler::Schedule;
use gorgon_workflows::{
    Requirement, Services, Step, StepContext, StepFailure, StepResponse, StepResult, Workflow,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, WorkerMode};
use crate::context::{Context, Erased, Handler, erase};
use crate::error::{BoxError, Error, Problem};
use crate::job::{Job, Tick, When};
use crate::link::{self, ActiveLink, LinkDef, Links};
use crate::module::{BuildInput, Hooks, Module, ModuleEntry, valid_name};
use crate::plugin::Plugin;
use crate::providers::{Infrastructure, Providers};
use crate::query::{LinkResolver, Query};
use crate::route::Route;
use crate::subscriber::{DeadLetters, Delivery, Subscriber, dead_letter_meta};

/// The framework's own tables (dead letters, link tracking), migrated as module `gorgon`.
pub const FRAMEWORK_MIGRATIONS: &[Migration] = &[gorgon_data::migration!("0001_framework")];

/// The name the framework's own migrations are tracked under.
pub const FRAMEWORK_MODULE: &str = "gorgon";

/// A script's arguments (`gorgon exec NAME ARGS…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptArgs {
    /// The arguments after the script's name.
    pub args: Vec<String>,
}

/// A script run with the application's services (`gorgon exec NAME`, as `medusa exec`).
#[derive(Clone)]
pub struct Script {
    name: String,
    handler: Erased<ScriptArgs>,
    requirements: Vec<Requirement>,
}

impl Script {
    /// A script named `name` running `handler`.
    pub fn new<Args, H: Handler<ScriptArgs, Args>>(name: impl Into<String>, handler: H) -> Self {
        Self {
            name: name.into(),
            handler: erase(handler),
            requirements: H::requirements(),
        }
    }
}

type Hook = Arc<dyn Fn(App) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

type RegisterWorkflow =
    Box<dyn Fn(&gorgon_workflows::App) -> Result<(), gorgon_workflows::Error> + Send + Sync>;

/// Adds a service of the application's own to the registry.
type AddService = Box<dyn FnOnce(&mut Services) + Send>;

struct WorkflowEntry {
    name: String,
    register: RegisterWorkflow,
}

/// Who registered an item: a plugin (in registration order) or the application (last).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    layer: usize,
    name: String,
}

struct Entry<T> {
    source: Source,
    item: T,
}

type PendingPlugin = Box<dyn FnOnce(&mut AppBuilder, &Config) -> Result<(), Problem> + Send>;

/// Builds an [`App`]: register everything as values, then [`build`](Self::build) checks the
/// whole graph in one pass.
///
/// ```ignore
/// let app = AppBuilder::new()
///     .plugin(BrandPlugin)                      // options from [plugins.brand]
///     .module(SupplierModule)
///     .workflow(&restock_workflow()?)
///     .subscriber(Subscriber::new("loyalty-milestone", "loyalty.points_added", milestone))
///     .job(Job::cron("restock-check", "0 */5 * * * *", restock_check))
///     .build(Config::dev(".")?)
///     .await?;                                  // every problem at once, each with a help line
/// ```
pub struct AppBuilder {
    source: Source,
    modules: Vec<Entry<ModuleEntry>>,
    links: Vec<Entry<LinkDef>>,
    workflows: Vec<Entry<WorkflowEntry>>,
    subscribers: Vec<Entry<Subscriber>>,
    jobs: Vec<Entry<Job>>,
    scripts: Vec<Entry<Script>>,
    routes: Vec<Entry<Route>>,
    services: Vec<AddService>,
    plugins: Vec<(String, PendingPlugin)>,
    on_start: Vec<Hook>,
    on_shutdown: Vec<Hook>,
    providers: Providers,
    problems: Vec<Problem>,
}

impl Default for AppBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field(
                "modules",
                &self.modules.iter().map(|m| m.item.name).collect::<Vec<_>>(),
            )
            .field(
                "plugins",
                &self.plugins.iter().map(|p| &p.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

const APP_LAYER: usize = usize::MAX;

impl AppBuilder {
    /// An empty application with the built-in providers.
    pub fn new() -> Self {
        Self {
            source: Source {
                layer: APP_LAYER,
                name: "the application".into(),
            },
            modules: Vec::new(),
            links: Vec::new(),
            workflows: Vec::new(),
            subscribers: Vec::new(),
            jobs: Vec::new(),
            scripts: Vec::new(),
            routes: Vec::new(),
            services: Vec::new(),
            plugins: Vec::new(),
            on_start: Vec::new(),
            on_shutdown: Vec::new(),
            providers: Providers::builtin(),
            problems: Vec::new(),
        }
    }

    fn entry<T>(&self, item: T) -> Entry<T> {
        Entry {
            source: self.source.clone(),
            item,
        }
    }

    /// Registers a module; its options come from `[modules.<name>]`.
    pub fn module<M: Module>(&mut self, module: M) -> &mut Self
    where
        M::Options: Default,
    {
        let entry = self.entry(ModuleEntry::new(module, None));
        self.modules.push(entry);
        self
    }

    /// Registers a module with options given in code (a plugin passing its own options).
    pub fn module_with<M: Module>(&mut self, module: M, options: M::Options) -> &mut Self {
        let entry = self.entry(ModuleEntry::new(module, Some(options)));
        self.modules.push(entry);
        self
    }

    /// Registers a link between two modules' models.
    pub fn link(&mut self, link: LinkDef) -> &mut Self {
        let entry = self.entry(link);
        self.links.push(entry);
        self
    }

    /// Registers a workflow.
    pub fn workflow<In, Out>(&mut self, workflow: &Workflow<In, Out>) -> &mut Self
    where
        In: Send + Sync + 'static,
        Out: Send + Sync + 'static,
    {
        let workflow = workflow.clone();
        let entry = self.entry(WorkflowEntry {
            name: workflow.name().to_owned(),
            register: Box::new(move |app| app.register(&workflow)),
        });
        self.workflows.push(entry);
        self
    }

    /// Registers a subscriber.
    pub fn subscriber(&mut self, subscriber: Subscriber) -> &mut Self {
        let entry = self.entry(subscriber);
        self.subscribers.push(entry);
        self
    }

    /// Registers a scheduled job.
    pub fn job(&mut self, job: Job) -> &mut Self {
        let entry = self.entry(job);
        self.jobs.push(entry);
        self
    }

    /// Registers a script for `gorgon exec`.
    pub fn script(&mut self, script: Script) -> &mut Self {
        let entry = self.entry(script);
        self.scripts.push(entry);
        self
    }

    /// Adds a service of the application's own (a client, a setting) that handlers and steps
    /// can take by type.
    pub fn service<T: ?Sized + Send + Sync + 'static>(&mut self, service: Arc<T>) -> &mut Self {
        self.services.push(Box::new(move |services: &mut Services| {
            services.insert(service);
        }));
        self
    }

    /// Registers a plugin; its options come from `[plugins.<name>]` at boot.
    pub fn plugin<P: Plugin>(&mut self, plugin: P) -> &mut Self
    where
        P::Options: Default,
    {
        let name = plugin.name();
        self.plugins.push((
            name.to_owned(),
            Box::new(move |builder: &mut AppBuilder, config: &Config| {
                let options: P::Options = config.plugin_options(name).map_err(|error| {
                    Problem::new(
                        format!("plugin `{name}`: {error}"),
                        format!("fix [plugins.{name}] in gorgon.toml"),
                    )
                })?;
                plugin.register(builder, options).map_err(|error| {
                    Problem::new(
                        format!("plugin `{name}` failed to register: {error}"),
                        "see the plugin's documentation for its options",
                    )
                })
            }),
        ));
        self
    }

    /// Registers a plugin ahead of every plugin registered so far, unless one of that name is
    /// registered already: how the command line puts the core API first, so that every plugin
    /// and the application can override its routes.
    pub fn plugin_first<P: Plugin>(&mut self, plugin: P) -> &mut Self
    where
        P::Options: Default,
    {
        if self.plugins.iter().any(|(name, _)| name == plugin.name()) {
            return self;
        }
        self.plugin(plugin);
        if let Some(last) = self.plugins.pop() {
            self.plugins.insert(0, last);
        }
        self
    }

    /// Registers a plugin with options given in code.
    pub fn plugin_with<P: Plugin>(&mut self, plugin: P, options: P::Options) -> &mut Self {
        let name = plugin.name();
        self.plugins.push((
            name.to_owned(),
            Box::new(move |builder: &mut AppBuilder, _config: &Config| {
                plugin.register(builder, options).map_err(|error| {
                    Problem::new(
                        format!("plugin `{name}` failed to register: {error}"),
                        "see the plugin's documentation",
                    )
                })
            }),
        ));
        self
    }

    /// Runs `hook` once the application has started (modules' hooks first).
    pub fn on_start<F, Fut>(&mut self, hook: F) -> &mut Self
    where
        F: Fn(App) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.on_start.push(Arc::new(move |app| Box::pin(hook(app))));
        self
    }

    /// Runs `hook` when the application shuts down (before modules' hooks).
    pub fn on_shutdown<F, Fut>(&mut self, hook: F) -> &mut Self
    where
        F: Fn(App) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.on_shutdown
            .push(Arc::new(move |app| Box::pin(hook(app))));
        self
    }

    /// Registers an HTTP route. A route with the same methods and path as one registered by
    /// an earlier plugin replaces it; the application registers last.
    pub fn route(&mut self, route: Route) -> &mut Self {
        let entry = self.entry(route);
        self.routes.push(entry);
        self
    }

    /// The provider factories, to add providers compiled into the binary.
    pub fn providers(&mut self) -> &mut Providers {
        &mut self.providers
    }

    /// Expands the plugins, keeps the last registration of each name, connects the database:
    /// what `db` commands need, before any module is built.
    pub async fn prepare(self, config: Config) -> Result<Prepared, Error> {
        match self.collect(config).await {
            (Some(prepared), problems) if problems.is_empty() => Ok(prepared),
            (_, problems) => Err(Error::Boot(problems)),
        }
    }

    /// [`prepare`](Self::prepare), carrying on past problems so that `build` reports them all.
    async fn collect(mut self, config: Config) -> (Option<Prepared>, Vec<Problem>) {
        let config = Arc::new(config);
        let plugins = std::mem::take(&mut self.plugins);
        let mut names = BTreeSet::new();
        for (index, (name, register)) in plugins.into_iter().enumerate() {
            if !names.insert(name.clone()) {
                self.problems.push(Problem::new(
                    format!("plugin `{name}` is registered twice"),
                    "register each plugin once",
                ));
                continue;
            }
            self.source = Source {
                layer: index,
                name: format!("plugin `{name}`"),
            };
            if let Err(problem) = register(&mut self, &config) {
                self.problems.push(problem);
            }
        }
        self.source = Source {
            layer: APP_LAYER,
            name: "the application".into(),
        };
        let mut problems = std::mem::take(&mut self.problems);

        let modules = keep_last(self.modules, "module", |m| m.name.to_owned(), &mut problems);
        for module in &modules {
            if !valid_name(module.name) {
                problems.push(Problem::new(
                    format!("module name `{}` is not usable", module.name),
                    "a module name has letters, digits and _ and does not start with a digit",
                ));
            }
            if module.name == FRAMEWORK_MODULE
                || crate::config::INFRASTRUCTURE.contains(&module.name)
            {
                problems.push(Problem::new(
                    format!("module name `{}` is reserved", module.name),
                    "choose another name",
                ));
            }
        }
        let workflows = keep_last(
            self.workflows,
            "workflow",
            |w| w.name.clone(),
            &mut problems,
        );
        let subscribers = keep_last(
            self.subscribers,
            "subscriber",
            |s| format!("{} on {}", s.id, s.pattern),
            &mut problems,
        );
        let jobs = keep_last(self.jobs, "job", |j| j.name.clone(), &mut problems);
        let scripts = keep_last(self.scripts, "script", |s| s.name.clone(), &mut problems);
        let routes = keep_last(self.routes, "route", Route::key, &mut problems);
        overlapping_routes(&routes, &mut problems);
        let link_defs: Vec<LinkDef> = {
            let mut seen = BTreeSet::new();
            let mut kept = Vec::new();
            for entry in self.links.into_iter().rev() {
                let (a, b) = entry.item.models();
                if seen.insert((a.type_name, b.type_name, entry.item.table.clone())) {
                    kept.push(entry.item);
                }
            }
            kept.reverse();
            kept
        };

        // Which models belong to which enabled module; entity names are unique.
        let mut registered_models = BTreeSet::new();
        let mut owners: BTreeMap<usize, &'static str> = BTreeMap::new();
        let mut entities: BTreeMap<String, &'static ModelMeta> = BTreeMap::new();
        let mut entity_owner: BTreeMap<String, &'static str> = BTreeMap::new();
        entities.insert(dead_letter_meta().name.to_owned(), dead_letter_meta());
        entity_owner.insert(dead_letter_meta().name.to_owned(), FRAMEWORK_MODULE);
        let mut enabled = Vec::new();
        for module in modules {
            for model in &module.models {
                registered_models.insert(*model as *const ModelMeta as usize);
            }
            if config.module_disabled(module.name) {
                tracing::info!(module = module.name, "module disabled by configuration");
                continue;
            }
            for model in &module.models {
                owners.insert(*model as *const ModelMeta as usize, module.name);
                if let Some(other) = entity_owner.get(model.name) {
                    problems.push(Problem::new(
                        format!(
                            "entity `{}` is declared by module `{}` and by module `{other}`",
                            model.name, module.name
                        ),
                        "give one of the models another name with #[model(name = \"…\")]",
                    ));
                    continue;
                }
                entity_owner.insert(model.name.to_owned(), module.name);
                entities.insert(model.name.to_owned(), model);
            }
            enabled.push(module);
        }
        let active = link::resolve(&link_defs, &owners, &registered_models, &mut problems);

        let db = match Db::connect_with(
            &config.resolved_database_url(),
            &DbOptions {
                max_connections: config.project.database_max_connections,
                schema: config.project.database_schema.clone(),
                ..DbOptions::default()
            },
        )
        .await
        {
            Ok(db) => Some(db),
            Err(error) => {
                problems.push(Problem::new(
                    format!("project.database_url: cannot open the database: {error}"),
                    "check DATABASE_URL / [project] database_url and that the database runs",
                ));
                None
            }
        };
        let Some(db) = db else {
            return (None, problems);
        };
        let prepared = Prepared {
            config,
            db,
            modules: enabled,
            links: active,
            entities,
            workflows,
            subscribers,
            jobs,
            scripts,
            routes,
            services: self.services,
            on_start: self.on_start,
            on_shutdown: self.on_shutdown,
            providers: self.providers,
        };
        (Some(prepared), problems)
    }

    /// Builds the application: [`prepare`](Self::prepare), then checks that every migration
    /// and link table is applied, builds the providers and modules, registers the workflows and
    /// checks every service a step, subscriber, job or script names. Every problem found is
    /// reported at once.
    pub async fn build(self, config: Config) -> Result<App, Error> {
        match self.collect(config).await {
            (Some(prepared), problems) => prepared.build_reporting(problems).await,
            (None, problems) => Err(Error::Boot(problems)),
        }
    }
}

/// Keeps the last registration of each key by layer; two in the same layer are a problem.
fn keep_last<T>(
    entries: Vec<Entry<T>>,
    what: &str,
    key: impl Fn(&T) -> String,
    problems: &mut Vec<Problem>,
) -> Vec<T> {
    let mut kept: BTreeMap<String, (usize, Entry<T>)> = BTreeMap::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let name = key(&entry.item);
        match kept.get(&name) {
            Some((_, previous)) if previous.source.layer == entry.source.layer => {
                problems.push(Problem::new(
                    format!("{what} `{name}` is registered twice by {}", entry.source.name),
                    format!("register each {what} once; to replace a plugin's {what}, register yours from the application"),
                ));
            }
            Some((_, previous)) if previous.source.layer > entry.source.layer => {}
            _ => {
                if let Some((_, previous)) = kept.get(&name) {
                    tracing::info!(
                        "{what} `{name}` of {} is overridden by {}",
                        previous.source.name,
                        entry.source.name
                    );
                }
                kept.insert(name, (index, entry));
            }
        }
    }
    // Plugins' items first, in plugin order, then the application's: modules migrate in
    // that order.
    let mut ordered: Vec<(usize, Entry<T>)> = kept.into_values().collect();
    ordered.sort_by_key(|(index, entry)| (entry.source.layer, *index));
    ordered.into_iter().map(|(_, entry)| entry.item).collect()
}

/// An application with its plugins expanded and its database open, not built yet.
pub struct Prepared {
    config: Arc<Config>,
    db: Db,
    modules: Vec<ModuleEntry>,
    links: Vec<ActiveLink>,
    entities: BTreeMap<String, &'static ModelMeta>,
    workflows: Vec<WorkflowEntry>,
    subscribers: Vec<Subscriber>,
    jobs: Vec<Job>,
    scripts: Vec<Script>,
    routes: Vec<Route>,
    services: Vec<AddService>,
    on_start: Vec<Hook>,
    on_shutdown: Vec<Hook>,
    providers: Providers,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field(
                "modules",
                &self.modules.iter().map(|m| m.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The migrations of the framework and every enabled module, and the active links' tables.
    pub fn migrations(&self) -> Migrations {
        let mut migrator =
            Migrator::new(self.db.clone()).module(FRAMEWORK_MODULE, FRAMEWORK_MIGRATIONS);
        for module in &self.modules {
            migrator = migrator.module(module.name, module.migrations);
        }
        Migrations {
            db: self.db.clone(),
            migrator,
            links: self.links.clone(),
        }
    }

    /// Builds the application (see [`AppBuilder::build`]).
    pub async fn build(self) -> Result<App, Error> {
        self.build_reporting(Vec::new()).await
    }

    async fn build_reporting(self, mut problems: Vec<Problem>) -> Result<App, Error> {
        // Migrations and link tables must be in place.
        match self.migrations().pending().await {
            Ok(pending) => problems.extend(pending),
            Err(error) => problems.push(Problem::new(
                format!("cannot read the migration status: {error}"),
                "check that the database is reachable",
            )),
        }
        split_roles(&self.config, &mut problems);
        let infrastructure = self.providers.build(&self.config, &mut problems).await;
        let Some(infrastructure) = infrastructure else {
            return Err(Error::Boot(problems));
        };

        let mut services = Services::new();
        let mut hooks: Vec<(&'static str, Arc<dyn Hooks>)> = Vec::new();
        let mut provided = BTreeMap::new();
        for module in self.modules {
            let name = module.name;
            if let Some(other) = provided.insert(module.service.type_id, name) {
                problems.push(Problem::new(
                    format!(
                        "modules `{other}` and `{name}` build the same service type {}",
                        module.service.type_name
                    ),
                    "each module builds its own service type",
                ));
            }
            let input = BuildInput {
                db: self.db.clone(),
                events: infrastructure.events.clone(),
                cache: infrastructure.cache.clone(),
                locker: infrastructure.locker.clone(),
                config: self.config.clone(),
            };
            match (module.build)(input).await {
                Ok(built) => {
                    (built.insert)(&mut services);
                    hooks.push((name, built.hooks));
                }
                Err(error) => problems.push(Problem::new(
                    format!("module `{name}` failed to build: {error}"),
                    format!("check [modules.{name}] in gorgon.toml"),
                )),
            }
        }
        let links = Links::new(self.db.clone(), Arc::new(self.links.clone()));
        let query = Query::new(
            self.db.clone(),
            self.entities.clone(),
            LinkResolver::new(&self.links),
        );
        let dead_letters = DeadLetters::new(self.db.clone());
        let cell = Arc::new(AppCell::default());
        services.insert(Arc::new(self.db.clone()));
        services.insert(Arc::new(query.clone()));
        services.insert(Arc::new(links.clone()));
        services.insert(Arc::new(dead_letters.clone()));
        services.insert(infrastructure.events.clone());
        services.insert(infrastructure.cache.clone());
        services.insert(infrastructure.locker.clone());
        services.insert(infrastructure.files.clone());
        services.insert(Arc::new(infrastructure.notifier.clone()));
        services.insert(Arc::new(infrastructure.analytics.clone()));
        services.insert(self.config.clone());
        services.insert(cell.clone());
        for add in self.services {
            add(&mut services);
        }

        let workflows = gorgon_workflows::App::with_options(
            EngineOptions {
                store: infrastructure.store.clone(),
                relay: infrastructure.relay.clone(),
                ..EngineOptions::default()
            },
            services,
        )
        .with_event_bus(infrastructure.events.clone());
        for workflow in &self.workflows {
            if let Err(error) = (workflow.register)(&workflows) {
                problems.push(workflow_problem(&workflow.name, error));
            }
        }
        let mut schedules = Vec::new();
        for job in &self.jobs {
            match job_schedule(job) {
                Ok((workflow, schedule)) => {
                    if let Err(error) = workflows.register(&workflow) {
                        problems.push(workflow_problem(&job.workflow_name(), error));
                    }
                    schedules.push(schedule);
                }
                Err(problem) => problems.push(problem),
            }
        }
        let registry = workflows.services();
        let mut check = |what: String, requirements: &[Requirement]| {
            for requirement in requirements {
                if !registry.contains_id(requirement.type_id) {
                    problems.push(Problem::new(
                        format!(
                            "{what} needs the service {}, which nothing provides",
                            requirement.type_name
                        ),
                        "register the module that builds it, or add it with AppBuilder::service",
                    ));
                }
            }
        };
        for subscriber in &self.subscribers {
            check(
                format!("subscriber `{}`", subscriber.id),
                &subscriber.requirements,
            );
        }
        for job in &self.jobs {
            check(format!("job `{}`", job.name), &job.requirements);
        }
        for script in &self.scripts {
            check(format!("script `{}`", script.name), &script.requirements);
        }
        if !problems.is_empty() {
            return Err(Error::Boot(problems));
        }
        let app = App {
            inner: Arc::new(AppInner {
                config: self.config,
                db: self.db,
                workflows,
                infrastructure,
                query,
                links,
                dead_letters,
                modules: hooks,
                subscribers: self.subscribers,
                jobs: self.jobs,
                schedules: std::sync::Mutex::new(Some(schedules)),
                scripts: self.scripts,
                routes: self.routes,
                on_start: self.on_start,
                on_shutdown: self.on_shutdown,
            }),
        };
        let _ = cell.0.set(app.clone());
        Ok(app)
    }
}

/// Two kept routes answering the same method at the same path (registered with different
/// method sets, so neither replaced the other).
fn overlapping_routes(routes: &[Route], problems: &mut Vec<Problem>) {
    let mut seen = BTreeMap::new();
    for route in routes {
        for method in route.methods() {
            let key = format!("{method} {}", route.path());
            if seen.insert(key.clone(), ()).is_some() {
                problems.push(Problem::new(
                    format!("two routes answer {key}"),
                    "register an override with the same methods as the route it replaces",
                ));
            }
        }
    }
}

/// A `server` or `worker` instance shares its work with other processes: in-process providers
/// would split it instead (events emitted by a server never reaching the worker, locks taken
/// in one process only). Medusa starts anyway and its users find out in production.
fn split_roles(config: &Config, problems: &mut Vec<Problem>) {
    if config.project.worker_mode == WorkerMode::Shared {
        return;
    }
    for (kind, local) in [
        (crate::providers::Kind::EventBus, "local"),
        (crate::providers::Kind::Locking, "memory"),
        (crate::providers::Kind::Workflows, "memory"),
    ] {
        let (dev, prod) = kind.defaults();
        if config.provider_name(kind.key(), dev, prod) == local {
            problems.push(Problem::new(
                format!(
                    "worker_mode `{:?}` with the in-process {} provider `{local}`: the other instances would never see this one's {}",
                    config.project.worker_mode,
                    kind.key(),
                    match kind {
                        crate::providers::Kind::EventBus => "events",
                        crate::providers::Kind::Locking => "locks",
                        _ => "workflow runs",
                    }
                )
                .to_lowercase(),
                format!("use a shared provider in [modules.{}] (redis, postgres), or worker_mode = \"shared\" for a single process", kind.key()),
            ));
        }
    }
}

fn workflow_problem(name: &str, error: gorgon_workflows::Error) -> Problem {
    match &error {
        gorgon_workflows::Error::MissingService {
            type_name, step, ..
        } => Problem::new(
            format!(
                "workflow `{name}`: step `{step}` needs the service {type_name}, which nothing provides"
            ),
            "register the module that builds it, or add it with AppBuilder::service",
        ),
        _ => Problem::new(
            format!("workflow `{name}`: {error}"),
            "workflow names are unique; each defines one flow",
        ),
    }
}

/// The application, reachable from the step that runs a job.
#[derive(Default)]
struct AppCell(OnceLock<App>);

fn job_schedule(job: &Job) -> Result<(Workflow<u64, ()>, Schedule), Problem> {
    let name = job.name.clone();
    let handler = job.handler.clone();
    let step_name = job.workflow_name();
    let step = Step::new(step_name.clone(), move |tick_ms: u64, ctx: StepContext| {
        let handler = handler.clone();
        let name = name.clone();
        async move {
            let cell = ctx.service::<AppCell>()?;
            let app = cell
                .0
                .get()
                .cloned()
                .ok_or_else(|| StepFailure::new("the application is not built yet"))?;
            tracing::debug!(job = %name, tick_ms, "job run");
            handler(
                Tick {
                    job: name,
                    scheduled_for_ms: tick_ms,
                },
                Context { app },
            )
            .await
            .map_err(|error| StepFailure::new(error.to_string()))?;
            StepResult::<()>::Ok(StepResponse::new(()))
        }
    });
    let problem = |error: &dyn std::fmt::Display| {
        Problem::new(
            format!("job `{}`: {error}", job.name),
            "cron expressions use croner's syntax (seconds allowed, UTC)",
        )
    };
    let workflow = Workflow::define(step_name.clone(), |b, tick_ms| b.step(&step, tick_ms))
        .map_err(|e| problem(&e))?;
    let schedule = match &job.when {
        When::Every(interval) => Schedule::every(
            job.name.clone(),
            *interval,
            &workflow,
            |tick: &gorgon_scheduler::Tick| tick.at_ms,
        ),
        When::Cron(expression) => Schedule::cron(
            job.name.clone(),
            expression,
            &workflow,
            |tick: &gorgon_scheduler::Tick| tick.at_ms,
        ),
    }
    .map_err(|e| problem(&e))?
    .with_concurrency(job.concurrency);
    Ok((workflow, schedule))
}

/// The migrations of an application: its modules', the framework's, and its link tables.
#[derive(Debug, Clone)]
pub struct Migrations {
    db: Db,
    migrator: Migrator,
    links: Vec<ActiveLink>,
}

/// One line of [`Migrations::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationLine {
    /// A module's migration.
    Module(gorgon_data::MigrationStatus),
    /// A link table: created or not, and whether its definition changed since.
    Link {
        /// The table.
        table: String,
        /// Whether it exists.
        created: bool,
        /// Whether the definition differs from the one it was created from.
        changed: bool,
    },
}

impl Migrations {
    /// Where every migration and link table stands.
    pub async fn status(&self) -> Result<Vec<MigrationLine>, Error> {
        let mut lines: Vec<MigrationLine> = self
            .migrator
            .status()
            .await?
            .into_iter()
            .map(MigrationLine::Module)
            .collect();
        let tracked = self.tracked_links().await?;
        for link in &self.links {
            let found = tracked.get(link.table.as_ref());
            lines.push(MigrationLine::Link {
                table: link.table.to_string(),
                created: found.is_some(),
                changed: found.is_some_and(|definition| *definition != link.signature()),
            });
        }
        Ok(lines)
    }

    async fn tracked_links(&self) -> Result<BTreeMap<String, String>, Error> {
        let status = self.migrator.status().await?;
        let framework_applied = status.iter().any(|s| {
            s.module == FRAMEWORK_MODULE && matches!(s.state, MigrationState::Applied { .. })
        });
        if !framework_applied {
            return Ok(BTreeMap::new());
        }
        let mut query = sea_query::Query::select();
        query
            .columns(["table_name", "definition"])
            .from(link::TRACKING_TABLE);
        let rows = self
            .db
            .fetch(
                "LinkTable",
                &query,
                &[gorgon_data::Kind::Text, gorgon_data::Kind::Text],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let text = |i: usize| row[i].as_str().unwrap_or_default().to_owned();
                (text(0), text(1))
            })
            .collect())
    }

    /// What `db migrate` would do, as boot problems (empty when everything is applied).
    pub async fn pending(&self) -> Result<Vec<Problem>, Error> {
        let mut problems = Vec::new();
        let mut by_module: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in self.status().await? {
            match line {
                MigrationLine::Module(status) => match status.state {
                    MigrationState::Pending => by_module
                        .entry(status.module)
                        .or_default()
                        .push(status.name),
                    MigrationState::Changed { .. } => problems.push(Problem::new(
                        format!(
                            "migration `{}` of module `{}` changed after it was applied",
                            status.name, status.module
                        ),
                        "restore the file as it was and add a new migration for the change",
                    )),
                    _ => {}
                },
                MigrationLine::Link {
                    table,
                    created: false,
                    ..
                } => problems.push(Problem::new(
                    format!("link table `{table}` is not created"),
                    "run `gorgon db migrate`",
                )),
                MigrationLine::Link { .. } => {}
            }
        }
        for (module, names) in by_module {
            problems.push(Problem::new(
                format!(
                    "module `{module}` has migrations not applied: {}",
                    names.join(", ")
                ),
                "run `gorgon db migrate`",
            ));
        }
        Ok(problems)
    }

    /// Applies every pending migration (the framework's first, then each module's in
    /// registration order), then creates the missing link tables; calls `progress` after each
    /// step with a line saying what was done.
    pub async fn migrate(&self, mut progress: impl FnMut(&str)) -> Result<Vec<String>, Error> {
        let mut done = Vec::new();
        for status in self
            .migrator
            .migrate(|s| progress(&format!("{}: {}", s.module, s.name)))
            .await?
        {
            done.push(format!("{}: {}", status.module, status.name));
        }
        let tracked = self.tracked_links().await?;
        let dialect = self.db.dialect();
        for link in &self.links {
            match tracked.get(link.table.as_ref()) {
                Some(definition) if *definition != link.signature() => {
                    tracing::warn!(table = %link.table, "the link's definition changed since its table was created; alter the table with a migration");
                }
                Some(_) => {}
                None => {
                    let ddl = link.ddl(dialect);
                    let signature = link.signature();
                    self.db
                        .transaction(|| async {
                            self.db.run_script(&ddl).await?;
                            let mut insert = sea_query::Query::insert();
                            insert
                                .into_table(link::TRACKING_TABLE)
                                .columns(["table_name", "definition", "created_at"])
                                .values([
                                    sea_query::Expr::val(link.table.to_string()),
                                    sea_query::Expr::val(signature.clone()),
                                    sea_query::Expr::val(gorgon_data::bind(
                                        gorgon_data::Kind::Timestamp,
                                        dialect,
                                        "created_at",
                                        &serde_json::Value::String(gorgon_data::format_timestamp(
                                            &gorgon_data::now(),
                                        )),
                                    )?),
                                ])
                                .map_err(|e| gorgon_data::Error::Migration {
                                    module: "links".into(),
                                    name: link.table.to_string(),
                                    reason: e.to_string(),
                                })?;
                            self.db.execute("LinkTable", &insert).await?;
                            Ok::<_, gorgon_data::Error>(())
                        })
                        .await?;
                    let line = format!("link table {}", link.table);
                    progress(&line);
                    done.push(line);
                }
            }
        }
        Ok(done)
    }

    /// Reverts the last batch of `module`'s migrations.
    pub async fn rollback(
        &self,
        module: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<Vec<String>, Error> {
        Ok(self
            .migrator
            .rollback(module, |s| {
                progress(&format!("{}: {} reverted", s.module, s.name))
            })
            .await?
            .into_iter()
            .map(|s| format!("{}: {}", s.module, s.name))
            .collect())
    }
}

/// A built application: its services, Query, links, workflows and infrastructure. Cheap to
/// clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    config: Arc<Config>,
    db: Db,
    workflows: gorgon_workflows::App,
    infrastructure: Infrastructure,
    query: Query,
    links: Links,
    dead_letters: DeadLetters,
    modules: Vec<(&'static str, Arc<dyn Hooks>)>,
    subscribers: Vec<Subscriber>,
    jobs: Vec<Job>,
    schedules: std::sync::Mutex<Option<Vec<Schedule>>>,
    scripts: Vec<Script>,
    routes: Vec<Route>,
    on_start: Vec<Hook>,
    on_shutdown: Vec<Hook>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("modules", &self.modules())
            .field("subscribers", &self.inner.subscribers.len())
            .field("jobs", &self.inner.jobs.len())
            .finish_non_exhaustive()
    }
}

impl App {
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The workflow engine's application: run and inspect workflows.
    pub fn workflows(&self) -> &gorgon_workflows::App {
        &self.inner.workflows
    }

    /// A service by type (a module's, `Query`, `Links`, `Notifier`…).
    pub fn service<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.inner.workflows.services().get::<T>()
    }

    /// Query.
    pub fn query(&self) -> &Query {
        &self.inner.query
    }

    /// The link service.
    pub fn links(&self) -> &Links {
        &self.inner.links
    }

    /// The subscribers' dead letters.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.inner.dead_letters
    }

    /// The infrastructure providers.
    pub fn infrastructure(&self) -> &Infrastructure {
        &self.inner.infrastructure
    }

    /// The enabled modules' names.
    pub fn modules(&self) -> Vec<&'static str> {
        self.inner.modules.iter().map(|(name, _)| *name).collect()
    }

    /// The subscribers.
    pub fn subscribers(&self) -> &[Subscriber] {
        &self.inner.subscribers
    }

    /// The scheduled jobs.
    pub fn jobs(&self) -> &[Job] {
        &self.inner.jobs
    }

    /// The HTTP routes kept after overrides, plugins' first.
    pub fn routes(&self) -> &[Route] {
        &self.inner.routes
    }

    /// The scripts' names.
    pub fn scripts(&self) -> Vec<&str> {
        self.inner.scripts.iter().map(|s| s.name.as_str()).collect()
    }

    /// Runs a script with these arguments (`gorgon exec`).
    pub async fn run_script(&self, name: &str, args: Vec<String>) -> Result<(), Error> {
        let script = self
            .inner
            .scripts
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::UnknownScript {
                name: name.to_owned(),
                known: self.scripts().join(", "),
            })?;
        (script.handler)(ScriptArgs { args }, self.context())
            .await
            .map_err(|error| Error::failed(format!("script `{name}`"), error))
    }

    fn context(&self) -> Context {
        Context { app: self.clone() }
    }

    /// Starts the application in `mode`: the engine's worker (takes over runs of dead
    /// instances), and in `worker`/`shared` mode the subscribers and the scheduled jobs; then
    /// the modules' and the application's start hooks. HTTP is served by the caller.
    pub async fn start(&self, mode: WorkerMode) -> Result<Running, Error> {
        let (stop, stopped) = watch::channel(false);
        let until = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let mut tasks = Vec::new();
        let store: Arc<dyn Store> = self.inner.infrastructure.store.clone();
        if store.write_mode() != gorgon_orchestration::WriteMode::Volatile {
            let engine = self.inner.workflows.engine().clone();
            tasks.push(tokio::spawn(engine.serve(until(stopped.clone()))));
        }
        let mut subscribed: Vec<(String, String)> = Vec::new();
        let mut scheduler = None;
        if mode.runs_background() {
            let events: Arc<dyn EventBus> = self.inner.infrastructure.events.clone();
            for subscriber in &self.inner.subscribers {
                let delivery = Delivery {
                    subscriber: subscriber.clone(),
                    cx: self.context(),
                    dead: self.inner.dead_letters.clone(),
                };
                if let Err(error) = events
                    .subscribe(&subscriber.pattern, &subscriber.id, Arc::new(delivery))
                    .await
                {
                    for (pattern, id) in &subscribed {
                        let _ = events.unsubscribe(pattern, id).await;
                    }
                    let _ = stop.send(true);
                    return Err(Error::failed(
                        format!("subscriber `{}`", subscriber.id),
                        error,
                    ));
                }
                subscribed.push((subscriber.pattern.clone(), subscriber.id.clone()));
            }
            let schedules = self
                .inner
                .schedules
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .unwrap_or_default();
            if !schedules.is_empty() {
                let built = gorgon_scheduler::Options::default()
                    .build(
                        self.inner.workflows.clone(),
                        self.inner.infrastructure.locker.clone(),
                        schedules,
                    )
                    .map_err(|error| Error::failed("the job scheduler", error))?;
                scheduler = Some(built.handle());
                tasks.push(tokio::spawn(built.run(until(stopped.clone()))));
            }
        }
        let running = Running {
            app: self.clone(),
            stop,
            tasks,
            subscribed,
            scheduler,
        };
        for (name, hooks) in &self.inner.modules {
            if let Err(error) = hooks.start().await {
                running.stop_quietly().await;
                return Err(Error::failed(format!("module `{name}` on_start"), error));
            }
        }
        for hook in &self.inner.on_start {
            if let Err(error) = hook(self.clone()).await {
                running.stop_quietly().await;
                return Err(Error::failed("an on_start hook", error));
            }
        }
        tracing::info!(mode = ?mode, modules = ?self.modules(), subscribers = running.subscribed.len(), "started");
        Ok(running)
    }
}

/// A started application. [`shutdown`](Self::shutdown) stops it gracefully.
pub struct Running {
    app: App,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    subscribed: Vec<(String, String)>,
    scheduler: Option<gorgon_scheduler::Handle>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("subscribed", &self.subscribed)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The application.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The scheduler's statistics, when this instance runs jobs.
    pub fn scheduler(&self) -> Option<&gorgon_scheduler::Handle> {
        self.scheduler.as_ref()
    }

    async fn stop_quietly(&self) {
        let events = &self.app.inner.infrastructure.events;
        for (pattern, id) in &self.subscribed {
            let _ = events.unsubscribe(pattern, id).await;
        }
        let _ = self.stop.send(true);
    }

    /// Stops gracefully: the modules' prepare-shutdown hooks, no new deliveries or ticks, the
    /// background tasks end (waiting at most `grace`), analytics flushed, then the shutdown
    /// hooks (the application's, then the modules').
    pub async fn shutdown(self, grace: Duration) {
        let app = &self.app;
        for (_, hooks) in &app.inner.modules {
            hooks.prepare_shutdown().await;
        }
        self.stop_quietly().await;
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(?grace, "background tasks did not stop in time");
        }
        if let Err(error) = app.inner.infrastructure.analytics.flush().await {
            tracing::warn!(%error, "analytics flush failed at shutdown");
        }
        for hook in &app.inner.on_shutdown {
            if let Err(error) = hook(app.clone()).await {
                tracing::warn!(%error, "an on_shutdown hook failed");
            }
        }
        for (_, hooks) in &app.inner.modules {
            hooks.shutdown().await;
        }
        tracing::info!("stopped");
    }
}
