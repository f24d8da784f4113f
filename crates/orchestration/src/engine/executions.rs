//! Executions: listing transactions, one transaction in detail, and retention.
//!
//! ```text
//!   Engine::list(filter)            ─► Listing::list          (summaries, newest first, keyset pages)
//!   Engine::detail(workflow, id)    ─► the live or replayed transaction + Leases::summary
//!   Engine::purge_finished(before)  ─► Listing::purge_finished, batch after batch
//!   Engine::spawn_retention_sweep   ─► every interval, per workflow with `retentionTime`
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Engine, Execution};
use crate::data::Data;
use crate::error::Result;
use crate::flow::StepIndex;
use crate::log::{StepError, TransactionError};
use crate::state::{HandlerType, SideState, TransactionState};
use crate::store::{Purge, TransactionFilter, TransactionKey, TransactionPage};

/// How many transactions one store call of a purge deletes at most.
pub const PURGE_BATCH: usize = 500;

/// One transaction in full, for an operator: every step's state, attempts, saved responses,
/// errors and times. Serializable (to JSON for an HTTP API).
#[derive(Clone, Debug, Serialize)]
pub struct ExecutionDetail {
    /// The workflow name.
    pub workflow: String,
    /// The transaction id.
    pub transaction_id: String,
    /// The run id of this run of the id.
    pub run_id: String,
    /// The transaction state.
    pub state: TransactionState,
    /// The workflow input.
    pub payload: Data,
    /// When it was created (engine clock ms), when the store has a summary of it.
    pub created_at: Option<u64>,
    /// When its summary last changed (store wall clock, Unix ms), when the store has one.
    pub updated_at: Option<u64>,
    /// Every error recorded on the transaction, in order.
    pub errors: Vec<TransactionError>,
    /// Every step, in flow order (the root left out).
    pub steps: Vec<StepDetail>,
}

/// One step of an [`ExecutionDetail`].
#[derive(Clone, Debug, Serialize)]
pub struct StepDetail {
    /// The step's index in the flow.
    pub index: StepIndex,
    /// The step's action.
    pub action: String,
    /// Medusa's dotted step id (`_root.a.b`).
    pub id: String,
    /// The invoke side: state and status.
    pub invoke: SideState,
    /// The compensate side: state and status (`dormant` until compensation reaches the step).
    pub compensate: SideState,
    /// Whether the step switched to compensation.
    pub compensating: bool,
    /// Handler calls of the current side (reset when compensation begins).
    pub attempts: u32,
    /// Failures of the current side.
    pub failures: u32,
    /// When the step first started (engine clock ms).
    pub started_at: Option<u64>,
    /// When the current side was last attempted.
    pub last_attempt: Option<u64>,
    /// When the step timed out.
    pub timed_out_at: Option<u64>,
    /// When a retry was last scheduled.
    pub retry_rescheduled_at: Option<u64>,
    /// When an `autoRetry: false` step parked after a temporary failure.
    pub temporary_failed_at: Option<u64>,
    /// What the invoke handler returned. The typed SDK (`gorgon_workflows`, `App::execution`)
    /// gives the step's output here as the step returned it, and its compensation input apart.
    pub output: Option<Data>,
    /// The input the step's compensation gets, when the handler saved one apart from its
    /// output (the typed SDK does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation_input: Option<Data>,
    /// What the compensation handler returned.
    pub compensation_output: Option<Data>,
    /// This step's errors (either side), in order.
    pub errors: Vec<StepErrorDetail>,
}

/// An error of one step's handler.
#[derive(Clone, Debug, Serialize)]
pub struct StepErrorDetail {
    /// The handler that failed.
    pub handler: HandlerType,
    /// What it said.
    pub error: StepError,
}

