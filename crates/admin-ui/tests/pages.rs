//! The dashboard's pages through the router (`oneshot`): the login and the session, the list
//! with its filters and progress, the detail with its graph, history and actions, the live
//! stream's guard, and no asset from another origin.

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use gorgon_admin_ui::AdminUiPlugin;
use gorgon_api::CorePlugin;
use gorgon_framework::{AppBuilder, Loader, Profile};
use gorgon_http::testing::Client;
use gorgon_workflows::{Step, StepResponse, StepResult, Workflow, WorkflowOptions};
use serde_json::json;

async fn pack(order: String) -> StepResult<String> {
    Ok(StepResponse::new(format!("packed {order}")))
}

async fn ship(_packed: String) -> StepResult<String, ()> {
    Ok(StepResponse::wait())
}

/// `dispatch`: pack, then wait for the carrier (an async step an operator can complete).
fn dispatch() -> Workflow<String, String> {
    let pack = Step::new("pack", pack);
    let ship = Step::new("ship", ship).asynchronous();
    let options = WorkflowOptions {
        store: Some(true),
        ..WorkflowOptions::default()
    };
    Workflow::define_with("dispatch", options, move |b, input| {
        let packed = b.step(&pack, input);
        b.step(&ship, packed)
    })
    .unwrap()
}

async fn boot() -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gorgon.toml"),
        format!(
            "[project]\ndatabase_url = \"sqlite://{}\"\n",
            dir.path().join("app.db").display()
        ),
    )
    .unwrap();
    let config = Loader::new()
        .root(dir.path())
        .profile(Profile::Dev)
        .env(BTreeMap::new())
        .load()
        .unwrap();
    let mut builder = AppBuilder::new();
    builder
        .plugin(CorePlugin)
        .plugin(AdminUiPlugin)
        .workflow(&dispatch());
    let prepared = builder.prepare(config).await.unwrap();
    prepared.migrations().migrate(|_| {}).await.unwrap();
    let app = prepared.build().await.unwrap();
    let auth = app
        .service::<gorgon_api::auth_module::AuthService>()
        .unwrap();
    let identity = auth
        .register("ops@example.com", "supersecret")
        .await
        .unwrap();
    let user = app
        .service::<gorgon_api::user::UserService>()
        .unwrap()
        .create_user(gorgon_api::user::NewUser {
            email: "ops@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    auth.link_actor(&identity.id, "user", &user.id)
        .await
        .unwrap();
    let mut client = Client::new(gorgon_http::router(&app));
    client.login("ops@example.com", "supersecret").await;
    (client, dir)
}

async fn form_login(
    client: &Client,
    password: &str,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/app/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(format!(
            "email=ops%40example.com&password={password}"
        )))
        .unwrap();
    use tower::ServiceExt;
    let response = client.router().clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn page(client: &Client, cookie: &str, path: &str) -> (StatusCode, String) {
    let (status, headers, body) = client
        .call(Method::GET, path, &[("cookie", cookie)], None)
        .await;
    if status.is_redirection() {
        return (status, headers["location"].to_str().unwrap().to_owned());
    }
    (status, body.as_str().unwrap_or_default().to_owned())
}

fn assert_no_remote_assets(html: &str) {
    for attribute in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "url(http",
    ] {
        assert!(
            !html.contains(attribute),
            "a remote asset ({attribute}) in:\n{html}"
        );
    }
}

#[tokio::test]
async fn log_in_list_filter_open_act_and_log_out() {
    let (client, _dir) = boot().await;
    // Signed out: every page leads to the login.
    let (status, location) = page(&client, "", "/app/workflows").await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/app/login")
    );
    let (status, _, body) = form_login(&client, "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Invalid email or password"));
    let (status, headers, _) = form_login(&client, "supersecret").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = headers["set-cookie"].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();

    // Two runs: one waits for the carrier, one is cancelled and reverts when answered.
    for tx in ["order-1", "order-2"] {
        let (status, body) = client
            .admin(
                Method::POST,
                "/admin/workflows-executions/dispatch/run",
                Some(json!({"input": tx, "transaction_id": tx})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, list) = page(&client, &cookie, "/app/workflows").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.contains("order-1") && list.contains("order-2"),
        "{list}"
    );
    assert!(list.contains("1 of 2 steps"), "{list}");
    assert!(list.contains("badge invoking"));
    assert!(list.contains("1–2 of 2"));
    assert_no_remote_assets(&list);
    let (_, filtered) = page(&client, &cookie, "/app/workflows?transaction_id=order-2").await;
    assert!(
        filtered.contains("order-2") && !filtered.contains(">order-1<"),
        "{filtered}"
    );
    let (_, none) = page(&client, &cookie, "/app/workflows?state=done").await;
    assert!(none.contains("No executions match."));

    // The detail: the graph colored by state, the waiting step's actions, the input.
    let (status, detail) = page(&client, &cookie, "/app/workflows/dispatch/order-1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        detail.contains(r#"data-step="pack" data-class="done""#),
        "{detail}"
    );
    assert!(
        detail.contains(r#"data-step="ship" data-class="waiting""#),
        "{detail}"
    );
    assert!(detail.contains("Mark succeeded") && detail.contains("Mark failed"));
    assert!(detail.contains("packed order-1"), "the step's output");
    assert!(
        detail.contains("&#34;order-1&#34;") || detail.contains("&quot;order-1&quot;"),
        "the input"
    );
    assert_no_remote_assets(&detail);
    // The actions the page's buttons call, with the session cookie.
    let (status, _, body) = client
        .call(
            Method::POST,
            "/admin/workflows-executions/dispatch/steps/success",
            &[("cookie", &cookie)],
            Some(json!({"transaction_id": "order-1", "step_id": "ship"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, detail) = page(
        &client,
        &cookie,
        "/app/workflows/dispatch/order-1?fragment=1",
    )
    .await;
    assert!(detail.contains(r#"data-state="done""#), "{detail}");
    assert!(
        !detail.contains("<html"),
        "a fragment is the live region only"
    );

    // The live stream needs the session; the assets come from the binary.
    let (status, _, _) = client.call(Method::GET, "/app/events", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, headers, _) = client
        .call(Method::GET, "/app/assets/app.js", &[], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    // Logging out ends the session: the pages and the API refuse the cookie.
    let (status, headers, _) = client
        .call(Method::POST, "/app/logout", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, location) = page(&client, &cookie, "/app/workflows").await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/app/login")
    );
    let (status, _, _) = client
        .call(Method::GET, "/admin/users/me", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
