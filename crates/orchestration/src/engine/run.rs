//! The engine's operations on one transaction: start, resume, complete a waiting step, retry,
//! cancel, read; and how each ends (the lease given up, the snapshot returned).

use super::*;

impl Engine {
    /// Runs a workflow: begins a new transaction, or resumes the unfinished one with this id,
    /// and advances it until it finishes or waits (for an async step, a retry timer, a resume).
    ///
    /// A finished transaction id is run again as a new run, unless the workflow is
    /// `idempotent`: then the stored result is returned. A start while the same id is being
    /// advanced is refused with [`Error::AlreadyStarted`].
    pub async fn run(&self, workflow: &str, options: RunOptions) -> Result<Execution> {
        let registered = self.registered(workflow)?;
        // One clock read stamps the run id, the creation, the lease and the drive's start (the
        // engine's clock, as everywhere else). A chosen id reads it again after its lookup.
        let started = self.now();
        let run_id = RunId::at(started);
        let (id, chosen): (Arc<str>, bool) = match options.transaction_id {
            Some(id) => {
                check_transaction_id(&id)?;
                (id.into(), true)
            }
            None => (run_id.generated_transaction_id(), false),
        };
        let key = TransactionKey::new(registered.flow.workflow_arc().clone(), id);
        let existing = if chosen {
            self.existing_cell(&key, &registered).await?
        } else {
            None
        };
        if let Some(cell) = existing {
            let already_started = || Error::AlreadyStarted {
                workflow: workflow.to_string(),
                transaction: key.id.to_string(),
            };
            let Ok(mut tx) = cell.tx.try_lock() else {
                return Err(already_started());
            };
            if !tx.has_finished() {
                let going = KeepGoing::new(self, Unfinished::Cell(&cell));
                let result = async {
                    match self.hold(&cell, &mut tx).await {
                        Err(Error::Leased { .. }) => return Err(already_started()),
                        other => other?,
                    }
                    if tx.has_finished() {
                        return Ok(None); // finished meanwhile, by another worker
                    }
                    let driven = self.drive(&cell, &mut tx, true).await;
                    self.settle(&cell, &mut tx, driven).await.map(Some)
                }
                .await;
                going.done();
                if let Some(execution) = result? {
                    return Ok(execution);
                }
            }
            if options
                .idempotent
                .unwrap_or(registered.flow.options().idempotent())
            {
                return Ok(Execution::of(&tx));
            }
        }
        let now = if chosen { self.now() } else { started };
        let payload = options.payload.unwrap_or_else(Data::null);
        let run_id: Arc<str> = Arc::from(run_id.as_str());
        let header = TransactionHeader {
            key: key.clone(),
            run_id: run_id.clone(),
            payload: payload.clone(),
            created_at: now,
            keep: Keep::of(registered.flow.options(), options.idempotent),
        };
        // A generated id cannot be taken, so its creation travels with its first append (one
        // write fewer); a chosen id is created first, so a taken one is refused up front.
        let deferred = !chosen;
        // For a generated id the lease is taken with the first append, after this reading.
        let mut asked = self.lease_asked();
        let epoch = if deferred {
            1
        } else {
            let going = KeepGoing::new(self, Unfinished::Key(&key));
            asked = self.lease_asked();
            let created = self.inner.store.create(&header, Some(&self.lease())).await;
            going.done();
            created?
        };
        let tx = Transaction::new(registered.flow.clone(), key.id.clone(), run_id, payload);
        let cell = Arc::new(Cell::new(
            key.clone(),
            tx,
            registered.handler.clone(),
            epoch,
        ));
        cell.confirmed.store(asked, Ordering::Release);
        if deferred {
            cell.writes.lock().create = Some((header, self.lease()));
        }
        // Nobody else can see the cell yet: the lock is free (and `try_lock` spends none of the
        // task's scheduling budget, which a forced yield would hand to another worker thread).
        let mut tx = cell.tx.try_lock().expect("a new cell is unlocked");
        self.inner.live.lock().insert(key, cell.clone());
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let mut writer = Writer::new(self, &cell);
        let driven = self.drive_with(&mut tx, &mut writer, true, now).await;
        drop(writer);
        let result = self.settle(&cell, &mut tx, driven).await;
        going.done();
        result
    }

