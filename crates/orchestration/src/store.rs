//! The [`Store`] trait: where transactions are kept, as an append-only log of step events.
//!
//! Every step event of a transaction (a round prepared, a handler's outcome, a cancel, the
//! finish) becomes one [`append`](TransactionLog::append) of the few [`Record`]s that changed; a store
//! never rewrites a whole transaction. [`Transaction::replay`](crate::Transaction::replay) folds
//! the log back into a transaction. A summary per transaction (state, times) serves listings.
//!
//! Contract every store keeps:
//! - `append` is durable when it returns (for the store's own meaning of durable: the memory
//!   store keeps the log until the process ends) and records of one transaction are returned by
//!   `load` in append order;
//! - `create` refuses a second *unfinished* transaction with the same workflow and id
//!   ([`Error::AlreadyStarted`]); a finished one is replaced by the new run.
//!
//! # Leases, epochs and fencing
//!
//! Several workers (processes) may share a store; each transaction is advanced by one worker at
//! a time. The summary of a transaction carries an **owner** with a lease (`until`), an
//! **epoch** and a **wake-up time**:
//!
//! ```text
//!   create(lease) ──► owned by the creator, epoch 1 ──► append(epoch) … ──► finished: no owner
//!          │                  │ release(epoch, wake_in)          ▲
//!   create(None) ─► no owner, due now                            │
//!                             ▼                                  │
//!                   parked: no owner, wakes at `wake_at` ── claim / claim_due ──► epoch + 1
//!   owner dies ──► lease lapses (until < now) ─────────────── claim_due ──► epoch + 1
//! ```
//!
//! **Times are the store's.** Workers hand over durations (a lease's length, a wake-up delay);
//! the store turns them into times on its own clock (PostgreSQL's `clock_timestamp()`, SQLite's
//! `unixepoch`, Redis's `TIME`, the memory store's [`Clock`](crate::Clock)) and compares them
//! with that clock, so workers whose clocks disagree never misjudge each other's leases.
//!
//! - Every claim that changes hands increments the epoch; a claim by the current owner while its
//!   lease runs is re-entrant and keeps the epoch. A worker whose claim returned `epoch + 1` of
//!   the epoch it last held knows no one else wrote in between.
//! - `append` and `release` carry the writer's epoch and are refused with [`Error::Fenced`] when
//!   it is not the current one: a worker whose lease was taken over cannot write.
//! - `renew` extends the leases a worker holds on the transactions it is advancing, in one
//!   operation; a transaction it let go of without releasing it lapses.
//! - A worker's lease runs `lease.ms` from when the store grants or renews it. A worker that
//!   cannot renew stops starting handlers once that time may have passed (the engine tracks it on
//!   a monotonic clock), so no step runs on two workers at once.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::error::{Error, Result};
use crate::log::Record;
use crate::state::TransactionState;

/// Identifies a transaction: its workflow and its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TransactionKey {
    /// The workflow name.
    pub workflow: Arc<str>,
    /// The transaction id.
    pub id: Arc<str>,
}

impl TransactionKey {
    /// A key from its parts.
    pub fn new(workflow: impl Into<Arc<str>>, id: impl Into<Arc<str>>) -> Self {
        TransactionKey {
            workflow: workflow.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for TransactionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.workflow, self.id)
    }
}

/// What is written once when a transaction is created.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransactionHeader {
    /// The workflow and transaction id.
    pub key: TransactionKey,
    /// The run id of this run of the transaction id.
    pub run_id: Arc<str>,
    /// The workflow input.
    pub payload: Data,
    /// When it was created (clock milliseconds).
    pub created_at: u64,
    /// How long the run must be kept once finished, from its workflow's options. A store
    /// that keeps every run until purged (the SQL and Redis stores) need not store it, and
    /// loads it back as [`Keep::Evictable`].
    #[serde(default)]
    pub keep: Keep,
}

/// How long a store must keep a finished run: what its workflow's options promise to whoever
/// asks for it again. Only a store that bounds what it holds (the memory store) reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Nothing asks for the run once it finished: a bounded store may drop it.
    #[default]
    Evictable,
    /// Kept this many milliseconds after it finished (`retentionTime`), then dropped.
    For(u64),
    /// Kept until purged: an `idempotent` workflow without a retention time, whose stored
    /// result answers every later start of the same transaction id.
    Always,
}

impl Keep {
    /// What a workflow's options promise of its finished runs (Medusa's semantics): a
    /// retention time keeps them that long, `idempotent` keeps them (for its retention time
    /// when it has one, else for good), and otherwise nothing does. `idempotent` overrides
    /// the workflow's option for one run.
    pub fn of(options: &crate::flow::WorkflowOptions, idempotent: Option<bool>) -> Self {
        match (
            options.retention_ms(),
            idempotent.unwrap_or(options.idempotent()),
        ) {
            (Some(ms), _) => Keep::For(ms),
            (None, true) => Keep::Always,
            (None, false) => Keep::Evictable,
        }
    }
}

