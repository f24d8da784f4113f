//! The pages' handlers: the session check, the login, the list and the detail, the live event
//! stream the pages follow, and the embedded assets.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures::Stream;
use gorgon_api::auth_module::AuthService;
use gorgon_api::executions::{Wanted, execution_id, scan};
use gorgon_framework::App;
use gorgon_http::AuthContext;
use gorgon_http::auth::session;
use gorgon_orchestration::TransactionState;
use serde::Deserialize;

use crate::view::{self, Graph, NODE_H, NODE_W, StepView};

const PAGE: u64 = 25;
const STATES: [&str; 7] = [
    "not_started",
    "invoking",
    "waiting_to_compensate",
    "compensating",
    "done",
    "reverted",
    "failed",
];

/// The signed-in admin, or the way to the login page.
async fn admin(app: &App, headers: &HeaderMap) -> Result<AuthContext, Response> {
    let found = match session::cookie(headers) {
        Some(id) => session::find(app, &id).await,
        None => None,
    };
    match found {
        Some(context) if context.actor_type == "user" && !context.actor_id.is_empty() => {
            Ok(context)
        }
        _ => Err(Redirect::to("/app/login").into_response()),
    }
}

fn render(template: impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => gorgon_http::ApiError::internal(error).into_response(),
    }
}

/// `/app`: to the executions.
pub async fn home() -> Redirect {
    Redirect::to("/app/workflows")
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
    email: String,
}

/// The login form.
pub async fn login_page() -> Response {
    render(LoginPage {
        error: None,
        email: String::new(),
    })
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    email: String,
    password: String,
}

/// Signs an admin user in: a session in the cache, its id in a cookie.
pub async fn login(State(app): State<App>, Form(form): Form<LoginForm>) -> Response {
    let refused = |email: String| {
        let mut response = render(LoginPage {
            error: Some("Invalid email or password".into()),
            email,
        });
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
    };
    let Some(auth) = app.service::<AuthService>() else {
        return gorgon_http::ApiError::internal("the auth module is not registered")
            .into_response();
    };
    let Ok(identity) = auth.authenticate(&form.email, &form.password).await else {
        return refused(form.email);
    };
    let Some(user) = identity.actor_id("user") else {
        return refused(form.email);
    };
    let context = AuthContext {
        actor_id: user.to_owned(),
        actor_type: "user".into(),
        auth_identity_id: identity.id.clone(),
        app_metadata: identity.app_metadata.clone().unwrap_or_default(),
        method: None,
    };
    let id = match session::open(&app, &context).await {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    let mut response = Redirect::to("/app/workflows").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(&app, &id));
    response
}

/// Signs out: the session ends everywhere.
pub async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(id) = session::cookie(&headers) {
        let _ = session::close(&app, &id).await;
    }
    let mut response = Redirect::to("/app/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

/// The list's filters, as the form sends them.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    workflow_id: Option<String>,
    state: Option<String>,
    transaction_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    offset: Option<u64>,
    fragment: Option<String>,
}

/// One row of the list.
struct Row {
    href: String,
    id: String,
    transaction_id: String,
    workflow_id: String,
    state: String,
    done: usize,
    total: usize,
    started: String,
    duration: String,
}

#[derive(Template)]
#[template(path = "list.html")]
struct ListPage {
    email: String,
    rows: Vec<Row>,
    workflows: Vec<String>,
    states: Vec<&'static str>,
    workflow_id: String,
    state: String,
    transaction_id: String,
    from: String,
    to: String,
    count: u64,
    first: u64,
    last: u64,
    previous: Option<String>,
    next: Option<String>,
    query: String,
    events: String,
}

#[derive(Template)]
#[template(path = "list_table.html")]
struct ListTable<'a> {
    rows: &'a [Row],
}

fn local_ms(text: &Option<String>) -> Option<u64> {
    let text = text.as_deref().filter(|t| !t.is_empty())?;
    parse_local(text)
}

