//! The local sink: records and logs batches instead of sending them anywhere.

use async_trait::async_trait;
use serde::Deserialize;

use crate::{BatchOptions, Error, Event, Kind, Sink};

/// Configuration of the local provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalOptions {
    /// Batching.
    pub batch: BatchOptions,
}

/// Keeps every batch in memory and logs each event at `debug` through `tracing`.
///
/// For development and tests; nothing survives a restart.
#[derive(Debug, Default)]
pub struct LocalSink {
    batches: parking_lot::Mutex<Vec<Vec<Event>>>,
}

impl LocalSink {
    /// A sink with an empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every batch received so far, oldest first.
    pub fn batches(&self) -> Vec<Vec<Event>> {
        self.batches.lock().clone()
    }
}

#[async_trait]
impl Sink for LocalSink {
    fn name(&self) -> &str {
        "local"
    }

    async fn send_batch(&self, batch: &[Event]) -> Result<(), Error> {
        for event in batch {
            match &event.kind {
                Kind::Track { event: name } => {
                    tracing::debug!(event = %name, actor_id = %event.actor_id, properties = ?event.properties, "analytics track (local)");
                }
                Kind::Identify => {
                    tracing::debug!(actor_id = %event.actor_id, properties = ?event.properties, "analytics identify (local)");
                }
            }
        }
        self.batches.lock().push(batch.to_vec());
        Ok(())
    }
}
