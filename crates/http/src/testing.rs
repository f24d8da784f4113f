//! Driving an application's router in process, for tests (feature `testing`): requests with
//! JSON bodies and headers through `oneshot`, answers read as JSON, and an admin user made as
//! `gorgon user create` makes one.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use std::collections::BTreeMap;

use serde_json::Value;
use tower::ServiceExt;

/// A router to call, with an admin's bearer token once [`Client::login`] ran.
#[derive(Clone)]
pub struct Client {
    router: Router,
    /// The admin's bearer token.
    pub token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `router`, logged in as nobody.
    pub fn new(router: Router) -> Self {
        Self {
            router,
            token: String::new(),
        }
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Sends a request; the answer's status, headers and body (JSON, or a JSON string holding
    /// the text when it is not JSON).
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("a well-formed test request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body is read")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, headers, body)
    }

    /// Sends a request with the admin's bearer token.
    pub async fn admin(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let bearer = format!("Bearer {}", self.token);
        let (status, _, body) = self
            .call(method, uri, &[("authorization", &bearer)], body)
            .await;
        (status, body)
    }

    /// Logs in at `/auth/user/emailpass` and keeps the token.
    pub async fn login(&mut self, email: &str, password: &str) {
        let (status, _, body) = self
            .call(
                Method::POST,
                "/auth/user/emailpass",
                &[],
                Some(serde_json::json!({ "email": email, "password": password })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login: {body}");
        self.token = body["token"].as_str().unwrap_or_default().to_owned();
    }
}

/// The key paths of a JSON value, with the kind of each leaf; `null` matches any kind.
fn shape(value: &Value, path: &str, out: &mut BTreeMap<String, &'static str>) {
    match value {
        Value::Object(map) => {
            out.insert(path.to_owned(), "object");
            for (key, child) in map {
                // Step paths and action names are data, not keys of the format.
                let key = if path.ends_with(".steps")
                    || path.ends_with(".invoke")
                    || path.ends_with(".compensate") && !path.ends_with("].compensate")
                {
                    "<name>"
                } else {
                    key.as_str()
                };
                // A definition nests its steps through `next`, as deep as the workflow is
                // long: every level has the format of the first.
                if key == "next" && path.contains(".definition") && !child.is_string() {
                    match child {
                        Value::Array(items) => items.iter().for_each(|item| shape(item, path, out)),
                        _ => shape(child, path, out),
                    }
                    continue;
                }
                // The workflow's own data (inputs, outputs) is not the format.
                if key == "payload"
                    || key == "compensateInput"
                    || (key == "output" && path.ends_with(".output"))
                {
                    out.insert(format!("{path}.{key}"), "data");
                    continue;
                }
                shape(child, &format!("{path}.{key}"), out);
            }
        }
        // `next` is one step or an array of parallel ones: the same format.
        Value::Array(items) if path.ends_with(".next") && items.iter().all(Value::is_object) => {
            out.insert(path.to_owned(), "object");
            for item in items {
                shape(item, path, out);
            }
        }
        Value::Array(items) => {
            out.insert(path.to_owned(), "array");
            for item in items {
                shape(item, &format!("{path}[]"), out);
            }
        }
        Value::Null => {
            out.insert(path.to_owned(), "null");
        }
        Value::Bool(_) => {
            out.insert(path.to_owned(), "boolean");
        }
        Value::Number(_) => {
            out.insert(path.to_owned(), "number");
        }
        // The golden writes epoch milliseconds as `<epoch_ms>`.
        Value::String(text) if text == "<epoch_ms>" => {
            out.insert(path.to_owned(), "number");
        }
        Value::String(_) => {
            out.insert(path.to_owned(), "string");
        }
    }
}

/// The body Medusa answered at `step` of its recorded executions transcript
/// (`../shared/medusa-server/golden/executions.normalized.jsonl`, beside the repository).
pub fn golden(step: &str) -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/medusa-server/golden/executions.normalized.jsonl"
    ))
    .expect("../shared/medusa-server/golden is beside the repository");
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|line| line["step"] == step)
        .unwrap_or_else(|| panic!("no golden step {step}"))["body"]
        .clone()
}

/// Asserts that every key path of Medusa's answer is in ours, with the same kind (`null` on
/// either side, and the workflow's own data, match anything).
pub fn assert_same_shape(ours: &Value, medusa: &Value) {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    shape(ours, "", &mut a);
    shape(medusa, "", &mut b);
    let mut missing = Vec::new();
    for (path, kind) in &b {
        match a.get(path) {
            None => missing.push(format!("{path} (missing)")),
            Some(ours)
                if ours != kind && ![*ours, *kind].iter().any(|k| *k == "null" || *k == "data") =>
            {
                missing.push(format!("{path}: {ours} instead of {kind}"))
            }
            _ => {}
        }
    }
    assert!(
        missing.is_empty(),
        "differences from Medusa's shape:\n{}",
        missing.join("\n")
    );
}