/// A transaction as a store returns it: its header and its log.
#[derive(Clone, Debug)]
pub struct StoredTransaction {
    /// The header written at creation.
    pub header: TransactionHeader,
    /// Every record appended since, in order.
    pub records: Vec<Record>,
}

/// The latest known state of a transaction, for listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionSummary {
    /// The workflow and transaction id.
    pub key: TransactionKey,
    /// The run id.
    pub run_id: Arc<str>,
    /// The transaction state after the last append.
    pub state: TransactionState,
    /// When it was created.
    pub created_at: u64,
    /// When the summary last changed, on the store's wall clock (Unix milliseconds): at least at
    /// every state change (so for a finished transaction, when it finished); SQLite also moves
    /// it at every append. Retention ([`Listing::purge_finished`]) compares this.
    pub updated_at: u64,
}

/// A worker's lease: who holds it and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The worker's id, unique per process.
    pub owner: Arc<str>,
    /// How long the lease runs from when the store grants or renews it, in milliseconds of
    /// the store's clock.
    pub ms: u64,
}

/// The answer to a [`Leases::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The lease is the claimer's, at this epoch.
    Granted {
        /// The epoch the claimer writes with.
        epoch: u64,
    },
    /// Another worker's lease runs.
    Leased {
        /// The worker holding it.
        owner: String,
    },
    /// No such transaction.
    NotFound,
}

/// How a store's appends become durable: what the engine may do between two of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Every append is durable when it returns; the engine appends at every step boundary
    /// and waits for it before going on.
    #[default]
    Durable,
    /// Appends are batched (a commit covers many): the engine may run a transaction's next
    /// steps before its last append is durable, keeps at most one append per transaction in
    /// flight (gathering what the steps record meanwhile into the next one), and returns a
    /// transaction's outcome only once all of it is durable. A crash may then re-run steps
    /// whose records were not yet durable (with the same idempotency keys).
    Pipelined,
    /// The records live no longer than the process (the in-memory store): no crash can find a
    /// checkpoint, and no other process shares them. The engine appends the step boundaries
    /// of a stretch the transaction runs without waiting (every handler returned on its first
    /// poll, no timer to arm, nobody listening for events) in one append at its end, each
    /// step's last state once, and never checks leases.
    Volatile,
}

impl WriteMode {
    /// [`Pipelined`](Self::Pipelined) for a store that batches its appends, else
    /// [`Durable`](Self::Durable).
    pub fn batched_if(batched: bool) -> Self {
        if batched {
            WriteMode::Pipelined
        } else {
            WriteMode::Durable
        }
    }
}

/// A store's log of transactions: each a header and an append-only list of records. Appends to
/// one transaction are applied in order; an append whose epoch is not the transaction's current
/// one is refused ([`fenced`]), so a worker that lost its lease cannot write.
#[async_trait]
pub trait TransactionLog: Send + Sync + 'static {
    /// Writes the header of a new transaction (or of a new run of a finished one) and returns
    /// its epoch. With a lease the creator owns it; without one it is due at once, for any
    /// worker's [`claim_due`](Leases::claim_due) (an enqueued start).
    async fn create(&self, header: &TransactionHeader, lease: Option<&Lease>) -> Result<u64>;
    /// Appends records to a transaction's log, in one durable write, if `epoch` is current
    /// ([`Error::Fenced`] otherwise). Records that finish the transaction also end its lease.
    async fn append(&self, key: &TransactionKey, epoch: u64, records: Vec<Record>) -> Result<()>;
    /// Reads a transaction's header and log, if it exists.
    async fn load(&self, key: &TransactionKey) -> Result<Option<StoredTransaction>>;
    /// How the store's appends are made durable, which decides when the engine appends (see
    /// [`WriteMode`]). Default: [`WriteMode::Durable`].
    fn write_mode(&self) -> WriteMode {
        WriteMode::Durable
    }
    /// [`create`](TransactionLog::create) and a first [`append`](TransactionLog::append) at the new epoch, in one
    /// write where the store can (pipelined stores use it for generated transaction ids, which
    /// cannot be taken). Default: one after the other.
    async fn create_and_append(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
        records: Vec<Record>,
    ) -> Result<u64> {
        let epoch = self.create(header, lease).await?;
        self.append(&header.key, epoch, records).await?;
        Ok(epoch)
    }
}

