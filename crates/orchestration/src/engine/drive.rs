//! Driving a transaction: rounds of handler calls, and the records, timers and events the
//! machine asks for along the way.

use super::*;

impl Engine {
    /// Advances a transaction until it finishes or waits. `announce` emits begin/resume.
    pub(super) async fn drive(
        &self,
        cell: &Arc<Cell>,
        tx: &mut Transaction,
        announce: bool,
    ) -> Result<()> {
        let mut writer = Writer::new(self, cell);
        self.drive_with(tx, &mut writer, announce, self.now()).await
    }

    /// [`drive`](Self::drive) from `now` (a clock reading the caller has just taken), with the
    /// writer of the operation, which may already hold what the machine asked for.
    pub(super) async fn drive_with(
        &self,
        tx: &mut Transaction,
        writer: &mut Writer<'_>,
        announce: bool,
        mut now: u64,
    ) -> Result<()> {
        // The clock is read when the drive starts and when a handler returns; a round is planned
        // at the time its predecessor's last handler returned.
        let cell = writer.cell();
        if announce && !tx.begin_or_resume(now, writer.actions()) {
            return Ok(());
        }
        loop {
            // What the last round's outcomes changed goes with what this round prepares: one
            // batch per step boundary.
            writer.listen();
            let (round, out) = writer.round_and_actions();
            if tx.next_round(now, round, out) == Next::Finished {
                writer.finish(tx).await?;
                self.retire(cell);
                return Ok(());
            }
            writer.boundary(tx).await?;
            if !self.is_volatile() && !writer.round().calls().is_empty() {
                self.ensure_lease(cell).await?;
            }
            let round = writer.round();
            let sync_count = round.calls().iter().filter(|c| !c.is_async).count();
            if sync_count == 1 {
                let only = *round
                    .calls()
                    .iter()
                    .find(|c| !c.is_async)
                    .expect("one sync call");
                let mut call = cell.handler.call(StepCall {
                    shared: tx.shared().clone(),
                    dispatch: only,
                });
                let outcome = match poll_once(call.as_mut()).await {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => {
                        // The handler waits: what waits is written before time passes.
                        writer.before_wait(tx).await?;
                        let outcome = call.await;
                        writer.listen();
                        outcome
                    }
                };
                now = self.now();
                let (round, out) = writer.round_and_actions();
                tx.complete(only, outcome, round.steps(), now, out);
            } else if sync_count > 1 {
                now = self.run_concurrently(tx, writer).await?;
            }
            if writer.round().calls().iter().any(|c| c.is_async) {
                // A handler about to run elsewhere: the stretch ends here.
                writer.before_wait(tx).await?;
                let round = writer.round();
                let round_steps: Arc<[StepIndex]> = round.steps().into();
                for &dispatch in round.calls().iter().filter(|c| c.is_async) {
                    self.spawn_async(cell, tx, dispatch, round_steps.clone());
                }
            }
            if !writer.round().continue_after() {
                return writer.finish(tx).await;
            }
        }
    }

    /// Whether an event would reach anyone: a subscriber or the relay.
    #[inline]
    pub(super) fn events_wanted(&self) -> bool {
        (self.inner.subscribed.load(Ordering::Acquire) && self.inner.events.receiver_count() > 0)
            || self.inner.relay.is_some()
    }

