//! `/admin/workflows-executions`: the stored executions of the application's workflows, as
//! Medusa's admin API lists and shows them (the same envelope, keys and nesting), and what an
//! operator does to them: run a workflow, complete a waiting async step, cancel, retry, and
//! watch a run live (server-sent events).
//!
//! An execution's id is `wf_exec_` followed by its run id (a UUID v7) written as a ULID, so it
//! sorts by creation time as Medusa's ids do and is found again without an extra index.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use gorgon_framework::{App, Route};
use gorgon_http::{ApiError, ApiResult, Body, List, ListQuery, resolve_fields};
use gorgon_orchestration::{
    EventKind, ExecutionDetail, Flow, FlowDefinition, HandlerType, IdempotencyKey, StepError,
    StepState, StepStatus, TransactionFilter, TransactionState, TransactionSummary,
};
use gorgon_workflows::RunOptions;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

/// The list's keys when `fields` is not given (Medusa's).
const LIST_FIELDS: &[&str] = &[
    "id",
    "workflow_id",
    "transaction_id",
    "state",
    "execution",
    "created_at",
    "updated_at",
    "deleted_at",
];

/// The detail's keys when `fields` is not given: the list's and `context`.
const DETAIL_FIELDS: &[&str] = &[
    "id",
    "workflow_id",
    "transaction_id",
    "state",
    "execution",
    "context",
    "created_at",
    "updated_at",
    "deleted_at",
];

/// Medusa's default page size for this list.
const DEFAULT_LIMIT: u64 = 100;

/// The routes of this family.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(routes!(list_executions)),
        Route::new(routes!(retrieve_execution)),
        Route::new(routes!(retrieve_by_transaction)),
        Route::new(routes!(run_workflow)),
        Route::new(routes!(step_success)),
        Route::new(routes!(step_failure)),
        Route::new(routes!(cancel_execution)),
        Route::new(routes!(retry_execution)),
        Route::new(routes!(subscribe_workflow)),
        Route::new(routes!(subscribe_transaction)),
    ]
}

/// The list's query parameters (bracket syntax also works: `state[0]=done&state[1]=failed`,
/// `created_at[$gte]=2026-01-01T00:00:00Z`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ExecutionListParams {
    /// Keys to return (comma-separated; `+key` adds, `-key` removes).
    fields: Option<String>,
    /// Most executions returned (default 100).
    limit: Option<u64>,
    /// Executions skipped.
    offset: Option<u64>,
    /// `created_at` (oldest first) or `-created_at` (newest first, the default).
    order: Option<String>,
    /// Text found in the workflow or transaction id.
    q: Option<String>,
    /// Only this workflow (or several: `workflow_id[]=a&workflow_id[]=b`).
    workflow_id: Option<String>,
    /// Only this transaction id.
    transaction_id: Option<String>,
    /// Only executions in this state (`not_started`, `invoking`, `waiting_to_compensate`,
    /// `compensating`, `done`, `reverted`, `failed`).
    state: Option<String>,
}

/// A list of executions: Medusa's envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionList {
    /// The executions (their keys depend on `fields`).
    #[schema(value_type = Vec<Object>)]
    pub workflow_executions: Vec<Value>,
    /// How many match in all.
    pub count: u64,
    /// Skipped.
    pub offset: u64,
    /// Page size.
    pub limit: u64,
}

/// One execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionResponse {
    /// The execution (its keys depend on `fields`): `id`, `workflow_id`, `transaction_id`,
    /// `state`, `execution` (definition and steps by path), `context` (input, step outputs,
    /// errors), timestamps.
    #[schema(value_type = Object)]
    pub workflow_execution: Value,
}

/// `fields` for a retrieve.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FieldsParams {
    /// Keys to return (comma-separated).
    fields: Option<String>,
}

/// The run of a workflow, started from the API.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The workflow's input.
    #[garde(skip)]
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    /// The transaction id (default: a new `auto-…` id).
    #[garde(length(min = 1, max = 200))]
    pub transaction_id: Option<String>,
}

