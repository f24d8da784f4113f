//! Scheduled jobs: a function run on a cron expression or an interval, once per tick across
//! the cluster (the scheduler's leader lease and the workflow store agree on it), in `worker`
//! and `shared` instances only. A job runs as a one-step workflow `job-<name>`, so each run is
//! an execution like any other.

use std::time::Duration;

use gorgon_scheduler::Concurrency;
use gorgon_workflows::Requirement;

use crate::context::{Erased, Handler, erase};

/// The tick a job run is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The job's name.
    pub job: String,
    /// When the tick was due (Unix milliseconds).
    pub scheduled_for_ms: u64,
}

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// A cron expression (croner syntax, seconds allowed, UTC).
    Cron(String),
    /// A fixed interval.
    Every(Duration),
}

/// A scheduled job, ready to register with [`AppBuilder::job`](crate::AppBuilder::job).
///
/// ```ignore
/// async fn restock_check(tick: Tick, suppliers: Service<SupplierService>) -> Result<(), BoxError> { … }
/// Job::cron("restock-check", "0 */5 * * * *", restock_check)
/// ```
#[derive(Clone)]
pub struct Job {
    pub(crate) name: String,
    pub(crate) when: When,
    pub(crate) concurrency: Concurrency,
    pub(crate) handler: Erased<Tick>,
    pub(crate) requirements: Vec<Requirement>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// A job on a cron expression.
    pub fn cron<Args, H: Handler<Tick, Args>>(
        name: impl Into<String>,
        expression: impl Into<String>,
        handler: H,
    ) -> Self {
        Self::with(name, When::Cron(expression.into()), handler)
    }

    /// A job every `interval`.
    pub fn every<Args, H: Handler<Tick, Args>>(
        name: impl Into<String>,
        interval: Duration,
        handler: H,
    ) -> Self {
        Self::with(name, When::Every(interval), handler)
    }

    fn with<Args, H: Handler<Tick, Args>>(name: impl Into<String>, when: When, handler: H) -> Self {
        Self {
            name: name.into(),
            when,
            concurrency: Concurrency::Forbid,
            handler: erase(handler),
            requirements: H::requirements(),
        }
    }

    /// Lets a tick start while the previous run still goes (the default forbids it, across
    /// instances).
    pub fn allow_overlap(mut self) -> Self {
        self.concurrency = Concurrency::Allow;
        self
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The workflow a run of it is.
    pub fn workflow_name(&self) -> String {
        format!("job-{}", self.name)
    }
}