fn parse_local(text: &str) -> Option<u64> {
    // `datetime-local` sends `2026-12-07T10:30`; read it as UTC.
    let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .ok()?;
    Some(parsed.and_utc().timestamp_millis().max(0) as u64)
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The executions, newest first, a page at a time.
pub async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Response {
    let user = match admin(&app, &headers).await {
        Ok(user) => user,
        Err(login) => return login,
    };
    let some = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let state: Option<TransactionState> =
        some(&params.state).and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok());
    let wanted = Wanted {
        workflows: some(&params.workflow_id).into_iter().collect(),
        transactions: some(&params.transaction_id).into_iter().collect(),
        states: state.into_iter().collect(),
        created_from: local_ms(&params.from),
        created_before: local_ms(&params.to),
        q: None,
    };
    let all = match scan(&app, &wanted).await {
        Ok(all) => all,
        Err(error) => return error.into_response(),
    };
    let offset = params.offset.unwrap_or(0);
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut rows = Vec::new();
    for summary in all.iter().skip(offset as usize).take(PAGE as usize) {
        let (done, total) = match app
            .workflows()
            .execution_named(&summary.key.workflow, &summary.key.id)
            .await
        {
            Ok(detail) => view::progress(&detail),
            Err(_) => (0, 0),
        };
        let end = if view::finished(summary.state) {
            summary.updated_at
        } else {
            now
        };
        rows.push(Row {
            href: format!(
                "/app/workflows/{}/{}",
                encode(&summary.key.workflow),
                encode(&summary.key.id)
            ),
            id: execution_id(&summary.run_id),
            transaction_id: summary.key.id.to_string(),
            workflow_id: summary.key.workflow.to_string(),
            state: summary.state.to_string(),
            done,
            total,
            started: view::time(summary.created_at),
            duration: view::duration(end.saturating_sub(summary.created_at)),
        });
    }
    if params.fragment.is_some() {
        return render(ListTable { rows: &rows });
    }
    let count = all.len() as u64;
    let filters: Vec<(&str, String)> = [
        ("workflow_id", &params.workflow_id),
        ("state", &params.state),
        ("transaction_id", &params.transaction_id),
        ("from", &params.from),
        ("to", &params.to),
    ]
    .into_iter()
    .filter_map(|(k, v)| some(v).map(|v| (k, v)))
    .collect();
    let query: String = filters
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let page_link = |offset: u64| format!("/app/workflows?{query}&offset={offset}");
    render(ListPage {
        email: user_email(&app, &user).await,
        first: if count == 0 { 0 } else { offset + 1 },
        last: (offset + rows.len() as u64).min(count),
        previous: (offset > 0).then(|| page_link(offset.saturating_sub(PAGE))),
        next: (offset + PAGE < count).then(|| page_link(offset + PAGE)),
        rows,
        workflows: app.workflows().workflow_names(),
        states: STATES.to_vec(),
        workflow_id: params.workflow_id.unwrap_or_default(),
        state: params.state.unwrap_or_default(),
        transaction_id: params.transaction_id.unwrap_or_default(),
        from: params.from.unwrap_or_default(),
        to: params.to.unwrap_or_default(),
        count,
        events: "/app/events".into(),
        query: format!("{query}&offset={offset}"),
    })
}

async fn user_email(app: &App, user: &AuthContext) -> String {
    match app.service::<gorgon_api::user::UserService>() {
        Some(users) => users
            .users
            .retrieve(&user.actor_id, gorgon_data::FindConfig::new())
            .await
            .map(|u| u.email)
            .unwrap_or_default(),
        None => String::new(),
    }
}

#[derive(Template)]
#[template(path = "detail.html")]
struct DetailPage {
    email: String,
    body: DetailBody,
    events: String,
    fragment: String,
}

