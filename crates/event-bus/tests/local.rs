//! The local provider passes the conformance suite.

use std::sync::Arc;

use gorgon_event_bus::{EventBus, LocalEventBus};

#[tokio::test]
async fn local_bus_passes_the_suite() {
    gorgon_event_bus::testing::run_all(|| async {
        Arc::new(LocalEventBus::new()) as Arc<dyn EventBus>
    })
    .await;
}
