//! No provider's options show a secret in their `Debug` output (what `tracing::info!(?config)`
//! prints): passwords in connection URLs, API keys, access keys, signing secrets. Each is read
//! from configuration, as an application reads it, then formatted both ways.

use serde::de::DeserializeOwned;

/// The secret every option below carries, in every secret field.
const SECRET: &str = "hunter2-very-secret";

fn check<T: DeserializeOwned + std::fmt::Debug>(name: &str, json: serde_json::Value) {
    let options: T = serde_json::from_value(json).unwrap_or_else(|e| panic!("{name}: {e}"));
    for shown in [format!("{options:?}"), format!("{options:#?}")] {
        assert!(!shown.contains(SECRET), "{name} shows a secret: {shown}");
    }
}

#[test]
fn no_options_show_a_secret() {
    let url = |scheme: &str| format!("{scheme}://user:{SECRET}@127.0.0.1/db");
    check::<gorgon_store_postgres::Options>(
        "store-postgres",
        serde_json::json!({ "url": url("postgres") }),
    );
    check::<gorgon_store_redis::Options>("store-redis", serde_json::json!({ "url": url("redis") }));
    check::<gorgon_event_bus_redis::Options>(
        "event-bus-redis",
        serde_json::json!({ "url": url("redis") }),
    );
    check::<gorgon_locking_postgres::Options>(
        "locking-postgres",
        serde_json::json!({ "url": url("postgres") }),
    );
    check::<gorgon_locking_redis::Options>(
        "locking-redis",
        serde_json::json!({ "url": url("redis") }),
    );
    check::<gorgon_cache_redis::Options>("cache-redis", serde_json::json!({ "url": url("redis") }));
    check::<gorgon_file::LocalOptions>(
        "file-local",
        serde_json::json!({ "signing_secret": SECRET }),
    );
    check::<gorgon_file_s3::S3Options>(
        "file-s3",
        serde_json::json!({ "bucket": "b", "secret_access_key": SECRET, "session_token": SECRET }),
    );
    check::<gorgon_notification_smtp::SmtpOptions>(
        "notification-smtp",
        serde_json::json!({ "host": "smtp.example.com", "username": "u", "password": SECRET }),
    );
    check::<gorgon_notification_sendgrid::SendgridOptions>(
        "notification-sendgrid",
        serde_json::json!({ "api_key": SECRET, "from": "shop@example.com" }),
    );
    check::<gorgon_analytics_posthog::PosthogOptions>(
        "analytics-posthog",
        serde_json::json!({ "api_key": SECRET }),
    );
}