/// Where a run stands after the call.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledgement {
    /// The workflow.
    pub workflow_id: String,
    /// The transaction id.
    pub transaction_id: String,
    /// Whether it finished (rather than waiting).
    pub has_finished: bool,
    /// Whether it failed (reverted or failed).
    pub has_failed: bool,
}

/// `{acknowledgement}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunResponse {
    /// Where the run stands.
    pub acknowledgement: Acknowledgement,
}

/// Completes a waiting async step.
#[derive(Debug, Deserialize, ToSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// The run's transaction id.
    #[garde(length(min = 1))]
    pub transaction_id: String,
    /// The step's action name (Medusa's `step_id`).
    #[garde(length(min = 1))]
    pub step_id: String,
    /// The step's response (success) or the error (failure: a string or `{message}`).
    #[garde(skip)]
    #[schema(value_type = Object)]
    pub response: Option<Value>,
    /// `invoke` (default) or `compensate`: which handler waits.
    #[garde(skip)]
    pub action: Option<StepAction>,
}

/// Which handler of a step.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// The invoke handler.
    Invoke,
    /// The compensation.
    Compensate,
}

/// `{success: true}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuccessResponse {
    /// Always true.
    pub success: bool,
}

/// `wf_exec_<ULID of the run id>`: the id an execution is known by in the admin API.
pub fn execution_id(run_id: &str) -> String {
    match uuid::Uuid::parse_str(run_id) {
        Ok(uuid) => format!("wf_exec_{}", ulid::Ulid::from(uuid.as_u128())),
        Err(_) => format!("wf_exec_{run_id}"),
    }
}

/// The run id and its creation time (ms) from an execution id.
fn run_of(id: &str) -> Option<(String, u64)> {
    let ulid: ulid::Ulid = id.strip_prefix("wf_exec_")?.parse().ok()?;
    let uuid = uuid::Uuid::from_u128(ulid.0);
    Some((uuid.to_string(), ulid.timestamp_ms()))
}

fn iso(ms: u64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|at| json!(at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()))
        .unwrap_or(Value::Null)
}

fn strings(field: &str, value: &Value) -> Result<Vec<String>, ApiError> {
    match value {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::invalid_data(format!(
                        "Invalid request: Expected type: 'string' for field '{field}'"
                    ))
                })
            })
            .collect(),
        Value::Object(map)
            if map.len() == 1 && (map.contains_key("$in") || map.contains_key("$eq")) =>
        {
            strings(field, map.values().next().unwrap_or(&Value::Null))
        }
        _ => Err(ApiError::invalid_data(format!(
            "Invalid request: Expected type: 'string' for field '{field}'"
        ))),
    }
}

fn millis(field: &str, op: &str, value: &Value) -> Result<u64, ApiError> {
    value
        .as_str()
        .and_then(gorgon_data::parse_timestamp)
        .map(|at| at.timestamp_millis().max(0) as u64)
        .ok_or_else(|| {
            ApiError::invalid_data(format!(
                "Invalid request: Expected an ISO date for field '{field}.{op}'"
            ))
        })
}

/// Which executions a listing wants: what the store filters (one workflow, states, creation
/// time) and what is checked after (several workflows, transaction ids, free text).
#[derive(Debug, Default, Clone)]
pub struct Wanted {
    /// Only these workflows (any when empty).
    pub workflows: Vec<String>,
    /// Only these transaction ids (any when empty).
    pub transactions: Vec<String>,
    /// Only in these states (any when empty).
    pub states: Vec<TransactionState>,
    /// Created at or after (engine clock, ms).
    pub created_from: Option<u64>,
    /// Created before (engine clock, ms).
    pub created_before: Option<u64>,
    /// Text in the workflow or transaction id.
    pub q: Option<String>,
}