/// Who advances each transaction: a lease (an owner until a time), an epoch that grows with
/// every new holder, and when an unleased transaction is due to be taken over.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// The summary of a transaction, if it exists.
    async fn summary(&self, key: &TransactionKey) -> Result<Option<TransactionSummary>>;
    /// Takes (or keeps) a transaction's lease, unless another worker's lease runs now.
    async fn claim(&self, key: &TransactionKey, lease: &Lease) -> Result<Claim>;
    /// Gives a transaction's lease up (if `epoch` is current); an unfinished transaction is due
    /// again `wake_in` milliseconds from now (never, without one, until something claims it).
    async fn release(&self, key: &TransactionKey, epoch: u64, wake_in: Option<u64>) -> Result<()>;
    /// Claims up to `limit` unfinished transactions of these workflows that are due now: parked
    /// ones whose wake-up time has come, and ones whose owner's lease lapsed.
    async fn claim_due(
        &self,
        workflows: &[Arc<str>],
        lease: &Lease,
        limit: usize,
    ) -> Result<Vec<(TransactionKey, u64)>>;
    /// Extends by `lease.ms` from now the leases `lease.owner` holds on these transactions
    /// (those it is advancing); returns how many. A lease it no longer holds (released, lapsed
    /// and taken over) is left alone, so a transaction this worker dropped lapses and is taken
    /// over.
    async fn renew(&self, lease: &Lease, keys: &[TransactionKey]) -> Result<usize>;
}

/// Listing finished and running transactions, and deleting finished ones past their
/// retention.
#[async_trait]
pub trait Listing: Send + Sync + 'static {
    /// A page of transaction summaries matching `filter`, newest first (`created_at`
    /// descending; ties in a store-defined order that is the same on every call), starting
    /// after `filter.after`. `next` is set when more may follow. Keyset pagination: a page is
    /// the same whatever was created or deleted after the cursor was handed out.
    async fn list(&self, filter: &TransactionFilter) -> Result<TransactionPage>;
    /// Deletes up to `purge.limit` finished transactions (done, reverted, failed), header and
    /// log, whose summary's `updated_at` is before `purge.older_than`; returns how many it
    /// deleted. Callers loop while it returns `purge.limit` (one bounded batch per call).
    async fn purge_finished(&self, purge: &Purge) -> Result<u64>;
}

/// Where transactions live: the log, leases and listing together. Implement the three traits;
/// `Store` follows. Object-safe; held as `Arc<dyn Store>`.
pub trait Store: TransactionLog + Leases + Listing {}

impl<T: TransactionLog + Leases + Listing> Store for T {}

