//! SMTP provider of Gorgon notifications, through `lettre`.
//!
//! Sends each [`Message`] as an email: the rendered subject, the text body, and the HTML body as
//! a `multipart/alternative` part when the template has one. It passes
//! `gorgon_notification::testing` against a real local SMTP server (aiosmtpd).
//!
//! # Use it
//! 1. Deserialize [`SmtpOptions`] (`from` is required; `tls` defaults to STARTTLS on port 587).
//! 2. `let smtp = Arc::new(SmtpProvider::new(options.clone())?);`
//! 3. Register it: `Notifier::builder(..).provider(options.channel, smtp)?`.
//!
//! # Contract
//! `send` returns once the server has accepted the message (`250` after `DATA`). The
//! notification id becomes the `Message-ID` (`<id@from-domain>`) and the receipt's external id.
//! A `5xx` reply or an unparsable address is [`Error::Rejected`]; connection failures, timeouts
//! and `4xx` replies are [`Error::Delivery`] and may be retried. Connections are pooled.

use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

use async_trait::async_trait;
use gorgon_notification::{Channel, Delivery, Error, Message, Provider};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

const PROVIDER: &str = "smtp";

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text. Only for local servers and tests.
    None,
    /// Plain connection upgraded with `STARTTLS`, which is required (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// Configuration of [`SmtpProvider`].
///
/// ```json
/// { "host": "smtp.example.com", "username": "apikey", "password": "…",
///   "from": "Shop <no-reply@shop.example>" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpOptions {
    /// Server host name. Default `localhost`.
    pub host: String,
    /// Server port. Default from `tls`: 25 (none), 587 (starttls), 465 (tls).
    pub port: Option<u16>,
    /// Connection security. Default `starttls`.
    pub tls: SmtpTls,
    /// User name for `AUTH`, if the server needs it.
    pub username: Option<String>,
    /// Password for `AUTH`.
    pub password: Option<SecretString>,
    /// Sender, `Name <address>` or a bare address (required).
    pub from: String,
    /// `Reply-To` address, if any.
    pub reply_to: Option<String>,
    /// The channel the composition root registers it for. Default `email`.
    pub channel: Channel,
    /// Timeout of each SMTP command, in seconds. Default 30.
    pub timeout_secs: u64,
    /// Most pooled connections. Default 10.
    pub pool_max_size: u32,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: None,
            tls: SmtpTls::StartTls,
            username: None,
            password: None,
            from: String::new(),
            reply_to: None,
            channel: Channel::EMAIL,
            timeout_secs: 30,
            pool_max_size: 10,
        }
    }
}

/// Sends notifications as email over SMTP.
#[derive(Clone)]
pub struct SmtpProvider {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    id_domain: String,
}

impl std::fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidOptions {
        provider: PROVIDER,
        reason: reason.into(),
    }
}

impl SmtpProvider {
    /// Builds the provider; it connects on first send. Call it inside a Tokio runtime (the
    /// connection pool starts a task).
    pub fn new(options: SmtpOptions) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(invalid("SmtpProvider::new must run inside a Tokio runtime"));
        }
        let from: Mailbox = options
            .from
            .parse()
            .map_err(|e| invalid(format!("from {:?}: {e}", options.from)))?;
        let reply_to = options
            .reply_to
            .as_deref()
            .map(|r| {
                r.parse::<Mailbox>()
                    .map_err(|e| invalid(format!("reply_to {r:?}: {e}")))
            })
            .transpose()?;
        let mut builder = match options.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&options.host),
            SmtpTls::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&options.host)
                    .map_err(|e| invalid(format!("host {:?}: {e}", options.host)))?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&options.host)
                .map_err(|e| invalid(format!("host {:?}: {e}", options.host)))?,
        };
        let port = options.port.unwrap_or(match options.tls {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        });
        builder = builder
            .port(port)
            .timeout(Some(Duration::from_secs(options.timeout_secs.max(1))))
            .pool_config(PoolConfig::new().max_size(options.pool_max_size.max(1)));
        match (options.username, options.password) {
            (Some(user), Some(password)) => {
                let password = password.expose_secret().to_string();
                builder = builder.credentials(Credentials::new(user, password));
            }
            (None, None) => {}
            _ => return Err(invalid("username and password go together")),
        }
        let id_domain = from.email.domain().to_owned();
        Ok(Self {
            transport: builder.build(),
            from,
            reply_to,
            id_domain,
        })
    }
}

#[async_trait]
impl Provider for SmtpProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    async fn send(&self, message: &Message) -> Result<Delivery, Error> {
        let rejected = |reason: String| Error::Rejected {
            provider: PROVIDER.into(),
            notification_id: message.id,
            reason,
        };
        let to: Mailbox = message
            .to
            .parse()
            .map_err(|e| rejected(format!("recipient {:?}: {e}", message.to)))?;
        let message_id = format!("<{}@{}>", message.id, self.id_domain);
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.content.subject.clone())
            .message_id(Some(message_id.clone()));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let text = message.content.text.clone();
        let email = match &message.content.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(text, html.clone())),
            None => builder.singlepart(SinglePart::plain(text)),
        }
        .map_err(|e| rejected(format!("cannot build the email: {e}")))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(Delivery {
                external_id: Some(message_id),
            }),
            Err(e) if e.is_permanent() => Err(rejected(e.to_string())),
            Err(e) => Err(Error::Delivery {
                provider: PROVIDER.into(),
                notification_id: message.id,
                source: e.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let options = SmtpOptions {
            from: "a@b.c".into(),
            ..SmtpOptions::default()
        };
        assert!(matches!(
            SmtpProvider::new(options),
            Err(Error::InvalidOptions { .. })
        ));
    }

    #[tokio::test]
    async fn options_need_a_sender_and_paired_credentials() {
        let options: SmtpOptions =
            serde_json::from_str(r#"{"from": "Shop <shop@example.com>"}"#).unwrap();
        assert_eq!(options.tls, SmtpTls::StartTls);
        assert_eq!(options.channel, Channel::EMAIL);
        assert!(SmtpProvider::new(options.clone()).is_ok());
        assert!(matches!(
            SmtpProvider::new(SmtpOptions::default()),
            Err(Error::InvalidOptions { .. })
        ));
        let half = SmtpOptions {
            username: Some("u".into()),
            ..options.clone()
        };
        assert!(SmtpProvider::new(half).is_err());
        assert!(serde_json::from_str::<SmtpOptions>(r#"{"from": "a@b.c", "tls": "ssl"}"#).is_err());
    }
}
