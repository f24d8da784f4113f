//! Redis store of Gorgon's orchestration: a [`Store`] that keeps every transaction as an
//! append-only log in Redis, shared by every process that uses the same Redis and prefix.
//!
//! # How to use it
//! 1. Deserialize an [`Options`] from configuration (every field has a default: `url` is
//!    `REDIS_URL` or `redis://127.0.0.1:6379`, `prefix` is `gorgon:store:`, `durability` is
//!    `every_step`).
//! 2. [`RedisStore::connect`] inside a tokio runtime.
//! 3. Hand it to the engine as `Arc<dyn Store>` (`EngineOptions { store, .. }`).
//! 4. List transactions with [`RedisStore::list`]; in tests, give each store its own prefix and
//!    remove its keys with [`RedisStore::clear`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use gorgon_orchestration::{WriteMode, EngineOptions, Store};
//! use gorgon_store_redis::{Durability, Options, RedisStore};
//!
//! let options: Options = serde_json::from_str(r#"{"prefix": "shop:wf:", "durability": "batched"}"#)?;
//! let store = RedisStore::connect(&options).await?;
//! let engine = EngineOptions { store: Arc::new(store) as Arc<dyn Store>, ..EngineOptions::default() }.build();
//! # let _ = (engine, Durability::Batched); Ok(()) }
//! ```
//!
//! # Key layout
//! `<member>` is `<workflow>:<id>` with `%` and `:` percent-encoded in each part, so any
//! workflow name and id map to one key and back.
//! ```text
//!  <prefix>h:<member>              hash {workflow, id, run_id, payload (JSON), created_at,
//!                                  state, epoch, owner?, until, wake_at?, updated_at (Redis
//!                                  TIME, ms, at create and each state change)}
//!  <prefix>log:<member>            list: the run id (marker), then one JSON entry per Record
//!  <prefix>by-workflow:<workflow>  sorted set: <member> scored by created_at
//!  <prefix>by-state:<state>        sorted set: <member> scored by created_at, one per state
//!  <prefix>leased:<workflow>       sorted set: owned, unfinished <member>s scored by until
//!  <prefix>parked:<workflow>       sorted set: unowned, unfinished <member>s with a wake-up
//!                                  time, scored by wake_at
//!  <prefix>owned:<owner>           set: the <member>s one worker holds
//!
//!  create     header exists and unfinished? → AlreadyStarted (0); else clear the old run from
//!             the indexes and its owner's set, DEL old header + log, HSET header (state
//!             not_started, epoch = old epoch + 1 or 1), RPUSH run marker, ZADD indexes; with a
//!             lease: owner/until = now + lease ms, ZADD leased, SADD owned; without:
//!             wake_at = now, ZADD parked (due at once)
//!  append     header missing? → -1; epoch ≠ ARGV epoch? → -2 (Fenced), nothing written;
//!             RPUSH each record, HSET state and move <member> between the state indexes;
//!             a finished state drops owner and wake_at (SREM owned, ZREM leased/parked)
//!  claim      another owner whose until ≥ now? → Leased; else owner/until, epoch + 1 and
//!             SREM/SADD between owner sets when the owner changes, HDEL wake_at, ZREM parked,
//!             ZADD leased
//!  release    epoch ≠ current? → Fenced; HDEL owner, SREM owned, ZREM leased; with a wake-up
//!             time (and unfinished) HSET wake_at, ZADD parked
//!  claim_due  per workflow: ZRANGEBYSCORE parked -inf now, then leased -inf (now, up to the
//!             limit; each is taken as by claim, always epoch + 1
//!  renew      for each named member still held: HSET until = now + lease ms, ZADD leased;
//!             one no longer held leaves owned:<owner>
//!
//!  `now` is always Redis's `TIME`, read inside the script: engines hand over durations (a
//!  lease's length, a wake-up delay), never their own clock's times.
//!  load       (MULTI/EXEC) HMGET header + LRANGE log, one consistent snapshot
//! ```
//! Every write is one Lua script (the `scripts` module), so each check-and-set (the epoch of an
//! append or release, the owner of a claim) is atomic on the server. Scripts are sent whole
//! with `EVAL` (Redis caches them by hash), so a Redis that restarted or flushed its script
//! cache needs nothing reloaded.
//! Scripts declare the keys their caller names; the keys they find through stored data (the
//! previous owner's set, the header of a member found in an index) they build from the prefix.
//! On a Redis Cluster, put the prefix in braces (`{gorgon}:store:`) so all of a store's keys
//! share one slot.
//!
//! # Leases, epochs and fencing
//! Workers sharing a Redis and prefix share its transactions (see the `Store` docs in
//! `gorgon_orchestration::store`). The owner's lease, the epoch and the wake-up time live in
//! the header hash; the `leased`/`parked` sorted sets make `claim_due` a range read per
//! workflow (no scan), and the per-owner set makes `renew` touch only the owner's transactions.
//! An append carries its writer's epoch and is refused with
//! [`Fenced`](gorgon_orchestration::Error::Fenced) when a claim moved the epoch on, in both
//! durability modes: in a batched pipeline each append is its own script, so a fenced append
//! fails alone and the others of the pipeline are written. Claims, releases, `claim_due` and
//! `renew` are sent at once (not through the batch writer). Headers written before leases
//! existed have no epoch (read as 1) and are in no lease index: a worker claims them by name.
//!
//! The log keeps one list entry per [`Record`] (not one per batch), so `LRANGE` hands back the
//! records as they are; one `append` call is still one atomic command, one write.
//!
//! # Durability modes
//! - [`Durability::EveryStep`]: each write is its own command, awaited; it returns once Redis
//!   replied. Simplest; concurrent writes still share the multiplexed connection.
//! - [`Durability::Batched`]: creates and appends go to a background writer that sends
//!   everything queued (writes of many transactions, up to `max_batch`) as one pipeline, one
//!   round trip; each caller's future resolves once the pipeline's reply carries its own
//!   command's reply. There is no linger timer: a lone write is sent at once; writes arriving
//!   while a pipeline is in flight form the next one. Fewer round trips and syscalls per write
//!   under load, at the cost of waiting for the pipeline in flight. (Redis fsyncs once per
//!   event-loop pass in either mode, so `appendfsync always` groups concurrent writes anyway.)
//!
//! In both modes each append is atomic (one script: the epoch check and the write), the log of
//! one transaction keeps append order, and the caller is acknowledged only after Redis applied
//! its write. Measured on this 2-core machine while other builds ran (load ~7.5), 5,000
//! transactions of a create (with a lease) and 12 appends, 256 in flight
//! (`examples/throughput.rs`, release), every append a fenced script: `every_step` 3,200-4,000
//! transactions/s (one round trip per write), `batched` 3,400-4,700 transactions/s (about
//! 40,000 to 56,000 appends/s) with about 155 writes per round trip. The batched writer runs on
//! the tokio runtime that called [`RedisStore::connect`] and stops with it.
//!
//! An `append` or `create` that fails with a connection error or a timeout has an unknown
//! outcome, as with any database commit whose reply was lost: the command ran entirely or not
//! at all.
//!
//! # What survives a crash
//! Durability is Redis's own: Redis acknowledges a write once it is in memory. A crash of the
//! Gorgon process loses nothing that was acknowledged (an append in flight is applied entirely or
//! not at all, and its caller never saw it succeed). A crash of Redis keeps what its persistence
//! kept: with `appendonly yes` and `appendfsync always` Redis fsyncs the AOF before replying, so
//! every acknowledged append survives, even a power loss (and a batched pipeline shares one
//! fsync); with `appendfsync everysec` a Redis process crash normally loses nothing (the AOF is
//! written before the replies, though Redis may delay that write up to 2 s behind a slow
//! fsync) and a machine crash may lose the last second or two; without persistence (as on this development machine) a Redis
//! restart loses everything. A failover to a replica that missed the last writes loses them.
//! The tests kill both sides with SIGKILL: a writer process (every append it saw acknowledged is
//! in the log, in order) and a `redis-server` with `appendfsync always` (every acknowledged
//! append is there after the restart).
//!
//! # Contract
//! The [`Store`] contract of `gorgon_orchestration`: `create` refuses a second unfinished run of
//! an id with `AlreadyStarted` (atomically: of two concurrent creates exactly one wins) and
//! replaces a finished one; `append` is one atomic write; `load` returns the records in append
//! order; an append or release with a stale epoch is refused with `Fenced`. A new run of a
//! finished id gets a newer epoch, so an append from the old run that arrives late is fenced
//! too. Nothing expires by itself: `Listing::list` pages the indexes and `Listing::purge_finished`
//! deletes finished runs (see `listing.rs`); [`RedisRelay`] carries engine events over pub/sub.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod listing;
pub mod relay;
mod scripts;
mod writer;