    /// Starts a workflow without running it here: the transaction is stored, due at once, and
    /// the first engine whose [`serve`](Self::serve) loop claims it runs it (this one included).
    /// Returns the transaction id.
    pub async fn enqueue(&self, workflow: &str, options: RunOptions) -> Result<String> {
        let registered = self.registered(workflow)?;
        let now = self.now();
        let run_id = RunId::at(now);
        let id: Arc<str> = match options.transaction_id {
            Some(id) => {
                check_transaction_id(&id)?;
                id.into()
            }
            None => run_id.generated_transaction_id(),
        };
        let header = TransactionHeader {
            key: TransactionKey::new(registered.flow.workflow_arc().clone(), id.clone()),
            run_id: Arc::from(run_id.as_str()),
            payload: options.payload.unwrap_or_else(Data::null),
            created_at: now,
            keep: Keep::of(registered.flow.options(), options.idempotent),
        };
        self.inner.store.create(&header, None).await?;
        Ok(id.to_string())
    }

    /// Ends an operation: gives the lease up when the transaction waits (recording when it
    /// wants to wake), drops the cell when a write failed (it is reloaded on next use), and
    /// returns the snapshot or the operation's error.
    pub(super) async fn settle(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        outcome: Result<()>,
    ) -> Result<Execution> {
        let flushed = self.flush(cell).await;
        let outcome = outcome.and(flushed);
        if let Err(error) = outcome {
            if cell.held.swap(false, Ordering::AcqRel) {
                // The copy in memory may be ahead of the store: it goes, and the lease is given
                // up so that any worker (this one too) takes the transaction over from its log
                // at once. Should the release fail as well, the lease lapses: it is no longer
                // renewed.
                let released = self
                    .inner
                    .store
                    .release(&cell.key, cell.epoch(), Some(0))
                    .await;
                if let Err(release) = released {
                    tracing::debug!(transaction = %cell.key, %release, "releasing after a failure failed");
                }
            }
            self.retire(cell);
            return Err(error);
        }
        if tx.has_finished() {
            cell.held.store(false, Ordering::Release);
        } else if cell.held() {
            self.check_liveness(cell, tx);
            cell.held.store(false, Ordering::Release);
            if let Err(error) = self
                .inner
                .store
                .release(
                    &cell.key,
                    cell.epoch(),
                    self.wake_in(tx.wake_at(), self.now()),
                )
                .await
            {
                self.retire(cell);
                return Err(error);
            }
        }
        Ok(Execution::of(tx))
    }