/// The largest value (a workflow input, a step's response, as JSON) a durable store holds: it is
/// loaded whole on every takeover and kept in memory while the run lives. Larger ones are
/// refused with [`Error::TooLarge`] before anything is written.
pub const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// Refuses a value of `bytes` bytes of JSON over [`MAX_VALUE_BYTES`].
pub fn check_size(what: &'static str, key: &TransactionKey, bytes: usize) -> Result<()> {
    if bytes > MAX_VALUE_BYTES {
        return Err(Error::TooLarge {
            what,
            transaction: key.to_string(),
            bytes,
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The error of an append or release with a stale epoch.
pub fn fenced(key: &TransactionKey, epoch: u64) -> Error {
    Error::Fenced {
        workflow: key.workflow.to_string(),
        transaction: key.id.to_string(),
        epoch,
    }
}

/// Whether a batch of records finishes its transaction.
pub fn finishes(records: &[Record]) -> bool {
    records.iter().rev().find_map(|r| match r {
        Record::Transaction(fields) => Some(fields.state.is_finished()),
        _ => None,
    }) == Some(true)
}

/// The in-memory store: a log per transaction in a map, for development and tests.
///
/// The map is split into shards, each behind its own lock, so that transactions advanced on
/// different threads do not wait for each other.
///
/// What it keeps of finished transactions follows what their workflows promise
/// ([`TransactionHeader::keep`], from the workflow's options, as Medusa keeps them):
/// - a run of an `idempotent` workflow, or of a workflow with a `retentionTime`, is kept until
///   its retention ends (for good when idempotent without one, until purged), so a later start
///   of its transaction id returns its stored result and a listing finds it;
/// - the other finished runs, which nothing asks for again, bound the memory: the last
///   `keep_finished` of them ([`DEFAULT_KEEP_FINISHED`](Self::DEFAULT_KEEP_FINISHED) unless
///   chosen) with at most [`DEFAULT_KEEP_RECORDS`](Self::DEFAULT_KEEP_RECORDS) records in their
///   logs together (the oldest are dropped first, the newest is always kept), so a long-running
///   process does not grow without bound, however long its workflows.
///
/// What is kept costs time as well as memory: every finished run drops the oldest, whose
/// memory has left the CPU caches when many are kept (`docs/performance.md`).
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// Finished transactions in the order they finished, for eviction.
    finished: Mutex<Finished>,
    keep_finished: usize,
    keep_records: usize,
    hasher: KeyHasher,
    /// The store's clock: lease ends and wake-up times are its.
    clock: StoreClock,
    /// How it tells the engine its appends become durable.
    write_mode: WriteMode,
}

/// The clock a memory store keeps its lease times on.
struct StoreClock(Arc<dyn crate::Clock>);

impl std::fmt::Debug for StoreClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreClock")
    }
}

/// The finished transactions a memory store may drop, oldest first (key hash, run id and how
/// many records its log holds), and those records' total; and the runs kept for a retention
/// time, by the time it ends.
#[derive(Debug, Default)]
struct Finished {
    runs: VecDeque<FinishedRun>,
    records: usize,
    /// Runs of [`Keep::For`], by (end of retention in wall-clock ms, arrival).
    retained: std::collections::BTreeMap<(u64, u64), FinishedRun>,
    arrivals: u64,
}

impl Finished {
    /// Takes out the retained runs whose retention ended before `now`.
    fn expired(&mut self, now: u64) -> Vec<FinishedRun> {
        let mut expired = Vec::new();
        while let Some(entry) = self.retained.first_entry() {
            if entry.key().0 > now {
                break;
            }
            expired.push(entry.remove());
        }
        expired
    }
}

/// A finished transaction the memory store keeps.
#[derive(Debug)]
struct FinishedRun {
    /// The key's hash (its shard and its place there).
    hash: u64,
    /// The run id of the run that finished, the `Arc` of its header: the entry is found by
    /// this pointer (a newer run of the same id is not dropped with it).
    run: Arc<str>,
    /// How many records its log holds.
    logged: usize,
    /// How long it must be kept.
    keep: Keep,
}

/// One shard of the memory store's map: entries keyed by their header's key, found with a hash
/// computed once per operation (it also picks the shard).
#[derive(Debug, Default)]
struct Shard(hashbrown::HashTable<MemoryEntry>);

impl Shard {
    fn get(&self, hash: u64, key: &TransactionKey) -> Option<&MemoryEntry> {
        self.0.find(hash, |e| e.header.key == *key)
    }
    fn get_mut(&mut self, hash: u64, key: &TransactionKey) -> Option<&mut MemoryEntry> {
        self.0.find_mut(hash, |e| e.header.key == *key)
    }
    /// Inserts `entry`, returning the one it replaced.
    fn insert(&mut self, hash: u64, entry: MemoryEntry, hasher: &KeyHasher) -> Option<MemoryEntry> {
        let found = self.0.entry(
            hash,
            |e| e.header.key == entry.header.key,
            |e| hasher.hash(&e.header.key),
        );
        match found {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                Some(std::mem::replace(slot.get_mut(), entry))
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(entry);
                None
            }
        }
    }
    fn remove(&mut self, hash: u64, key: &TransactionKey) -> Option<MemoryEntry> {
        let found = self.0.find_entry(hash, |e| e.header.key == *key).ok()?;
        Some(found.remove().0)
    }
    /// Removes the entry of the run whose run id is `run` (the very `Arc` of its header) if
    /// the store still holds it and it is finished: found by that pointer, so neither the key's nor
    /// the run id's characters are read (an evicted run's memory is cold). A newer run of the
    /// same id has a run id of its own and stays; the caller's clone of `run` keeps the pointer
    /// from being reused meanwhile.
    fn remove_run(&mut self, hash: u64, run: &Arc<str>) -> Option<MemoryEntry> {
        let found = self
            .0
            .find_entry(hash, |e| Arc::ptr_eq(&e.header.run_id, run))
            .ok()?;
        // A finished run being cancelled compensates again: it is noted anew when it finishes.
        found.get().state.is_finished().then(|| found.remove().0)
    }
}

/// The memory store's hash of a key: the id alone (the workflow is the same for most keys and
/// would only cost hashing; equality still compares both).
#[derive(Debug, Default)]
struct KeyHasher(foldhash::fast::FixedState);

impl KeyHasher {
    fn hash(&self, key: &TransactionKey) -> u64 {
        use std::hash::BuildHasher;
        self.0.hash_one(&*key.id)
    }
}

/// How many shards the memory store's map has (a power of two).
const MEMORY_SHARDS: usize = 32;

#[derive(Debug)]
struct MemoryEntry {
    header: TransactionHeader,
    records: Vec<Record>,
    state: TransactionState,
    owner: Option<Arc<str>>,
    until: u64,
    epoch: u64,
    wake_at: Option<u64>,
    updated_at: u64, // listing: wall-clock ms of the creation and of the last state change
}

impl MemoryEntry {
    fn take(&mut self, lease: &Lease, now: u64) -> u64 {
        let keeps = self.owner.as_ref() == Some(&lease.owner);
        if !keeps {
            self.epoch += 1;
            self.owner = Some(lease.owner.clone());
        }
        self.until = now.saturating_add(lease.ms);
        self.wake_at = None;
        self.epoch
    }
}

impl MemoryStore {
    /// How many finished transactions that nothing asks for again ([`Keep::Evictable`])
    /// [`new`](Self::new) keeps: the last 256, for looking back at while developing (Medusa's
    /// in-memory storage keeps none). Idempotent runs and runs with a retention time are kept
    /// beside them, as long as their workflow says. A finished ten-step run holds about 6 KB.
    pub const DEFAULT_KEEP_FINISHED: usize = 256;
    /// How many log records the finished transactions kept may hold together by default:
    /// about 3 MB of records (256 ten-step runs log 5,400 to 8,200; 100-step runs are kept
    /// by the 105 newest).
    pub const DEFAULT_KEEP_RECORDS: usize = 32_000;