impl Execution {
    /// The transaction in full (without store times: [`Engine::detail`] adds them).
    pub fn detail(&self) -> ExecutionDetail {
        let flow = self.flow();
        let steps = flow
            .steps()
            .iter()
            .enumerate()
            .skip(1)
            .map(|(index, step)| {
                let run = &self.steps[index];
                StepDetail {
                    index,
                    action: step.action.clone(),
                    id: step.id.clone(),
                    invoke: run.invoke,
                    compensate: run.compensate,
                    compensating: run.compensating,
                    attempts: run.attempts,
                    failures: run.failures,
                    started_at: run.started_at,
                    last_attempt: run.last_attempt,
                    timed_out_at: run.timed_out_at,
                    retry_rescheduled_at: run.retry_rescheduled_at,
                    temporary_failed_at: run.temporary_failed_at,
                    output: self.shared.responses.get(index, HandlerType::Invoke),
                    compensation_input: None,
                    compensation_output: self.shared.responses.get(index, HandlerType::Compensate),
                    errors: self
                        .errors
                        .iter()
                        .filter(|e| e.action == step.action)
                        .map(|e| StepErrorDetail {
                            handler: e.handler_type,
                            error: e.error.clone(),
                        })
                        .collect(),
                }
            })
            .collect();
        ExecutionDetail {
            workflow: self.workflow().to_string(),
            transaction_id: self.transaction_id().to_string(),
            run_id: self.run_id().to_string(),
            state: self.state,
            payload: self.payload().clone(),
            created_at: None,
            updated_at: None,
            errors: self.errors.clone(),
            steps,
        }
    }
}

impl Engine {
    /// A page of transaction summaries from the store, newest first (see [`TransactionFilter`]).
    pub async fn list(&self, filter: &TransactionFilter) -> Result<TransactionPage> {
        filter.check()?;
        self.inner.store.list(filter).await
    }

    /// One transaction in detail (the workflow must be registered): each step's state,
    /// attempts, responses, errors and times, with the store's created/updated times.
    pub async fn detail(&self, workflow: &str, transaction: &str) -> Result<ExecutionDetail> {
        let execution = self.get(workflow, transaction).await?;
        let mut detail = execution.detail();
        let key = TransactionKey::new(workflow, transaction);
        if let Some(summary) = self.inner.store.summary(&key).await?
            && *summary.run_id == *execution.run_id()
        {
            detail.created_at = Some(summary.created_at);
            detail.updated_at = Some(summary.updated_at);
        }
        Ok(detail)
    }

    /// Deletes every finished transaction (of every workflow) whose summary was last updated
    /// before `older_than` (store wall clock, Unix ms), in batches of [`PURGE_BATCH`]; returns
    /// how many. Finished transactions cached in memory are dropped too.
    pub async fn purge_finished(&self, older_than: u64) -> Result<u64> {
        self.purge(older_than, None).await
    }

    /// [`purge_finished`](Self::purge_finished) for one workflow.
    pub async fn purge_finished_of(&self, workflow: &str, older_than: u64) -> Result<u64> {
        self.purge(older_than, Some(Arc::from(workflow))).await
    }

    async fn purge(&self, older_than: u64, workflow: Option<Arc<str>>) -> Result<u64> {
        let purge = Purge {
            older_than,
            workflow,
            limit: PURGE_BATCH,
        };
        let mut total = 0;
        loop {
            let deleted = self.inner.store.purge_finished(&purge).await?;
            total += deleted;
            if deleted < PURGE_BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Finished transactions loaded for a `get` stay cached; drop them so a purged one is gone.
        self.inner.live.lock().retain(|key, cell| {
            purge.workflow.as_ref().is_some_and(|w| *w != key.workflow)
                || !cell.tx.try_lock().is_ok_and(|tx| tx.has_finished())
        });
        Ok(total)
    }

    /// Starts a task that, every `interval`, purges each registered workflow's finished
    /// transactions older than its `retentionTime` (workflows without one are kept). The task
    /// stops when the returned handle is aborted; errors are logged and retried next time.
    pub fn spawn_retention_sweep(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let workflows: Vec<(Arc<str>, u64)> = engine
                    .inner
                    .workflows
                    .read()
                    .iter()
                    .filter_map(|(name, r)| Some((name.clone(), r.flow.options().retention_ms()?)))
                    .collect();
                let now = crate::clock::now_millis().max(0) as u64;
                for (workflow, retention) in workflows {
                    let before = now.saturating_sub(retention);
                    match engine.purge(before, Some(workflow.clone())).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(%workflow, purged = n, "retention sweep"),
                        Err(error) => tracing::warn!(%workflow, %error, "retention sweep failed"),
                    }
                }
            }
        })
    }
}