    /// Resumes an unfinished transaction (a retry after `autoRetry: false`, a lost timer).
    pub async fn resume(&self, workflow: &str, transaction: &str) -> Result<Execution> {
        let cell = self.cell(workflow, transaction).await?;
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            let driven = match self.hold(&cell, &mut tx).await {
                Ok(()) => self.drive(&cell, &mut tx, true).await,
                Err(error) => return Err(error),
            };
            self.settle(&cell, &mut tx, driven).await
        }
        .await;
        going.done();
        result
    }

    /// Drives on a transaction whose call was dropped mid-way (see [`KeepGoing`]).
    pub(super) async fn keep_going(&self, cell: Arc<Cell>) {
        let mut tx = cell.tx.lock().await;
        // Back in memory (the call may have let it go), so that its lease is renewed.
        let live = self
            .inner
            .live
            .lock()
            .entry(cell.key.clone())
            .or_insert_with(|| cell.clone())
            .clone();
        if !Arc::ptr_eq(&live, &cell) {
            return; // another copy is being advanced
        }
        let driven = match self.hold(&cell, &mut tx).await {
            Ok(()) => self.drive(&cell, &mut tx, true).await,
            // Another worker has it, or it is gone: nothing to keep going.
            Err(Error::Leased { .. } | Error::TransactionNotFound { .. }) => return,
            Err(error) => Err(error),
        };
        if let Err(error) = self.settle(&cell, &mut tx, driven).await {
            tracing::warn!(transaction = %cell.key, %error, "going on after a dropped call failed");
        }
    }

    /// Completes a waiting (async) step's handler with a response, then advances.
    pub async fn set_step_success(
        &self,
        key: &IdempotencyKey,
        response: Option<Data>,
    ) -> Result<Execution> {
        let (cell, step) = self.cell_and_step(key).await?;
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            self.hold(&cell, &mut tx).await?;
            let mut writer = Writer::new(self, &cell);
            let driven = match tx.register_success(step, key.handler, response, writer.actions()) {
                Ok(()) => {
                    self.drive_with(&mut tx, &mut writer, false, self.now())
                        .await
                }
                Err(error) => Err(error),
            };
            self.settle_unless_refused(&cell, &mut tx, driven).await
        }
        .await;
        going.done();
        result
    }

    /// Fails a waiting (async) step's handler (retried while retries remain, unless
    /// `force_permanent`), then advances.
    pub async fn set_step_failure(
        &self,
        key: &IdempotencyKey,
        error: StepError,
        force_permanent: bool,
    ) -> Result<Execution> {
        let (cell, step) = self.cell_and_step(key).await?;
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            self.hold(&cell, &mut tx).await?;
            let now = self.now();
            let mut writer = Writer::new(self, &cell);
            let registered = tx.register_failure(
                step,
                key.handler,
                error,
                force_permanent,
                now,
                writer.actions(),
            );
            let driven = match registered {
                Ok(()) => self.drive_with(&mut tx, &mut writer, false, now).await,
                Err(error) => Err(error),
            };
            self.settle_unless_refused(&cell, &mut tx, driven).await
        }
        .await;
        going.done();
        result
    }

    /// Invokes a waiting step's handler again (a lost async response).
    pub async fn retry_step(&self, key: &IdempotencyKey) -> Result<Execution> {
        let (cell, step) = self.cell_and_step(key).await?;
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            self.hold(&cell, &mut tx).await?;
            let now = self.now();
            let mut writer = Writer::new(self, &cell);
            let applied = match tx.retry_step(step, key.handler, now, writer.actions()) {
                Ok(()) => writer.finish(&mut tx).await,
                Err(error) => Err(error),
            };
            self.settle_unless_refused(&cell, &mut tx, applied).await
        }
        .await;
        going.done();
        result
    }

    /// Cancels a transaction, running or finished: what was done is compensated.
    pub async fn cancel(&self, workflow: &str, transaction: &str) -> Result<Execution> {
        let cell = self.cell(workflow, transaction).await?;
        let going = KeepGoing::new(self, Unfinished::Cell(&cell));
        let result = async {
            let mut tx = cell.tx.lock().await;
            self.hold(&cell, &mut tx).await?;
            let now = self.now();
            let driven = match tx.cancel(now) {
                Ok(()) => self.drive(&cell, &mut tx, false).await,
                Err(error) => Err(error),
            };
            self.settle_unless_refused(&cell, &mut tx, driven).await
        }
        .await;
        going.done();
        result
    }

    /// [`settle`](Self::settle), except that an operation the machine refused (nothing was
    /// changed, so nothing needs reloading) keeps the cell.
    pub(super) async fn settle_unless_refused(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        outcome: Result<()>,
    ) -> Result<Execution> {
        match outcome {
            Err(error) if !error.is_store_failure() => {
                self.settle(cell, tx, Ok(())).await?;
                Err(error)
            }
            other => self.settle(cell, tx, other).await,
        }
    }

    /// A snapshot of a transaction: the copy this engine is advancing (the stored copy while
    /// one of its steps runs, rather than waiting for the step), else the stored one.
    pub async fn get(&self, workflow: &str, transaction: &str) -> Result<Execution> {
        let registered = self.registered(workflow)?;
        check_transaction_id(transaction)?;
        let key = TransactionKey::new(registered.flow.workflow_arc().clone(), transaction);
        let live = self.inner.live.lock().get(&key).cloned();
        let mut stored = None;
        if let Some(cell) = live {
            // The copy this engine advances is the newest; any other (a plain load, or one
            // whose lease another worker may have taken since) can be stale: read the store.
            // While it is being advanced (a handler may run for minutes), an observer reads
            // the store's copy, which has every step up to the running one, rather than wait;
            // a store that has nothing yet (the memory store defers its writes) is waited for.
            let tx = match cell.tx.try_lock() {
                Ok(tx) => Some(tx),
                Err(_) => {
                    stored = self.inner.store.load(&key).await?;
                    match stored {
                        Some(_) => None,
                        None => Some(cell.tx.lock().await),
                    }
                }
            };
            if let Some(tx) = tx
                && cell.held()
            {
                return Ok(Execution::of(&tx));
            }
        }
        let not_found = || Error::TransactionNotFound {
            workflow: workflow.to_string(),
            transaction: transaction.to_string(),
        };
        let stored = match stored {
            Some(stored) => stored,
            None => self.inner.store.load(&key).await?.ok_or_else(not_found)?,
        };
        Ok(Execution::of(&replay(
            registered.flow.clone(),
            &key,
            &stored,
        )?))
    }

    /// Whether nothing is running for a transaction: no handler, no armed timer, no advance in
    /// progress. A finished or unknown transaction is quiet.
    pub fn is_quiet(&self, workflow: &str, transaction: &str) -> bool {
        let key = TransactionKey::new(workflow, transaction);
        let live = self.inner.live.lock().get(&key).cloned();
        match live {
            None => true,
            Some(cell) => cell.activity.load(Ordering::SeqCst) == 0 && cell.tx.try_lock().is_ok(),
        }
    }

    pub(super) async fn cell(&self, workflow: &str, transaction: &str) -> Result<Arc<Cell>> {
        let registered = self.registered(workflow)?;
        check_transaction_id(transaction)?;
        let key = TransactionKey::new(registered.flow.workflow_arc().clone(), transaction);
        self.existing_cell(&key, &registered)
            .await?
            .ok_or_else(|| Error::TransactionNotFound {
                workflow: workflow.to_string(),
                transaction: transaction.to_string(),
            })
    }

    pub(super) async fn cell_and_step(
        &self,
        key: &IdempotencyKey,
    ) -> Result<(Arc<Cell>, StepIndex)> {
        let cell = self.cell(&key.workflow, &key.transaction).await?;
        let registered = self.registered(&key.workflow)?;
        let step = registered
            .flow
            .step_index(&key.action)
            .ok_or_else(|| Error::UnknownStep {
                workflow: key.workflow.to_string(),
                action: key.action.to_string(),
            })?;
        Ok((cell, step))
    }

    /// The live cell of a transaction, loading it from the store when it is not in memory.
    pub(super) async fn existing_cell(
        &self,
        key: &TransactionKey,
        registered: &Arc<Registered>,
    ) -> Result<Option<Arc<Cell>>> {
        if let Some(cell) = self.inner.live.lock().get(key) {
            return Ok(Some(cell.clone()));
        }
        let Some(stored) = self.inner.store.load(key).await? else {
            return Ok(None);
        };
        let tx = replay(registered.flow.clone(), key, &stored)?;
        // Epoch 0: a plain load; the first claim reloads it under the lease.
        let cell = Arc::new(Cell::new(key.clone(), tx, registered.handler.clone(), 0));
        let mut live = self.inner.live.lock();
        Ok(Some(live.entry(key.clone()).or_insert(cell).clone()))
    }
}