pub use relay::RedisRelay;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gorgon_orchestration::store::{
    Claim, Lease, StoredTransaction, TransactionHeader, TransactionKey, TransactionSummary, fenced,
};
use gorgon_orchestration::{Data, Record, TransactionState, WriteMode};
use gorgon_orchestration::{Leases, Listing, TransactionLog};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::scripts::STATES;
use crate::writer::{AppendCall, Call, CreateCall, Job, StoreKeys};

/// Everything that can go wrong outside the [`Store`] methods (which return the orchestration
/// crate's error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is out of range.
    #[error("invalid store option {field}: {reason}")]
    InvalidOptions {
        /// The option's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The Redis server could not be reached or the URL is malformed.
    #[error("cannot connect to Redis at {url}: {reason}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The client's message.
        reason: String,
    },
    /// A Redis command failed.
    #[error("Redis store {operation} failed under prefix {prefix}: {reason}")]
    Redis {
        /// What the store was doing.
        operation: &'static str,
        /// The store's key prefix.
        prefix: String,
        /// The client's message.
        reason: String,
    },
    /// A stored header cannot be read back.
    #[error("stored transaction {transaction} is corrupt: {reason}")]
    Corrupt {
        /// The transaction's member key (`workflow:id`).
        transaction: String,
        /// What is wrong.
        reason: String,
    },
}

