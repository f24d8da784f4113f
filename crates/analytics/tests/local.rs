//! The batcher with the local sink: the conformance suite and the queue bound.

use std::sync::Arc;

use async_trait::async_trait;
use gorgon_analytics::testing::{Recorder, Target, run_all};
use gorgon_analytics::{Analytics, BatchOptions, Error, LocalOptions, LocalSink, Sink};
use serde_json::json;

struct Local;

#[async_trait]
impl Target for Local {
    async fn fresh(&self) -> (Arc<dyn Sink>, Arc<dyn Recorder>) {
        let sink = Arc::new(LocalSink::new());
        (sink.clone(), sink)
    }
}

#[tokio::test]
async fn local_sink_passes_the_suite() {
    run_all(&Local).await;
}

#[tokio::test]
async fn a_full_queue_drops_with_a_typed_error() {
    let sink = Arc::new(LocalSink::new());
    let options = BatchOptions {
        max_queued: 3,
        flush_interval_ms: 3_600_000,
        ..BatchOptions::default()
    };
    let analytics = Analytics::start(sink.clone(), options).unwrap();
    // On this single-threaded runtime the worker cannot run between these calls.
    for i in 0..3 {
        analytics.track("e", "a", json!({"i": i})).unwrap();
    }
    assert!(matches!(
        analytics.track("e", "a", json!({"i": 3})),
        Err(Error::QueueFull { capacity: 3 })
    ));
    analytics.shutdown().await.unwrap();
    assert_eq!(sink.batches().concat().len(), 3);
}

#[test]
fn start_needs_a_runtime_and_sane_options() {
    let sink = Arc::new(LocalSink::new());
    assert!(matches!(
        Analytics::start(sink.clone(), BatchOptions::default()),
        Err(Error::InvalidOptions { .. })
    ));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    for bad in [
        BatchOptions {
            max_batch_size: 0,
            ..BatchOptions::default()
        },
        BatchOptions {
            flush_interval_ms: 0,
            ..BatchOptions::default()
        },
    ] {
        assert!(matches!(
            Analytics::start(sink.clone(), bad),
            Err(Error::InvalidOptions { .. })
        ));
    }
}

#[test]
fn options_deserialize_with_defaults() {
    let options: LocalOptions =
        serde_json::from_value(json!({"batch": {"max_batch_size": 5}})).unwrap();
    assert_eq!(options.batch.max_batch_size, 5);
    assert_eq!(options.batch.flush_interval_ms, 1000);
    assert!(serde_json::from_value::<LocalOptions>(json!({"batch": {"size": 5}})).is_err());
}