#[derive(Template)]
#[template(path = "detail_body.html")]
struct DetailBody {
    workflow_id: String,
    transaction_id: String,
    id: String,
    state: String,
    done: usize,
    total: usize,
    percent: usize,
    started: String,
    finished: bool,
    failed: bool,
    payload: String,
    steps: Vec<StepView>,
    graph: Graph,
    node_w: u32,
    node_h: u32,
    api: String,
}

/// One run.
pub async fn detail(
    State(app): State<App>,
    headers: HeaderMap,
    Path((workflow, transaction)): Path<(String, String)>,
    Query(params): Query<ListParams>,
) -> Response {
    let user = match admin(&app, &headers).await {
        Ok(user) => user,
        Err(login) => return login,
    };
    let workflows = app.workflows();
    let (detail, flow) = match (
        workflows.execution_named(&workflow, &transaction).await,
        workflows.engine().flow(&workflow),
    ) {
        (Ok(detail), Ok(flow)) => (detail, flow),
        (Err(error), _) => return gorgon_http::ApiError::from(error).into_response(),
        (_, Err(error)) => return gorgon_http::ApiError::from(error).into_response(),
    };
    let (done, total) = view::progress(&detail);
    let payload = detail
        .payload
        .to_json()
        .map(|json| serde_json::to_string_pretty(&json).unwrap_or_default())
        .unwrap_or_default();
    let body = DetailBody {
        id: execution_id(&detail.run_id),
        state: detail.state.to_string(),
        finished: view::finished(detail.state),
        failed: matches!(
            detail.state,
            TransactionState::Reverted | TransactionState::Failed
        ),
        done,
        total,
        percent: (done * 100).checked_div(total).unwrap_or(0),
        started: detail.created_at.map(view::time).unwrap_or_default(),
        payload,
        steps: detail
            .steps
            .iter()
            .map(|s| StepView::of(&flow, s))
            .collect(),
        graph: view::graph(&flow, &detail),
        node_w: NODE_W,
        node_h: NODE_H,
        api: format!("/admin/workflows-executions/{}", encode(&detail.workflow)),
        workflow_id: detail.workflow.clone(),
        transaction_id: detail.transaction_id.clone(),
    };
    if params.fragment.is_some() {
        return render(body);
    }
    let events = format!(
        "/app/events?workflow_id={}&transaction_id={}",
        encode(&workflow),
        encode(&transaction)
    );
    let fragment = format!(
        "/app/workflows/{}/{}?fragment=1",
        encode(&workflow),
        encode(&transaction)
    );
    render(DetailPage {
        email: user_email(&app, &user).await,
        body,
        events,
        fragment,
    })
}

/// What the live stream follows.
#[derive(Debug, Deserialize)]
pub struct EventParams {
    workflow_id: Option<String>,
    transaction_id: Option<String>,
}

/// Server-sent events of runs (all, a workflow's or one), for the pages to refresh; the
/// signed-in session is required.
pub async fn events(
    State(app): State<App>,
    headers: HeaderMap,
    Query(params): Query<EventParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    admin(&app, &headers)
        .await
        .map_err(|_| StatusCode::UNAUTHORIZED.into_response())?;
    let receiver = app.workflows().subscribe();
    let stream = futures::stream::unfold(receiver, move |mut receiver| {
        let workflow = params.workflow_id.clone();
        let transaction = params.transaction_id.clone();
        async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => {
                        if workflow
                            .as_deref()
                            .is_some_and(|w| w != &*event.key.workflow)
                            || transaction.as_deref().is_some_and(|t| t != &*event.key.id)
                        {
                            continue;
                        }
                        let data = serde_json::json!({
                            "workflow_id": &*event.key.workflow,
                            "transaction_id": &*event.key.id,
                            "state": event.state,
                        });
                        return Some((Ok(Event::default().data(data.to_string())), receiver));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

/// The stylesheet and the script, from the binary.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "app.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return gorgon_http::ApiError::not_found(format!("no asset {file}")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
