//! The conformance suite every notification [`Provider`] runs against itself, through a
//! [`Notifier`].
//!
//! A provider's test starts its backend for real (an SMTP server, an HTTP server standing in for
//! SendGrid…), gives the suite an [`Inbox`] that reads what the backend received, and calls
//! [`run_all`]. Each check tags its messages with a fresh token in the subject and only counts
//! messages carrying it, so checks can share one backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::{
    Channel, Error, IdempotencyKey, LocalProvider, Notifier, NotifierOptions, Provider, Template,
    Templates,
};

/// A message as the backend received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Recipient.
    pub to: String,
    /// Subject.
    pub subject: String,
    /// Plain-text body (trailing line breaks trimmed).
    pub text: String,
    /// HTML body, if any (trailing line breaks trimmed).
    pub html: Option<String>,
}

/// Reads what the backend received.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// Every message received so far.
    async fn received(&self) -> Vec<Received>;
}

#[async_trait]
impl Inbox for LocalProvider {
    async fn received(&self) -> Vec<Received> {
        self.sent()
            .into_iter()
            .map(|m| Received {
                to: m.to,
                subject: m.content.subject,
                text: m.content.text,
                html: m.content.html,
            })
            .collect()
    }
}

/// The templates the suite sends.
pub fn templates() -> Templates {
    Templates::new().with(
        "order-placed",
        Template::new(
            "Grüße {{name}}: order {{order.id}} [{{token}}]",
            "Hello {{name}}, order {{order.id}} totals {{order.total}}.",
        )
        .with_html("<p>Hello <b>{{name}}</b>, order {{order.id}}</p>"),
    )
}

fn notifier(channel: &Channel, provider: Arc<dyn Provider>) -> Notifier {
    let options = NotifierOptions {
        templates: templates(),
        ..NotifierOptions::default()
    };
    Notifier::builder(options)
        .provider(channel.clone(), provider)
        .expect("one provider")
        .build()
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn data(token: &str, name: &str) -> Value {
    json!({"name": name, "token": token, "order": {"id": 1042, "total": "€12.50"}})
}

fn key(token: &str, n: u32) -> IdempotencyKey {
    IdempotencyKey::new(format!("suite:{token}:{n}")).expect("valid key")
}

async fn tagged(inbox: &dyn Inbox, token: &str) -> Vec<Received> {
    inbox
        .received()
        .await
        .into_iter()
        .filter(|m| m.subject.contains(token))
        .collect()
}

/// Waits until `count` messages carry `token`, then a little longer to catch extras.
async fn expect_count(inbox: &dyn Inbox, token: &str, count: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = tagged(inbox, token).await;
        if got.len() >= count || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let got = tagged(inbox, token).await;
    assert_eq!(got.len(), count, "messages tagged {token}: {got:#?}");
    got
}

/// Runs every check of the suite. `to` is a recipient the backend accepts.
pub async fn run_all(channel: Channel, provider: Arc<dyn Provider>, inbox: &dyn Inbox, to: &str) {
    delivers_rendered_content(&channel, provider.clone(), inbox, to).await;
    resend_with_same_key_sends_nothing(&channel, provider.clone(), inbox, to).await;
    concurrent_sends_with_one_key_send_once(&channel, provider.clone(), inbox, to).await;
    reused_key_for_other_request_is_a_conflict(&channel, provider.clone(), inbox, to).await;
    bad_requests_send_nothing(&channel, provider, inbox, to).await;
}

/// The backend receives the rendered subject, text and (escaped) HTML for the recipient.
pub async fn delivers_rendered_content(
    channel: &Channel,
    provider: Arc<dyn Provider>,
    inbox: &dyn Inbox,
    to: &str,
) {
    let notifier = notifier(channel, provider.clone());
    let token = token();
    let receipt = notifier
        .send(
            to,
            channel,
            "order-placed",
            &data(&token, "Ada & Co"),
            &key(&token, 1),
        )
        .await
        .expect("send");
    assert_eq!(receipt.channel, *channel);
    assert_eq!(receipt.provider, provider.name());
    assert_eq!(receipt.idempotency_key, key(&token, 1));
    let got = expect_count(inbox, &token, 1).await;
    let message = &got[0];
    assert_eq!(message.to, to);
    assert_eq!(
        message.subject,
        format!("Grüße Ada & Co: order 1042 [{token}]")
    );
    assert_eq!(message.text, "Hello Ada & Co, order 1042 totals €12.50.");
    assert_eq!(
        message.html.as_deref(),
        Some("<p>Hello <b>Ada &amp; Co</b>, order 1042</p>")
    );
}

/// A second send with the same key sends nothing and returns the original receipt; another key
/// sends again.
pub async fn resend_with_same_key_sends_nothing(
    channel: &Channel,
    provider: Arc<dyn Provider>,
    inbox: &dyn Inbox,
    to: &str,
) {
    let notifier = notifier(channel, provider);
    let token = token();
    let data = data(&token, "Bo");
    let first = notifier
        .send(to, channel, "order-placed", &data, &key(&token, 1))
        .await
        .expect("first send");
    let again = notifier
        .send(to, channel, "order-placed", &data, &key(&token, 1))
        .await
        .expect("resend");
    assert_eq!(again, first, "a resend returns the original receipt");
    let via_clone = notifier
        .clone()
        .send(to, channel, "order-placed", &data, &key(&token, 1))
        .await
        .expect("resend through a clone");
    assert_eq!(via_clone, first, "clones share the idempotency record");
    expect_count(inbox, &token, 1).await;
    let other = notifier
        .send(to, channel, "order-placed", &data, &key(&token, 2))
        .await
        .expect("send with another key");
    assert_ne!(other.notification_id, first.notification_id);
    expect_count(inbox, &token, 2).await;
}

/// Ten concurrent sends with one key deliver one message and all get the same receipt.
pub async fn concurrent_sends_with_one_key_send_once(
    channel: &Channel,
    provider: Arc<dyn Provider>,
    inbox: &dyn Inbox,
    to: &str,
) {
    let notifier = notifier(channel, provider);
    let token = token();
    let data = data(&token, "Cy");
    let sends = (0..10).map(|_| {
        let (notifier, data, token, channel) = (
            notifier.clone(),
            data.clone(),
            token.clone(),
            channel.clone(),
        );
        let to = to.to_owned();
        tokio::spawn(async move {
            notifier
                .send(&to, &channel, "order-placed", &data, &key(&token, 1))
                .await
        })
    });
    let receipts: Vec<_> = join_sends(sends).await;
    assert!(
        receipts.windows(2).all(|w| w[0] == w[1]),
        "all concurrent sends return one receipt"
    );
    expect_count(inbox, &token, 1).await;
}

async fn join_sends<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Result<T, Error>>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.expect("task").expect("send"));
    }
    out
}

