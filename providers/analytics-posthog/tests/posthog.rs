//! The PostHog sink against a real HTTP server (axum, in the test) that records every request
//! and answers like PostHog's `/batch/`.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use gorgon_analytics::testing::{Recorded, Recorder, Target, run_all};
use gorgon_analytics::{Analytics, BatchOptions, Error, Sink};
use gorgon_analytics_posthog::{PosthogOptions, PosthogSink};
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
struct FakePosthog {
    requests: Mutex<Vec<Request>>,
    /// Statuses to answer with before going back to 200.
    failures: Mutex<VecDeque<StatusCode>>,
}

impl Recorder for FakePosthog {
    fn requests(&self) -> Vec<Vec<Recorded>> {
        self.requests
            .lock()
            .iter()
            .map(|r| {
                r.body["batch"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        let identify = e["event"] == "$identify";
                        Recorded {
                            event: (!identify).then(|| e["event"].as_str().unwrap().to_owned()),
                            actor_id: e["distinct_id"].as_str().unwrap().to_owned(),
                            properties: if identify {
                                e["properties"]["$set"].clone()
                            } else {
                                e["properties"].clone()
                            },
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

async fn start() -> (Arc<FakePosthog>, String) {
    let fake = Arc::new(FakePosthog::default());
    let state = fake.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let fake = state.clone();
            async move {
                fake.requests.lock().push(Request {
                    method,
                    path: uri.path().to_owned(),
                    headers,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                match fake.failures.lock().pop_front() {
                    Some(status) => (status, "{\"error\":\"nope\"}").into_response(),
                    None => (StatusCode::OK, "{\"status\":1}").into_response(),
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, host)
}

fn sink(host: &str) -> PosthogSink {
    PosthogSink::new(
        serde_json::from_value(json!({"api_key": "phc_test", "host": format!("{host}/")})).unwrap(),
    )
    .unwrap()
}

struct Posthog;

#[async_trait]
impl Target for Posthog {
    async fn fresh(&self) -> (Arc<dyn Sink>, Arc<dyn Recorder>) {
        let (fake, host) = start().await;
        (Arc::new(sink(&host)), fake)
    }
}

#[tokio::test]
async fn posthog_sink_passes_the_suite() {
    run_all(&Posthog).await;
}

#[tokio::test]
async fn events_arrive_batched_in_posthogs_batch_format() {
    let (fake, host) = start().await;
    let options: PosthogOptions = serde_json::from_value(json!({
        "api_key": "phc_test", "host": host, "batch": {"max_batch_size": 40}
    }))
    .unwrap();
    let analytics = Analytics::start(
        Arc::new(PosthogSink::new(options.clone()).unwrap()),
        options.batch,
    )
    .unwrap();
    analytics
        .identify("cus_1", json!({"email": "ada@example.com"}))
        .unwrap();
    for i in 0..99 {
        analytics
            .track(
                "order.placed",
                "cus_1",
                json!({"total": i, "currency": "eur"}),
            )
            .unwrap();
    }
    analytics.shutdown().await.unwrap();

    let requests = fake.requests.lock().clone();
    assert_eq!(requests.len(), 3, "100 events in 3 requests (40 + 40 + 20)");
    let events: Vec<Value> = requests
        .iter()
        .flat_map(|r| r.body["batch"].as_array().unwrap().clone())
        .collect();
    assert_eq!(events.len(), 100);
    for request in &requests {
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/batch/");
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.body["api_key"], "phc_test");
        assert_eq!(
            request.body.as_object().unwrap().len(),
            2,
            "api_key and batch only"
        );
    }
    let identify = &events[0];
    assert_eq!(identify["event"], "$identify");
    assert_eq!(identify["distinct_id"], "cus_1");
    assert_eq!(
        identify["properties"],
        json!({"$set": {"email": "ada@example.com"}})
    );
    let track = &events[1];
    assert_eq!(track["event"], "order.placed");
    assert_eq!(track["properties"], json!({"total": 0, "currency": "eur"}));
    for event in &events {
        assert_eq!(event.as_object().unwrap().len(), 5, "{event}");
        chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap()).unwrap();
        uuid::Uuid::parse_str(event["uuid"].as_str().unwrap()).unwrap();
    }
    let totals: Vec<i64> = events[1..]
        .iter()
        .map(|e| e["properties"]["total"].as_i64().unwrap())
        .collect();
    assert_eq!(totals, (0..99).collect::<Vec<_>>(), "in order");
}

fn quick_retries() -> BatchOptions {
    BatchOptions {
        flush_interval_ms: 3_600_000,
        max_attempts: 3,
        retry_backoff_ms: 10,
        ..BatchOptions::default()
    }
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_batch() {
    let (fake, host) = start().await;
    fake.failures.lock().extend([
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::TOO_MANY_REQUESTS,
    ]);
    let analytics = Analytics::start(Arc::new(sink(&host)), quick_retries()).unwrap();
    analytics.track("e", "a", json!({})).unwrap();
    analytics.flush().await.expect("third attempt succeeds");
    let requests = fake.requests.lock().clone();
    assert_eq!(requests.len(), 3);
    assert!(
        requests.windows(2).all(|w| w[0].body == w[1].body),
        "same batch, same uuids"
    );

    fake.failures.lock().extend([StatusCode::BAD_GATEWAY; 3]);
    analytics.track("e", "a", json!({})).unwrap();
    let gave_up = analytics.flush().await;
    assert!(
        matches!(gave_up, Err(Error::Delivery { events: 1, .. })),
        "{gave_up:?}"
    );
    assert_eq!(fake.requests.lock().len(), 6);
    analytics
        .flush()
        .await
        .expect("the dropped batch is not resent");
    assert_eq!(fake.requests.lock().len(), 6);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (fake, host) = start().await;
    fake.failures.lock().push_back(StatusCode::UNAUTHORIZED);
    let analytics = Analytics::start(Arc::new(sink(&host)), quick_retries()).unwrap();
    analytics.track("e", "a", json!({})).unwrap();
    let rejected = analytics.flush().await;
    assert!(
        matches!(&rejected, Err(Error::Rejected { reason, .. }) if reason.contains("401")),
        "{rejected:?}"
    );
    assert_eq!(fake.requests.lock().len(), 1);
}
