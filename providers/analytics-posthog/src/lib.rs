//! PostHog provider of Gorgon analytics, over its HTTP capture API.
//!
//! Each batch from the `gorgon_analytics` batcher becomes one `POST {host}/batch/` request. It
//! passes `gorgon_analytics::testing` against a real HTTP server in its tests that records the
//! requests.
//!
//! # Use it
//! 1. Deserialize [`PosthogOptions`] (`api_key` is the project API key, required; `host` defaults
//!    to `https://us.i.posthog.com`, use `https://eu.i.posthog.com` or your own instance).
//! 2. `let analytics = Analytics::start(Arc::new(PosthogSink::new(options.clone())?), options.batch)?;`
//!
//! # Contract
//! The request body is `{"api_key": …, "batch": [event…]}`, each event
//! `{"event", "distinct_id", "properties", "timestamp" (RFC 3339), "uuid"}`; a track keeps its
//! name and properties, an identify is the `$identify` event with the traits under
//! `properties.$set`. The event `uuid` lets PostHog drop duplicates when a retried batch had in
//! fact arrived. `2xx` is success; `4xx` other than `429` is [`Error::Rejected`]; `429`, `5xx`
//! and transport errors are [`Error::Delivery`] (the batcher retries those).

use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

use async_trait::async_trait;
use gorgon_analytics::{BatchOptions, Error, Event, Kind, Sink};
use serde::Deserialize;
use serde_json::{Value, json};

const PROVIDER: &str = "posthog";

/// Configuration of [`PosthogSink`].
///
/// ```json
/// { "api_key": "phc_…", "host": "https://eu.i.posthog.com", "batch": { "max_batch_size": 100 } }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PosthogOptions {
    /// Project API key (required).
    pub api_key: SecretString,
    /// PostHog host. Default `https://us.i.posthog.com`.
    pub host: String,
    /// Request timeout in seconds. Default 10.
    pub timeout_secs: u64,
    /// Batching.
    pub batch: BatchOptions,
}

impl Default for PosthogOptions {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            host: "https://us.i.posthog.com".into(),
            timeout_secs: 10,
            batch: BatchOptions::default(),
        }
    }
}

/// Sends batches of events to PostHog's `/batch/` endpoint.
#[derive(Clone)]
pub struct PosthogSink {
    client: reqwest::Client,
    endpoint: String,
    api_key: String,
}

impl std::fmt::Debug for PosthogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PosthogSink")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl PosthogSink {
    /// Builds the sink.
    pub fn new(options: PosthogOptions) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidOptions {
            provider: PROVIDER,
            reason,
        };
        if options.api_key.expose_secret().is_empty() {
            return Err(invalid("`api_key` is required".into()));
        }
        if !(options.host.starts_with("http://") || options.host.starts_with("https://")) {
            return Err(invalid(format!(
                "host {:?} is not an http(s) URL",
                options.host
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(options.timeout_secs.max(1)))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            client,
            endpoint: format!("{}/batch/", options.host.trim_end_matches('/')),
            api_key: options.api_key.expose_secret().to_string(),
        })
    }

    /// The JSON body sent for `batch`.
    pub fn body(&self, batch: &[Event]) -> Value {
        let events: Vec<Value> = batch
            .iter()
            .map(|event| {
                let (name, properties) = match &event.kind {
                    Kind::Track { event: name } => {
                        (name.as_str(), Value::Object(event.properties.clone()))
                    }
                    Kind::Identify => ("$identify", json!({"$set": event.properties})),
                };
                json!({
                    "event": name,
                    "distinct_id": event.actor_id,
                    "properties": properties,
                    "timestamp": event.timestamp.to_rfc3339(),
                    "uuid": event.id.to_string(),
                })
            })
            .collect();
        json!({"api_key": self.api_key, "batch": events})
    }
}

#[async_trait]
impl Sink for PosthogSink {
    fn name(&self) -> &str {
        PROVIDER
    }

    async fn send_batch(&self, batch: &[Event]) -> Result<(), Error> {
        let delivery = |source: Box<dyn std::error::Error + Send + Sync>| Error::Delivery {
            sink: PROVIDER.into(),
            events: batch.len(),
            source,
        };
        let response = self
            .client
            .post(&self.endpoint)
            .json(&self.body(batch))
            .send()
            .await
            .map_err(|e| delivery(e.into()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = response.text().await.unwrap_or_default();
        let reason = format!(
            "HTTP {status}: {}",
            detail.chars().take(500).collect::<String>()
        );
        if status.is_client_error() && status.as_u16() != 429 {
            Err(Error::Rejected {
                sink: PROVIDER.into(),
                events: batch.len(),
                reason,
            })
        } else {
            Err(delivery(reason.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_need_a_key_and_an_http_host() {
        let options: PosthogOptions = serde_json::from_str(r#"{"api_key": "phc_x"}"#).unwrap();
        assert_eq!(options.host, "https://us.i.posthog.com");
        assert_eq!(options.batch, BatchOptions::default());
        assert!(PosthogSink::new(options.clone()).is_ok());
        assert!(matches!(
            PosthogSink::new(PosthogOptions::default()),
            Err(Error::InvalidOptions { .. })
        ));
        let bad_host = PosthogOptions {
            host: "eu.i.posthog.com".into(),
            ..options
        };
        assert!(PosthogSink::new(bad_host).is_err());
    }
}
