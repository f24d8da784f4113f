//! `gorgon.toml`, `gorgon.<profile>.toml` and `GORGON__SECTION__KEY` environment variables, read
//! into typed structs, with the profile's defaults filled in and its rules checked.
//!
//! ```toml
//! [project]
//! database_url = "sqlite://gorgon.db"        # DATABASE_URL overrides it
//! worker_mode = "shared"                     # server | worker | shared
//!
//! [project.http]
//! port = 9000
//! jwt_secret = "…"                           # required outside dev
//!
//! [modules.event_bus]
//! provider = "redis"                         # local | redis (the names compiled in)
//!
//! [modules.brand]                            # a module's own options
//! max_logo_bytes = 100000
//!
//! [plugins.brand]                            # a plugin's options
//! default_country = "fr"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

/// The JWT and cookie secret used in development, refused in production as Medusa does.
pub const DEV_SECRET: &str = "supersecret";

/// The keys of `[modules.*]` that configure infrastructure rather than an application module.
pub const INFRASTRUCTURE: [&str; 7] = [
    "event_bus",
    "cache",
    "locking",
    "workflows",
    "file",
    "notification",
    "analytics",
];

/// Which defaults and rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Development (the default): SQLite and in-process providers, nothing to install.
    Dev,
    /// Production: PostgreSQL, Redis for the shared infrastructure, real secrets required.
    Prod,
}

impl Profile {
    /// The profile's name, as in `gorgon.<name>.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Dev => "dev",
            Profile::Prod => "prod",
        }
    }

    /// Reads `dev` or `prod`.
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        match name {
            "dev" | "development" => Ok(Profile::Dev),
            "prod" | "production" => Ok(Profile::Prod),
            other => Err(ConfigError::Invalid {
                key: "profile".into(),
                message: format!("unknown profile `{other}`; the profiles are dev and prod"),
            }),
        }
    }
}

/// What an instance runs, as Medusa's `workerMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkerMode {
    /// HTTP only: no subscribers, no jobs.
    Server,
    /// Subscribers and jobs only: no HTTP.
    Worker,
    /// Both (the default).
    #[default]
    Shared,
}

impl WorkerMode {
    /// Whether this instance serves HTTP.
    pub fn serves_http(self) -> bool {
        matches!(self, WorkerMode::Server | WorkerMode::Shared)
    }

    /// Whether this instance runs subscribers and scheduled jobs.
    pub fn runs_background(self) -> bool {
        matches!(self, WorkerMode::Worker | WorkerMode::Shared)
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The profile it was read for.
    pub profile: Profile,
    /// `[project]`.
    pub project: Project,
    /// `[modules.*]`: infrastructure providers and application modules' options, by key.
    pub modules: BTreeMap<String, Json>,
    /// `[plugins.*]`: each plugin's options, by plugin name.
    pub plugins: BTreeMap<String, Json>,
    /// `[settings]`: the application's own settings, free-form.
    pub settings: Json,
    /// The folder the files were read from (relative paths in the configuration start there).
    pub root: PathBuf,
}

/// `[project]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// The application database: `sqlite://…` or `postgres://…` (`DATABASE_URL`).
    pub database_url: Option<String>,
    /// PostgreSQL schema for the application's tables (default: the database's own).
    pub database_schema: Option<String>,
    /// Most database connections per instance (default 10).
    #[serde(default = "default_connections")]
    pub database_max_connections: u32,
    /// Redis, for the providers that use it (`REDIS_URL`).
    pub redis_url: Option<String>,
    /// What this instance runs.
    #[serde(default)]
    pub worker_mode: WorkerMode,
    /// `[project.http]`.
    #[serde(default)]
    pub http: Http,
}

fn default_connections() -> u32 {
    10
}

/// `[project.http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// The address to listen on (default `0.0.0.0`).
    #[serde(default = "default_host")]
    pub host: String,
    /// The port (default 9000, Medusa's).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Signs bearer tokens; required outside dev.
    pub jwt_secret: Option<SecretString>,
    /// Signs session cookies; required outside dev.
    pub cookie_secret: Option<SecretString>,
    /// How long a bearer token lives, in seconds (default one day, Medusa's `1d`).
    #[serde(default = "default_jwt_expires_in")]
    pub jwt_expires_in: u64,
    /// The largest request body accepted, in bytes (default 1 MiB).
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// How long a request may take before it is answered 408, in seconds (default 30).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: u64,
    /// Origins allowed on `/store` (comma-separated).
    #[serde(default = "default_store_cors")]
    pub store_cors: String,
    /// Origins allowed on `/admin`.
    #[serde(default = "default_admin_cors")]
    pub admin_cors: String,
    /// Origins allowed on `/auth`.
    #[serde(default = "default_admin_cors")]
    pub auth_cors: String,
}

