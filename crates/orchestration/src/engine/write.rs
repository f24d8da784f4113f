//! The engine's write policy: when a transaction's records are appended, chosen once from the
//! store's [`WriteMode`](crate::store::WriteMode), and what follows an append (timers armed or
//! disarmed, events published).
//!
//! Every operation on a transaction feeds the machine through a [`Writer`], whose [`Actions`]
//! collect what the machine asks for. The drive calls three hooks:
//!
//! - [`boundary`](Writer::boundary) at each step boundary: appends the batch, except under
//!   [`WritePolicy::Deferred`], where a batch that nobody could observe (no timer to arm, no
//!   one listening for events) waits for the next one;
//! - [`before_wait`](Writer::before_wait) before time passes (a handler pending, an async call
//!   fired): appends what waits;
//! - [`finish`](Writer::finish) when the operation ends: appends the rest.
//!
//! Under [`WritePolicy::Pipelined`] an append is queued behind the one in flight (one per
//! transaction at a time, so its log stays in order) and the operation returns only once all
//! of its records are durable ([`Engine::flush`]).

use std::cell::RefCell;

use super::*;
use crate::machine::{Actions, Round, TimerAction};
use crate::store::WriteMode;

/// When the engine appends a transaction's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WritePolicy {
    /// At every step boundary, durable before the transaction goes on.
    EveryStep,
    /// At every step boundary, queued behind the append in flight.
    Pipelined,
    /// At the end of a stretch the transaction runs without waiting (a volatile store: no
    /// crash can find a checkpoint in between).
    Deferred,
}

impl WritePolicy {
    /// The policy for a store that writes this way.
    pub(super) fn of(mode: WriteMode) -> Self {
        match mode {
            WriteMode::Durable => WritePolicy::EveryStep,
            WriteMode::Pipelined => WritePolicy::Pipelined,
            WriteMode::Volatile => WritePolicy::Deferred,
        }
    }
}

/// The buffers a writer fills: the round's calls and the machine's actions.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) round: Round,
    pub(super) out: Actions,
}

thread_local! {
    /// Buffers of finished writers, for the next one on this thread.
    static SCRATCH: RefCell<Vec<Scratch>> = const { RefCell::new(Vec::new()) };
}

/// Writes one operation's records, timers and events for one transaction (see the module doc).
pub(super) struct Writer<'a> {
    engine: &'a Engine,
    cell: &'a Arc<Cell>,
    scratch: Scratch,
    /// Whether records wait in the actions for a later append.
    held: bool,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.out.clear();
        let _ = SCRATCH.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < 8 {
                pool.push(scratch);
            }
        });
    }
}

impl<'a> Writer<'a> {
    /// A writer for an operation on `cell`'s transaction.
    pub(super) fn new(engine: &'a Engine, cell: &'a Arc<Cell>) -> Self {
        let mut scratch = SCRATCH
            .try_with(|pool| pool.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        scratch.out.events_wanted = engine.events_wanted();
        Writer {
            engine,
            cell,
            scratch,
            held: false,
        }
    }

    /// Where the machine writes what it asks for.
    pub(super) fn actions(&mut self) -> &mut Actions {
        &mut self.scratch.out
    }

    /// The round buffer and the actions: for planning a round, and for recording its outcomes.
    pub(super) fn round_and_actions(&mut self) -> (&mut Round, &mut Actions) {
        (&mut self.scratch.round, &mut self.scratch.out)
    }

    /// The transaction's cell.
    pub(super) fn cell(&self) -> &'a Arc<Cell> {
        self.cell
    }

    /// The round last planned.
    pub(super) fn round(&self) -> &Round {
        &self.scratch.round
    }

    /// Whether records wait for a later append.
    pub(super) fn holds(&self) -> bool {
        self.held
    }

    /// Asks the machine for events only while someone would receive them (asked again after
    /// each wait: someone may have subscribed).
    pub(super) fn listen(&mut self) {
        self.scratch.out.events_wanted = self.engine.events_wanted();
    }

    /// A step boundary: appends the batch, or under the deferred policy lets a batch nobody
    /// could observe wait for the next.
    pub(super) async fn boundary(&mut self, tx: &mut Transaction) -> Result<()> {
        let out = &mut self.scratch.out;
        if self.engine.inner.writes == WritePolicy::Deferred
            && !out.events_wanted
            && out.timers.is_empty()
        {
            out.events.clear();
            self.held = true;
            return Ok(());
        }
        self.write(tx).await
    }

    /// Time is about to pass: appends what waits.
    pub(super) async fn before_wait(&mut self, tx: &mut Transaction) -> Result<()> {
        if self.held {
            self.write(tx).await?;
        }
        Ok(())
    }

    /// Outcomes arrived while other calls of the round still run: appended now unless records
    /// wait for the end of the stretch anyway.
    pub(super) async fn progress(&mut self, tx: &mut Transaction) -> Result<()> {
        if !self.held {
            self.write(tx).await?;
        }
        Ok(())
    }

    /// The operation ends: appends everything.
    pub(super) async fn finish(&mut self, tx: &mut Transaction) -> Result<()> {
        self.write(tx).await
    }

    /// Ends the batch and appends it, then arms and disarms timers and publishes events (they
    /// follow what is durable). After a failed append nothing else is done; the caller sees
    /// the error.
    async fn write(&mut self, tx: &mut Transaction) -> Result<()> {
        self.held = false;
        let engine = self.engine;
        let cell = self.cell;
        let out = &mut self.scratch.out;
        tx.end_batch(out);
        let mut result = Ok(());
        if !out.records.is_empty() {
            result = match engine.inner.writes {
                WritePolicy::Pipelined => {
                    engine.write_behind(cell, std::mem::take(&mut out.records))
                }
                WritePolicy::EveryStep | WritePolicy::Deferred => {
                    // The store keeps the records; the next batch gets room for as many.
                    let room = out.records.len();
                    let records = std::mem::replace(&mut out.records, Vec::with_capacity(room));
                    let store = &engine.inner.store;
                    let create = cell.writes.lock().create.take();
                    match create {
                        Some((header, lease)) => store
                            .create_and_append(&header, Some(&lease), records)
                            .await
                            .map(drop),
                        None => store.append(&cell.key, cell.epoch(), records).await,
                    }
                }
            };
        }
        if result.is_ok() {
            for timer in out.timers.drain(..) {
                match timer {
                    TimerAction::Arm(timer, at) => engine.arm(cell, timer, at),
                    TimerAction::Disarm(timer) => {
                        if let Some((_, handle)) = cell.timers.lock().remove(&timer) {
                            handle.abort();
                        }
                    }
                }
            }
            if !out.events.is_empty() && engine.events_wanted() {
                for &(kind, step) in &out.events {
                    let event = TransactionEvent {
                        key: cell.key.clone(),
                        kind,
                        action: step.map(|s| Arc::from(tx.flow().step(s).action.as_str())),
                        state: tx.state(),
                        origin: None, // set by the receiving engine
                    };
                    if let Some(relay) = &engine.inner.relay {
                        relay.publish(event.clone()); // never waits
                    }
                    let _ = engine.inner.events.send(event);
                }
            }
        }
        out.clear();
        result
    }
}
