//! Shared test helpers: a journal service, and a store that keeps everything as JSON, as a
//! durable store does.

#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use gorgon_orchestration::{
    Claim, Lease, MemoryStore, Record, TransactionKey,
    store::{StoredTransaction, TransactionHeader, TransactionSummary},
};
use gorgon_orchestration::{Leases, Listing, TransactionLog};
use gorgon_workflows::{App, Services, StepContext, StepFailure};
use parking_lot::Mutex;

/// What the steps did, in order.
#[derive(Default)]
pub struct Journal(Mutex<Vec<String>>);

impl Journal {
    pub fn push(&self, entry: impl Into<String>) {
        self.0.lock().push(entry.into());
    }
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().clone()
    }
    pub fn count(&self, prefix: &str) -> usize {
        self.0
            .lock()
            .iter()
            .filter(|e| e.starts_with(prefix))
            .count()
    }
}

/// Writes to the journal of the step's app.
pub fn note(ctx: &StepContext, entry: impl Into<String>) -> Result<(), StepFailure> {
    ctx.service::<Journal>()?.push(entry);
    Ok(())
}

/// An app whose registry holds a fresh journal.
pub fn app() -> (App, Arc<Journal>) {
    let journal = Arc::new(Journal::default());
    let app = App::new(Services::new().with(journal.clone()));
    (app, journal)
}

/// A store that keeps headers and records as JSON text, so a run loaded from it has lost every
/// Rust type (as with PostgreSQL or Redis).
#[derive(Default)]
pub struct JsonStore {
    inner: MemoryStore,
}

fn through_json<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string(value).expect("serializes")).expect("deserializes")
}

#[async_trait]
impl TransactionLog for JsonStore {
    async fn create(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
    ) -> gorgon_orchestration::Result<u64> {
        self.inner.create(&through_json(header), lease).await
    }

    async fn append(
        &self,
        key: &TransactionKey,
        epoch: u64,
        records: Vec<Record>,
    ) -> gorgon_orchestration::Result<()> {
        let records: Vec<Record> = through_json(&records);
        self.inner.append(key, epoch, records).await
    }

    async fn load(
        &self,
        key: &TransactionKey,
    ) -> gorgon_orchestration::Result<Option<StoredTransaction>> {
        self.inner.load(key).await
    }
}

#[async_trait]
impl Leases for JsonStore {
    async fn summary(
        &self,
        key: &TransactionKey,
    ) -> gorgon_orchestration::Result<Option<TransactionSummary>> {
        self.inner.summary(key).await
    }

    async fn claim(
        &self,
        key: &TransactionKey,
        lease: &Lease,
    ) -> gorgon_orchestration::Result<Claim> {
        self.inner.claim(key, lease).await
    }

    async fn release(
        &self,
        key: &TransactionKey,
        epoch: u64,
        wake_in: Option<u64>,
    ) -> gorgon_orchestration::Result<()> {
        self.inner.release(key, epoch, wake_in).await
    }

    async fn claim_due(
        &self,
        workflows: &[Arc<str>],
        lease: &Lease,
        limit: usize,
    ) -> gorgon_orchestration::Result<Vec<(TransactionKey, u64)>> {
        self.inner.claim_due(workflows, lease, limit).await
    }

    async fn renew(
        &self,
        lease: &Lease,
        keys: &[TransactionKey],
    ) -> gorgon_orchestration::Result<usize> {
        self.inner.renew(lease, keys).await
    }
}

#[async_trait]
impl Listing for JsonStore {
    async fn list(
        &self,
        filter: &gorgon_orchestration::TransactionFilter,
    ) -> gorgon_orchestration::Result<gorgon_orchestration::TransactionPage> {
        self.inner.list(filter).await
    }

    async fn purge_finished(
        &self,
        purge: &gorgon_orchestration::Purge,
    ) -> gorgon_orchestration::Result<u64> {
        self.inner.purge_finished(purge).await
    }
}

/// Waits (up to 5 s) until `done` holds; for what async steps do in their own tasks.
pub async fn until(done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the condition did not hold within 5 s");
}