fn default_jwt_expires_in() -> u64 {
    86_400
}
fn default_body_limit() -> usize {
    1 << 20
}
fn default_request_timeout() -> u64 {
    30
}
fn default_host() -> String {
    "0.0.0.0".into()
}
fn default_port() -> u16 {
    9000
}
fn default_store_cors() -> String {
    "http://localhost:8000".into()
}
fn default_admin_cors() -> String {
    "http://localhost:7000,http://localhost:7001,http://localhost:5173".into()
}

impl Default for Http {
    fn default() -> Self {
        Self {
            host: default_host(),
            port: default_port(),
            jwt_secret: None,
            cookie_secret: None,
            jwt_expires_in: default_jwt_expires_in(),
            body_limit: default_body_limit(),
            request_timeout: default_request_timeout(),
            store_cors: default_store_cors(),
            admin_cors: default_admin_cors(),
            auth_cors: default_admin_cors(),
        }
    }
}

/// A configuration that cannot be used, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or parsed, or a value has the wrong type.
    #[error("configuration: {0}")]
    Read(String),
    /// A value breaks a rule.
    #[error("configuration `{key}`: {message}")]
    Invalid {
        /// The key, dotted (`project.http.jwt_secret`).
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Several values break rules.
    #[error("configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<ConfigError>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    profile: Option<String>,
    project: Option<Project>,
    #[serde(default)]
    modules: BTreeMap<String, Json>,
    #[serde(default)]
    plugins: BTreeMap<String, Json>,
    #[serde(default)]
    settings: Json,
}

/// Reads the configuration.
#[derive(Debug, Clone, Default)]
pub struct Loader {
    root: Option<PathBuf>,
    profile: Option<Profile>,
    env: Option<BTreeMap<String, String>>,
}

impl Loader {
    /// Reads from the current folder and the process environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the files in this folder.
    pub fn root(mut self, root: impl AsRef<Path>) -> Self {
        self.root = Some(root.as_ref().to_path_buf());
        self
    }

    /// Uses this profile (otherwise `GORGON_PROFILE`, otherwise `dev`).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// Reads these variables instead of the process environment (tests).
    pub fn env(mut self, env: BTreeMap<String, String>) -> Self {
        self.env = Some(env);
        self
    }

    /// Reads, fills in the profile's defaults and checks the rules; every broken rule is
    /// reported at once.
    pub fn load(self) -> Result<Config, ConfigError> {
        let root = match self.root {
            Some(root) => root,
            None => std::env::current_dir().map_err(|e| ConfigError::Read(e.to_string()))?,
        };
        let env: BTreeMap<String, String> = self.env.unwrap_or_else(|| std::env::vars().collect());
        let profile = match self.profile {
            Some(profile) => profile,
            None => match env.get("GORGON_PROFILE") {
                Some(name) => Profile::parse(name)?,
                None => Profile::Dev,
            },
        };
        let gorgon_env: config::Map<String, String> = env
            .iter()
            .filter(|(key, _)| key.starts_with("GORGON__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let builder = config::Config::builder()
            .add_source(config::File::from(root.join("gorgon.toml")).required(false))
            .add_source(
                config::File::from(root.join(format!("gorgon.{}.toml", profile.name())))
                    .required(false),
            )
            .add_source(
                config::Environment::with_prefix("GORGON")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(gorgon_env)),
            )
            .set_override_option("project.database_url", env.get("DATABASE_URL").cloned())
            .and_then(|b| b.set_override_option("project.redis_url", env.get("REDIS_URL").cloned()))
            .map_err(|e| ConfigError::Read(e.to_string()))?;
        let raw: Raw = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Read(e.to_string()))?;
        if let Some(named) = &raw.profile
            && Profile::parse(named)? != profile
        {
            return Err(ConfigError::Invalid {
                key: "profile".into(),
                message: format!(
                    "the files say `{named}` but `{}` was asked for",
                    profile.name()
                ),
            });
        }
        let mut project = raw.project.unwrap_or(Project {
            database_url: None,
            database_schema: None,
            database_max_connections: default_connections(),
            redis_url: None,
            worker_mode: WorkerMode::Shared,
            http: Http::default(),
        });
        let mut problems = Vec::new();
        match profile {
            Profile::Dev => {
                if project.database_url.is_none() {
                    project.database_url = Some("sqlite://gorgon.db".into());
                }
                for secret in [
                    &mut project.http.jwt_secret,
                    &mut project.http.cookie_secret,
                ] {
                    if secret.is_none() {
                        *secret = Some(SecretString::from(DEV_SECRET));
                    }
                }
            }
            Profile::Prod => {
                if project.database_url.is_none() {
                    problems.push(ConfigError::Invalid {
                        key: "project.database_url".into(),
                        message: "required in prod; set DATABASE_URL=postgres://…".into(),
                    });
                }
                for (key, secret) in [
                    ("project.http.jwt_secret", &project.http.jwt_secret),
                    ("project.http.cookie_secret", &project.http.cookie_secret),
                ] {
                    let message = match secret {
                        None => Some(
                            "required in prod; set it in gorgon.prod.toml or GORGON__PROJECT__HTTP__…",
                        ),
                        Some(value) if value.expose_secret() == DEV_SECRET => Some(
                            "the development secret is refused in prod; use a long random value",
                        ),
                        Some(value) if value.expose_secret().len() < 16 => {
                            Some("too short for prod; use at least 16 random characters")
                        }
                        Some(_) => None,
                    };
                    if let Some(message) = message {
                        problems.push(ConfigError::Invalid {
                            key: key.into(),
                            message: message.into(),
                        });
                    }
                }
            }
        }
        if let Some(url) = &project.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            problems.push(ConfigError::Invalid {
                key: "project.database_url".into(),
                message: "use sqlite://FILE or postgres://…".into(),
            });
        }
        for (key, value) in &raw.modules {
            if !value.is_object() {
                problems.push(ConfigError::Invalid {
                    key: format!("modules.{key}"),
                    message: "expected a table".into(),
                });
            }
        }
        match problems.len() {
            0 => Ok(Config {
                profile,
                project,
                modules: raw.modules,
                plugins: raw.plugins,
                settings: raw.settings,
                root,
            }),
            1 => Err(problems.remove(0)),
            _ => Err(ConfigError::Many(problems)),
        }
    }
}

