//! The SMTP provider against a real aiosmtpd server started by each test; `smtp_sink.py` writes
//! every received message as JSON for the test to read.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gorgon_notification::testing::{Inbox, Received, run_all, templates};
use gorgon_notification::{Channel, Error, IdempotencyKey, Notifier, NotifierOptions};
use gorgon_notification_smtp::{SmtpOptions, SmtpProvider, SmtpTls};
use serde_json::{Value, json};

/// An aiosmtpd server, killed on drop.
struct SmtpServer {
    child: Child,
    port: u16,
    out: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_smtp(port: u16) -> SmtpServer {
    let out = tempfile::tempdir().unwrap();
    let tests_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");
    let child = Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .args(["-c", "smtp_sink.JsonDir"])
        .arg(out.path().join("mail"))
        .env("PYTHONPATH", tests_dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(out.path().join("server.log")).unwrap())
        .spawn()
        .expect("python3 is needed to run the aiosmtpd stand-in (.ci/install-standins.sh)");
    let mut server = SmtpServer { child, port, out };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!(
                "aiosmtpd exited ({status}); install it with `python3 -m pip install aiosmtpd` \
                 (.ci/install-standins.sh). Its log:\n{}",
                std::fs::read_to_string(server.out.path().join("server.log")).unwrap_or_default()
            );
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "aiosmtpd did not listen within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl SmtpServer {
    fn mails(&self) -> Vec<Value> {
        let Ok(entries) = std::fs::read_dir(self.out.path().join("mail")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
            .collect()
    }
}

fn trimmed(v: &Value) -> Option<String> {
    v.as_str()
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
}

#[async_trait]
impl Inbox for SmtpServer {
    async fn received(&self) -> Vec<Received> {
        self.mails()
            .iter()
            .map(|m| Received {
                to: m["rcpt_tos"][0].as_str().unwrap().to_owned(),
                subject: m["subject"].as_str().unwrap().to_owned(),
                text: trimmed(&m["text"]).unwrap_or_default(),
                html: trimmed(&m["html"]),
            })
            .collect()
    }
}

fn provider(port: u16) -> SmtpProvider {
    SmtpProvider::new(SmtpOptions {
        host: "127.0.0.1".into(),
        port: Some(port),
        tls: SmtpTls::None,
        from: "Gorgon Shop <shop@gorgon.test>".into(),
        timeout_secs: 5,
        ..SmtpOptions::default()
    })
    .unwrap()
}

fn notifier(provider: SmtpProvider) -> Notifier {
    Notifier::builder(NotifierOptions {
        templates: templates(),
        ..NotifierOptions::default()
    })
    .provider(Channel::EMAIL, Arc::new(provider))
    .unwrap()
    .build()
}

fn data() -> Value {
    json!({"name": "Ada", "token": "tok", "order": {"id": 7, "total": "9.99"}})
}

#[tokio::test]
async fn smtp_provider_passes_the_suite() {
    let server = start_smtp(free_port()).await;
    run_all(
        Channel::EMAIL,
        Arc::new(provider(server.port)),
        &server,
        "ada@example.com",
    )
    .await;
}

#[tokio::test]
async fn the_email_carries_sender_recipient_and_the_receipt_id() {
    let server = start_smtp(free_port()).await;
    let receipt = notifier(provider(server.port))
        .send(
            "Ada Lovelace <ada@example.com>",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &IdempotencyKey::new("order-placed:7").unwrap(),
        )
        .await
        .unwrap();
    let mails = server.mails();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail["mail_from"], "shop@gorgon.test");
    assert_eq!(mail["rcpt_tos"], json!(["ada@example.com"]));
    assert_eq!(mail["from"], "Gorgon Shop <shop@gorgon.test>");
    assert_eq!(mail["to"], "Ada Lovelace <ada@example.com>");
    let external_id = receipt.external_id.expect("Message-ID as external id");
    assert_eq!(mail["message_id"], external_id.as_str());
    assert!(external_id.contains(&receipt.notification_id.to_string()));
}

#[tokio::test]
async fn a_failed_send_is_not_recorded_and_its_retry_delivers_once() {
    let port = free_port();
    let notifier = notifier(provider(port));
    let key = IdempotencyKey::new("order-placed:8").unwrap();
    let down = notifier
        .send(
            "ada@example.com",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &key,
        )
        .await;
    assert!(matches!(down, Err(Error::Delivery { .. })), "{down:?}");
    let server = start_smtp(port).await;
    let first = notifier
        .send(
            "ada@example.com",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &key,
        )
        .await
        .unwrap();
    let again = notifier
        .send(
            "ada@example.com",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(server.mails().len(), 1);
}

#[tokio::test]
async fn an_unparsable_recipient_is_rejected() {
    let server = start_smtp(free_port()).await;
    let result = notifier(provider(server.port))
        .send(
            "not an address",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &IdempotencyKey::new("k").unwrap(),
        )
        .await;
    assert!(matches!(result, Err(Error::Rejected { .. })), "{result:?}");
    assert!(server.mails().is_empty());
}

#[tokio::test]
async fn starttls_required_but_not_offered_is_a_delivery_error() {
    let server = start_smtp(free_port()).await;
    let strict = SmtpProvider::new(SmtpOptions {
        host: "127.0.0.1".into(),
        port: Some(server.port),
        tls: SmtpTls::StartTls,
        from: "shop@gorgon.test".into(),
        timeout_secs: 5,
        ..SmtpOptions::default()
    })
    .unwrap();
    let result = notifier(strict)
        .send(
            "ada@example.com",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &IdempotencyKey::new("k").unwrap(),
        )
        .await;
    assert!(matches!(result, Err(Error::Delivery { .. })), "{result:?}");
    assert!(server.mails().is_empty(), "nothing goes out in plain text");
}
