//! SendGrid provider of Gorgon notifications, over its v3 HTTP API.
//!
//! Sends each [`Message`] with one `POST {base_url}/v3/mail/send` carrying the rendered subject,
//! text and HTML. It passes `gorgon_notification::testing` against a real HTTP server in its
//! tests that records the requests.
//!
//! # Use it
//! 1. Deserialize [`SendgridOptions`] (`api_key` and `from` are required; `base_url` defaults to
//!    `https://api.sendgrid.com`, point it elsewhere for the EU region or a test server).
//! 2. `let sendgrid = Arc::new(SendgridProvider::new(options.clone())?);`
//! 3. Register it: `Notifier::builder(..).provider(options.channel, sendgrid)?`.
//!
//! # Contract
//! `send` returns once SendGrid answered `2xx` (it queued the message). The request body is
//! `{"personalizations":[{"to":[{"email":…,"name"?}]}], "from":{…}, "reply_to"?, "subject",
//! "content":[{"type":"text/plain",…},{"type":"text/html",…}?], "custom_args":
//! {"notification_id","idempotency_key"}}` with `Authorization: Bearer <api_key>`. The response's
//! `X-Message-Id` becomes the receipt's external id. A `4xx` other than `429` is
//! [`Error::Rejected`]; `429`, `5xx`, timeouts and connection errors are [`Error::Delivery`].

use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

use async_trait::async_trait;
use gorgon_notification::{Channel, Delivery, Error, Message, Provider};
use serde::Deserialize;
use serde_json::{Value, json};

const PROVIDER: &str = "sendgrid";

/// Configuration of [`SendgridProvider`].
///
/// ```json
/// { "api_key": "SG.…", "from": "no-reply@shop.example", "from_name": "Shop" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendgridOptions {
    /// API key with the Mail Send permission (required).
    pub api_key: SecretString,
    /// Sender address, verified in SendGrid (required).
    pub from: String,
    /// Sender display name.
    pub from_name: Option<String>,
    /// `Reply-To` address.
    pub reply_to: Option<String>,
    /// API base URL. Default `https://api.sendgrid.com`.
    pub base_url: String,
    /// The channel the composition root registers it for. Default `email`.
    pub channel: Channel,
    /// Request timeout in seconds. Default 30.
    pub timeout_secs: u64,
}

impl Default for SendgridOptions {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            from: String::new(),
            from_name: None,
            reply_to: None,
            base_url: "https://api.sendgrid.com".into(),
            channel: Channel::EMAIL,
            timeout_secs: 30,
        }
    }
}

/// Sends notifications as email through SendGrid.
#[derive(Clone)]
pub struct SendgridProvider {
    client: reqwest::Client,
    endpoint: String,
    api_key: String,
    from: Value,
    reply_to: Option<Value>,
}

impl std::fmt::Debug for SendgridProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendgridProvider")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidOptions {
        provider: PROVIDER,
        reason: reason.into(),
    }
}

/// Splits `Name <address>` into its parts; a bare address has no name.
fn address(raw: &str) -> Option<Value> {
    let raw = raw.trim();
    let (name, email) = match raw.rsplit_once('<') {
        Some((name, rest)) => (Some(name.trim().trim_matches('"')), rest.strip_suffix('>')?),
        None => (None, raw),
    };
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || domain.is_empty() || email.contains(char::is_whitespace) {
        return None;
    }
    Some(match name.filter(|n| !n.is_empty()) {
        Some(name) => json!({"email": email, "name": name}),
        None => json!({"email": email}),
    })
}