/// How appends reach Redis; see the crate docs for the trade-off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Each append is its own command, awaited.
    #[default]
    EveryStep,
    /// Creates and appends of many transactions are pipelined by a background writer, one
    /// round trip per batch; each caller waits for its batch's reply.
    Batched,
}

/// Configuration of a [`RedisStore`], deserializable from the application config:
/// `{ "url": "redis://127.0.0.1:6379", "prefix": "gorgon:store:", "durability": "batched" }`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Connection URL. Default: `REDIS_URL`, else `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every key the store writes; stores with different prefixes never see each
    /// other's transactions. Must not be empty. Default `gorgon:store:`.
    pub prefix: String,
    /// How appends reach Redis. Default `every_step`.
    pub durability: Durability,
    /// Most writes in one pipeline in `batched` mode. Default 512.
    pub max_batch: usize,
    /// How long a command may wait for Redis's reply before it fails. An append that times out
    /// may still have been applied, so keep this well above the slowest fsync. Default 10,000.
    pub response_timeout_ms: u64,
    /// How many times `connect` and a broken connection retry (exponential backoff from
    /// 100 ms) before giving up. Default 3.
    pub connect_retries: usize,
}

/// The URL may carry a password: it is shown without it.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("durability", &self.durability)
            .field("max_batch", &self.max_batch)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("connect_retries", &self.connect_retries)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            prefix: "gorgon:store:".into(),
            durability: Durability::EveryStep,
            max_batch: 512,
            response_timeout_ms: 10_000,
            connect_retries: 3,
        }
    }
}

/// Counters of the writes a store sent, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `create` calls that reached Redis.
    pub creates: u64,
    /// `append` calls that reached Redis.
    pub appends: u64,
    /// Round trips to Redis spent on creates and appends (one per command in `every_step` mode,
    /// one per pipeline in `batched` mode); claims, releases and renewals are not counted.
    pub round_trips: u64,
}

/// Which transactions [`RedisStore::list`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListFilter {
    /// Every run of one workflow.
    Workflow(String),
    /// Every transaction currently in this state.
    State(TransactionState),
}

/// A page of a listing, ordered by creation time (oldest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    /// Which index to read.
    pub filter: ListFilter,
    /// Only transactions created at or after this time (clock milliseconds).
    pub created_from: Option<u64>,
    /// Only transactions created at or before this time.
    pub created_to: Option<u64>,
    /// How many matching transactions to skip.
    pub offset: usize,
    /// Most transactions to return.
    pub limit: usize,
}