    /// A store keeping at most [`DEFAULT_KEEP_FINISHED`](Self::DEFAULT_KEEP_FINISHED)
    /// finished transactions.
    pub fn new() -> Self {
        Self::keeping_finished(Self::DEFAULT_KEEP_FINISHED)
    }
    /// A store keeping at most `keep_finished` evictable finished transactions (and at most
    /// [`DEFAULT_KEEP_RECORDS`](Self::DEFAULT_KEEP_RECORDS) records of theirs), beside the
    /// idempotent and retained runs it must keep.
    pub fn keeping_finished(keep_finished: usize) -> Self {
        MemoryStore {
            shards: (0..MEMORY_SHARDS)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            finished: Mutex::new(Finished::default()),
            keep_finished,
            keep_records: Self::DEFAULT_KEEP_RECORDS,
            hasher: KeyHasher::default(),
            clock: StoreClock(Arc::new(crate::SystemClock)),
            write_mode: WriteMode::Volatile,
        }
    }
    /// The same store keeping its lease times on `clock` (the system clock by default): the
    /// store's own time, as a database's is, whatever clocks the engines sharing it read. Tests
    /// that move a [`ManualClock`](crate::ManualClock) to lapse leases give the store that clock.
    pub fn with_clock(mut self, clock: Arc<dyn crate::Clock>) -> Self {
        self.clock = StoreClock(clock);
        self
    }
    /// The same store declaring another [`WriteMode`] (volatile by default), so that tests run
    /// the engine's other write paths on it. It keeps its records in memory whatever it
    /// declares; declared durable or pipelined, the engine also checks its leases.
    pub fn declaring(mut self, write_mode: WriteMode) -> Self {
        self.write_mode = write_mode;
        self
    }
    fn now(&self) -> u64 {
        self.clock.0.now_ms()
    }
    /// The same store keeping finished transactions only while their logs hold at most
    /// `records` records together (the newest finished one is always kept).
    pub fn keeping_records(mut self, records: usize) -> Self {
        self.keep_records = records;
        self
    }
    /// How many transactions the store holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().0.len()).sum()
    }
    /// Whether the store holds no transaction.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// The key's hash and its shard. The shard is picked by bits of the hash that the shard's
    /// table uses for neither its buckets (the low bits) nor its tags (the top seven).
    fn shard(&self, key: &TransactionKey) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash(key);
        (hash, self.shard_of(hash))
    }

    /// The shard of a key whose hash is known.
    fn shard_of(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[((hash >> 32) as usize) & (MEMORY_SHARDS - 1)]
    }

    fn create_sync(&self, header: &TransactionHeader, lease: Option<&Lease>) -> Result<u64> {
        self.create_then(header, lease, |_, _| None)
    }

    /// Creates the entry of `header`, lets `first` change it (given the key's hash) before it
    /// goes in (a first append: one lock, one lookup), and notes it finished when `first`
    /// says so.
    fn create_then(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
        first: impl FnOnce(&mut MemoryEntry, u64) -> Option<FinishedRun>,
    ) -> Result<u64> {
        let (hash, shard) = self.shard(&header.key);
        let mut shard = shard.lock();
        let mut epoch = 1;
        if let Some(existing) = shard.get(hash, &header.key) {
            if !existing.state.is_finished() {
                return Err(Error::AlreadyStarted {
                    workflow: header.key.workflow.to_string(),
                    transaction: header.key.id.to_string(),
                });
            }
            epoch = existing.epoch + 1;
        }
        let mut entry = MemoryEntry {
            header: header.clone(),
            records: Vec::new(),
            state: TransactionState::NotStarted,
            owner: lease.map(|l| l.owner.clone()),
            until: lease.map_or(0, |l| self.now().saturating_add(l.ms)),
            epoch,
            wake_at: if lease.is_some() {
                None
            } else {
                Some(self.now())
            },
            updated_at: wall_clock_ms(), // listing
        };
        let finished = first(&mut entry, hash);
        let replaced = shard.insert(hash, entry, &self.hasher);
        drop(shard);
        drop(replaced); // freed outside the lock
        if let Some(finished) = finished {
            self.evict_beyond_quota(finished);
        }
        Ok(epoch)
    }

    /// Appends `records`.
    fn append_sync(&self, key: &TransactionKey, epoch: u64, records: Vec<Record>) -> Result<()> {
        let (hash, shard) = self.shard(key);
        let mut shard = shard.lock();
        let entry = shard.get_mut(hash, key).ok_or_else(|| Error::Store {
            operation: "append",
            transaction: key.to_string(),
            reason: "the transaction was never created".into(),
        })?;
        if entry.epoch != epoch {
            return Err(fenced(key, epoch));
        }
        let finished = append_to(entry, hash, records, wall_clock_ms);
        drop(shard);
        if let Some(finished) = finished {
            self.evict_beyond_quota(finished);
        }
        Ok(())
    }

    /// Notes a transaction that finished and drops what is no longer kept: the oldest
    /// evictable ones beyond the quota, and retained ones whose retention ended. Runs kept for
    /// good ([`Keep::Always`]) are never dropped here. Takes no shard lock while it holds the
    /// queue's.
    fn evict_beyond_quota(&self, finished: FinishedRun) {
        let mut newest = Some(finished);
        loop {
            // What this turn drops, taken out under the queue's lock (one lock a turn; usually
            // one turn and one run dropped in all) and dropped outside it: retained runs whose
            // retention ended, and the oldest evictable run beyond the bound.
            let (expired, oldest) = {
                let mut queue = self.finished.lock();
                let mut expired = Vec::new();
                if let Some(run) = newest.take() {
                    if !queue.retained.is_empty() || matches!(run.keep, Keep::For(_)) {
                        let now = wall_clock_ms();
                        expired = queue.expired(now);
                        if let Keep::For(ms) = run.keep {
                            queue.arrivals += 1;
                            let arrival = queue.arrivals;
                            queue
                                .retained
                                .insert((now.saturating_add(ms), arrival), run);
                            drop(queue);
                            self.drop_runs(expired);
                            return;
                        }
                    }
                    if run.keep == Keep::Evictable {
                        queue.records += run.logged;
                        queue.runs.push_back(run);
                    } // `Always`: kept until purged, never noted for eviction.
                }
                let over = queue.runs.len() > self.keep_finished
                    || (queue.records > self.keep_records && queue.runs.len() > 1);
                let oldest = over.then(|| queue.runs.pop_front()).flatten();
                if let Some(oldest) = &oldest {
                    queue.records -= oldest.logged;
                }
                (expired, oldest)
            };
            self.drop_runs(expired);
            let Some(oldest) = oldest else { return };
            let evicted = self
                .shard_of(oldest.hash)
                .lock()
                .remove_run(oldest.hash, &oldest.run);
            drop(evicted); // freed outside the lock
        }
    }

    /// Drops these finished runs from their shards (only the runs that finished: a newer run
    /// of the same id stays).
    fn drop_runs(&self, runs: Vec<FinishedRun>) {
        for run in runs {
            let evicted = self
                .shard_of(run.hash)
                .lock()
                .remove_run(run.hash, &run.run);
            drop(evicted); // freed outside the lock
        }
    }
}