/// Reusing a key for a different recipient or data is refused and sends nothing.
pub async fn reused_key_for_other_request_is_a_conflict(
    channel: &Channel,
    provider: Arc<dyn Provider>,
    inbox: &dyn Inbox,
    to: &str,
) {
    let notifier = notifier(channel, provider);
    let token = token();
    notifier
        .send(
            to,
            channel,
            "order-placed",
            &data(&token, "Di"),
            &key(&token, 1),
        )
        .await
        .expect("send");
    let conflict = notifier
        .send(
            to,
            channel,
            "order-placed",
            &data(&token, "Ed"),
            &key(&token, 1),
        )
        .await;
    assert!(
        matches!(conflict, Err(Error::IdempotencyConflict { .. })),
        "{conflict:?}"
    );
    expect_count(inbox, &token, 1).await;
}

/// Missing variables, unknown templates, unknown channels and empty recipients are typed errors
/// and send nothing.
pub async fn bad_requests_send_nothing(
    channel: &Channel,
    provider: Arc<dyn Provider>,
    inbox: &dyn Inbox,
    to: &str,
) {
    let notifier = notifier(channel, provider);
    let token = token();
    let mut incomplete = data(&token, "Fa");
    incomplete["order"]
        .as_object_mut()
        .expect("object")
        .remove("total");
    let missing = notifier
        .send(to, channel, "order-placed", &incomplete, &key(&token, 1))
        .await;
    assert!(
        matches!(&missing, Err(Error::MissingVariable { variable, .. }) if variable == "order.total"),
        "{missing:?}"
    );
    let unknown = notifier
        .send(
            to,
            channel,
            "no-such-template",
            &data(&token, "Fa"),
            &key(&token, 2),
        )
        .await;
    assert!(matches!(unknown, Err(Error::UnknownTemplate { .. })));
    let other_channel = Channel::new("pigeon").expect("valid");
    let no_provider = notifier
        .send(
            to,
            &other_channel,
            "order-placed",
            &data(&token, "Fa"),
            &key(&token, 3),
        )
        .await;
    assert!(matches!(no_provider, Err(Error::NoProvider { .. })));
    let nobody = notifier
        .send(
            " ",
            channel,
            "order-placed",
            &data(&token, "Fa"),
            &key(&token, 4),
        )
        .await;
    assert!(matches!(
        nobody,
        Err(Error::InvalidInput { field: "to", .. })
    ));
    expect_count(inbox, &token, 0).await;
    // A failed attempt is not recorded: the same key works once the data is complete.
    notifier
        .send(
            to,
            channel,
            "order-placed",
            &data(&token, "Fa"),
            &key(&token, 1),
        )
        .await
        .expect("send after fixing the data");
    expect_count(inbox, &token, 1).await;
}
