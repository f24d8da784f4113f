//! One subscription's delivery loop: read, reclaim, run the handler, retry, dead-letter.
//!
//! ```text
//!  own pending (same consumer name, once) ─┐
//!  due retries (in memory, backoff) ───────┤
//!  XAUTOCLAIM idle ≥ claim_idle ───────────┼─► process(entry) ── pattern? ─no─► XACK
//!  XREADGROUP > (blocking) ────────────────┘        │ yes
//!                                       HINCRBY attempts ─ > max? ─► dead letter + XACK
//!                                                   │
//!                                               handler ── ok ──► XACK + HDEL (completed)
//!                                                   │ err / panic
//!                                     attempt < max ─► retry later   else ─► dead letter + XACK
//! ```
//! A heartbeat task re-claims (`XCLAIM … JUSTID`) the entries this consumer holds every third of
//! `claim_idle`, so live consumers keep them and only a dead consumer's entries go idle.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use gorgon_event_bus::{Envelope, Handler, Pattern, SubscriberId};
use parking_lot::Mutex;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Error;
use crate::bus::Shared;
use crate::reply::{self, Entry};

pub(crate) struct Consumer {
    shared: Arc<Shared>,
    group: String,
    pattern: Pattern,
    subscriber: SubscriberId,
    handler: Arc<dyn Handler>,
    active: Arc<AtomicBool>,
    held: Arc<Mutex<HashSet<String>>>,
}

struct Retry {
    due: Instant,
    entry: Entry,
}