impl Config {
    /// The development configuration with nothing read: what `gorgon start` uses on a fresh
    /// machine, rooted in `root`.
    pub fn dev(root: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Loader::new()
            .root(root)
            .profile(Profile::Dev)
            .env(BTreeMap::new())
            .load()
    }

    /// The application database's URL.
    pub fn database_url(&self) -> &str {
        self.project
            .database_url
            .as_deref()
            .unwrap_or("sqlite://gorgon.db")
    }

    /// The table of `[modules.<key>]`, or an empty one.
    pub fn module_table(&self, key: &str) -> Json {
        self.modules
            .get(key)
            .cloned()
            .unwrap_or_else(|| Json::Object(Default::default()))
    }

    /// The provider named in `[modules.<key>] provider`, or the profile's default.
    pub fn provider_name(&self, key: &str, dev: &'static str, prod: &'static str) -> String {
        self.modules
            .get(key)
            .and_then(|table| table.get("provider"))
            .and_then(Json::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| match self.profile {
                Profile::Dev => dev.to_owned(),
                Profile::Prod => prod.to_owned(),
            })
    }

    /// Whether `[modules.<name>] disabled = true`.
    pub fn module_disabled(&self, name: &str) -> bool {
        self.modules
            .get(name)
            .and_then(|table| table.get("disabled"))
            .and_then(Json::as_bool)
            .unwrap_or(false)
    }

    /// Reads `[modules.<name>]` (without `disabled`) into a module's options type.
    pub fn module_options<T: DeserializeOwned>(&self, name: &str) -> Result<T, ConfigError> {
        let mut table = self.module_table(name);
        if let Json::Object(map) = &mut table {
            map.remove("disabled");
        }
        typed(&format!("modules.{name}"), table)
    }

    /// Reads `[plugins.<name>]` into a plugin's options type.
    pub fn plugin_options<T: DeserializeOwned>(&self, name: &str) -> Result<T, ConfigError> {
        let table = self
            .plugins
            .get(name)
            .cloned()
            .unwrap_or_else(|| Json::Object(Default::default()));
        typed(&format!("plugins.{name}"), table)
    }

    /// Reads `[settings]` into the application's settings type.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let table = if self.settings.is_null() {
            Json::Object(Default::default())
        } else {
            self.settings.clone()
        };
        typed("settings", table)
    }

    /// A path from the configuration, relative to the configuration's folder.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        self.root.join(path)
    }

    /// The SQLite file the database URL names, if it names one (relative to the root).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let url = self.database_url();
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        let file = rest.split('?').next().unwrap_or(rest);
        (!file.is_empty() && !file.contains(":memory:")).then(|| self.path(file))
    }

    /// The database URL with a relative SQLite path resolved against the root.
    pub fn resolved_database_url(&self) -> String {
        match self.sqlite_path() {
            Some(path) => {
                let url = self.database_url();
                let query = url
                    .split_once('?')
                    .map(|(_, q)| format!("?{q}"))
                    .unwrap_or_default();
                format!("sqlite://{}{query}", path.display())
            }
            None => self.database_url().to_owned(),
        }
    }
}

fn typed<T: DeserializeOwned>(key: &str, table: Json) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(table).map_err(|error| {
        let path = error.path().to_string();
        ConfigError::Invalid {
            key: if path == "." {
                key.to_owned()
            } else {
                format!("{key}.{path}")
            },
            message: error.into_inner().to_string(),
        }
    })
}
