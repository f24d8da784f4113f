//! The core API driven in process (`oneshot`) on SQLite and PostgreSQL: the auth matrix
//! (every admin route refuses no token, a customer's token, a revoked key, an expired or
//! tampered token; every store route refuses a missing or unknown publishable key), Medusa's
//! conventions (errors, validation, list envelopes, fields), and the workflow executions API
//! (run, list, detail with Medusa's keys, async step completion, cancel, retry, live events).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gorgon_api::CorePlugin;
use gorgon_api::auth_module::AuthService;
use gorgon_api::user::{NewUser, UserService};
use gorgon_framework::{App, AppBuilder, Loader, Profile, Route};
use gorgon_http::testing::{Client, assert_same_shape, golden};
use gorgon_http::{AuthContext, Jwt};
use gorgon_workflows::{StepFailure, StepResponse, StepResult, Workflow, WorkflowOptions};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

const DATABASES: [&str; 2] = ["sqlite", "postgres"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderInput {
    item: String,
}

async fn reserve(input: OrderInput) -> StepResult<String, String> {
    Ok(StepResponse::new(format!("reserved {}", input.item)).with_compensation(input.item))
}

async fn unreserve(_item: Option<String>) -> Result<(), StepFailure> {
    Ok(())
}

async fn approve(_reserved: String) -> StepResult<String, ()> {
    Ok(StepResponse::wait())
}

async fn refuse(_reserved: String) -> StepResult<String, ()> {
    Err(StepFailure::permanent("the warehouse refused"))
}

/// Released by the test: the `slow` step waits for it.
static RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

async fn slow(input: OrderInput) -> StepResult<String> {
    RELEASE.notified().await;
    Ok(StepResponse::new(format!("slowly {}", input.item)))
}

/// `test-slow`: one step that runs until the test releases it.
fn slow_workflow() -> Workflow<OrderInput, String> {
    let step = gorgon_workflows::Step::new("slow", slow);
    Workflow::define_with("test-slow", stored(), move |b, input| b.step(&step, input)).unwrap()
}

fn stored() -> WorkflowOptions {
    WorkflowOptions {
        store: Some(true),
        retention_time: Some(3600.0),
        ..WorkflowOptions::default()
    }
}

/// `test-order`: reserve, then an async approval an operator completes.
fn order_workflow() -> Workflow<OrderInput, String> {
    let reserve = gorgon_workflows::Step::new("reserve", reserve).compensate(unreserve);
    let approve = gorgon_workflows::Step::new("approve", approve).asynchronous();
    Workflow::define_with("test-order", stored(), move |b, input| {
        let reserved = b.step(&reserve, input);
        b.step(&approve, reserved)
    })
    .unwrap()
}

/// `test-refused`: reserve, then a permanent failure: the run reverts.
fn refused_workflow() -> Workflow<OrderInput, String> {
    let reserve = gorgon_workflows::Step::new("reserve", reserve).compensate(unreserve);
    let refuse = gorgon_workflows::Step::new("refuse", refuse);
    Workflow::define_with("test-refused", stored(), move |b, input| {
        let reserved = b.step(&reserve, input);
        b.step(&refuse, reserved)
    })
    .unwrap()
}

async fn hello_store() -> &'static str {
    "hello"
}

async fn store_channels(key: gorgon_http::PublishableKey) -> axum::Json<Vec<String>> {
    axum::Json(key.sales_channel_ids)
}

async fn panics() -> &'static str {
    panic!("a handler bug")
}