impl Consumer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        group: String,
        pattern: Pattern,
        subscriber: SubscriberId,
        handler: Arc<dyn Handler>,
        active: Arc<AtomicBool>,
    ) -> Self {
        Self {
            shared,
            group,
            pattern,
            subscriber,
            handler,
            active,
            held: Arc::default(),
        }
    }

    /// Starts the delivery loop and its heartbeat; both end when `stopped` flips or its sender drops.
    pub(crate) fn spawn(self, stopped: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let heartbeat = tokio::spawn(heartbeat(
            self.shared.clone(),
            self.group.clone(),
            self.held.clone(),
            stopped.clone(),
        ));
        let main = tokio::spawn(self.run(stopped));
        vec![main, heartbeat]
    }

    fn stopping(&self) -> bool {
        !self.active.load(Ordering::Acquire)
    }

    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut state = LoopState {
            retries: Vec::new(),
            reader: None,
            next_claim: Instant::now(),
            resumed_own: false,
        };
        while !self.stopping() {
            if let Err(error) = self.step(&mut state, &mut stopped).await {
                tracing::warn!(
                    subscriber = %self.subscriber, group = %self.group, error = %error,
                    "event bus consumer error; retrying"
                );
                state.reader = None;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stopped.changed() => {}
                }
            }
        }
    }

    async fn step(
        &self,
        state: &mut LoopState,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let options = &self.shared.options;
        let keys = &self.shared.keys;

        if !state.resumed_own {
            // Entries delivered to this consumer name before a restart: resume them first.
            let mut from = "0".to_owned();
            loop {
                let raw: redis::Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.shared.consumer_name)
                    .arg("COUNT")
                    .arg(options.batch_size)
                    .arg("STREAMS")
                    .arg(&keys.stream)
                    .arg(&from)
                    .query_async(&mut self.shared.conn.clone())
                    .await
                    .map_err(Error::redis("resume pending"))?;
                let entries = reply::read_reply(&raw);
                let Some(last) = entries.last() else { break };
                from = last.id.clone();
                for entry in entries {
                    self.process(entry, &mut state.retries).await?;
                }
            }
            state.resumed_own = true;
        }

        let now = Instant::now();
        while let Some(index) = state.retries.iter().position(|r| r.due <= now) {
            let retry = state.retries.remove(index);
            self.process(retry.entry, &mut state.retries).await?;
        }

        let claim_idle = Duration::from_millis(options.claim_idle_ms);
        if Instant::now() >= state.next_claim {
            let mut cursor = "0-0".to_owned();
            for _ in 0..8 {
                let raw: redis::Value = redis::cmd("XAUTOCLAIM")
                    .arg(&keys.stream)
                    .arg(&self.group)
                    .arg(&self.shared.consumer_name)
                    .arg(options.claim_idle_ms)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(options.batch_size)
                    .query_async(&mut self.shared.conn.clone())
                    .await
                    .map_err(Error::redis("reclaim"))?;
                let (next, claimed) = reply::autoclaim_reply(&raw);
                for entry in claimed {
                    if self.held.lock().contains(&entry.id) {
                        continue;
                    }
                    tracing::info!(
                        subscriber = %self.subscriber, entry = %entry.id,
                        "reclaimed an event from an idle consumer"
                    );
                    self.process(entry, &mut state.retries).await?;
                }
                if next == "0-0" {
                    break;
                }
                cursor = next;
            }
            state.next_claim = Instant::now() + claim_idle / 2;
        }

        let mut wait = Duration::from_millis(options.read_block_ms)
            .min(state.next_claim.saturating_duration_since(Instant::now()));
        if let Some(due) = state.retries.iter().map(|r| r.due).min() {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        let block_ms = wait.as_millis().max(1);
        if state.reader.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(
                    Duration::from_millis(options.read_block_ms) + Duration::from_secs(5),
                ));
            let conn = self
                .shared
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(Error::redis("connect reader"))?;
            state.reader = Some(conn);
        }
        let Some(reader) = state.reader.as_mut() else {
            return Ok(());
        };
        let mut read_cmd = redis::cmd("XREADGROUP");
        read_cmd
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.shared.consumer_name)
            .arg("COUNT")
            .arg(options.batch_size)
            .arg("BLOCK")
            .arg(u64::try_from(block_ms).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(&keys.stream)
            .arg(">");
        let read = read_cmd.query_async::<redis::Value>(reader);
        let result = tokio::select! {
            result = read => result,
            _ = stopped.changed() => return Ok(()),
        };
        let raw = match result {
            Ok(raw) => raw,
            Err(e) if e.code() == Some("NOGROUP") => {
                // The stream or group was deleted under us: recreate it and carry on.
                self.shared.ensure_group(&self.group).await?;
                return Ok(());
            }
            Err(e) => return Err(Error::redis("read")(e)),
        };
        for entry in reply::read_reply(&raw) {
            self.process(entry, &mut state.retries).await?;
        }
        Ok(())
    }

    /// Delivers one entry; on a Redis error the entry stays pending (and is reclaimed later).
    async fn process(&self, entry: Entry, retries: &mut Vec<Retry>) -> Result<(), Error> {
        if self.stopping() {
            return Ok(());
        }
        let id = entry.id.clone();
        let result = self.deliver(entry, retries).await;
        if result.is_err() {
            self.held.lock().remove(&id);
        }
        result
    }

    async fn deliver(&self, entry: Entry, retries: &mut Vec<Retry>) -> Result<(), Error> {
        let options = &self.shared.options;
        let Some(fields) = &entry.fields else {
            // Trimmed from the stream before we could deliver it: nothing left to deliver.
            return self.complete(&entry.id).await;
        };
        let envelope = match decode(fields) {
            Ok(envelope) => envelope,
            Err(reason) => {
                return self
                    .dead_letter(&entry.id, 0, &reason, fields.get("event"))
                    .await;
            }
        };
        if !self.pattern.matches(&envelope.message.name) {
            return self.complete(&entry.id).await;
        }
        let attempt: u32 = redis::cmd("HINCRBY")
            .arg(&self.shared.keys.attempts)
            .arg(self.attempt_field(&entry.id))
            .arg(1)
            .query_async(&mut self.shared.conn.clone())
            .await
            .map_err(Error::redis("count attempt"))?;
        if attempt > options.max_attempts {
            let reason = "the process stopped during the last attempt";
            return self
                .dead_letter(&entry.id, attempt - 1, reason, fields.get("event"))
                .await;
        }
        self.held.lock().insert(entry.id.clone());
        let event_id = envelope.id;
        let outcome = AssertUnwindSafe(self.handler.handle(envelope.into_event(attempt)))
            .catch_unwind()
            .await;
        let error = match outcome {
            Ok(Ok(())) => {
                self.complete(&entry.id).await?;
                self.held.lock().remove(&entry.id);
                return Ok(());
            }
            Ok(Err(error)) => error.to_string(),
            Err(panic) => panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .map_or_else(
                    || "handler panicked".to_owned(),
                    |m| format!("handler panicked: {m}"),
                ),
        };
        if attempt >= options.max_attempts {
            self.dead_letter(&entry.id, attempt, &error, fields.get("event"))
                .await?;
            self.held.lock().remove(&entry.id);
            return Ok(());
        }
        let backoff = options.backoff(attempt);
        tracing::warn!(
            subscriber = %self.subscriber, %event_id, attempt, error = %error,
            retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "subscriber failed; will retry"
        );
        retries.push(Retry {
            due: Instant::now() + backoff,
            entry,
        });
        Ok(())
    }

    fn attempt_field(&self, entry_id: &str) -> String {
        format!("{}|{}", self.group, entry_id)
    }

    /// Marks the entry completed for this subscriber: acknowledged, attempt counter gone.
    async fn complete(&self, entry_id: &str) -> Result<(), Error> {
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&self.shared.keys.stream)
            .arg(&self.group)
            .arg(entry_id)
            .ignore()
            .cmd("HDEL")
            .arg(&self.shared.keys.attempts)
            .arg(self.attempt_field(entry_id))
            .ignore()
            .query_async::<()>(&mut self.shared.conn.clone())
            .await
            .map_err(Error::redis("complete"))
    }

    async fn dead_letter(
        &self,
        entry_id: &str,
        attempts: u32,
        error: &str,
        event: Option<&String>,
    ) -> Result<(), Error> {
        tracing::error!(
            subscriber = %self.subscriber, entry = %entry_id, attempts, error = %error,
            "event moved to the dead-letter stream"
        );
        let keys = &self.shared.keys;
        redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(&keys.dead)
            .arg("MAXLEN")
            .arg(self.shared.options.dead_letter_max_len.max(1))
            .arg("*")
            .arg("subscriber_id")
            .arg(self.subscriber.as_str())
            .arg("pattern")
            .arg(self.pattern.as_str())
            .arg("consumer_group")
            .arg(&self.group)
            .arg("stream_entry_id")
            .arg(entry_id)
            .arg("attempts")
            .arg(attempts)
            .arg("error")
            .arg(error)
            .arg("event")
            .arg(event.map_or("", String::as_str))
            .arg("dead_at")
            .arg(Utc::now().to_rfc3339())
            .ignore()
            .cmd("XACK")
            .arg(&keys.stream)
            .arg(&self.group)
            .arg(entry_id)
            .ignore()
            .cmd("HDEL")
            .arg(&keys.attempts)
            .arg(self.attempt_field(entry_id))
            .ignore()
            .query_async::<()>(&mut self.shared.conn.clone())
            .await
            .map_err(Error::redis("dead_letter"))
    }
}