impl Wanted {
    fn parse(query: &ListQuery) -> Result<Self, ApiError> {
        query.allow(&["workflow_id", "transaction_id", "state", "created_at"])?;
        let mut wanted = Wanted {
            q: query.q.clone().filter(|q| !q.is_empty()),
            ..Wanted::default()
        };
        for (key, value) in &query.filters {
            match key.as_str() {
                "workflow_id" => wanted.workflows = strings(key, value)?,
                "transaction_id" => wanted.transactions = strings(key, value)?,
                "state" => {
                    for state in strings(key, value)? {
                        wanted.states.push(
                            serde_json::from_value(Value::String(state.clone())).map_err(|_| {
                                ApiError::invalid_data(format!(
                                    "Invalid request: Invalid value for field 'state': '{state}'; expected one of not_started, invoking, waiting_to_compensate, compensating, done, reverted, failed"
                                ))
                            })?,
                        );
                    }
                }
                "created_at" => {
                    let Value::Object(ops) = value else {
                        return Err(ApiError::invalid_data(
                            "Invalid request: created_at takes operators: created_at[$gte]=…",
                        ));
                    };
                    for (op, at) in ops {
                        let ms = millis(key, op, at)?;
                        match op.as_str() {
                            "$gte" => wanted.created_from = Some(ms),
                            "$gt" => wanted.created_from = Some(ms + 1),
                            "$lt" => wanted.created_before = Some(ms),
                            "$lte" => wanted.created_before = Some(ms + 1),
                            "$eq" => {
                                wanted.created_from = Some(ms);
                                wanted.created_before = Some(ms + 1);
                            }
                            other => {
                                return Err(ApiError::invalid_data(format!(
                                    "Invalid request: unknown operator '{other}' for field 'created_at'"
                                )));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(wanted)
    }

    fn keeps(&self, summary: &TransactionSummary) -> bool {
        let workflow = &*summary.key.workflow;
        let transaction = &*summary.key.id;
        (self.workflows.is_empty() || self.workflows.iter().any(|w| w == workflow))
            && (self.transactions.is_empty() || self.transactions.iter().any(|t| t == transaction))
            && self.q.as_ref().is_none_or(|q| {
                let q = q.to_lowercase();
                workflow.to_lowercase().contains(&q) || transaction.to_lowercase().contains(&q)
            })
    }
}

/// Every stored summary `wanted` keeps, newest first. The store filters by workflow, state
/// and time; the rest is checked here, page by page.
pub async fn scan(app: &App, wanted: &Wanted) -> ApiResult<Vec<TransactionSummary>> {
    let engine = app.workflows().engine();
    let mut filter = TransactionFilter {
        workflow: (wanted.workflows.len() == 1).then(|| wanted.workflows[0].as_str().into()),
        states: wanted.states.clone(),
        created_from: wanted.created_from,
        created_before: wanted.created_before,
        after: None,
        limit: gorgon_orchestration::store::MAX_PAGE,
    };
    let mut kept = Vec::new();
    loop {
        let page = engine.list(&filter).await?;
        kept.extend(page.items.into_iter().filter(|s| wanted.keeps(s)));
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return Ok(kept),
        }
    }
}

/// The top-level keys asked for.
fn keys(fields: Option<&str>, defaults: &[&str]) -> BTreeSet<String> {
    resolve_fields(fields, defaults)
        .into_iter()
        .map(|f| f.split('.').next().unwrap_or_default().to_owned())
        .collect()
}

/// One execution with the keys asked for.
async fn render(
    app: &App,
    summary: &TransactionSummary,
    keys: &BTreeSet<String>,
) -> ApiResult<Value> {
    let mut row = Map::new();
    let detail = if keys.contains("execution") || keys.contains("context") {
        Some(
            app.workflows()
                .execution_named(&summary.key.workflow, &summary.key.id)
                .await?,
        )
    } else {
        None
    };
    for key in keys {
        let value = match key.as_str() {
            "id" => json!(execution_id(&summary.run_id)),
            "workflow_id" => json!(&*summary.key.workflow),
            "transaction_id" => json!(&*summary.key.id),
            "state" => json!(summary.state),
            "created_at" => iso(summary.created_at),
            "updated_at" => iso(summary.updated_at),
            "deleted_at" => Value::Null,
            "execution" => match &detail {
                Some(detail) => execution(app, detail, summary.created_at)?,
                None => continue,
            },
            "context" => match &detail {
                Some(detail) => context(detail)?,
                None => continue,
            },
            _ => continue,
        };
        row.insert(key.clone(), value);
    }
    Ok(Value::Object(row))
}

/// Medusa's `execution`: the flow's definition and every step's state, by step path.
fn execution(app: &App, detail: &ExecutionDetail, created_at: u64) -> ApiResult<Value> {
    let flow = app.workflows().engine().flow(&detail.workflow)?;
    let options = flow.options();
    let steps = &detail.steps;
    let any = |f: &dyn Fn(&gorgon_orchestration::StepDetail) -> bool| steps.iter().any(f);
    let mut by_path = Map::new();
    let root = &flow.steps()[0];
    by_path.insert(
        "_root".into(),
        json!({ "id": "_root", "next": root.next.iter().map(|&i| flow.steps()[i].id.clone()).collect::<Vec<_>>() }),
    );
    for step in steps {
        by_path.insert(step.id.clone(), step_json(&flow, step));
    }
    let timed_out = detail.steps.iter().filter_map(|s| s.timed_out_at).min();
    Ok(json!({
        "_v": 0,
        "runId": detail.run_id,
        "modelId": detail.workflow,
        "transactionId": detail.transaction_id,
        "state": detail.state,
        "startedAt": created_at,
        "timedOutAt": timed_out,
        "hasAsyncSteps": flow.has_async_steps(),
        "hasFailedSteps": any(&|s| s.invoke.state == StepState::Failed),
        "hasRevertedSteps": any(&|s| s.compensate.state == StepState::Reverted),
        "hasSkippedSteps": any(&|s| s.invoke.state == StepState::Skipped),
        "hasSkippedOnFailureSteps": any(&|s| s.invoke.state == StepState::SkippedFailure),
        "hasWaitingSteps": any(&|s| s.invoke.status == StepStatus::Waiting || s.compensate.status == StepStatus::Waiting),
        "options": {
            "name": detail.workflow,
            "idempotent": options.idempotent.unwrap_or(false),
            "retentionTime": options.retention_time,
            "store": flow.store(),
        },
        "metadata": {
            "eventGroupId": detail.run_id,
            "preventReleaseEvents": false,
            "sourcePath": Value::Null,
        },
        "definition": definition(flow.definition().next.as_ref()),
        "steps": by_path,
    }))
}

fn definition(next: Option<&gorgon_orchestration::flow::Next>) -> Value {
    let node = |node: &FlowDefinition| {
        let mut out = Map::new();
        out.insert("action".into(), json!(node.action));
        out.insert(
            "noCompensation".into(),
            json!(node.options.no_compensation.unwrap_or(false)),
        );
        out.insert(
            "uuid".into(),
            json!(node.options.uuid.clone().or_else(|| node.action.clone())),
        );
        out.insert(
            "async".into(),
            json!(node.options.is_async.unwrap_or(false)),
        );
        out.insert(
            "compensateAsync".into(),
            json!(node.options.compensate_async.unwrap_or(false)),
        );
        if node.next.is_some() {
            out.insert("next".into(), definition(node.next.as_ref()));
        }
        Value::Object(out)
    };
    match next {
        None => Value::Null,
        Some(gorgon_orchestration::flow::Next::One(child)) => node(child),
        Some(gorgon_orchestration::flow::Next::Many(children)) => {
            Value::Array(children.iter().map(node).collect())
        }
    }
}

fn step_json(flow: &Flow, step: &gorgon_orchestration::StepDetail) -> Value {
    let flow_step = &flow.steps()[step.index];
    let options = &flow_step.options;
    let uuid = options.uuid.clone().unwrap_or_else(|| step.action.clone());
    let definition = json!({
        "action": step.action,
        "async": options.is_async.unwrap_or(false),
        "compensateAsync": options.compensate_async.unwrap_or(false),
        "noCompensation": options.no_compensation.unwrap_or(false),
        "store": options.store.unwrap_or(false),
        "uuid": uuid,
    });
    let mut out = json!({
        "_v": 0,
        "id": step.id,
        "uuid": uuid,
        "depth": flow_step.depth,
        "next": flow_step.next.iter().map(|&i| flow.steps()[i].id.clone()).collect::<Vec<_>>(),
        "definition": definition,
        "invoke": step.invoke,
        "compensate": step.compensate,
        "attempts": step.attempts,
        "failures": step.failures,
        "lastAttempt": step.last_attempt,
        "stepFailed": step.compensating,
        "saveResponse": options.save_response.unwrap_or(true),
    });
    if let Some(started) = step.started_at {
        out["startedAt"] = json!(started);
    }
    for (key, at) in [
        ("timedOutAt", step.timed_out_at),
        ("retryRescheduledAt", step.retry_rescheduled_at),
        ("temporaryFailedAt", step.temporary_failed_at),
    ] {
        if let Some(at) = at {
            out[key] = json!(at);
        }
    }
    out
}

/// Medusa's `context`: the input, each step's output and compensation input by action, the
/// compensations run, and the errors.
fn context(detail: &ExecutionDetail) -> ApiResult<Value> {
    let json_of = |data: &gorgon_orchestration::Data| data.to_json().map_err(ApiError::internal);
    let mut invoke = Map::new();
    let mut compensate = Map::new();
    for step in &detail.steps {
        if step.invoke.state == StepState::Done || step.output.is_some() {
            let mut response = json!({ "__type": "Symbol(WorkflowStepResponse)" });
            if let Some(output) = &step.output {
                response["output"] = json_of(output)?;
            }
            if let Some(input) = &step.compensation_input {
                response["compensateInput"] = json_of(input)?;
            }
            invoke.insert(
                step.action.clone(),
                json!({ "__type": "Symbol(WorkflowWorkflowData)", "output": response }),
            );
        }
        if step.compensate.state == StepState::Reverted && step.compensate.status == StepStatus::Ok
        {
            let mut response = json!({ "__type": "Symbol(WorkflowStepResponse)" });
            if let Some(output) = &step.compensation_output {
                response["output"] = json_of(output)?;
            }
            compensate.insert(step.action.clone(), json!({ "output": response }));
        }
    }
    let date = iso(detail.updated_at.or(detail.created_at).unwrap_or_default());
    let errors: Vec<Value> = detail
        .errors
        .iter()
        .map(|error| {
            let name = error.error.name.clone().unwrap_or_else(|| "Error".into());
            json!({
                "action": error.action,
                "handlerType": error.handler_type,
                "error": {
                    "__isMedusaError": false,
                    "date": date,
                    "message": error.error.message,
                    "name": name,
                    "stack": format!("{name}: {}", error.error.message),
                    "type": "unknown_error",
                },
            })
        })
        .collect();
    Ok(json!({
        "data": {
            "payload": json_of(&detail.payload)?,
            "invoke": invoke,
            "compensate": compensate,
        },
        "errors": errors,
    }))
}

/// Lists stored executions.
#[utoipa::path(
    get,
    path = "/admin/workflows-executions",
    tag = "Workflow executions",
    params(ExecutionListParams),
    responses((status = 200, description = "A page of executions", body = ExecutionList))
)]
async fn list_executions(State(app): State<App>, query: ListQuery) -> ApiResult<List> {
    let wanted = Wanted::parse(&query)?;
    let keys = keys(query.fields.as_deref(), LIST_FIELDS);
    let mut all = scan(&app, &wanted).await?;
    match query.order.as_deref().map(str::trim) {
        None | Some("") | Some("-created_at") => {}
        Some("created_at") => all.reverse(),
        Some(other) => {
            return Err(ApiError::invalid_data(format!(
                "Invalid request: executions are ordered by created_at or -created_at, not '{other}'"
            )));
        }
    }
    let count = all.len() as u64;
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    let mut items = Vec::new();
    for summary in all.iter().skip(offset as usize).take(limit as usize) {
        items.push(render(&app, summary, &keys).await?);
    }
    Ok(List {
        key: "workflow_executions",
        items,
        count,
        offset,
        limit,
    })
}

async fn find_by_id(app: &App, id: &str) -> ApiResult<TransactionSummary> {
    let not_found =
        || ApiError::not_found(format!("Workflow execution with id: {id} was not found"));
    let (run_id, at) = run_of(id).ok_or_else(not_found)?;
    let engine = app.workflows().engine();
    // The run id's time is its creation time; look in a window around it.
    let filter = TransactionFilter {
        created_from: Some(at.saturating_sub(1_000)),
        created_before: Some(at + 1_000),
        limit: gorgon_orchestration::store::MAX_PAGE,
        ..TransactionFilter::default()
    };
    let mut filter = filter;
    loop {
        let page = engine.list(&filter).await?;
        if let Some(found) = page.items.into_iter().find(|s| *s.run_id == *run_id) {
            return Ok(found);
        }
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return Err(not_found()),
        }
    }
}

async fn find_by_transaction(
    app: &App,
    workflow: &str,
    transaction: &str,
) -> ApiResult<TransactionSummary> {
    let wanted = Wanted {
        workflows: vec![workflow.to_owned()],
        transactions: vec![transaction.to_owned()],
        ..Wanted::default()
    };
    scan(app, &wanted).await?.into_iter().next().ok_or_else(|| {
        ApiError::not_found(format!(
            "Workflow execution of {workflow} with transaction id: {transaction} was not found"
        ))
    })
}

fn detail_response(row: Value) -> Json<ExecutionResponse> {
    Json(ExecutionResponse {
        workflow_execution: row,
    })
}

/// One execution by its id (`wf_exec_…`).
#[utoipa::path(
    get,
    path = "/admin/workflows-executions/{workflow_id}",
    tag = "Workflow executions",
    params(
        ("workflow_id" = String, Path, description = "The execution's id (wf_exec_…)"),
        FieldsParams
    ),
    responses((status = 200, body = ExecutionResponse), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn retrieve_execution(
    State(app): State<App>,
    Path(id): Path<String>,
    query: ListQuery,
) -> ApiResult<Json<ExecutionResponse>> {
    query.allow(&[])?;
    let summary = find_by_id(&app, &id).await?;
    let keys = keys(query.fields.as_deref(), DETAIL_FIELDS);
    Ok(detail_response(render(&app, &summary, &keys).await?))
}

/// One execution by workflow and transaction id.
#[utoipa::path(
    get,
    path = "/admin/workflows-executions/{workflow_id}/{transaction_id}",
    tag = "Workflow executions",
    params(
        ("workflow_id" = String, Path, description = "The workflow"),
        ("transaction_id" = String, Path, description = "The transaction id"),
        FieldsParams
    ),
    responses((status = 200, body = ExecutionResponse), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn retrieve_by_transaction(
    State(app): State<App>,
    Path((workflow, transaction)): Path<(String, String)>,
    query: ListQuery,
) -> ApiResult<Json<ExecutionResponse>> {
    query.allow(&[])?;
    let summary = find_by_transaction(&app, &workflow, &transaction).await?;
    let keys = keys(query.fields.as_deref(), DETAIL_FIELDS);
    Ok(detail_response(render(&app, &summary, &keys).await?))
}

fn acknowledgement(execution: &gorgon_orchestration::Execution) -> Json<RunResponse> {
    Json(RunResponse {
        acknowledgement: Acknowledgement {
            workflow_id: execution.workflow().to_owned(),
            transaction_id: execution.transaction_id().to_owned(),
            has_finished: execution.has_finished(),
            has_failed: matches!(
                execution.state,
                TransactionState::Reverted | TransactionState::Failed
            ),
        },
    })
}

/// Runs a workflow with a JSON input and answers once it finished or waits.
#[utoipa::path(
    post,
    path = "/admin/workflows-executions/{workflow_id}/run",
    tag = "Workflow executions",
    params(("workflow_id" = String, Path, description = "The workflow")),
    request_body = RunRequest,
    responses((status = 200, body = RunResponse), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn run_workflow(
    State(app): State<App>,
    Path(workflow): Path<String>,
    Body(request): Body<RunRequest>,
) -> ApiResult<Json<RunResponse>> {
    let options = RunOptions {
        transaction_id: request.transaction_id,
        ..RunOptions::default()
    };
    let execution = app
        .workflows()
        .run_named(&workflow, request.input.unwrap_or(Value::Null), options)
        .await?;
    Ok(acknowledgement(&execution))
}

fn key(workflow: &str, request: &StepRequest) -> ApiResult<IdempotencyKey> {
    let handler = match request.action.unwrap_or(StepAction::Invoke) {
        StepAction::Invoke => HandlerType::Invoke,
        StepAction::Compensate => HandlerType::Compensate,
    };
    Ok(IdempotencyKey::new(
        workflow,
        request.transaction_id.as_str(),
        request.step_id.as_str(),
        handler,
    ))
}

/// Completes a waiting async step with its response.
#[utoipa::path(
    post,
    path = "/admin/workflows-executions/{workflow_id}/steps/success",
    tag = "Workflow executions",
    params(("workflow_id" = String, Path, description = "The workflow")),
    request_body = StepRequest,
    responses((status = 200, body = SuccessResponse), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn step_success(
    State(app): State<App>,
    Path(workflow): Path<String>,
    Body(request): Body<StepRequest>,
) -> ApiResult<Json<SuccessResponse>> {
    let key = key(&workflow, &request)?;
    let response = request.response.map(gorgon_orchestration::Data::json);
    app.workflows()
        .engine()
        .set_step_success(&key, response)
        .await?;
    Ok(Json(SuccessResponse { success: true }))
}

/// Fails a waiting async step; its run compensates.
#[utoipa::path(
    post,
    path = "/admin/workflows-executions/{workflow_id}/steps/failure",
    tag = "Workflow executions",
    params(("workflow_id" = String, Path, description = "The workflow")),
    request_body = StepRequest,
    responses((status = 200, body = SuccessResponse), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn step_failure(
    State(app): State<App>,
    Path(workflow): Path<String>,
    Body(request): Body<StepRequest>,
) -> ApiResult<Json<SuccessResponse>> {
    let key = key(&workflow, &request)?;
    let message = match &request.response {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Object(map)) => map
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("failed by an operator")
            .to_owned(),
        _ => "failed by an operator".to_owned(),
    };
    app.workflows()
        .engine()
        .set_step_failure(&key, StepError::new(message), true)
        .await?;
    Ok(Json(SuccessResponse { success: true }))
}

/// Cancels a run: what it did is compensated.
#[utoipa::path(
    post,
    path = "/admin/workflows-executions/{workflow_id}/{transaction_id}/cancel",
    tag = "Workflow executions",
    params(
        ("workflow_id" = String, Path, description = "The workflow"),
        ("transaction_id" = String, Path, description = "The transaction id"),
    ),
    responses((status = 200, body = RunResponse), (status = 400, body = gorgon_http::ErrorBody), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn cancel_execution(
    State(app): State<App>,
    Path((workflow, transaction)): Path<(String, String)>,
) -> ApiResult<Json<RunResponse>> {
    let execution = app
        .workflows()
        .engine()
        .cancel(&workflow, &transaction)
        .await?;
    Ok(acknowledgement(&execution))
}

/// Retries a run: an unfinished one resumes (a step that waits for a retry runs again); a
/// failed or reverted one runs again with the same input under a new transaction id
/// (`<id>-retry-<ULID>`), keeping the failed run's record.
#[utoipa::path(
    post,
    path = "/admin/workflows-executions/{workflow_id}/{transaction_id}/retry",
    tag = "Workflow executions",
    params(
        ("workflow_id" = String, Path, description = "The workflow"),
        ("transaction_id" = String, Path, description = "The transaction id"),
    ),
    responses((status = 200, body = RunResponse), (status = 400, body = gorgon_http::ErrorBody), (status = 404, body = gorgon_http::ErrorBody))
)]
async fn retry_execution(
    State(app): State<App>,
    Path((workflow, transaction)): Path<(String, String)>,
) -> ApiResult<Json<RunResponse>> {
    let workflows = app.workflows();
    let detail = workflows.execution_named(&workflow, &transaction).await?;
    let execution = match detail.state {
        TransactionState::Done => {
            return Err(ApiError::not_allowed(format!(
                "Transaction {transaction} of workflow {workflow} is done: there is nothing to retry"
            )));
        }
        TransactionState::Reverted | TransactionState::Failed => {
            let input = detail.payload.to_json().map_err(ApiError::internal)?;
            let options = RunOptions {
                transaction_id: Some(format!("{transaction}-retry-{}", ulid::Ulid::generate())),
                ..RunOptions::default()
            };
            workflows.run_named(&workflow, input, options).await?
        }
        _ => workflows.engine().resume(&workflow, &transaction).await?,
    };
    Ok(acknowledgement(&execution))
}

/// The transaction to follow, for the workflow-wide subscription.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SubscribeParams {
    /// Only this transaction's events.
    transaction_id: Option<String>,
}

fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Begin => "onBegin",
        EventKind::Resume => "onResume",
        EventKind::CompensateBegin => "onCompensateBegin",
        EventKind::Finish => "onFinish",
        EventKind::Timeout => "onTimeout",
        EventKind::StepBegin => "onStepBegin",
        EventKind::StepSuccess => "onStepSuccess",
        EventKind::StepSkipped => "onStepSkipped",
        EventKind::StepFailure => "onStepFailure",
        EventKind::StepAwaiting => "onStepAwaiting",
        EventKind::CompensateStepSuccess => "onCompensateStepSuccess",
        EventKind::CompensateStepFailure => "onCompensateStepFailure",
    }
}

/// The event's data, as Medusa sends it: the step's state (step events), its response
/// (successes), the errors (the finish).
async fn event_data(app: &App, event: &gorgon_orchestration::TransactionEvent) -> Value {
    let name = event_name(event.kind);
    let mut data = json!({
        "event_type": name,
        "workflow_id": &*event.key.workflow,
        "transaction_id": &*event.key.id,
        "state": event.state,
    });
    let detail = app
        .workflows()
        .execution_named(&event.key.workflow, &event.key.id)
        .await
        .ok();
    let flow = app.workflows().engine().flow(&event.key.workflow).ok();
    if let (Some(detail), Some(flow), Some(action)) = (&detail, &flow, &event.action)
        && let Some(step) = detail.steps.iter().find(|s| *s.action == **action)
    {
        data["step"] = step_json(flow, step);
        if event.kind == EventKind::StepSuccess
            && let Some(output) = step.output.as_ref().and_then(|o| o.to_json().ok())
        {
            data["response"] = output;
        }
    }
    if event.kind == EventKind::Finish
        && let Some(detail) = &detail
        && let Ok(context) = context(detail)
    {
        data["errors"] = context["errors"].clone();
    }
    data
}

fn events(
    app: App,
    workflow: String,
    transaction: Option<String>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = app.workflows().subscribe();
    let stream = futures::stream::unfold(receiver, move |mut receiver| {
        let app = app.clone();
        let workflow = workflow.clone();
        let transaction = transaction.clone();
        async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => {
                        if *event.key.workflow != *workflow
                            || transaction.as_deref().is_some_and(|t| t != &*event.key.id)
                        {
                            continue;
                        }
                        let data = event_data(&app, &event).await;
                        let sse = Event::default()
                            .event(event_name(event.kind))
                            .data(data.to_string());
                        return Some((Ok(sse), receiver));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Server-sent events of a workflow's runs, live (`onBegin`, `onStepBegin`, `onStepSuccess`,
/// `onFinish`…).
#[utoipa::path(
    get,
    path = "/admin/workflows-executions/{workflow_id}/subscribe",
    tag = "Workflow executions",
    params(("workflow_id" = String, Path, description = "The workflow"), SubscribeParams),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String))
)]
async fn subscribe_workflow(
    State(app): State<App>,
    Path(workflow): Path<String>,
    query: ListQuery,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    query.allow(&["transaction_id"])?;
    app.workflows().engine().flow(&workflow)?;
    let transaction = query
        .filters
        .get("transaction_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(events(app, workflow, transaction))
}

/// Server-sent events of one run, live.
#[utoipa::path(
    get,
    path = "/admin/workflows-executions/{workflow_id}/{transaction_id}/subscribe",
    tag = "Workflow executions",
    params(
        ("workflow_id" = String, Path, description = "The workflow"),
        ("transaction_id" = String, Path, description = "The transaction id"),
    ),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String))
)]
async fn subscribe_transaction(
    State(app): State<App>,
    Path((workflow, transaction)): Path<(String, String)>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    app.workflows().engine().flow(&workflow)?;
    Ok(events(app, workflow, Some(transaction)))
}
