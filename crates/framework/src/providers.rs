//! Infrastructure providers chosen by name: `[modules.event_bus] provider = "redis"` picks the
//! factory registered as `redis` for the event bus. The framework registers the in-process ones;
//! the `gorgon` binary adds Redis, PostgreSQL, S3, SMTP, SendGrid and PostHog.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use gorgon_analytics::{Analytics, BatchOptions, Sink};
use gorgon_cache::{Cache, MemoryCache, MemoryOptions};
use gorgon_event_bus::{EventBus, LocalEventBus};
use gorgon_file::FileStore;
use gorgon_locking::{InMemoryLocker, Locker};
use gorgon_notification::{Channel, Notifier, NotifierOptions, SharedRecord};
use gorgon_orchestration::{EventRelay, Store};
use serde_json::Value as Json;

use crate::config::Config;
use crate::error::{BoxError, Problem};

/// The infrastructure concerns, each configured by `[modules.<key>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `[modules.event_bus]`.
    EventBus,
    /// `[modules.cache]`.
    Cache,
    /// `[modules.locking]`.
    Locking,
    /// `[modules.workflows]`: where workflow executions are stored.
    Workflows,
    /// `[modules.file]`.
    File,
    /// `[modules.notification]`.
    Notification,
    /// `[modules.analytics]`.
    Analytics,
}

impl Kind {
    /// Every kind, in the order they are built.
    pub const ALL: [Kind; 7] = [
        Kind::EventBus,
        Kind::Cache,
        Kind::Locking,
        Kind::Workflows,
        Kind::File,
        Kind::Notification,
        Kind::Analytics,
    ];

    /// The configuration key.
    pub fn key(self) -> &'static str {
        match self {
            Kind::EventBus => "event_bus",
            Kind::Cache => "cache",
            Kind::Locking => "locking",
            Kind::Workflows => "workflows",
            Kind::File => "file",
            Kind::Notification => "notification",
            Kind::Analytics => "analytics",
        }
    }

    /// The provider used when none is named: (dev, prod).
    pub fn defaults(self) -> (&'static str, &'static str) {
        match self {
            Kind::EventBus => ("local", "redis"),
            Kind::Cache => ("memory", "redis"),
            Kind::Locking => ("memory", "redis"),
            Kind::Workflows => ("sqlite", "redis"),
            Kind::File => ("local", "local"),
            Kind::Notification => ("local", "local"),
            Kind::Analytics => ("local", "local"),
        }
    }
}

/// What a provider factory is given: its table from the configuration (without `provider`) and
/// the whole configuration (for `project.database_url`, `project.redis_url`, the root folder).
#[derive(Debug, Clone)]
pub struct ProviderInput {
    /// `[modules.<kind>]` without `provider`.
    pub options: Json,
    /// The configuration.
    pub config: Arc<Config>,
}

impl ProviderInput {
    /// The options read into a provider's options type, naming the key at fault.
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, BoxError> {
        serde_path_to_error::deserialize(self.options.clone())
            .map_err(|error| error.to_string().into())
    }

    /// `project.redis_url`, or an error saying it is needed.
    pub fn redis_url(&self) -> Result<String, BoxError> {
        self.config
            .project
            .redis_url
            .clone()
            .ok_or_else(|| "needs project.redis_url (REDIS_URL)".into())
    }
}

/// What a factory makes.
#[derive(Clone)]
pub enum Provided {
    /// An event bus.
    EventBus(Arc<dyn EventBus>),
    /// A cache.
    Cache(Arc<dyn Cache>),
    /// A locker.
    Locking(Arc<dyn Locker>),
    /// A workflow store, with its event relay when it has one.
    Workflows(WorkflowBackend),
    /// A file store.
    File(Arc<dyn FileStore>),
    /// A notification provider (routed to the configured channels).
    Notification(Arc<dyn gorgon_notification::Provider>),
    /// An analytics sink.
    Analytics(Arc<dyn Sink>),
}

type Factory =
    Arc<dyn Fn(ProviderInput) -> BoxFuture<'static, Result<Provided, BoxError>> + Send + Sync>;

