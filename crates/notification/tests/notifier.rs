//! The notifier with local providers: the conformance suite, routing and the idempotency record.

use std::sync::Arc;

use gorgon_notification::testing::{run_all, templates};
use gorgon_notification::{
    Channel, Error, IdempotencyKey, LocalOptions, LocalProvider, Notifier, NotifierOptions,
};
use serde_json::json;

#[tokio::test]
async fn local_provider_passes_the_suite() {
    let provider = Arc::new(LocalProvider::new());
    run_all(
        Channel::FEED,
        provider.clone(),
        provider.as_ref(),
        "user_01",
    )
    .await;
}

fn options() -> NotifierOptions {
    NotifierOptions {
        templates: templates(),
        ..NotifierOptions::default()
    }
}

fn data() -> serde_json::Value {
    json!({"name": "Ada", "token": "t", "order": {"id": 1, "total": 2}})
}

#[tokio::test]
async fn each_channel_goes_to_its_own_provider() {
    let email = Arc::new(LocalProvider::new());
    let feed = Arc::new(LocalProvider::new());
    let notifier = Notifier::builder(options())
        .provider(Channel::EMAIL, email.clone())
        .unwrap()
        .provider(Channel::FEED, feed.clone())
        .unwrap()
        .build();
    assert_eq!(notifier.channels(), vec![Channel::EMAIL, Channel::FEED]);
    let key = |k: &str| IdempotencyKey::new(k).unwrap();
    notifier
        .send(
            "ada@example.com",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &key("a"),
        )
        .await
        .unwrap();
    notifier
        .send("user_1", &Channel::FEED, "order-placed", &data(), &key("b"))
        .await
        .unwrap();
    notifier
        .send("user_2", &Channel::FEED, "order-placed", &data(), &key("c"))
        .await
        .unwrap();
    assert_eq!(email.sent().len(), 1);
    assert_eq!(email.sent()[0].to, "ada@example.com");
    assert_eq!(feed.sent().len(), 2);
    let sms = notifier
        .send("+100", &Channel::SMS, "order-placed", &data(), &key("d"))
        .await;
    assert!(matches!(sms, Err(Error::NoProvider { channel }) if channel == Channel::SMS));
}

#[test]
fn a_channel_takes_one_provider() {
    let result = Notifier::builder(options())
        .provider(Channel::EMAIL, Arc::new(LocalProvider::new()))
        .unwrap()
        .provider(Channel::EMAIL, Arc::new(LocalProvider::new()));
    assert!(matches!(result, Err(Error::DuplicateChannel { .. })));
}

#[tokio::test]
async fn keys_are_forgotten_after_the_retention() {
    let provider = Arc::new(LocalProvider::new());
    let notifier = Notifier::builder(NotifierOptions {
        idempotency_retention_secs: 0,
        ..options()
    })
    .provider(Channel::FEED, provider.clone())
    .unwrap()
    .build();
    let key = IdempotencyKey::new("k").unwrap();
    let first = notifier
        .send("u", &Channel::FEED, "order-placed", &data(), &key)
        .await
        .unwrap();
    let second = notifier
        .send("u", &Channel::FEED, "order-placed", &data(), &key)
        .await
        .unwrap();
    assert_ne!(first.notification_id, second.notification_id);
    assert_eq!(provider.sent().len(), 2);
}

#[tokio::test]
async fn separate_notifiers_keep_separate_records() {
    let provider = Arc::new(LocalProvider::new());
    let build = || {
        Notifier::builder(options())
            .provider(Channel::FEED, provider.clone())
            .unwrap()
            .build()
    };
    let key = IdempotencyKey::new("k").unwrap();
    for notifier in [build(), build()] {
        notifier
            .send("u", &Channel::FEED, "order-placed", &data(), &key)
            .await
            .unwrap();
    }
    // Documented limit of the in-memory record: it is per notifier (and per process).
    assert_eq!(provider.sent().len(), 2);
}

