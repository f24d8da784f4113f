//! The SendGrid provider against a real HTTP server (axum, in the test) that records every
//! request and answers like SendGrid's `/v3/mail/send`.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use gorgon_notification::testing::{Inbox, Received, run_all, templates};
use gorgon_notification::{Channel, Error, IdempotencyKey, Notifier, NotifierOptions};
use gorgon_notification_sendgrid::{SendgridOptions, SendgridProvider};
use parking_lot::Mutex;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Request {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<Request>>,
    /// Statuses to answer with before going back to 202.
    failures: Mutex<VecDeque<StatusCode>>,
}

struct FakeSendgrid {
    recorder: Arc<Recorder>,
    base_url: String,
}

async fn start() -> FakeSendgrid {
    let recorder = Arc::new(Recorder::default());
    let state = recorder.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let recorder = state.clone();
            async move {
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut requests = recorder.requests.lock();
                requests.push(Request {
                    method,
                    path: uri.path().to_owned(),
                    headers,
                    body,
                });
                let n = requests.len();
                drop(requests);
                if let Some(status) = recorder.failures.lock().pop_front() {
                    return (status, r#"{"errors":[{"message":"nope"}]}"#).into_response();
                }
                let mut response: Response = StatusCode::ACCEPTED.into_response();
                response
                    .headers_mut()
                    .insert("x-message-id", format!("sg-{n}").parse().unwrap());
                response
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeSendgrid { recorder, base_url }
}

#[async_trait]
impl Inbox for FakeSendgrid {
    async fn received(&self) -> Vec<Received> {
        let requests = self.recorder.requests.lock().clone();
        requests
            .iter()
            .map(|r| {
                let content = r.body["content"].as_array().unwrap();
                let part = |kind: &str| {
                    content
                        .iter()
                        .find(|c| c["type"] == kind)
                        .map(|c| c["value"].as_str().unwrap().to_owned())
                };
                Received {
                    to: r.body["personalizations"][0]["to"][0]["email"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                    subject: r.body["subject"].as_str().unwrap().to_owned(),
                    text: part("text/plain").unwrap(),
                    html: part("text/html"),
                }
            })
            .collect()
    }
}

fn provider(server: &FakeSendgrid) -> SendgridProvider {
    SendgridProvider::new(
        serde_json::from_value::<SendgridOptions>(json!({
            "api_key": "SG.test-key",
            "from": "Gorgon Shop <shop@gorgon.test>",
            "base_url": format!("{}/", server.base_url),
            "timeout_secs": 5,
        }))
        .unwrap(),
    )
    .unwrap()
}

fn notifier(server: &FakeSendgrid) -> Notifier {
    Notifier::builder(NotifierOptions {
        templates: templates(),
        ..NotifierOptions::default()
    })
    .provider(Channel::EMAIL, Arc::new(provider(server)))
    .unwrap()
    .build()
}

fn data() -> Value {
    json!({"name": "Ada", "token": "tok", "order": {"id": 7, "total": "9.99"}})
}

#[tokio::test]
async fn sendgrid_provider_passes_the_suite() {
    let server = start().await;
    run_all(
        Channel::EMAIL,
        Arc::new(provider(&server)),
        &server,
        "ada@example.com",
    )
    .await;
}

#[tokio::test]
async fn the_request_is_sendgrids_v3_mail_send() {
    let server = start().await;
    let key = IdempotencyKey::new("order-placed:7").unwrap();
    let receipt = notifier(&server)
        .send(
            "Ada <ada@example.com>",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(receipt.external_id.as_deref(), Some("sg-1"));
    assert_eq!(receipt.provider, "sendgrid");
    let requests = server.recorder.requests.lock().clone();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.path, "/v3/mail/send");
    assert_eq!(request.headers["authorization"], "Bearer SG.test-key");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(
        request.body,
        json!({
            "personalizations": [{"to": [{"email": "ada@example.com", "name": "Ada"}]}],
            "from": {"email": "shop@gorgon.test", "name": "Gorgon Shop"},
            "subject": "Grüße Ada: order 7 [tok]",
            "content": [
                {"type": "text/plain", "value": "Hello Ada, order 7 totals 9.99."},
                {"type": "text/html", "value": "<p>Hello <b>Ada</b>, order 7</p>"},
            ],
            "custom_args": {
                "notification_id": receipt.notification_id.to_string(),
                "idempotency_key": "order-placed:7",
            },
        })
    );
}

#[tokio::test]
async fn client_errors_are_rejections_and_server_errors_can_be_retried() {
    let server = start().await;
    let notifier = notifier(&server);
    let send = |key: &'static str| {
        let notifier = notifier.clone();
        async move {
            notifier
                .send(
                    "ada@example.com",
                    &Channel::EMAIL,
                    "order-placed",
                    &data(),
                    &IdempotencyKey::new(key).unwrap(),
                )
                .await
        }
    };
    server
        .recorder
        .failures
        .lock()
        .push_back(StatusCode::BAD_REQUEST);
    let rejected = send("a").await;
    assert!(
        matches!(&rejected, Err(Error::Rejected { reason, .. }) if reason.contains("400")),
        "{rejected:?}"
    );
    for status in [StatusCode::TOO_MANY_REQUESTS, StatusCode::BAD_GATEWAY] {
        server.recorder.failures.lock().push_back(status);
        let failed = send("b").await;
        assert!(matches!(failed, Err(Error::Delivery { .. })), "{failed:?}");
    }
    // The failures were not recorded: the same key now sends, once.
    let first = send("b").await.unwrap();
    assert_eq!(send("b").await.unwrap(), first);
    assert_eq!(server.recorder.requests.lock().len(), 4);
    let bad_address = notifier
        .send(
            "nobody",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &IdempotencyKey::new("c").unwrap(),
        )
        .await;
    assert!(matches!(bad_address, Err(Error::Rejected { .. })));
    assert_eq!(
        server.recorder.requests.lock().len(),
        4,
        "nothing sent for a bad address"
    );
}