#[async_trait]
impl TransactionLog for MemoryStore {
    fn write_mode(&self) -> WriteMode {
        self.write_mode
    }

    async fn create(&self, header: &TransactionHeader, lease: Option<&Lease>) -> Result<u64> {
        self.create_sync(header, lease)
    }

    async fn append(&self, key: &TransactionKey, epoch: u64, records: Vec<Record>) -> Result<()> {
        self.append_sync(key, epoch, records)
    }

    async fn create_and_append(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
        records: Vec<Record>,
    ) -> Result<u64> {
        // One lock and one lookup for both.
        self.create_then(header, lease, |entry, hash| {
            let updated_at = entry.updated_at;
            append_to(entry, hash, records, || updated_at)
        })
    }

    async fn load(&self, key: &TransactionKey) -> Result<Option<StoredTransaction>> {
        let (hash, shard) = self.shard(key);
        let shard = shard.lock();
        Ok(shard.get(hash, key).map(|e| StoredTransaction {
            header: e.header.clone(),
            records: e.records.clone(),
        }))
    }
}

#[async_trait]
impl Leases for MemoryStore {
    async fn summary(&self, key: &TransactionKey) -> Result<Option<TransactionSummary>> {
        let (hash, shard) = self.shard(key);
        let shard = shard.lock();
        Ok(shard.get(hash, key).map(summary_of))
    }

    async fn claim(&self, key: &TransactionKey, lease: &Lease) -> Result<Claim> {
        let now = self.now();
        let (hash, shard) = self.shard(key);
        let mut shard = shard.lock();
        let Some(entry) = shard.get_mut(hash, key) else {
            return Ok(Claim::NotFound);
        };
        if let Some(owner) = &entry.owner
            && *owner != lease.owner
            && entry.until >= now
        {
            return Ok(Claim::Leased {
                owner: owner.to_string(),
            });
        }
        Ok(Claim::Granted {
            epoch: entry.take(lease, now),
        })
    }

    async fn release(&self, key: &TransactionKey, epoch: u64, wake_in: Option<u64>) -> Result<()> {
        let wake_at = wake_in.map(|ms| self.now().saturating_add(ms));
        let (hash, shard) = self.shard(key);
        let mut shard = shard.lock();
        match shard.get_mut(hash, key) {
            Some(entry) if entry.epoch == epoch => {
                entry.owner = None;
                entry.wake_at = wake_at.filter(|_| !entry.state.is_finished());
                Ok(())
            }
            _ => Err(fenced(key, epoch)),
        }
    }