struct TestApp {
    app: App,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn boot(database: &str) -> TestApp {
    boot_with(database, |_| {}).await
}

/// The test application with `more` registered after everything else (the application's
/// layer).
async fn boot_with(database: &str, more: impl FnOnce(&mut AppBuilder)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let url = match database {
        "sqlite" => format!(
            "database_url = \"sqlite://{}\"",
            dir.path().join("app.db").display()
        ),
        _ => format!(
            "database_url = \"{}\"\ndatabase_schema = \"t_{}\"",
            gorgon_data::testing::postgres_url(),
            gorgon_data::generate_id("").to_lowercase()
        ),
    };
    std::fs::write(
        dir.path().join("gorgon.toml"),
        format!("[project]\n{url}\n[project.http]\njwt_expires_in = 3600\n"),
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
        .workflow(&order_workflow())
        .workflow(&refused_workflow())
        .workflow(&slow_workflow())
        .route(Route::undocumented(
            Method::GET,
            "/store/hello",
            axum::routing::get(hello_store),
        ))
        .route(Route::undocumented(
            Method::GET,
            "/store/channels",
            axum::routing::get(store_channels),
        ))
        .route(Route::undocumented(
            Method::GET,
            "/admin/panics",
            axum::routing::get(panics),
        ));
    more(&mut builder);
    let prepared = builder.prepare(config).await.unwrap();
    prepared.migrations().migrate(|_| {}).await.unwrap();
    let app = prepared.build().await.unwrap();
    let router = gorgon_http::router(&app);

    // An admin, as `gorgon user create` makes one.
    let auth = app.service::<AuthService>().unwrap();
    let users = app.service::<UserService>().unwrap();
    let identity = auth
        .register("admin@example.com", "supersecret")
        .await
        .unwrap();
    let user = users
        .create_user(NewUser {
            email: "admin@example.com".into(),
            ..NewUser::default()
        })
        .await
        .unwrap();
    auth.link_actor(&identity.id, "user", &user.id)
        .await
        .unwrap();
    let mut client = Client::new(router);
    client.login("admin@example.com", "supersecret").await;
    TestApp {
        app,
        client,
        _dir: dir,
    }
}

impl std::ops::Deref for TestApp {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// A concrete path for a route pattern.
fn concrete(path: &str) -> String {
    path.replace("{workflow_id}", "test-order")
        .replace("{transaction_id}", "tx-1")
        .replace("{id}", "x")
        .replace("{actor_type}", "user")
}

#[tokio::test]
async fn every_admin_route_refuses_callers_without_a_user() {
    for database in DATABASES {
        let test = boot(database).await;
        let jwt = Jwt::of(&test.app);
        let customer = jwt
            .issue(
                &AuthContext {
                    actor_id: "cus_1".into(),
                    actor_type: "customer".into(),
                    auth_identity_id: "authid_1".into(),
                    app_metadata: json!({}),
                    method: None,
                },
                Value::Null,
            )
            .unwrap();
        let expired = Jwt::new(b"supersecret", Duration::ZERO)
            .unwrap()
            .issue(
                &AuthContext {
                    actor_id: "user_1".into(),
                    actor_type: "user".into(),
                    auth_identity_id: "authid_1".into(),
                    app_metadata: json!({}),
                    method: None,
                },
                Value::Null,
            )
            .unwrap();
        // Expired: issued with no lifetime, and a second later.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let mut tampered = test.token.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        let other_secret = Jwt::new(b"another secret entirely", Duration::from_secs(60))
            .unwrap()
            .issue(
                &AuthContext {
                    actor_id: "user_1".into(),
                    actor_type: "user".into(),
                    auth_identity_id: "authid_1".into(),
                    app_metadata: json!({}),
                    method: None,
                },
                Value::Null,
            )
            .unwrap();
        // A secret key, then revoked.
        let (status, created) = test
            .admin(
                Method::POST,
                "/admin/api-keys",
                Some(json!({"title": "ci", "type": "secret"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let secret = created["api_key"]["token"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("sk_"));
        let key_id = created["api_key"]["id"].as_str().unwrap().to_owned();
        let (status, _, body) = test
            .call(
                Method::GET,
                "/admin/users/me",
                &[("authorization", &format!("Basic {secret}"))],
                None,
            )
            .await;
        // A key is not a user: `me` is forbidden, but the key is accepted (not 401).
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, _, _) = test
            .call(
                Method::GET,
                "/admin/api-keys",
                &[("authorization", &format!("Basic {secret}"))],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = test
            .admin(
                Method::POST,
                &format!("/admin/api-keys/{key_id}/revoke"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["api_key"]["revoked_at"].is_string());

        let refused: Vec<(&str, String)> = vec![
            ("no credentials", String::new()),
            ("a customer's token", format!("Bearer {customer}")),
            ("an expired token", format!("Bearer {expired}")),
            ("a tampered token", format!("Bearer {tampered}")),
            (
                "a token signed with another secret",
                format!("Bearer {other_secret}"),
            ),
            ("a revoked secret key", format!("Basic {secret}")),
            ("an unknown secret key", "Basic sk_0000".to_owned()),
        ];
        let routes: Vec<(Method, String)> = test
            .app
            .routes()
            .iter()
            .filter(|r| {
                r.path().starts_with("/admin") && r.access() == gorgon_framework::Access::Namespace
            })
            .flat_map(|r| r.methods().iter().map(|m| (m.clone(), concrete(r.path()))))
            .collect();
        assert!(routes.len() >= 15, "{routes:?}");
        for (method, path) in &routes {
            for (what, authorization) in &refused {
                let headers: Vec<(&str, &str)> = if authorization.is_empty() {
                    vec![]
                } else {
                    vec![("authorization", authorization.as_str())]
                };
                let (status, _, body) = test.call(method.clone(), path, &headers, None).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{database}: {method} {path} with {what}: {body}"
                );
                assert_eq!(body["message"], "Unauthorized");
            }
        }
    }
}

#[tokio::test]
async fn store_routes_need_a_publishable_key() {
    let test = boot("sqlite").await;
    let (status, _, body) = test.call(Method::GET, "/store/hello", &[], None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "not_allowed");
    assert_eq!(
        body["message"],
        "Publishable API key required in the request header: x-publishable-api-key. You can manage your keys in settings in the dashboard."
    );
    let (status, _, body) = test
        .call(
            Method::GET,
            "/store/hello",
            &[("x-publishable-api-key", "pk_bad")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["message"],
        "A valid publishable key is required to proceed with the request"
    );
    let (_, created) = test
        .admin(
            Method::POST,
            "/admin/api-keys",
            Some(json!({"title": "storefront", "type": "publishable"})),
        )
        .await;
    let pk = created["api_key"]["token"].as_str().unwrap().to_owned();
    assert!(pk.starts_with("pk_") && pk.len() == 67, "{pk}");
    let (status, _, body) = test
        .call(
            Method::GET,
            "/store/hello",
            &[("x-publishable-api-key", &pk)],
            None,
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!("hello")));
    // The key carries its sales channels into store requests.
    let mut channels = Vec::new();
    for name in ["Web", "App"] {
        let (status, created) = test
            .admin(
                Method::POST,
                "/admin/sales-channels",
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        channels.push(created["sales_channel"]["id"].as_str().unwrap().to_owned());
    }
    let id = created["api_key"]["id"].as_str().unwrap().to_owned();
    let (status, linked) = test
        .admin(
            Method::POST,
            &format!("/admin/api-keys/{id}/sales-channels"),
            Some(json!({"add": channels})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{linked}");
    assert_eq!(
        linked["api_key"]["sales_channels"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (_, _, scoped) = test
        .call(
            Method::GET,
            "/store/channels",
            &[("x-publishable-api-key", &pk)],
            None,
        )
        .await;
    let mut scoped: Vec<String> = serde_json::from_value(scoped).unwrap();
    scoped.sort();
    let mut expected = channels.clone();
    expected.sort();
    assert_eq!(scoped, expected);
    let (_, unlinked) = test
        .admin(
            Method::POST,
            &format!("/admin/api-keys/{id}/sales-channels"),
            Some(json!({"remove": [channels[0]]})),
        )
        .await;
    assert_eq!(
        unlinked["api_key"]["sales_channels"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, _, scoped) = test
        .call(
            Method::GET,
            "/store/channels",
            &[("x-publishable-api-key", &pk)],
            None,
        )
        .await;
    assert_eq!(scoped, json!([channels[1]]));
    // Only publishable keys have channels.
    let (_, secret) = test
        .admin(
            Method::POST,
            "/admin/api-keys",
            Some(json!({"title": "erp", "type": "secret"})),
        )
        .await;
    let (status, error) = test
        .admin(
            Method::POST,
            &format!(
                "/admin/api-keys/{}/sales-channels",
                secret["api_key"]["id"].as_str().unwrap()
            ),
            Some(json!({"add": [channels[1]]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    // Revoked: refused again.
    test.admin(Method::POST, &format!("/admin/api-keys/{id}/revoke"), None)
        .await;
    let (status, _, _) = test
        .call(
            Method::GET,
            "/store/hello",
            &[("x-publishable-api-key", &pk)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn auth_flows_register_login_refresh_session_reset() {
    for database in DATABASES {
        let test = boot(database).await;
        let credentials = json!({"email": "ada@example.com", "password": "correct horse"});
        let (status, _, body) = test
            .call(
                Method::POST,
                "/auth/customer/emailpass/register",
                &[],
                Some(credentials.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _, body) = test
            .call(
                Method::POST,
                "/auth/customer/emailpass/register",
                &[],
                Some(credentials.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["message"], "Identity with email already exists");
        let (status, _, body) = test
            .call(
                Method::POST,
                "/auth/customer/emailpass",
                &[],
                Some(json!({"email": "ada@example.com", "password": "wrong"})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            json!({"type": "unauthorized", "message": "Invalid email or password"})
        );
        let (status, _, body) = test
            .call(
                Method::POST,
                "/auth/user/emailpass",
                &[],
                Some(json!({"email": "not-an-email", "password": "x"})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["type"], "invalid_data");

        // Refresh keeps the caller; a session works like the token, until it is closed.
        let bearer = format!("Bearer {}", test.token);
        let (status, _, body) = test
            .call(
                Method::POST,
                "/auth/token/refresh",
                &[("authorization", &bearer)],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let refreshed = Jwt::of(&test.app)
            .verify(body["token"].as_str().unwrap())
            .unwrap();
        assert_eq!(refreshed.actor_type, "user");
        let (status, headers, body) = test
            .call(
                Method::POST,
                "/auth/session",
                &[("authorization", &bearer)],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let cookie = headers["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        assert!(cookie.starts_with("connect.sid="));
        let (status, _, me) = test
            .call(Method::GET, "/admin/users/me", &[("cookie", &cookie)], None)
            .await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(me["user"]["email"], "admin@example.com");
        test.call(
            Method::DELETE,
            "/auth/session",
            &[("cookie", &cookie)],
            None,
        )
        .await;
        let (status, _, _) = test
            .call(Method::GET, "/admin/users/me", &[("cookie", &cookie)], None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Password reset: the token goes out as an event; it sets a new password once.
        let auth = test.app.service::<AuthService>().unwrap();
        let token = auth.reset_token("ada@example.com").await.unwrap().unwrap();
        let update = json!({"email": "ada@example.com", "password": "new password"});
        let (status, _, body) = test
            .call(
                Method::POST,
                "/auth/customer/emailpass/update",
                &[("authorization", &format!("Bearer {token}"))],
                Some(update.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _, _) = test
            .call(
                Method::POST,
                "/auth/customer/emailpass",
                &[],
                Some(json!({"email": "ada@example.com", "password": "new password"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = test
            .call(
                Method::POST,
                "/auth/customer/emailpass/update",
                &[("authorization", &format!("Bearer {token}"))],
                Some(update),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "a reset token is used up");
        let (status, _, _) = test
            .call(
                Method::POST,
                "/auth/customer/emailpass/reset-password",
                &[],
                Some(json!({"identifier": "nobody@example.com"})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "unknown emails answer the same"
        );
    }
}

#[tokio::test]
async fn conventions_errors_validation_and_layers() {
    let test = boot("sqlite").await;
    // Unknown routes: JSON 404.
    let (status, _, body) = test.call(Method::GET, "/nope", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"type": "not_found", "message": "Cannot GET /nope"})
    );
    // Strict bodies name the field.
    let (status, body) = test
        .admin(
            Method::POST,
            "/admin/api-keys",
            Some(json!({"title": "x", "type": "secret", "not_a_field": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"type": "invalid_data", "message": "Invalid request: Unrecognized fields: 'not_a_field'"})
    );
    let (_, body) = test
        .admin(
            Method::POST,
            "/admin/api-keys",
            Some(json!({"type": "secret"})),
        )
        .await;
    assert_eq!(
        body["message"],
        "Invalid request: Field 'title' is required"
    );
    let (_, body) = test
        .admin(
            Method::POST,
            "/admin/api-keys",
            Some(json!({"title": 5, "type": "secret"})),
        )
        .await;
    assert_eq!(
        body["message"],
        "Invalid request: Expected type: 'string' for field 'title', got: 'integer'"
            .replace("integer", "number")
    );
    let bearer = format!("Bearer {}", test.token);
    let (status, _, body) = test
        .call(
            Method::GET,
            "/admin/workflows-executions?limit=abc",
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["message"],
        "Invalid request: Expected type: 'number' for field 'limit', got: 'abc'"
    );
    let (_, _, body) = test
        .call(
            Method::GET,
            "/admin/workflows-executions?not_a_param=1",
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(
        body["message"],
        "Invalid request: Unrecognized fields: 'not_a_param'"
    );
    // Lists: Medusa's envelope and `fields`.
    let (status, body) = test
        .admin(Method::GET, "/admin/users?fields=email&limit=5", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1);
    assert_eq!(body["limit"], 5);
    assert_eq!(body["offset"], 0);
    let user = body["users"][0].as_object().unwrap();
    let keys: Vec<&str> = user.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["email", "id"]);
    // Request ids: kept when given, made when not.
    let (_, headers, _) = test
        .call(Method::GET, "/health", &[("x-request-id", "req-42")], None)
        .await;
    assert_eq!(headers["x-request-id"], "req-42");
    let (_, headers, _) = test.call(Method::GET, "/health", &[], None).await;
    assert_eq!(headers["x-request-id"].len(), 36);
    // A panic is Medusa's 500, the process goes on.
    let (status, _, body) = test
        .call(
            Method::GET,
            "/admin/panics",
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        json!({"type": "unknown_error", "message": "An unknown error occurred.", "code": "unknown_error"})
    );
    // CORS per namespace.
    let (status, headers, _) = test
        .call(
            Method::OPTIONS,
            "/admin/users",
            &[
                ("origin", "http://localhost:7001"),
                ("access-control-request-method", "GET"),
            ],
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:7001"
    );
    let (_, headers, _) = test
        .call(
            Method::OPTIONS,
            "/store/hello",
            &[
                ("origin", "http://localhost:7001"),
                ("access-control-request-method", "GET"),
            ],
            None,
        )
        .await;
    assert!(headers.get("access-control-allow-origin").is_none());
    // Metrics count requests by route and status.
    let (status, _, body) = test.call(Method::GET, "/metrics", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap();
    assert!(
        text.contains(
            r#"gorgon_http_requests_total{method="GET",route="/admin/users",status="200"} 1"#
        ),
        "{text}"
    );
    // The OpenAPI document lists the core routes.
    let (status, _, document) = test.call(Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["paths"]["/admin/workflows-executions"]["get"].is_object());
    let (status, _, page) = test.call(Method::GET, "/docs/", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.as_str().unwrap().contains("https://"),
        "the API browser loads nothing from a CDN"
    );
}

#[tokio::test]
async fn executions_api_runs_lists_shows_completes_cancels_retries() {
    for database in DATABASES {
        let test = boot(database).await;
        // Run: the async step waits.
        let (status, body) = test
            .admin(
                Method::POST,
                "/admin/workflows-executions/test-order/run",
                Some(json!({"input": {"item": "mug"}, "transaction_id": "order-1"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            json!({"acknowledgement": {"workflowId": "test-order", "transactionId": "order-1", "hasFinished": false, "hasFailed": false}})
        );
        let (status, body) = test
            .admin(
                Method::POST,
                "/admin/workflows-executions/not-a-workflow/run",
                Some(json!({"input": {}})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body["message"],
            "Workflow with id \"not-a-workflow\" not found."
        );
        // A reverted run.
        let (_, body) = test
            .admin(
                Method::POST,
                "/admin/workflows-executions/test-refused/run",
                Some(json!({"input": {"item": "vase"}, "transaction_id": "refused-1"})),
            )
            .await;
        assert_eq!(body["acknowledgement"]["hasFailed"], true, "{body}");

        // The list, Medusa's envelope.
        let (status, list) = test
            .admin(Method::GET, "/admin/workflows-executions", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(
            (list["count"].clone(), list["limit"].clone()),
            (json!(2), json!(100))
        );
        let medusa = golden("list_default");
        assert_same_shape(&list, &medusa);
        let (_, page) = test
            .admin(Method::GET, "/admin/workflows-executions?limit=1&offset=1&order=-created_at&fields=id,workflow_id,state", None)
            .await;
        assert_eq!(page["count"], 2);
        assert_eq!(page["workflow_executions"].as_array().unwrap().len(), 1);
        assert_eq!(page["workflow_executions"][0]["workflow_id"], "test-order");
        let keys: Vec<&String> = page["workflow_executions"][0]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, vec!["id", "state", "workflow_id"]);
        let (_, filtered) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions?state[0]=failed&state[1]=reverted&fields=id,state",
                None,
            )
            .await;
        assert_eq!(filtered["count"], 1);
        assert_eq!(filtered["workflow_executions"][0]["state"], "reverted");
        let (_, by_tx) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions?transaction_id=order-1&fields=id",
                None,
            )
            .await;
        assert_eq!(by_tx["count"], 1);
        let (_, by_q) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions?q=refus&fields=id",
                None,
            )
            .await;
        assert_eq!(by_q["count"], 1);
        let (_, none) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions?created_at[$gte]=2999-01-01T00:00:00Z",
                None,
            )
            .await;
        assert_eq!(none["count"], 0);

        // The detail, by id and by transaction: Medusa's keys and nesting.
        let id = by_tx["workflow_executions"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(id.starts_with("wf_exec_"), "{id}");
        let (status, detail) = test
            .admin(
                Method::GET,
                &format!("/admin/workflows-executions/{id}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{detail}");
        let execution = &detail["workflow_execution"];
        assert_eq!(execution["state"], "invoking");
        assert_eq!(
            execution["execution"]["steps"]["_root.reserve.approve"]["invoke"],
            json!({"state": "invoking", "status": "waiting_response"})
        );
        assert_eq!(
            execution["context"]["data"]["invoke"]["reserve"]["output"]["output"],
            "reserved mug"
        );
        assert_eq!(
            execution["context"]["data"]["payload"],
            json!({"item": "mug"})
        );
        let (_, reverted) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions/test-refused/refused-1",
                None,
            )
            .await;
        assert_same_shape(&reverted, &golden("retrieve_failed_complete_cart"));
        assert_eq!(
            reverted["workflow_execution"]["context"]["errors"][0]["error"]["message"],
            "the warehouse refused"
        );
        let (status, body) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions/wf_exec_01JZZZZZZZZZZZZZZZZZZZZZZZ",
                None,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "Medusa answers 200 {{}}: {body}"
        );

        // Complete the waiting step: the run is done.
        let (status, body) = test
            .admin(
                Method::POST,
                "/admin/workflows-executions/test-order/steps/success",
                Some(json!({"transaction_id": "order-1", "step_id": "approve", "response": "approved"})),
            )
            .await;
        assert_eq!((status, body), (StatusCode::OK, json!({"success": true})));
        let (_, done) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions/test-order/order-1",
                None,
            )
            .await;
        assert_eq!(done["workflow_execution"]["state"], "done");
        assert_same_shape(&done, &golden("retrieve_complete_cart"));
        let (status, _) = test
            .admin(
                Method::POST,
                "/admin/workflows-executions/test-order/steps/success",
                Some(json!({"transaction_id": "order-1", "step_id": "approve"})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "the step no longer waits");

        // Failing a waiting step compensates; cancel compensates a running one.
        test.admin(
            Method::POST,
            "/admin/workflows-executions/test-order/run",
            Some(json!({"input": {"item": "cup"}, "transaction_id": "order-2"})),
        )
        .await;
        let (status, _) = test
            .admin(
                Method::POST,
                "/admin/workflows-executions/test-order/steps/failure",
                Some(json!({"transaction_id": "order-2", "step_id": "approve", "response": {"message": "no stock"}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, failed) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions/test-order/order-2?fields=state",
                None,
            )
            .await;
        assert_eq!(
            failed["workflow_execution"],
            json!({"id": failed["workflow_execution"]["id"], "state": "reverted"})
        );
        test.admin(
            Method::POST,
            "/admin/workflows-executions/test-order/run",
            Some(json!({"input": {"item": "pot"}, "transaction_id": "order-3"})),
        )
        .await;
        let (status, body) = test
            .admin(
                Method::POST,
                "/admin/workflows-executions/test-order/order-3/cancel",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // As Medusa: a run cancelled while a step awaits its answer compensates once the
        // answer comes.
        assert_eq!(body["acknowledgement"]["hasFinished"], false, "{body}");
        let (_, after) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions/test-order/order-3?fields=state",
                None,
            )
            .await;
        assert_eq!(
            after["workflow_execution"]["state"],
            "waiting_to_compensate"
        );
        test.admin(
            Method::POST,
            "/admin/workflows-executions/test-order/steps/success",
            Some(json!({"transaction_id": "order-3", "step_id": "approve"})),
        )
        .await;
        let (_, after) = test
            .admin(
                Method::GET,
                "/admin/workflows-executions/test-order/order-3?fields=state",
                None,
            )
            .await;
        assert_eq!(after["workflow_execution"]["state"], "reverted");

        // Retry a reverted run: it runs again under a new id, with the same input.
        let (status, body) = test
            .admin(
                Method::POST,
                "/admin/workflows-executions/test-refused/refused-1/retry",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let retried = body["acknowledgement"]["transactionId"].as_str().unwrap();
        assert!(retried.starts_with("refused-1-retry-"), "{retried}");
        let (status, _) = test
            .admin(
                Method::POST,
                "/admin/workflows-executions/test-order/order-1/retry",
                None,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "a done run has nothing to retry"
        );
    }
}

#[tokio::test]
async fn subscribe_streams_a_runs_events_live() {
    let test = boot("sqlite").await;
    let bearer = format!("Bearer {}", test.token);
    let request = Request::builder()
        .uri("/admin/workflows-executions/test-order/live-1/subscribe")
        .header("authorization", &bearer)
        .body(Body::empty())
        .unwrap();
    let response = test.router().clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    test.admin(
        Method::POST,
        "/admin/workflows-executions/test-order/run",
        Some(json!({"input": {"item": "lamp"}, "transaction_id": "live-1"})),
    )
    .await;
    let mut text = String::new();
    while !text.contains("event: onStepAwaiting") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let begin = text.find("event: onBegin").expect("onBegin");
    let step = text.find("event: onStepBegin").expect("onStepBegin");
    let success = text.find("event: onStepSuccess").expect("onStepSuccess");
    assert!(begin < step && step < success, "{text}");
    let data = text
        .lines()
        .find(|l| l.starts_with("data: ") && l.contains("\"onStepSuccess\""))
        .unwrap();
    let data: Value = serde_json::from_str(&data["data: ".len()..]).unwrap();
    assert_eq!(data["workflow_id"], "test-order");
    assert_eq!(data["transaction_id"], "live-1");
    assert_eq!(data["step"]["id"], "_root.reserve");
    assert_eq!(data["response"], "reserved lamp");
}

/// The OpenAPI document is reviewed: a change to any route's path, parameters or bodies fails
/// here until its snapshot is accepted (`cargo insta review`).
#[tokio::test]
async fn openapi_document_matches_its_reviewed_snapshot() {
    let test = boot("sqlite").await;
    let (status, _, document) = test.call(Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    insta::assert_json_snapshot!("core-openapi", document, {
        ".info.version" => "[version]",
    });
}

/// The same router over a real socket: a keep-alive client, a slow request finishing during a
/// graceful shutdown, and nothing accepted after it.
#[tokio::test]
async fn serves_over_a_real_socket_and_drains_on_shutdown() {
    let test = boot("sqlite").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = test.app.clone();
    let server = tokio::spawn(async move {
        gorgon_http::serve(&app, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let client = reqwest::Client::new();
    let base = format!("http://{address}");
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));
    assert_eq!(health.text().await.unwrap(), "OK");
    let me: Value = client
        .get(format!("{base}/admin/users/me"))
        .bearer_auth(&test.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["email"], "admin@example.com");
    let refused = client
        .get(format!("{base}/admin/users/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A run in flight when the shutdown starts still gets its answer.
    let slow = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/admin/workflows-executions/test-order/run");
        let token = test.token.clone();
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"input": {"item": "desk"}}))
                .send()
                .await
                .map(|r| r.status())
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap();
    assert!(
        reqwest::Client::new()
            .get(format!("{base}/health"))
            .send()
            .await
            .is_err(),
        "nothing listens after the shutdown"
    );
}

async fn my_profile() -> &'static str {
    "the application's own profile"
}

/// The application's routes replace the core's (and its plugins') with the same methods and
/// path; two routes of one layer on one path are a boot problem.
#[tokio::test]
async fn the_application_overrides_a_core_route() {
    let test = boot_with("sqlite", |builder| {
        builder.route(Route::undocumented(
            Method::GET,
            "/admin/users/me",
            axum::routing::get(my_profile),
        ));
    })
    .await;
    let (status, body) = test.admin(Method::GET, "/admin/users/me", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!("the application's own profile"))
    );
    // Still behind the admin guard.
    let (status, _, _) = test.call(Method::GET, "/admin/users/me", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gorgon.toml"),
        format!(
            "[project]\ndatabase_url = \"sqlite://{}\"\n",
            dir.path().join("x.db").display()
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
        .route(Route::undocumented(
            Method::GET,
            "/twice",
            axum::routing::get(my_profile),
        ))
        .route(Route::undocumented(
            Method::GET,
            "/twice",
            axum::routing::get(my_profile),
        ));
    let error = builder.prepare(config).await.unwrap_err().to_string();
    assert!(
        error.contains("route `GET /twice` is registered twice"),
        "{error}"
    );
}

/// A run whose step is running is shown as it stands (the step invoking), at once, not after
/// the step ends: a dashboard watches long steps.
#[tokio::test]
async fn a_running_step_is_shown_while_it_runs() {
    let test = boot("sqlite").await;
    let client = test.client.clone();
    let run = tokio::spawn(async move {
        client
            .admin(
                Method::POST,
                "/admin/workflows-executions/test-slow/run",
                Some(json!({"input": {"item": "kiln"}, "transaction_id": "slow-1"})),
            )
            .await
    });
    let mut seen = Value::Null;
    for _ in 0..100 {
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(2),
            test.admin(
                Method::GET,
                "/admin/workflows-executions/test-slow/slow-1?fields=state,execution",
                None,
            ),
        )
        .await
        .expect("the detail answers while the step runs");
        if status == StatusCode::OK {
            seen = body["workflow_execution"]["execution"]["steps"]["_root.slow"]["invoke"].clone();
            if seen["state"] == "invoking" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen,
        json!({"state": "invoking", "status": "waiting_response"})
    );
    RELEASE.notify_one();
    let (status, body) = run.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, done) = test
        .admin(
            Method::GET,
            "/admin/workflows-executions/test-slow/slow-1?fields=state",
            None,
        )
        .await;
    assert_eq!(done["workflow_execution"]["state"], "done");
}