/// The providers compiled in, by kind and name.
#[derive(Clone, Default)]
pub struct Providers {
    factories: BTreeMap<(Kind, String), Factory>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

macro_rules! registrar {
    ($(#[$doc:meta])* $method:ident, $kind:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $method<F, Fut>(&mut self, name: &str, factory: F) -> &mut Self
        where
            F: Fn(ProviderInput) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<$ty, BoxError>> + Send + 'static,
        {
            let factory = Arc::new(factory);
            self.factories.insert(
                (Kind::$kind, name.to_owned()),
                Arc::new(move |input| {
                    let made = factory(input);
                    Box::pin(async move { made.await.map(Provided::$kind) })
                }),
            );
            self
        }
    };
}

impl Providers {
    /// The in-process providers: event bus `local`, cache `memory`, locking `memory`, workflow
    /// stores `memory` and `sqlite`, file `local`, notification `local`, analytics `local`.
    pub fn builtin() -> Self {
        let mut providers = Self::default();
        providers
            .event_bus("local", |_| async {
                Ok(Arc::new(LocalEventBus::new()) as Arc<dyn EventBus>)
            })
            .cache("memory", |input| async move {
                let options: MemoryOptions = input.options()?;
                Ok(Arc::new(MemoryCache::new(&options)) as Arc<dyn Cache>)
            })
            .locking("memory", |_| async {
                Ok(Arc::new(InMemoryLocker::new()) as Arc<dyn Locker>)
            })
            .workflows("memory", |_| async {
                Ok(WorkflowBackend::new(Arc::new(
                    gorgon_orchestration::MemoryStore::new(),
                )))
            })
            .workflows("sqlite", |input| async move {
                let mut options: gorgon_store_sqlite::Options = input.options()?;
                if input.options.get("path").is_none() {
                    options.path = "gorgon-workflows.db".into();
                }
                if options.path != ":memory:" {
                    options.path = input
                        .config
                        .path(&options.path)
                        .to_string_lossy()
                        .into_owned();
                }
                let store = gorgon_store_sqlite::SqliteStore::connect(options).await?;
                Ok(WorkflowBackend::new(Arc::new(store)))
            })
            .file("local", |input| async move {
                let mut options: gorgon_file::LocalOptions = input.options()?;
                // Presigned URLs stay valid across restarts and instances: sign them with the
                // project's cookie secret (with its own prefix) unless the file module has its own.
                if options.signing_secret.is_none()
                    && let Some(cookie) = &input.config.project.http.cookie_secret
                {
                    use secrecy::ExposeSecret;
                    options.signing_secret =
                        Some(format!("gorgon-file-signing:{}", cookie.expose_secret()).into());
                }
                if options.root.is_relative() {
                    options.root = input.config.path(&options.root);
                }
                Ok(Arc::new(gorgon_file::LocalFileStore::new(options)?) as Arc<dyn FileStore>)
            })
            .notification("local", |_| async {
                Ok(Arc::new(gorgon_notification::LocalProvider::new())
                    as Arc<dyn gorgon_notification::Provider>)
            })
            .analytics("local", |_| async {
                Ok(Arc::new(gorgon_analytics::LocalSink::new()) as Arc<dyn Sink>)
            });
        providers
    }

    registrar!(
        /// Registers an event bus factory under `name`.
        event_bus, EventBus, Arc<dyn EventBus>
    );
    registrar!(
        /// Registers a cache factory under `name`.
        cache, Cache, Arc<dyn Cache>
    );
    registrar!(
        /// Registers a locker factory under `name`.
        locking, Locking, Arc<dyn Locker>
    );
    registrar!(
        /// Registers a workflow store factory under `name`.
        workflows, Workflows, WorkflowBackend
    );
    registrar!(
        /// Registers a file store factory under `name`.
        file, File, Arc<dyn FileStore>
    );
    registrar!(
        /// Registers a notification provider factory under `name`.
        notification, Notification, Arc<dyn gorgon_notification::Provider>
    );
    registrar!(
        /// Registers an analytics sink factory under `name`.
        analytics, Analytics, Arc<dyn Sink>
    );

    /// The names registered for a kind.
    pub fn names(&self, kind: Kind) -> Vec<&str> {
        self.factories
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, name)| name.as_str())
            .collect()
    }

    async fn make(
        &self,
        kind: Kind,
        config: &Arc<Config>,
        problems: &mut Vec<Problem>,
    ) -> Option<Provided> {
        let (dev, prod) = kind.defaults();
        let name = config.provider_name(kind.key(), dev, prod);
        let key = format!("modules.{}", kind.key());
        let Some(factory) = self.factories.get(&(kind, name.clone())) else {
            problems.push(Problem::new(
                format!("{key}: no provider named `{name}`"),
                format!(
                    "the {} providers compiled in are: {}",
                    kind.key(),
                    self.names(kind).join(", ")
                ),
            ));
            return None;
        };
        let mut options = config.module_table(kind.key());
        if let Json::Object(map) = &mut options {
            map.remove("provider");
            if kind == Kind::Notification {
                for notifier_key in ["channels", "templates", "idempotency_retention_secs"] {
                    map.remove(notifier_key);
                }
            }
        }
        match factory(ProviderInput {
            options,
            config: config.clone(),
        })
        .await
        {
            Ok(provided) => Some(provided),
            Err(error) => {
                problems.push(Problem::new(
                    format!("{key}: the `{name}` provider failed to start: {error}"),
                    format!("check [{key}] in gorgon.toml and that the service it uses is running"),
                ));
                None
            }
        }
    }