    async fn claim_due(
        &self,
        workflows: &[Arc<str>],
        lease: &Lease,
        limit: usize,
    ) -> Result<Vec<(TransactionKey, u64)>> {
        let now = self.now();
        let mut claimed = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for entry in shard.0.iter_mut() {
                if claimed.len() >= limit {
                    return Ok(claimed);
                }
                let due = match &entry.owner {
                    None => entry.wake_at.is_some_and(|at| at <= now),
                    Some(_) => entry.until < now,
                };
                if due
                    && !entry.state.is_finished()
                    && workflows.contains(&entry.header.key.workflow)
                {
                    // A lapsed lease changes hands even when the claimer held it before.
                    entry.owner = None;
                    let epoch = entry.take(lease, now);
                    claimed.push((entry.header.key.clone(), epoch));
                }
            }
        }
        Ok(claimed)
    }

    async fn renew(&self, lease: &Lease, keys: &[TransactionKey]) -> Result<usize> {
        let until = self.now().saturating_add(lease.ms);
        let mut renewed = 0;
        for key in keys {
            let (hash, shard) = self.shard(key);
            if let Some(entry) = shard.lock().get_mut(hash, key)
                && entry.owner.as_ref() == Some(&lease.owner)
            {
                entry.until = until;
                renewed += 1;
            }
        }
        Ok(renewed)
    }
}

#[async_trait]
impl Listing for MemoryStore {
    async fn list(&self, filter: &TransactionFilter) -> Result<TransactionPage> {
        filter.check()?;
        let mut matching: Vec<TransactionSummary> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            matching.extend(shard.0.iter().map(summary_of).filter(|s| filter.matches(s)));
        }
        matching.sort_unstable_by(|a, b| PageCursor::of(b).cmp(&PageCursor::of(a)));
        Ok(TransactionPage::from_sorted(matching, filter.limit))
    }

    async fn purge_finished(&self, purge: &Purge) -> Result<u64> {
        let mut purged = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let doomed: Vec<TransactionKey> = shard
                .0
                .iter()
                .filter(|e| {
                    e.state.is_finished()
                        && e.updated_at < purge.older_than
                        && purge
                            .workflow
                            .as_ref()
                            .is_none_or(|w| *w == e.header.key.workflow)
                })
                .map(|e| e.header.key.clone())
                .take(purge.limit - purged)
                .collect();
            for key in &doomed {
                shard.remove(self.hasher.hash(key), key);
            }
            purged += doomed.len();
            if purged >= purge.limit {
                break;
            }
        }
        Ok(purged as u64)
    }
}

/// The listing summary of a memory store entry.
fn summary_of(e: &MemoryEntry) -> TransactionSummary {
    TransactionSummary {
        key: e.header.key.clone(),
        run_id: e.header.run_id.clone(),
        state: e.state,
        created_at: e.header.created_at,
        updated_at: e.updated_at,
    }
}

/// Appends `records` to `entry` (whose key hashes to `hash`), and reads
/// `now` if the state changed. Returns the run to note as finished when this append
/// finished it.
fn append_to(
    entry: &mut MemoryEntry,
    hash: u64,
    mut records: Vec<Record>,
    now: impl FnOnce() -> u64,
) -> Option<FinishedRun> {
    let state_before = entry.state;
    for record in records.iter() {
        if let Record::Transaction(fields) = record {
            entry.state = fields.state;
        }
    }
    if entry.records.is_empty() {
        // The first append's records become the log: none is copied.
        entry.records = records;
    } else {
        entry.records.append(&mut records);
    }
    if entry.state.is_finished() {
        entry.owner = None;
        entry.wake_at = None;
    }
    if entry.state == state_before {
        return None;
    }
    entry.updated_at = now(); // listing: at every state change
    if state_before.is_finished() || !entry.state.is_finished() {
        return None;
    }
    // A finished log grows no more: the room its doublings left is given back (a 100-step
    // run's 302 records sat in room for 512), unless it is small (a ten-step run's 21 records
    // in the 32 made at creation: shrinking would copy them for 11 records' room).
    let len = entry.records.len();
    if entry.records.capacity() > len + (len / 4).max(16) {
        entry.records.shrink_to_fit();
    }
    Some(FinishedRun {
        hash,
        run: entry.header.run_id.clone(),
        logged: len,
        keep: entry.header.keep,
    })
}

/// The wall clock in Unix milliseconds (the memory store's `updated_at`): the system clock, as
/// [`SystemClock`](crate::SystemClock) reads it cheaply (a store keeps wall time whatever clock
/// its engine is given).
fn wall_clock_ms() -> u64 {
    crate::Clock::now_ms(&crate::SystemClock)
}