struct LoopState {
    retries: Vec<Retry>,
    reader: Option<MultiplexedConnection>,
    next_claim: Instant,
    resumed_own: bool,
}

fn decode(fields: &HashMap<String, String>) -> Result<Envelope, String> {
    let json = fields
        .get("event")
        .ok_or("stream entry has no `event` field")?;
    let mut envelope: Envelope =
        serde_json::from_str(json).map_err(|e| format!("undecodable event: {e}"))?;
    if let Some(published) = fields
        .get("published_at")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        envelope.message.metadata.published_at = Some(published.with_timezone(&Utc));
    }
    Ok(envelope)
}

/// Keeps this consumer's entries (in flight or awaiting retry) fresh so no one reclaims them.
async fn heartbeat(
    shared: Arc<Shared>,
    group: String,
    held: Arc<Mutex<HashSet<String>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let period = Duration::from_millis(shared.options.claim_idle_ms / 3);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopped.changed() => return,
        }
        let ids: Vec<String> = held.lock().iter().cloned().collect();
        if ids.is_empty() {
            continue;
        }
        let result = redis::cmd("XCLAIM")
            .arg(&shared.keys.stream)
            .arg(&group)
            .arg(&shared.consumer_name)
            .arg(0)
            .arg(&ids)
            .arg("JUSTID")
            .query_async::<redis::Value>(&mut shared.conn.clone())
            .await;
        if let Err(error) = result {
            tracing::warn!(group = %group, error = %error, "event bus heartbeat failed");
        }
    }
}