    /// Builds every infrastructure provider the configuration names, reporting every one that
    /// is unknown or fails.
    pub(crate) async fn build(
        &self,
        config: &Arc<Config>,
        problems: &mut Vec<Problem>,
    ) -> Option<Infrastructure> {
        let mut made = BTreeMap::new();
        for kind in Kind::ALL {
            if let Some(provided) = self.make(kind, config, problems).await {
                made.insert(kind, provided);
            }
        }
        let take = |kind| made.get(&kind).cloned();
        let (
            Some(Provided::EventBus(events)),
            Some(Provided::Cache(cache)),
            Some(Provided::Locking(locker)),
            Some(Provided::Workflows(backend)),
            Some(Provided::File(files)),
            Some(Provided::Notification(notification)),
            Some(Provided::Analytics(sink)),
        ) = (
            take(Kind::EventBus),
            take(Kind::Cache),
            take(Kind::Locking),
            take(Kind::Workflows),
            take(Kind::File),
            take(Kind::Notification),
            take(Kind::Analytics),
        )
        else {
            return None;
        };
        let table = config.module_table("notification");
        let notifier_options: NotifierOptions = {
            let mut picked = serde_json::Map::new();
            for key in ["templates", "idempotency_retention_secs"] {
                if let Some(value) = table.get(key) {
                    picked.insert(key.to_owned(), value.clone());
                }
            }
            match serde_path_to_error::deserialize(Json::Object(picked)) {
                Ok(options) => options,
                Err(error) => {
                    problems.push(Problem::new(
                        format!("modules.notification: {error}"),
                        "see the notification module's options (templates, idempotency_retention_secs)",
                    ));
                    return None;
                }
            }
        };
        let channels: Vec<String> = match table.get("channels") {
            None => vec!["email".into(), "feed".into()],
            Some(list) => match serde_json::from_value(list.clone()) {
                Ok(channels) => channels,
                Err(_) => {
                    problems.push(Problem::new(
                        "modules.notification.channels: expected a list of channel names",
                        "channels = [\"email\"]",
                    ));
                    return None;
                }
            },
        };
        let retention = Duration::from_secs(notifier_options.idempotency_retention_secs);
        let mut builder = Notifier::builder(notifier_options);
        // Sent keys are shared through the cache when the cache is shared (not in process).
        if config.provider_name("cache", Kind::Cache.defaults().0, Kind::Cache.defaults().1)
            != "memory"
        {
            builder = builder.record(Arc::new(SharedRecord::new(
                cache.clone(),
                locker.clone(),
                retention,
            )));
        }
        for channel in channels {
            let channel = match Channel::new(&channel) {
                Ok(channel) => channel,
                Err(error) => {
                    problems.push(Problem::new(
                        format!("modules.notification.channels: {error}"),
                        "use plain channel names",
                    ));
                    return None;
                }
            };
            builder = match builder.provider(channel, notification.clone()) {
                Ok(builder) => builder,
                Err(error) => {
                    problems.push(Problem::new(
                        format!("modules.notification.channels: {error}"),
                        "list each channel once",
                    ));
                    return None;
                }
            };
        }
        let analytics = match Analytics::start(sink, BatchOptions::default()) {
            Ok(analytics) => analytics,
            Err(error) => {
                problems.push(Problem::new(
                    format!("modules.analytics: {error}"),
                    "check [modules.analytics]",
                ));
                return None;
            }
        };
        Some(Infrastructure {
            events,
            cache,
            locker,
            store: backend.store,
            relay: backend.relay,
            files,
            notifier: builder.build(),
            analytics,
        })
    }
}

/// A workflow store and, for stores shared between instances, the relay of their events.
#[derive(Clone)]
pub struct WorkflowBackend {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The event relay, if the store has one.
    pub relay: Option<Arc<dyn EventRelay>>,
}

impl WorkflowBackend {
    /// A store without a relay.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, relay: None }
    }

    /// With the relay that carries the store's events between instances.
    pub fn with_relay(mut self, relay: Arc<dyn EventRelay>) -> Self {
        self.relay = Some(relay);
        self
    }
}

/// The infrastructure an application runs on, built from the configuration.
#[derive(Clone)]
pub struct Infrastructure {
    /// The event bus.
    pub events: Arc<dyn EventBus>,
    /// The cache.
    pub cache: Arc<dyn Cache>,
    /// The locker.
    pub locker: Arc<dyn Locker>,
    /// Where workflow executions are stored.
    pub store: Arc<dyn Store>,
    /// What carries the runs' events between instances (PostgreSQL `LISTEN`/`NOTIFY`, Redis
    /// pub/sub), so that a live view on one instance sees the runs of all; `None` for
    /// in-process stores.
    pub relay: Option<Arc<dyn EventRelay>>,
    /// The file store.
    pub files: Arc<dyn FileStore>,
    /// The notification module.
    pub notifier: Notifier,
    /// The analytics module.
    pub analytics: Analytics,
}
