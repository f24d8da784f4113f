//! The framework's errors: boot problems (all of them at once, each with a help line) and what
//! can go wrong while the application runs.

use std::fmt;

use crate::config::ConfigError;

/// Any error a module, subscriber, job or script returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One thing wrong with the application's graph, found at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, naming the module, link, workflow, subscriber or migration.
    pub what: String,
    /// What to do about it.
    pub help: String,
}

impl Problem {
    /// A problem and its help line.
    pub fn new(what: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            help: help.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n  help: {}", self.what, self.help)
    }
}

/// What can go wrong building or running an application.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The application's graph has problems; every one found is listed.
    #[error("the application cannot boot ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(|p| format!("- {p}")).collect::<Vec<_>>().join("\n"))]
    Boot(Vec<Problem>),
    /// A data-layer error (bad filter, not found, database down…).
    #[error(transparent)]
    Data(#[from] gorgon_data::Error),
    /// A workflow error.
    #[error(transparent)]
    Workflow(#[from] gorgon_workflows::Error),
    /// A link operation names something the link does not have.
    #[error("link: {0}")]
    Link(String),
    /// Query was asked for an entity no enabled module has.
    #[error("unknown entity `{entity}`; the entities are {known}")]
    UnknownEntity {
        /// The entity asked for.
        entity: String,
        /// The entities there are.
        known: String,
    },
    /// No script has that name.
    #[error("unknown script `{name}`; the scripts are {known}")]
    UnknownScript {
        /// The name asked for.
        name: String,
        /// The scripts there are.
        known: String,
    },
    /// A script, hook or provider failed.
    #[error("{what}: {source}")]
    Failed {
        /// Which script, hook or provider.
        what: String,
        /// Its error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    pub(crate) fn failed(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Failed {
            what: what.into(),
            source: source.into(),
        }
    }
}