// ---- executions listing and retention ----

/// The largest page a listing returns.
pub const MAX_PAGE: usize = 1000;

/// Where a listing page resumes: the position of the last summary of the previous page.
///
/// Ordered as listings are, newest first: a greater cursor comes earlier in a listing. As text
/// (`Display` / `FromStr`, for an HTTP query) it is `<created_at>.<workflow length>.<workflow><id>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageCursor {
    /// The `created_at` of the last summary returned.
    pub created_at: u64,
    /// Its key (ties of `created_at` are ordered by workflow, then id).
    pub key: TransactionKey,
}

impl PageCursor {
    /// The position of a summary.
    pub fn of(summary: &TransactionSummary) -> Self {
        PageCursor {
            created_at: summary.created_at,
            key: summary.key.clone(),
        }
    }
}

impl std::fmt::Display for PageCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let workflow = &self.key.workflow;
        write!(
            f,
            "{}.{}.{workflow}{}",
            self.created_at,
            workflow.len(),
            self.key.id
        )
    }
}

impl std::str::FromStr for PageCursor {
    type Err = Error;
    fn from_str(cursor: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidCursor {
            cursor: cursor.to_string(),
            reason: reason.to_string(),
        };
        let (created_at, rest) = cursor
            .split_once('.')
            .ok_or_else(|| invalid("expected `<created_at>.<length>.<workflow><id>`"))?;
        let (length, rest) = rest
            .split_once('.')
            .ok_or_else(|| invalid("expected `<created_at>.<length>.<workflow><id>`"))?;
        let created_at = created_at
            .parse()
            .map_err(|_| invalid("created_at is not a number"))?;
        let length: usize = length
            .parse()
            .map_err(|_| invalid("the workflow length is not a number"))?;
        if length == 0 || length >= rest.len() || !rest.is_char_boundary(length) {
            return Err(invalid("the workflow length does not fit"));
        }
        let (workflow, id) = rest.split_at(length);
        Ok(PageCursor {
            created_at,
            key: TransactionKey::new(workflow, id),
        })
    }
}

/// Which transactions a listing returns, and which page. Every condition set must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionFilter {
    /// Only this workflow's transactions.
    pub workflow: Option<Arc<str>>,
    /// Only transactions in one of these states (empty: any state).
    pub states: Vec<TransactionState>,
    /// Only transactions created at or after this time (the engine clock's milliseconds).
    pub created_from: Option<u64>,
    /// Only transactions created before this time.
    pub created_before: Option<u64>,
    /// Resume after this cursor (a previous page's `next`); `None`: the first page.
    pub after: Option<PageCursor>,
    /// The most summaries on the page: 1 to [`MAX_PAGE`] (default 50).
    pub limit: usize,
}

impl Default for TransactionFilter {
    fn default() -> Self {
        TransactionFilter {
            workflow: None,
            states: Vec::new(),
            created_from: None,
            created_before: None,
            after: None,
            limit: 50,
        }
    }
}

impl TransactionFilter {
    /// Refuses a limit out of range with [`Error::InvalidFilter`].
    pub fn check(&self) -> Result<()> {
        if self.limit == 0 || self.limit > MAX_PAGE {
            return Err(Error::InvalidFilter {
                field: "limit",
                reason: format!("{} is not between 1 and {MAX_PAGE}", self.limit),
            });
        }
        Ok(())
    }

    /// Whether a summary passes the filter, the cursor included.
    pub fn matches(&self, summary: &TransactionSummary) -> bool {
        self.workflow
            .as_ref()
            .is_none_or(|w| *w == summary.key.workflow)
            && (self.states.is_empty() || self.states.contains(&summary.state))
            && self.created_from.is_none_or(|t| summary.created_at >= t)
            && self.created_before.is_none_or(|t| summary.created_at < t)
            && self
                .after
                .as_ref()
                .is_none_or(|after| PageCursor::of(summary) < *after)
    }
}

/// A page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionPage {
    /// The summaries, newest first.
    pub items: Vec<TransactionSummary>,
    /// Where the next page starts, when more may follow.
    pub next: Option<PageCursor>,
}

impl TransactionPage {
    /// A page from the matching summaries in listing order (at least `limit + 1` of them when
    /// more follow): the first `limit`, and a cursor when there were more.
    pub fn from_sorted(mut items: Vec<TransactionSummary>, limit: usize) -> Self {
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more {
            items.last().map(PageCursor::of)
        } else {
            None
        };
        TransactionPage { items, next }
    }
}

/// Which finished transactions [`Listing::purge_finished`] deletes, and how many at most.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purge {
    /// Only those whose `updated_at` (store wall clock, Unix ms) is before this.
    pub older_than: u64,
    /// Only this workflow's (`None`: every workflow's).
    pub workflow: Option<Arc<str>>,
    /// The most deleted by one call (at least 1).
    pub limit: usize,
}