impl SendgridProvider {
    /// Builds the provider.
    pub fn new(options: SendgridOptions) -> Result<Self, Error> {
        if options.api_key.expose_secret().is_empty() {
            return Err(invalid("`api_key` is required"));
        }
        let mut from = address(&options.from)
            .ok_or_else(|| invalid(format!("from {:?} is not an email address", options.from)))?;
        if let Some(name) = options.from_name {
            from["name"] = Value::String(name);
        }
        let reply_to = options
            .reply_to
            .as_deref()
            .map(|r| {
                address(r).ok_or_else(|| invalid(format!("reply_to {r:?} is not an email address")))
            })
            .transpose()?;
        if !(options.base_url.starts_with("http://") || options.base_url.starts_with("https://")) {
            return Err(invalid(format!(
                "base_url {:?} is not an http(s) URL",
                options.base_url
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(options.timeout_secs.max(1)))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            client,
            endpoint: format!("{}/v3/mail/send", options.base_url.trim_end_matches('/')),
            api_key: options.api_key.expose_secret().to_string(),
            from,
            reply_to,
        })
    }

    /// The JSON body sent for `message`.
    pub fn body(&self, message: &Message) -> Result<Value, Error> {
        let to = address(&message.to).ok_or_else(|| Error::Rejected {
            provider: PROVIDER.into(),
            notification_id: message.id,
            reason: format!("recipient {:?} is not an email address", message.to),
        })?;
        let mut content = vec![json!({"type": "text/plain", "value": message.content.text})];
        if let Some(html) = &message.content.html {
            content.push(json!({"type": "text/html", "value": html}));
        }
        let mut body = json!({
            "personalizations": [{"to": [to]}],
            "from": self.from,
            "subject": message.content.subject,
            "content": content,
            "custom_args": {
                "notification_id": message.id.to_string(),
                "idempotency_key": message.idempotency_key.as_str(),
            },
        });
        if let Some(reply_to) = &self.reply_to {
            body["reply_to"] = reply_to.clone();
        }
        Ok(body)
    }
}

#[async_trait]
impl Provider for SendgridProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    async fn send(&self, message: &Message) -> Result<Delivery, Error> {
        let delivery_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Delivery {
            provider: PROVIDER.into(),
            notification_id: message.id,
            source,
        };
        let response = self
            .client
            .post(&self.endpoint)
            .bearer_auth(&self.api_key)
            .json(&self.body(message)?)
            .send()
            .await
            .map_err(|e| delivery_error(e.into()))?;
        let status = response.status();
        if status.is_success() {
            let external_id = response
                .headers()
                .get("x-message-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Ok(Delivery { external_id });
        }
        let detail = response.text().await.unwrap_or_default();
        let reason = format!(
            "HTTP {status}: {}",
            detail.chars().take(500).collect::<String>()
        );
        if status.is_client_error() && status.as_u16() != 429 {
            Err(Error::Rejected {
                provider: PROVIDER.into(),
                notification_id: message.id,
                reason,
            })
        } else {
            Err(delivery_error(reason.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_email_and_name() {
        assert_eq!(address("a@b.c").unwrap(), json!({"email": "a@b.c"}));
        assert_eq!(
            address("\"Ada L\" <ada@b.c>").unwrap(),
            json!({"email": "ada@b.c", "name": "Ada L"})
        );
        for bad in ["", "nobody", "a b@c.d", "<a@b.c", "@b.c", "a@"] {
            assert!(address(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn options_need_key_sender_and_http_base() {
        let ok: SendgridOptions =
            serde_json::from_str(r#"{"api_key": "SG.x", "from": "shop@example.com"}"#).unwrap();
        assert_eq!(ok.base_url, "https://api.sendgrid.com");
        assert!(SendgridProvider::new(ok.clone()).is_ok());
        for bad in [
            SendgridOptions {
                api_key: "".into(),
                ..ok.clone()
            },
            SendgridOptions {
                from: "shop".into(),
                ..ok.clone()
            },
            SendgridOptions {
                base_url: "api.sendgrid.com".into(),
                ..ok.clone()
            },
        ] {
            assert!(matches!(
                SendgridProvider::new(bad),
                Err(Error::InvalidOptions { .. })
            ));
        }
    }
}
