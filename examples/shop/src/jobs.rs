//! The `expire-restock-drafts` job: restock orders left in draft longer than
//! `[settings] draft_ttl_secs` (default one day) are marked expired.

use std::time::Duration;

use gorgon_framework::{App, BoxError, Job, Tick};
use gorgon_workflows::Service;
use serde::Deserialize;
use serde_json::json;

use crate::supplier::SupplierService;

/// The application's `[settings]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// How long a restock order may stay a draft, in seconds.
    pub draft_ttl_secs: i64,
    /// How often the job looks, in milliseconds.
    pub expire_every_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            draft_ttl_secs: 24 * 3600,
            expire_every_ms: 60_000,
        }
    }
}

async fn expire_drafts(
    tick: Tick,
    app: App,
    suppliers: Service<SupplierService>,
) -> Result<(), BoxError> {
    let settings: Settings = app.config().settings()?;
    let cutoff = gorgon_data::now() - chrono::Duration::seconds(settings.draft_ttl_secs);
    let expired = suppliers
        .restock_orders
        .update_where(
            json!({ "status": "draft", "created_at": { "$lt": gorgon_data::format_timestamp(&cutoff) } }),
            json!({ "status": "expired" }),
        )
        .await?;
    tracing::info!(job = %tick.job, expired = expired.len(), "restock drafts expired");
    Ok(())
}

/// The job, every `interval`.
pub fn expire_drafts_job(interval: Duration) -> Job {
    Job::every("expire-restock-drafts", interval, expire_drafts)
}
