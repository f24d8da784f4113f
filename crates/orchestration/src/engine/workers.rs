//! Sharing a store with other engines: the worker loop, leases, claims and takeovers.

use super::*;

impl Engine {
    /// The worker loop: until `shutdown` completes, renews the leases this engine holds and
    /// takes over the transactions that are due (see [`WorkerOptions`]). Run it on every engine
    /// that shares a durable store with others, or that must pick up work after a restart:
    /// `tokio::spawn(engine.clone().serve(shutdown))`.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let worker = self.inner.worker.clone();
        let poll = std::time::Duration::from_millis(worker.poll_ms.clamp(1, worker.lease_ms / 3));
        tokio::pin!(shutdown);
        loop {
            // Only the transactions this engine is advancing: one it let go of without a
            // release (a failed write) lapses, and is taken over (by this engine too).
            let held: Vec<TransactionKey> = self
                .inner
                .live
                .lock()
                .values()
                .filter(|cell| cell.held())
                .map(|cell| cell.key.clone())
                .collect();
            if !held.is_empty() {
                let asked = self.inner.lease_clock.now();
                match self.inner.store.renew(&self.lease(), &held).await {
                    Ok(_) => self.confirm_leases(&held, asked),
                    Err(error) => {
                        tracing::warn!(worker = %worker.id, %error, "renewing leases failed");
                    }
                }
            }
            self.take_over_due().await;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One poll of [`serve`](Self::serve): claims due transactions and advances each in a task
    /// of its own. Returns how many were claimed.
    pub async fn take_over_due(&self) -> usize {
        let workflows: Vec<Arc<str>> = self.inner.workflows.read().keys().cloned().collect();
        if workflows.is_empty() {
            return 0;
        }
        let worker = &self.inner.worker;
        let asked = self.lease_asked();
        let claimed = match self
            .inner
            .store
            .claim_due(&workflows, &self.lease(), worker.claim_batch)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(worker = %worker.id, %error, "claiming due transactions failed");
                return 0;
            }
        };
        let count = claimed.len();
        for (key, epoch) in claimed {
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(error) = engine.take_over(&key, epoch, asked).await {
                    tracing::warn!(transaction = %key, %error, "taking a transaction over failed");
                }
            });
        }
        count
    }

    /// Advances a transaction this engine has just claimed at `epoch`.
    pub(super) async fn take_over(
        &self,
        key: &TransactionKey,
        epoch: u64,
        asked: u64,
    ) -> Result<Execution> {
        let registered = self.registered(&key.workflow)?;
        let live = self.inner.live.lock().get(key).cloned();
        let (cell, loaded) = match live {
            Some(cell) => (cell, false),
            None => self.load_claimed(key, &registered, epoch).await?,
        };
        let mut tx = cell.tx.lock().await;
        cell.confirmed.fetch_max(asked, Ordering::AcqRel);
        let adopted = if loaded {
            // Loaded after the claim, so current at `epoch`: only its timers are left to arm.
            for (timer, at) in tx.timers().to_vec() {
                self.arm(&cell, timer, at);
            }
            Ok(())
        } else {
            self.adopt(&cell, &mut tx, epoch).await
        };
        let driven = match adopted {
            Ok(()) => self.drive(&cell, &mut tx, true).await,
            Err(error) => Err(error),
        };
        self.settle(&cell, &mut tx, driven).await
    }

    /// The cell of a transaction this engine claimed at `epoch` and does not have in memory,
    /// from one load: handlers that were running when its last owner died are made ready to
    /// run again. Returns whether the cell is that fresh load (`false`: another task put a
    /// cell in memory meanwhile, which is returned instead and must be adopted).
    pub(super) async fn load_claimed(
        &self,
        key: &TransactionKey,
        registered: &Arc<Registered>,
        epoch: u64,
    ) -> Result<(Arc<Cell>, bool)> {
        let stored =
            self.inner
                .store
                .load(key)
                .await?
                .ok_or_else(|| Error::TransactionNotFound {
                    workflow: key.workflow.to_string(),
                    transaction: key.id.to_string(),
                })?;
        let mut tx = replay(registered.flow.clone(), key, &stored)?;
        let reset = tx.recover_in_flight(true);
        if reset > 0 {
            tracing::info!(transaction = %key, handlers = reset, epoch, "taking over: handlers in flight will run again");
        }
        let fresh = Arc::new(Cell::new(
            key.clone(),
            tx,
            registered.handler.clone(),
            epoch,
        ));
        let mut live = self.inner.live.lock();
        let cell = live.entry(key.clone()).or_insert_with(|| fresh.clone());
        let loaded = Arc::ptr_eq(cell, &fresh);
        Ok((cell.clone(), loaded))
    }

    /// The lease clock's reading before asking the store for a lease (zero with a volatile
    /// store, whose leases are never checked).
    pub(super) fn lease_asked(&self) -> u64 {
        if self.is_volatile() {
            0
        } else {
            self.inner.lease_clock.now()
        }
    }

    /// The lease this engine takes: its worker id, for `lease_ms` of the store's time.
    pub(super) fn lease(&self) -> Lease {
        Lease {
            owner: self.inner.worker.id.clone(),
            ms: self.inner.worker.lease_ms,
        }
    }

    /// When a transaction released at `now` with its earliest timer at `wake_at` is due again,
    /// from now: at that timer, plus one poll, so that a timer still armed in some engine's
    /// memory fires first and only a forgotten one is taken over by `serve`.
    pub(super) fn wake_in(&self, wake_at: Option<u64>, now: u64) -> Option<u64> {
        wake_at.map(|at| {
            at.saturating_sub(now)
                .saturating_add(self.inner.worker.poll_ms)
        })
    }

    /// Notes that the store confirmed these transactions' leases to this engine as asked at
    /// `asked` (the lease clock's reading before the request).
    pub(super) fn confirm_leases(&self, keys: &[TransactionKey], asked: u64) {
        let live = self.inner.live.lock();
        for key in keys {
            if let Some(cell) = live.get(key) {
                cell.confirmed.fetch_max(asked, Ordering::AcqRel);
            }
        }
    }

    /// Before handlers start: with a durable store, makes sure the transaction's lease still
    /// runs. A lease confirmed more than a third of its length ago is renewed here; one that
    /// cannot be renewed and may have lapsed (or that another worker took) stops the drive, so
    /// that no step runs on two workers at once.
    pub(super) async fn ensure_lease(&self, cell: &Arc<Cell>) -> Result<()> {
        if self.is_volatile() {
            return Ok(());
        }
        let lease_ms = self.inner.worker.lease_ms;
        let asked = self.inner.lease_clock.now();
        let age = asked.saturating_sub(cell.confirmed.load(Ordering::Acquire));
        if age < lease_ms / 3 {
            return Ok(());
        }
        let lost = || Error::Leased {
            workflow: cell.key.workflow.to_string(),
            transaction: cell.key.id.to_string(),
            owner: "(lease lapsed)".to_string(),
        };
        match self
            .inner
            .store
            .renew(&self.lease(), std::slice::from_ref(&cell.key))
            .await
        {
            Ok(1) => {
                cell.confirmed.fetch_max(asked, Ordering::AcqRel);
                Ok(())
            }
            Ok(_) => Err(lost()),
            Err(error) if age >= lease_ms => {
                tracing::warn!(transaction = %cell.key, %error, "the lease may have lapsed and cannot be renewed: stopping");
                Err(lost())
            }
            Err(error) => {
                tracing::warn!(transaction = %cell.key, %error, "renewing a lease failed; trying again before the next step");
                Ok(())
            }
        }
    }

    /// Makes sure this engine holds the transaction's lease before it writes: claims it (an
    /// error when another worker's lease runs) and, when someone else wrote since this copy was
    /// taken, reloads it.
    pub(super) async fn hold(&self, cell: &Arc<Cell>, tx: &mut Transaction) -> Result<()> {
        if cell.held() {
            return Ok(());
        }
        self.claim_into(cell, tx).await
    }

    /// Whether the store's records live no longer than the process: no other engine can
    /// share them, so leases are never checked.
    pub(super) fn is_volatile(&self) -> bool {
        self.inner.writes == WritePolicy::Deferred
    }

    /// [`hold`](Self::hold) when the lease is not held: claims it and adopts the transaction.
    pub(super) async fn claim_into(&self, cell: &Arc<Cell>, tx: &mut Transaction) -> Result<()> {
        let asked = self.lease_asked();
        match self.inner.store.claim(&cell.key, &self.lease()).await? {
            Claim::Granted { epoch } => {
                cell.confirmed.fetch_max(asked, Ordering::AcqRel);
                self.adopt(cell, tx, epoch).await
            }
            Claim::Leased { owner } => Err(Error::Leased {
                workflow: cell.key.workflow.to_string(),
                transaction: cell.key.id.to_string(),
                owner,
            }),
            Claim::NotFound => {
                self.retire(cell);
                Err(Error::TransactionNotFound {
                    workflow: cell.key.workflow.to_string(),
                    transaction: cell.key.id.to_string(),
                })
            }
        }
    }

    /// Takes a claimed lease at `epoch` into the cell. Unless the claim shows that no one else
    /// wrote since this engine last held the lease, the transaction is reloaded from the store,
    /// handlers that were running when its last owner died are made ready to run again, and
    /// its timers are armed here.
    pub(super) async fn adopt(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        epoch: u64,
    ) -> Result<()> {
        let last = cell.epoch();
        let current = last > 0 && (epoch == last || epoch == last + 1);
        if !current {
            let stored = self.inner.store.load(&cell.key).await?.ok_or_else(|| {
                Error::TransactionNotFound {
                    workflow: cell.key.workflow.to_string(),
                    transaction: cell.key.id.to_string(),
                }
            })?;
            let mut fresh = replay(tx.shared().flow.clone(), &cell.key, &stored)?;
            // No synchronous handler runs now (they run under the lock this caller holds);
            // background ones may, in this process's tasks.
            let background = cell.async_running.load(Ordering::SeqCst) == 0;
            let reset = fresh.recover_in_flight(background);
            if reset > 0 {
                tracing::info!(transaction = %cell.key, handlers = reset, epoch, "taking over: handlers in flight will run again");
            }
            *tx = fresh;
            for (timer, at) in tx.timers().to_vec() {
                self.arm(cell, timer, at);
            }
        } else {
            self.arm_missing(cell, tx);
        }
        cell.epoch.store(epoch, Ordering::Release);
        cell.held.store(true, Ordering::Release);
        Ok(())
    }
}