    /// Runs the sync calls of the writer's round concurrently, recording each outcome as it
    /// arrives. Returns the time the last one was recorded at. Records that wait are appended
    /// before the first wait.
    pub(super) async fn run_concurrently(
        &self,
        tx: &mut Transaction,
        writer: &mut Writer<'_>,
    ) -> Result<u64> {
        // The handler's own boxed futures, borrowing the cell's handler: no second box and no
        // clone of the handler's `Arc` (shared by every transaction of the workflow) per call.
        type Call<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = StepOutcome> + Send + 'a>>;
        let cell = writer.cell();
        let handler = &cell.handler;
        let calls = writer.round().calls();
        let mut running: Vec<(Dispatch, Option<Call<'_>>)> = Vec::with_capacity(calls.len());
        running.extend(calls.iter().filter(|c| !c.is_async).map(|&dispatch| {
            let call = StepCall {
                shared: tx.shared().clone(),
                dispatch,
            };
            (dispatch, Some(handler.call(call)))
        }));
        let mut pending = running.len();
        if pending == 0 {
            return Ok(self.now());
        }
        // Read when outcomes arrive (the loop runs at least once).
        let mut now = 0;
        let mut ready: Vec<(Dispatch, StepOutcome)> = Vec::with_capacity(pending);
        while pending > 0 {
            // Polls every unfinished call (a round is narrow) and takes every one that is done:
            // outcomes that arrive together are recorded in one append.
            let waits = writer.holds();
            std::future::poll_fn(|cx| {
                for (dispatch, slot) in running.iter_mut() {
                    if let Some(future) = slot
                        && let Poll::Ready(outcome) = future.as_mut().poll(cx)
                    {
                        *slot = None;
                        ready.push((*dispatch, outcome));
                    }
                }
                // With records waiting, nothing ready means the stretch ends: they are
                // written before waiting (the calls are polled again then).
                if ready.is_empty() && !waits {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            if ready.is_empty() {
                writer.before_wait(tx).await?;
                continue;
            }
            if !waits {
                // Time may have passed (someone may have subscribed) since the round began.
                writer.listen();
            }
            pending -= ready.len();
            now = self.now();
            let (round, out) = writer.round_and_actions();
            for (dispatch, outcome) in ready.drain(..) {
                tx.complete(dispatch, outcome, round.steps(), now, out);
            }
            if pending > 0 {
                // The last outcomes are written with the next round's records.
                writer.progress(tx).await?;
            }
        }
        Ok(now)
    }

    pub(super) fn spawn_async(
        &self,
        cell: &Arc<Cell>,
        tx: &Transaction,
        dispatch: Dispatch,
        steps: Arc<[StepIndex]>,
    ) {
        let guard = ActivityGuard::new(cell);
        let engine = self.clone();
        let call = StepCall {
            shared: tx.shared().clone(),
            dispatch,
        };
        cell.async_running.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let cell = guard.0.clone();
            let outcome = cell.handler.call(call).await;
            cell.async_running.fetch_sub(1, Ordering::SeqCst);
            let mut tx = cell.tx.lock().await;
            let recorded = match engine.hold(&cell, &mut tx).await {
                // The step may have moved on meanwhile (a timeout, a takeover): then the
                // outcome is stale and dropped.
                Ok(()) if still_waiting(&tx, dispatch) => {
                    let mut writer = Writer::new(&engine, &cell);
                    tx.complete(dispatch, outcome, &steps, engine.now(), writer.actions());
                    writer.finish(&mut tx).await
                }
                Ok(()) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = engine.settle(&cell, &mut tx, recorded).await {
                tracing::error!(transaction = %cell.key, %error, "recording an async step's outcome failed");
            }
            drop(guard);
        });
    }

    /// Queues records behind the transaction's append in flight (pipelined stores): at most
    /// one append per transaction is in flight, so its log stays in order, and what queues
    /// meanwhile goes in the next one. A failed append stops the writes; [`flush`](Self::flush)
    /// reports it.
    pub(super) fn write_behind(&self, cell: &Arc<Cell>, records: Vec<Record>) -> Result<()> {
        let mut queue = cell.writes.lock();
        if let Some(error) = queue.error.take() {
            return Err(error);
        }
        if queue.queued.is_empty() {
            queue.queued = records;
        } else {
            queue.queued.extend(records);
        }
        if !queue.running {
            queue.running = true;
            let store = self.inner.store.clone();
            let cell = cell.clone();
            tokio::spawn(async move {
                loop {
                    let (create, records) = {
                        let mut queue = cell.writes.lock();
                        if queue.queued.is_empty() || queue.error.is_some() {
                            queue.queued.clear();
                            queue.running = false;
                            drop(queue);
                            cell.written.notify_waiters();
                            return;
                        }
                        (queue.create.take(), std::mem::take(&mut queue.queued))
                    };
                    let written = match create {
                        Some((header, lease)) => store
                            .create_and_append(&header, Some(&lease), records)
                            .await
                            .map(drop),
                        None => store.append(&cell.key, cell.epoch(), records).await,
                    };
                    if let Err(error) = written {
                        cell.writes.lock().error = Some(error);
                    }
                }
            });
        }
        Ok(())
    }

    /// Waits until every record queued for the transaction is durable (pipelined stores).
    pub(super) async fn flush(&self, cell: &Arc<Cell>) -> Result<()> {
        if self.inner.writes != WritePolicy::Pipelined {
            return Ok(());
        }
        loop {
            let written = cell.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            {
                let mut queue = cell.writes.lock();
                if !queue.running {
                    return match queue.error.take() {
                        Some(error) => Err(error),
                        None => Ok(()),
                    };
                }
            }
            written.await;
        }
    }

    pub(super) fn retire(&self, cell: &Arc<Cell>) {
        let mut live = self.inner.live.lock();
        // Usually the entry is this cell: one lookup removes it; another cell is put back.
        if let Some(other) = live.remove(&cell.key)
            && !Arc::ptr_eq(&other, cell)
        {
            live.insert(cell.key.clone(), other);
        }
    }

    pub(super) fn arm(&self, cell: &Arc<Cell>, timer: Timer, at: u64) {
        let id = self.inner.timer_ids.fetch_add(1, Ordering::Relaxed);
        let guard = ActivityGuard::new(cell);
        let engine = self.clone();
        let sleep = self.inner.clock.sleep_until(at);
        // The map lock is held across the spawn so the task cannot look itself up before it is in.
        let mut timers = cell.timers.lock();
        let handle = tokio::spawn(async move {
            sleep.await;
            let cell = guard.0.clone();
            // The transaction first: while this task waits for it, its timer is still in the
            // map (armed), and a disarm made meanwhile aborts the task right here.
            let mut tx = cell.tx.lock().await;
            let mine = {
                let mut timers = cell.timers.lock();
                if timers.get(&timer).is_some_and(|(owner, _)| *owner == id) {
                    timers.remove(&timer);
                    true
                } else {
                    false
                }
            };
            if mine {
                let fired = match engine.hold(&cell, &mut tx).await {
                    Ok(()) => {
                        let now = engine.now();
                        let mut writer = Writer::new(&engine, &cell);
                        if tx.timer_fired(timer, now, writer.actions()) {
                            engine.drive_with(&mut tx, &mut writer, true, now).await
                        } else {
                            // Early (armed again), or disarmed meanwhile.
                            writer.finish(&mut tx).await
                        }
                    }
                    // Another worker has the transaction and its timers.
                    Err(Error::Leased { .. }) => {
                        drop(tx);
                        drop(guard);
                        return;
                    }
                    Err(error) => Err(error),
                };
                if let Err(error) = engine.settle(&cell, &mut tx, fired).await {
                    tracing::error!(transaction = %cell.key, %error, "resuming after a timer failed");
                }
            }
            drop(tx);
            drop(guard);
        });
        if let Some((_, old)) = timers.insert(timer, (id, handle.abort_handle())) {
            old.abort();
        }
    }

    /// Arms the transaction's timers that this engine has not armed (a copy that another
    /// worker advanced, a timer task that found the lease taken).
    pub(super) fn arm_missing(&self, cell: &Arc<Cell>, tx: &Transaction) {
        for &(timer, at) in tx.timers() {
            if !cell.timers.lock().contains_key(&timer) {
                self.arm(cell, timer, at);
            }
        }
    }

    /// Checks, in debug builds, what the engine promises of a transaction it lets go unfinished:
    /// a running handler, an armed timer, or an outside completion with no timeout configured
    /// (see [`Transaction::stall`]); and every timer the transaction records is armed here.
    pub(super) fn check_liveness(&self, cell: &Arc<Cell>, tx: &Transaction) {
        if !cfg!(debug_assertions) || tx.has_finished() {
            return;
        }
        if let Some(stall) = tx.stall() {
            panic!(
                "transaction {} may stall: {stall} (timers {:?})",
                cell.key,
                tx.timers()
            );
        }
        let armed = cell.timers.lock();
        for (timer, _) in tx.timers() {
            assert!(
                armed.contains_key(timer),
                "transaction {} records the timer {timer:?}, which no task sleeps on",
                cell.key
            );
        }
        drop(armed);
        let sync_waiting = (1..tx.flow().steps().len()).find(|&step| {
            let run = tx.step(step);
            run.side().status == crate::state::StepStatus::Waiting
                && !tx
                    .flow()
                    .step(step)
                    .options
                    .is_async_side(run.handler_type())
        });
        if let Some(step) = sync_waiting {
            panic!(
                "transaction {} lets go of step `{}` waiting for a synchronous handler that no \
                 longer runs",
                cell.key,
                tx.flow().step(step).action
            );
        }
    }
}
