//! The fault test: three serving workers share one store; runs are cancelled at random points by
//! dropping their calls, the store fails a share of its writes, and one worker's clock is off by
//! 30 seconds (ahead in one test, behind in the other). Every run must still end `done`,
//! `reverted` or `failed`, and no step may ever run on two workers at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gorgon_orchestration::store::{StoredTransaction, TransactionHeader};
use gorgon_orchestration::{
    Claim, Clock, Engine, EngineOptions, Error, Flow, FlowDefinition, Lease, MemoryStore, Purge,
    Record, RunOptions, StepCall, StepOutcome, Store, SystemClock, TransactionFilter,
    TransactionKey, TransactionPage, TransactionSummary, WorkerOptions, WorkflowOptions,
};
use gorgon_orchestration::{Leases, Listing, TransactionLog};
use parking_lot::Mutex;

/// The system clock, off by `offset_ms` (a worker whose clock is wrong).
struct Skewed {
    offset_ms: i64,
}

impl Clock for Skewed {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_add_signed(self.offset_ms)
    }
    fn sleep_until(&self, at_ms: u64) -> gorgon_orchestration::clock::Sleep {
        SystemClock.sleep_until(at_ms.saturating_add_signed(-self.offset_ms))
    }
}

/// The memory store, failing one write in `every` (appends, claims, releases, renewals).
struct Faulty {
    inner: MemoryStore,
    every: u64,
    calls: AtomicU64,
    failed: AtomicU64,
}

impl Faulty {
    fn fail(&self, operation: &'static str, key: &str) -> gorgon_orchestration::Result<()> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        // A fixed stride over the calls of every operation: failures land everywhere.
        if n % self.every == self.every / 2 {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Store {
                operation,
                transaction: key.to_string(),
                reason: "injected failure".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl TransactionLog for Faulty {
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
        self.fail("append", &key.id)?;
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
impl Leases for Faulty {
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
        self.fail("claim", &key.id)?;
        self.inner.claim(key, lease).await
    }

    async fn release(
        &self,
        key: &TransactionKey,
        epoch: u64,
        wake_in: Option<u64>,
    ) -> gorgon_orchestration::Result<()> {
        self.fail("release", &key.id)?;
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
        self.fail("renew", "leases")?;
        self.inner.renew(lease, keys).await
    }
}

#[async_trait]
impl Listing for Faulty {
    async fn list(
        &self,
        filter: &TransactionFilter,
    ) -> gorgon_orchestration::Result<TransactionPage> {
        self.inner.list(filter).await
    }

    async fn purge_finished(&self, purge: &Purge) -> gorgon_orchestration::Result<u64> {
        self.inner.purge_finished(purge).await
    }
}

/// The steps running now, by (transaction, action): a second start of one running step is an
/// overlap, the thing that must never happen.
#[derive(Default)]
struct Running {
    now: Mutex<HashSet<(String, String)>>,
    overlaps: AtomicUsize,
    calls: AtomicUsize,
}

/// Removes its step from the running set when the handler ends, or is dropped with its call.
struct Ran(Arc<Running>, (String, String));

impl Drop for Ran {
    fn drop(&mut self) {
        self.0.now.lock().remove(&self.1);
    }
}

fn handler(
    running: Arc<Running>,
) -> impl Fn(StepCall) -> futures::future::BoxFuture<'static, StepOutcome> + Send + Sync + 'static {
    move |call: StepCall| {
        let running = running.clone();
        Box::pin(async move {
            let step = (call.transaction_id().to_string(), call.action().to_string());
            running.calls.fetch_add(1, Ordering::Relaxed);
            if !running.now.lock().insert(step.clone()) {
                running.overlaps.fetch_add(1, Ordering::Relaxed);
            }
            let _ran = Ran(running.clone(), step);
            tokio::time::sleep(Duration::from_millis(3 + u64::from(call.attempt() % 5))).await;
            // Some runs fail for good at their last step, and are compensated.
            if call.action() == "c" && call.transaction_id().ends_with('7') {
                return StepOutcome::permanent("refused");
            }
            StepOutcome::ok(serde_json::json!(call.action()))
        })
    }
}

async fn faults(skew_ms: i64) {
    let store = Arc::new(Faulty {
        inner: MemoryStore::new(),
        every: 11,
        calls: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let running = Arc::new(Running::default());
    let definition = r#"{"next":{"action":"a","next":{"action":"b","next":{"action":"c"}}}}"#;
    let offsets = [0, skew_ms, 0];
    let workers: Vec<Engine> = offsets
        .iter()
        .enumerate()
        .map(|(i, &offset_ms)| {
            let engine = EngineOptions {
                store: store.clone() as Arc<dyn Store>,
                clock: Arc::new(Skewed { offset_ms }),
                worker: WorkerOptions {
                    id: Arc::from(format!("worker-{i}")),
                    lease_ms: 600,
                    poll_ms: 50,
                    claim_batch: 16,
                },
                ..EngineOptions::default()
            }
            .build();
            let flow = Flow::compile(
                "faulty",
                FlowDefinition::from_json(definition).expect("valid"),
                WorkflowOptions::default(),
            )
            .expect("compiles");
            engine
                .register(flow, handler(running.clone()))
                .expect("register");
            engine
        })
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for engine in &workers {
        let mut stopped = stopped.clone();
        tokio::spawn(engine.clone().serve(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    // 120 runs, each on a worker in turn, most cut short after a random time.
    let ids: Vec<String> = (0..120).map(|i| format!("run-{i}")).collect();
    let calls = ids.iter().enumerate().map(|(i, id)| {
        let engine = workers[i % workers.len()].clone();
        let id = id.clone();
        async move {
            let options = RunOptions {
                transaction_id: Some(id),
                ..RunOptions::default()
            };
            let cut = Duration::from_millis([1, 4, 9, 15, 200][i % 5]);
            let _ = tokio::time::timeout(cut, engine.run("faulty", options)).await;
        }
    });
    futures::future::join_all(calls).await;
    // Every run ends, whatever happened to its calls.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut unfinished: Vec<String> = ids.clone();
    while !unfinished.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for id in unfinished {
            let key = TransactionKey::new("faulty", id.as_str());
            let finished = store
                .inner
                .summary(&key)
                .await
                .expect("summary")
                .is_some_and(|s| s.state.is_finished());
            if !finished {
                still.push(id);
            }
        }
        unfinished = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).expect("stop");
    assert!(unfinished.is_empty(), "never ended: {unfinished:?}");
    assert_eq!(
        running.overlaps.load(Ordering::Relaxed),
        0,
        "a step ran on two workers at once"
    );
    assert!(
        store.failed.load(Ordering::Relaxed) > 0,
        "faults were injected"
    );
    println!(
        "skew {skew_ms} ms: {} handler calls for 120 runs, {} injected store failures",
        running.calls.load(Ordering::Relaxed),
        store.failed.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_end_despite_dropped_calls_store_failures_and_a_clock_ahead() {
    faults(30_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_end_despite_dropped_calls_store_failures_and_a_clock_behind() {
    faults(-30_000).await;
}