#[test]
fn options_deserialize_from_configuration() {
    let options: NotifierOptions = serde_json::from_value(json!({
        "templates": {"hi": {"subject": "Hi {{name}}", "text": "Hello", "html": "<p>Hello</p>"}}
    }))
    .unwrap();
    assert_eq!(options.idempotency_retention_secs, 86_400);
    assert!(options.templates.get("hi").is_some());
    let local: LocalOptions = serde_json::from_value(json!({})).unwrap();
    assert_eq!(local.channel, Channel::FEED);
    let local: LocalOptions = serde_json::from_value(json!({"channel": "sms"})).unwrap();
    assert_eq!(local.channel, Channel::SMS);
    assert!(serde_json::from_value::<NotifierOptions>(json!({"templatez": {}})).is_err());
}

/// Two workers (two notifiers, each with its own provider) sharing a record in Redis: a key is
/// sent once across both, concurrently or one after the other, as a step re-run on another
/// worker after a takeover would send it.
#[tokio::test]
async fn a_shared_record_sends_each_key_once_across_workers() {
    use gorgon_notification::SharedRecord;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let namespace = format!("gorgon-test:notify:{}:", uuid_like());
    let cache = gorgon_cache_redis::RedisCache::connect(&gorgon_cache_redis::Options {
        namespace: namespace.clone(),
        ..gorgon_cache_redis::Options::new(&url)
    })
    .await
    .expect("Redis must run at REDIS_URL or redis://127.0.0.1:6379");
    let locker = gorgon_locking_redis::RedisLocker::connect(&gorgon_locking_redis::Options {
        namespace,
        ..gorgon_locking_redis::Options::new(&url)
    })
    .await
    .expect("locker");
    let record = Arc::new(SharedRecord::new(
        Arc::new(cache),
        Arc::new(locker),
        std::time::Duration::from_secs(60),
    ));
    let worker = || {
        let provider = Arc::new(LocalProvider::new());
        let notifier = Notifier::builder(options())
            .provider(Channel::EMAIL, provider.clone())
            .unwrap()
            .record(record.clone())
            .build();
        (notifier, provider)
    };
    let ((a, sent_a), (b, sent_b)) = (worker(), worker());
    let key = IdempotencyKey::new(format!("milestone-{}", uuid_like())).unwrap();
    let send = |notifier: Notifier, key: IdempotencyKey| async move {
        notifier
            .send(
                "ada@example.com",
                &Channel::EMAIL,
                "order-placed",
                &data(),
                &key,
            )
            .await
    };
    let (first, second) =
        futures::future::join(send(a.clone(), key.clone()), send(b.clone(), key.clone())).await;
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first, second, "the same receipt on both workers");
    assert_eq!(
        sent_a.sent().len() + sent_b.sent().len(),
        1,
        "sent once in all"
    );
    // Later, on worker b: replayed, not sent.
    assert_eq!(send(b.clone(), key.clone()).await.unwrap(), first);
    assert_eq!(sent_a.sent().len() + sent_b.sent().len(), 1);
    // Another request under the same key is a conflict on every worker.
    let other = b
        .send(
            "bob@example.com",
            &Channel::EMAIL,
            "order-placed",
            &data(),
            &key,
        )
        .await;
    assert!(matches!(other, Err(Error::IdempotencyConflict { .. })));
}

/// The in-memory record keeps at most its capacity of sends.
#[tokio::test]
async fn the_memory_record_is_bounded() {
    use gorgon_notification::{MemoryRecord, SentRecord};
    let record = Arc::new(MemoryRecord::with_capacity(
        std::time::Duration::from_secs(60),
        3,
    ));
    let provider = Arc::new(LocalProvider::new());
    let notifier = Notifier::builder(options())
        .provider(Channel::EMAIL, provider.clone())
        .unwrap()
        .record(record.clone() as Arc<dyn SentRecord>)
        .build();
    for i in 0..10 {
        let key = IdempotencyKey::new(format!("k-{i}")).unwrap();
        notifier
            .send(
                "ada@example.com",
                &Channel::EMAIL,
                "order-placed",
                &data(),
                &key,
            )
            .await
            .unwrap();
    }
    assert!(record.len() <= 4, "{} kept", record.len());
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
