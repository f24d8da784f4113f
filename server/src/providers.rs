//! The providers compiled into the `gorgon` binary, registered by name: event bus `redis`,
//! cache `redis`, locking `redis` and `postgres`, workflow stores `postgres` and `redis`, file
//! `s3`, notification `smtp` and `sendgrid`, analytics `posthog`. A Redis provider without a
//! `url` uses `project.redis_url`; a PostgreSQL one uses `project.database_url`.

use std::sync::Arc;

use gorgon_framework::providers::{ProviderInput, WorkflowBackend};
use gorgon_framework::{BoxError, Providers};
use serde_json::Value as Json;

/// The options with `url` filled in from `fallback` when absent.
fn with_url(
    input: &ProviderInput,
    fallback: Result<String, BoxError>,
) -> Result<ProviderInput, BoxError> {
    let mut input = input.clone();
    if input.options.get("url").is_none() {
        let url = fallback?;
        if let Json::Object(map) = &mut input.options {
            map.insert("url".into(), Json::String(url));
        }
    }
    Ok(input)
}

fn database_url(input: &ProviderInput) -> Result<String, BoxError> {
    let url = input.config.database_url();
    if url.starts_with("postgres") {
        Ok(url.to_owned())
    } else {
        Err("needs a PostgreSQL project.database_url (DATABASE_URL) or its own `url`".into())
    }
}

/// Adds the binary's providers to `providers`.
pub fn register(providers: &mut Providers) {
    providers
        .event_bus("redis", |input| async move {
            let input = with_url(&input, input.redis_url())?;
            let options: gorgon_event_bus_redis::Options = input.options()?;
            let bus = gorgon_event_bus_redis::RedisEventBus::connect(options).await?;
            Ok(Arc::new(bus) as Arc<dyn gorgon_event_bus::EventBus>)
        })
        .cache("redis", |input| async move {
            let input = with_url(&input, input.redis_url())?;
            let options: gorgon_cache_redis::Options = input.options()?;
            let cache = gorgon_cache_redis::RedisCache::connect(&options).await?;
            Ok(Arc::new(cache) as Arc<dyn gorgon_cache::Cache>)
        })
        .locking("redis", |input| async move {
            let input = with_url(&input, input.redis_url())?;
            let options: gorgon_locking_redis::Options = input.options()?;
            let locker = gorgon_locking_redis::RedisLocker::connect(&options).await?;
            Ok(Arc::new(locker) as Arc<dyn gorgon_locking::Locker>)
        })
        .locking("postgres", |input| async move {
            let input = with_url(&input, database_url(&input))?;
            let options: gorgon_locking_postgres::Options = input.options()?;
            let locker = gorgon_locking_postgres::PostgresLocker::connect(&options).await?;
            Ok(Arc::new(locker) as Arc<dyn gorgon_locking::Locker>)
        })
        .workflows("postgres", |input| async move {
            let input = with_url(&input, database_url(&input))?;
            let options: gorgon_store_postgres::Options = input.options()?;
            let store = gorgon_store_postgres::PostgresStore::connect(options).await?;
            let relay = gorgon_store_postgres::PostgresRelay::new(&store);
            Ok(WorkflowBackend::new(Arc::new(store)).with_relay(Arc::new(relay)))
        })
        .workflows("redis", |input| async move {
            let input = with_url(&input, input.redis_url())?;
            let options: gorgon_store_redis::Options = input.options()?;
            let store = gorgon_store_redis::RedisStore::connect(&options).await?;
            let relay = gorgon_store_redis::RedisRelay::connect(&options).await?;
            Ok(WorkflowBackend::new(Arc::new(store)).with_relay(Arc::new(relay)))
        })
        .file("s3", |input| async move {
            let options: gorgon_file_s3::S3Options = input.options()?;
            Ok(Arc::new(gorgon_file_s3::S3FileStore::new(options)?)
                as Arc<dyn gorgon_file::FileStore>)
        })
        .notification("smtp", |input| async move {
            let options: gorgon_notification_smtp::SmtpOptions = input.options()?;
            Ok(
                Arc::new(gorgon_notification_smtp::SmtpProvider::new(options)?)
                    as Arc<dyn gorgon_notification::Provider>,
            )
        })
        .notification("sendgrid", |input| async move {
            let options: gorgon_notification_sendgrid::SendgridOptions = input.options()?;
            Ok(
                Arc::new(gorgon_notification_sendgrid::SendgridProvider::new(
                    options,
                )?) as Arc<dyn gorgon_notification::Provider>,
            )
        })
        .analytics("posthog", |input| async move {
            let options: gorgon_analytics_posthog::PosthogOptions = input.options()?;
            Ok(
                Arc::new(gorgon_analytics_posthog::PosthogSink::new(options)?)
                    as Arc<dyn gorgon_analytics::Sink>,
            )
        });
}