impl ListQuery {
    /// The first `limit` transactions matching `filter`, over all times.
    pub fn new(filter: ListFilter, limit: usize) -> Self {
        Self {
            filter,
            created_from: None,
            created_to: None,
            offset: 0,
            limit,
        }
    }
}

/// A [`Store`] backed by Redis. Cheap to clone: clones share one multiplexed connection (which
/// reconnects by itself) and, in batched mode, one writer.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    prefix: String,
    keys: Arc<StoreKeys>,
    stats: Arc<Counters>,
    batch: Option<mpsc::Sender<Job>>,
}

/// The counters behind [`Stats`], shared with the writer.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) creates: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) round_trips: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("batched", &self.inner.batch.is_some())
            .finish()
    }
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Percent-encodes `%` and `:` so a member splits back into its workflow and id.
fn encode(part: &str, out: &mut String) {
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

fn member(key: &TransactionKey) -> String {
    let mut out = String::with_capacity(key.workflow.len() + key.id.len() + 1);
    encode(&key.workflow, &mut out);
    out.push(':');
    encode(&key.id, &mut out);
    out
}

/// A duration in milliseconds as a script argument, capped to ten years (added to Redis's
/// clock in a script, whose numbers are doubles).
fn lease_ms(ms: u64) -> u64 {
    ms.min(315_576_000_000)
}

fn store_error(
    operation: &'static str,
    key: &TransactionKey,
    reason: impl Reason,
) -> gorgon_orchestration::Error {
    gorgon_orchestration::Error::Store {
        operation,
        transaction: key.to_string(),
        reason: reason.reason(operation),
    }
}

/// What a caller is told about a failure. Redis's own text (a script's error may quote
/// values) goes to the log; callers get its kind.
pub(crate) trait Reason {
    fn reason(self, operation: &'static str) -> String;
}

impl Reason for &str {
    fn reason(self, _: &'static str) -> String {
        self.to_string()
    }
}

impl Reason for String {
    fn reason(self, _: &'static str) -> String {
        self
    }
}

impl Reason for redis::RedisError {
    fn reason(self, operation: &'static str) -> String {
        tracing::warn!(operation, error = %self, "a Redis operation failed");
        if self.is_io_error() || self.is_timeout() || self.is_connection_dropped() {
            "Redis could not be reached".to_string()
        } else {
            format!("Redis refused it ({:?})", self.kind())
        }
    }
}

/// The state a batch leaves the transaction in, when it holds a transaction record.
fn batch_state(records: &[Record]) -> Option<&'static str> {
    records.iter().rev().find_map(|r| match r {
        Record::Transaction(fields) => Some(fields.state.as_str()),
        _ => None,
    })
}

fn parse_state(state: &str) -> Option<TransactionState> {
    serde_json::from_value(serde_json::Value::String(state.to_string())).ok()
}

impl RedisStore {
    /// Connects to `options.url`; in batched mode, starts the writer on the current runtime.
    pub async fn connect(options: &Options) -> Result<Self, Error> {
        if options.prefix.is_empty() {
            return Err(Error::InvalidOptions {
                field: "prefix",
                reason: "must not be empty (clear() deletes every key under it)".into(),
            });
        }
        if options.max_batch == 0 {
            return Err(Error::InvalidOptions {
                field: "max_batch",
                reason: "must be at least 1".into(),
            });
        }
        let fail = |error: redis::RedisError| Error::Connect {
            url: redact(&options.url),
            reason: error.to_string(),
        };
        let client = redis::Client::open(options.url.as_str()).map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(options.connect_retries)
            .set_response_timeout(Some(Duration::from_millis(options.response_timeout_ms)));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(fail)?;
        let prefix = options.prefix.clone();
        let keys = Arc::new(StoreKeys {
            prefix: prefix.clone(),
            states: STATES.map(|s| format!("{prefix}by-state:{s}")),
        });
        let stats = Arc::new(Counters::default());
        let batch = match options.durability {
            Durability::EveryStep => None,
            Durability::Batched => {
                let (sender, receiver) = mpsc::channel(options.max_batch.saturating_mul(4));
                tokio::spawn(writer::run(
                    receiver,
                    connection.clone(),
                    keys.clone(),
                    stats.clone(),
                    options.max_batch,
                ));
                Some(sender)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                prefix,
                keys,
                stats,
                batch,
            }),
        })
    }

    /// The prefix of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// What the store has sent so far.
    pub fn stats(&self) -> Stats {
        Stats {
            creates: self.inner.stats.creates.load(Ordering::Relaxed),
            appends: self.inner.stats.appends.load(Ordering::Relaxed),
            round_trips: self.inner.stats.round_trips.load(Ordering::Relaxed),
        }
    }

    fn header_key(&self, member: &str) -> String {
        format!("{}h:{member}", self.inner.prefix)
    }

    fn log_key(&self, member: &str) -> String {
        format!("{}log:{member}", self.inner.prefix)
    }

    fn workflow_key(&self, workflow: &str) -> String {
        self.per_workflow("by-workflow:", workflow)
    }

    /// The index of a workflow's parked transactions, by wake-up time.
    fn parked_key(&self, workflow: &str) -> String {
        self.per_workflow("parked:", workflow)
    }

    /// The index of a workflow's owned transactions, by lease end.
    fn leased_key(&self, workflow: &str) -> String {
        self.per_workflow("leased:", workflow)
    }

    /// The set of the transactions one worker holds.
    fn owned_key(&self, owner: &str) -> String {
        format!("{}owned:{owner}", self.inner.prefix)
    }

    fn per_workflow(&self, kind: &str, workflow: &str) -> String {
        let mut key = format!("{}{kind}", self.inner.prefix);
        encode(workflow, &mut key);
        key
    }

    fn redis_error(&self, operation: &'static str, error: impl Reason) -> Error {
        Error::Redis {
            operation,
            prefix: self.inner.prefix.clone(),
            reason: error.reason(operation),
        }
    }

    /// Sends one write: its own script call, or through the batch writer.
    async fn write(&self, call: Call) -> Result<i64, String> {
        match &self.inner.batch {
            None => {
                let stats = &self.inner.stats;
                let counter = match call {
                    Call::Create(_) => &stats.creates,
                    Call::Append(_) => &stats.appends,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                stats.round_trips.fetch_add(1, Ordering::Relaxed);
                let mut connection = self.inner.connection.clone();
                call.command(&self.inner.keys)
                    .query_async::<i64>(&mut connection)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(sender) => {
                let (reply, done) = oneshot::channel();
                match sender.send(Job { call, reply }).await {
                    Ok(()) => done
                        .await
                        .unwrap_or_else(|_| Err("the batch writer stopped".into())),
                    Err(_) => Err("the batch writer stopped".into()),
                }
            }
        }
    }

    /// Lists transactions from one index, oldest first, with their current summaries.
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<TransactionSummary>, Error> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let index = match &query.filter {
            ListFilter::Workflow(workflow) => self.workflow_key(workflow),
            ListFilter::State(state) => {
                format!("{}by-state:{}", self.inner.prefix, state.as_str())
            }
        };
        let min = query
            .created_from
            .map_or_else(|| "-inf".to_string(), |v| v.to_string());
        let max = query
            .created_to
            .map_or_else(|| "+inf".to_string(), |v| v.to_string());
        let mut connection = self.inner.connection.clone();
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&index)
            .arg(min)
            .arg(max)
            .arg("LIMIT")
            .arg(query.offset)
            .arg(query.limit)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.redis_error("list", e))?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for m in &members {
            pipe.cmd("HMGET").arg(self.header_key(m)).arg(&[
                "workflow",
                "id",
                "run_id",
                "state",
                "created_at",
                "updated_at",
            ]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| self.redis_error("list", e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (m, row) in members.iter().zip(rows) {
            let corrupt = |reason: &str| Error::Corrupt {
                transaction: m.clone(),
                reason: reason.to_string(),
            };
            let [workflow, id, run_id, state, created_at, updated_at]: [Option<String>; 6] = row
                .try_into()
                .map_err(|_| corrupt("HMGET returned the wrong number of fields"))?;
            // The header was replaced or removed between the two reads: skip it.
            let (Some(workflow), Some(id), Some(run_id), Some(state), Some(created_at)) =
                (workflow, id, run_id, state, created_at)
            else {
                continue;
            };
            let created_at: u64 = created_at
                .parse()
                .map_err(|_| corrupt("created_at is not a number"))?;
            out.push(TransactionSummary {
                key: TransactionKey::new(workflow, id),
                run_id: run_id.into(),
                state: parse_state(&state).ok_or_else(|| corrupt("unknown state"))?,
                created_at,
                updated_at: updated_at
                    .and_then(|u| u.parse::<f64>().ok())
                    .map_or(created_at, |u| u as u64),
            });
        }
        Ok(out)
    }

    /// Deletes every key under this store's prefix (for tests and teardown); returns how many.
    pub async fn clear(&self) -> Result<u64, Error> {
        let mut pattern = String::with_capacity(self.inner.prefix.len() + 1);
        for c in self.inner.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut connection = self.inner.connection.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.redis_error("clear", e))?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| self.redis_error("clear", e))?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl TransactionLog for RedisStore {
    async fn create(
        &self,
        header: &TransactionHeader,
        lease: Option<&Lease>,
    ) -> gorgon_orchestration::Result<u64> {
        let key = &header.key;
        let member = member(key);
        let payload = header
            .payload
            .to_json()
            .map_err(|e| store_error("create", key, format!("the payload is not JSON: {e}")))?
            .to_string();
        gorgon_orchestration::store::check_size("payload", key, payload.len())?;
        let call = Call::Create(CreateCall {
            header: self.header_key(&member),
            log: self.log_key(&member),
            workflow_index: self.workflow_key(&key.workflow),
            parked: self.parked_key(&key.workflow),
            leased: self.leased_key(&key.workflow),
            member,
            run_id: header.run_id.to_string(),
            payload: payload.to_string(),
            created_at: header.created_at,
            workflow: key.workflow.to_string(),
            id: key.id.to_string(),
            lease: lease.map(|l| (l.owner.to_string(), lease_ms(l.ms))),
        });
        let epoch = self
            .write(call)
            .await
            .map_err(|reason| store_error("create", key, reason))?;
        match u64::try_from(epoch) {
            Ok(epoch) if epoch >= 1 => Ok(epoch),
            _ => Err(gorgon_orchestration::Error::AlreadyStarted {
                workflow: key.workflow.to_string(),
                transaction: key.id.to_string(),
            }),
        }
    }

    async fn append(
        &self,
        key: &TransactionKey,
        epoch: u64,
        records: Vec<Record>,
    ) -> gorgon_orchestration::Result<()> {
        let records = records.as_slice();
        let member = member(key);
        let encoded = records
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| store_error("append", key, format!("a record is not JSON: {e}")))?;
        for record in &encoded {
            gorgon_orchestration::store::check_size("record", key, record.len())?;
        }
        let call = Call::Append(AppendCall {
            header: self.header_key(&member),
            log: self.log_key(&member),
            parked: self.parked_key(&key.workflow),
            leased: self.leased_key(&key.workflow),
            member,
            epoch,
            state: batch_state(records),
            records: encoded,
        });
        match self.write(call).await {
            Ok(-2) => Err(fenced(key, epoch)),
            Ok(length) if length < 1 => Err(store_error(
                "append",
                key,
                "the transaction was never created",
            )),
            Ok(_) => Ok(()),
            Err(reason) => Err(store_error("append", key, reason)),
        }
    }

    fn write_mode(&self) -> WriteMode {
        WriteMode::batched_if(self.inner.batch.is_some())
    }

    async fn load(
        &self,
        key: &TransactionKey,
    ) -> gorgon_orchestration::Result<Option<StoredTransaction>> {
        let member = member(key);
        let mut connection = self.inner.connection.clone();
        let (fields, log): (Vec<Option<String>>, Vec<String>) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(self.header_key(&member))
            .arg(&["run_id", "payload", "created_at"])
            .cmd("LRANGE")
            .arg(self.log_key(&member))
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .map_err(|e| store_error("load", key, e))?;
        let [run_id, payload, created_at]: [Option<String>; 3] = fields
            .try_into()
            .map_err(|_| store_error("load", key, "HMGET returned the wrong number of fields"))?;
        let (Some(run_id), Some(payload), Some(created_at)) = (run_id, payload, created_at) else {
            return Ok(None);
        };
        let payload: serde_json::Value = serde_json::from_str(&payload).map_err(|e| {
            store_error("load", key, format!("the stored payload is not JSON: {e}"))
        })?;
        let created_at = created_at
            .parse()
            .map_err(|_| store_error("load", key, "the stored created_at is not a number"))?;
        // The first entry marks the run the log belongs to.
        if log.first() != Some(&run_id) {
            return Err(store_error(
                "load",
                key,
                format!("the log does not start with the marker of run {run_id}"),
            ));
        }
        let records = log
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, entry)| {
                serde_json::from_str::<Record>(entry).map_err(|e| {
                    store_error("load", key, format!("log entry {i} is not a record: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(StoredTransaction {
            header: TransactionHeader {
                key: key.clone(),
                run_id: run_id.into(),
                payload: Data::json(payload),
                created_at,
                keep: Default::default(),
            },
            records,
        }))
    }
}

#[async_trait]
impl Leases for RedisStore {
    async fn claim(
        &self,
        key: &TransactionKey,
        lease: &Lease,
    ) -> gorgon_orchestration::Result<Claim> {
        let member = member(key);
        let mut connection = self.inner.connection.clone();
        let (code, epoch, owner): (i64, i64, String) = redis::cmd("EVAL")
            .arg(scripts::CLAIM)
            .arg(3)
            .arg(self.header_key(&member))
            .arg(self.parked_key(&key.workflow))
            .arg(self.leased_key(&key.workflow))
            .arg(&member)
            .arg(&self.inner.prefix)
            .arg(lease.owner.as_ref())
            .arg(lease_ms(lease.ms))
            .query_async(&mut connection)
            .await
            .map_err(|e| store_error("claim", key, e))?;
        Ok(match code {
            1 => Claim::Granted {
                epoch: u64::try_from(epoch).unwrap_or(0),
            },
            2 => Claim::Leased { owner },
            _ => Claim::NotFound,
        })
    }

    async fn release(
        &self,
        key: &TransactionKey,
        epoch: u64,
        wake_in: Option<u64>,
    ) -> gorgon_orchestration::Result<()> {
        let member = member(key);
        let mut connection = self.inner.connection.clone();
        let released: i64 = redis::cmd("EVAL")
            .arg(scripts::RELEASE)
            .arg(3)
            .arg(self.header_key(&member))
            .arg(self.parked_key(&key.workflow))
            .arg(self.leased_key(&key.workflow))
            .arg(&member)
            .arg(&self.inner.prefix)
            .arg(epoch)
            .arg(wake_in.map_or_else(String::new, |ms| lease_ms(ms).to_string()))
            .query_async(&mut connection)
            .await
            .map_err(|e| store_error("release", key, e))?;
        if released == 1 {
            Ok(())
        } else {
            Err(fenced(key, epoch))
        }
    }

    async fn claim_due(
        &self,
        workflows: &[Arc<str>],
        lease: &Lease,
        limit: usize,
    ) -> gorgon_orchestration::Result<Vec<(TransactionKey, u64)>> {
        if workflows.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let failed = |reason: String| gorgon_orchestration::Error::Store {
            operation: "claim_due",
            transaction: format!(
                "any due of {}",
                workflows
                    .iter()
                    .map(|w| w.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            reason,
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(scripts::CLAIM_DUE).arg(workflows.len() * 2);
        for workflow in workflows {
            cmd.arg(self.parked_key(workflow))
                .arg(self.leased_key(workflow));
        }
        cmd.arg(&self.inner.prefix)
            .arg(lease.owner.as_ref())
            .arg(lease_ms(lease.ms))
            .arg(limit);
        let mut connection = self.inner.connection.clone();
        let flat: Vec<String> = cmd
            .query_async(&mut connection)
            .await
            .map_err(|e| failed(e.to_string()))?;
        flat.chunks(3)
            .map(|chunk| match chunk {
                [workflow, id, epoch] => Ok((
                    TransactionKey::new(workflow.as_str(), id.as_str()),
                    epoch
                        .parse()
                        .map_err(|_| failed(format!("epoch {epoch} is not a number")))?,
                )),
                _ => Err(failed("claim_due replied with a partial entry".into())),
            })
            .collect()
    }

    async fn renew(
        &self,
        lease: &Lease,
        keys: &[TransactionKey],
    ) -> gorgon_orchestration::Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut connection = self.inner.connection.clone();
        let mut command = redis::cmd("EVAL");
        command
            .arg(scripts::RENEW)
            .arg(1)
            .arg(self.owned_key(&lease.owner))
            .arg(&self.inner.prefix)
            .arg(lease.owner.as_ref())
            .arg(lease_ms(lease.ms));
        for key in keys {
            command.arg(member(key));
        }
        let renewed: i64 = command.query_async(&mut connection).await.map_err(|e| {
            gorgon_orchestration::Error::Store {
                operation: "renew",
                transaction: format!("every one leased by {}", lease.owner),
                reason: e.reason("renew"),
            }
        })?;
        Ok(usize::try_from(renewed).unwrap_or(0))
    }

    async fn summary(
        &self,
        key: &TransactionKey,
    ) -> gorgon_orchestration::Result<Option<TransactionSummary>> {
        let member = member(key);
        let mut connection = self.inner.connection.clone();
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.header_key(&member))
            .arg(&["run_id", "state", "created_at", "updated_at"])
            .query_async(&mut connection)
            .await
            .map_err(|e| store_error("summary", key, e))?;
        let [run_id, state, created_at, updated_at]: [Option<String>; 4] =
            fields.try_into().map_err(|_| {
                store_error("summary", key, "HMGET returned the wrong number of fields")
            })?;
        let (Some(run_id), Some(state), Some(created_at)) = (run_id, state, created_at) else {
            return Ok(None);
        };
        let created_at: u64 = created_at
            .parse()
            .map_err(|_| store_error("summary", key, "the stored created_at is not a number"))?;
        Ok(Some(TransactionSummary {
            key: key.clone(),
            run_id: run_id.into(),
            state: parse_state(&state).ok_or_else(|| {
                store_error("summary", key, format!("unknown stored state {state}"))
            })?,
            created_at,
            // Written before updated_at existed: the creation time is the best known.
            updated_at: updated_at
                .and_then(|u| u.parse::<f64>().ok())
                .map_or(created_at, |u| u as u64),
        }))
    }
}

#[async_trait]
impl Listing for RedisStore {
    // ---- executions listing and retention (issue 4): see listing.rs ----
    async fn list(
        &self,
        filter: &gorgon_orchestration::TransactionFilter,
    ) -> gorgon_orchestration::Result<gorgon_orchestration::TransactionPage> {
        self.list_page(filter).await
    }

    async fn purge_finished(
        &self,
        purge: &gorgon_orchestration::Purge,
    ) -> gorgon_orchestration::Result<u64> {
        self.purge_page(purge).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_unambiguous() {
        let a = member(&TransactionKey::new("a:b", "c"));
        let b = member(&TransactionKey::new("a", "b:c"));
        assert_ne!(a, b);
        assert_eq!(a, "a%3Ab:c");
        assert_eq!(member(&TransactionKey::new("50%", "x")), "50%25:x");
    }

    #[test]
    fn passwords_stay_out_of_errors() {
        assert_eq!(redact("redis://:secret@host:6379"), "redis://***@host:6379");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn options_default_and_deserialize() {
        let options: Options =
            serde_json::from_str(r#"{"prefix": "p:", "durability": "batched"}"#).unwrap();
        assert_eq!(options.durability, Durability::Batched);
        assert_eq!(options.max_batch, 512);
        assert!(serde_json::from_str::<Options>(r#"{"durability": "sometimes"}"#).is_err());
        assert!(serde_json::from_str::<Options>(r#"{"prefx": "p:"}"#).is_err());
    }

    #[test]
    fn every_state_has_an_index() {
        for (i, name) in STATES.iter().enumerate() {
            assert_eq!(parse_state(name).map(|s| s.as_str()), Some(*name), "{i}");
        }
    }
}
