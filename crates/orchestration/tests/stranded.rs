//! A healthy worker never strands its own transactions: a call dropped mid-step (a client that
//! went away, a timeout around the call) does not stop the run, and a transaction whose write
//! failed is taken over (by this worker too) instead of staying leased to it for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gorgon_orchestration::store::{StoredTransaction, TransactionHeader};
use gorgon_orchestration::{
    Claim, Data, Engine, EngineOptions, Error, Flow, FlowDefinition, Lease, MemoryStore, Record,
    RunOptions, StepCall, StepOutcome, Store, SystemClock, TransactionFilter, TransactionKey,
    TransactionPage, TransactionState, TransactionSummary, WorkerOptions, WorkflowOptions,
};
use gorgon_orchestration::{Leases, Listing, TransactionLog};
use parking_lot::Mutex;
use serde_json::json;

/// Three steps `a`, `b`, `c`; `b` takes 200 ms. Each call is counted by action.
fn slow_b(
    calls: Arc<Mutex<Vec<String>>>,
) -> impl Fn(StepCall) -> futures::future::BoxFuture<'static, StepOutcome> + Send + Sync + 'static {
    move |call: StepCall| {
        let calls = calls.clone();
        Box::pin(async move {
            calls.lock().push(call.action().to_string());
            if call.action() == "b" {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            StepOutcome::ok(json!(call.action()))
        })
    }
}

fn chain() -> Flow {
    let definition = FlowDefinition::from_json(
        r#"{"next":{"action":"a","next":{"action":"b","next":{"action":"c"}}}}"#,
    )
    .expect("valid");
    Flow::compile("chain", definition, WorkflowOptions::default()).expect("compiles")
}

fn worker(store: Arc<dyn Store>, id: &str) -> Engine {
    EngineOptions {
        store,
        clock: Arc::new(SystemClock),
        worker: WorkerOptions {
            id: Arc::from(id),
            lease_ms: 300,
            poll_ms: 30,
            claim_batch: 16,
        },
        ..EngineOptions::default()
    }
    .build()
}

async fn state_of(store: &Arc<dyn Store>, id: &str) -> Option<TransactionState> {
    let key = TransactionKey::new("chain", id);
    store.summary(&key).await.expect("summary").map(|s| s.state)
}

async fn until_done(store: &Arc<dyn Store>, id: &str) -> TransactionState {
    for _ in 0..300 {
        match state_of(store, id).await {
            Some(state) if state.is_finished() => return state,
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    state_of(store, id).await.expect("stored")
}

#[tokio::test]
async fn a_run_dropped_mid_step_goes_on_without_its_caller() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = worker(store.clone(), "solo");
    engine
        .register(chain(), slow_b(calls.clone()))
        .expect("register");
    let options = RunOptions {
        transaction_id: Some("dropped".into()),
        ..RunOptions::default()
    };
    // The caller gives up while `b` runs.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), engine.run("chain", options)).await;
    assert!(gave_up.is_err(), "the call was cut short");
    assert_eq!(until_done(&store, "dropped").await, TransactionState::Done);
    let calls = calls.lock().clone();
    assert_eq!(calls.iter().filter(|c| *c == "a").count(), 1);
    assert_eq!(calls.iter().filter(|c| *c == "c").count(), 1);
    // `b` was cancelled with its caller, so it ran again (the same idempotency key).
    assert_eq!(calls.iter().filter(|c| *c == "b").count(), 2);
}

/// The audit's reproduction: two serving workers, the run aborted while its second step runs.
#[tokio::test]
async fn two_serving_workers_finish_a_run_whose_call_was_aborted() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let a = worker(store.clone(), "a");
    let b = worker(store.clone(), "b");
    for engine in [&a, &b] {
        engine
            .register(chain(), slow_b(calls.clone()))
            .expect("register");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for engine in [&a, &b] {
        let mut stopped = stopped.clone();
        tokio::spawn(engine.clone().serve(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    let options = RunOptions {
        transaction_id: Some("aborted".into()),
        ..RunOptions::default()
    };
    let run = tokio::spawn({
        let a = a.clone();
        async move { a.run("chain", options).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    run.abort();
    assert_eq!(until_done(&store, "aborted").await, TransactionState::Done);
    stop.send(true).expect("stop");
}

/// A store whose appends fail while `failing` is set, otherwise the memory store.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    failing: AtomicU32,
}

#[async_trait]
impl TransactionLog for Flaky {
    async fn create(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
    ) -> gorgon_orchestration::Result<u64> {
        self.inner.create(header, lease).await
    }

    async fn append(
        &self,
        key: &TransactionKey,
        epoch: u64,
        records: Vec<Record>,
    ) -> gorgon_orchestration::Result<()> {
        if self.failing.load(Ordering::SeqCst) > 0 {
            self.failing.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Store {
                operation: "append",
                transaction: key.to_string(),
                reason: "injected failure".into(),
            });
        }
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
impl Leases for Flaky {
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
impl Listing for Flaky {
    async fn list(
        &self,
        filter: &TransactionFilter,
    ) -> gorgon_orchestration::Result<TransactionPage> {
        self.inner.list(filter).await
    }

    async fn purge_finished(
        &self,
        purge: &gorgon_orchestration::Purge,
    ) -> gorgon_orchestration::Result<u64> {
        self.inner.purge_finished(purge).await
    }
}

#[tokio::test]
async fn a_worker_takes_over_its_own_transaction_after_a_failed_write() {
    let flaky = Arc::new(Flaky::default());
    let store: Arc<dyn Store> = flaky.clone();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = worker(store.clone(), "alone");
    engine
        .register(chain(), slow_b(calls.clone()))
        .expect("register");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(engine.clone().serve(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let options = RunOptions {
        transaction_id: Some("failed-write".into()),
        payload: Some(Data::json(json!({}))),
        ..RunOptions::default()
    };
    // The run's first append after `a` fails: the call reports it...
    let run = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run("chain", options).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    flaky.failing.store(1, Ordering::SeqCst);
    let outcome = run.await.expect("joins");
    assert!(matches!(outcome, Err(Error::Store { .. })), "{outcome:?}");
    // ...and the transaction is not stranded: this same worker takes it over from its log.
    assert_eq!(
        until_done(&store, "failed-write").await,
        TransactionState::Done
    );
    stop.send(true).expect("stop");
}
