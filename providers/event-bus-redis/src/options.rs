//! [`Options`]: how to reach Redis and how to deliver.

use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// Configuration of a [`RedisEventBus`](crate::RedisEventBus); deserializable, so a deployment picks
/// the provider and its settings from its config file. Every field has a default.
///
/// ```
/// let options: gorgon_event_bus_redis::Options = serde_json::from_value(serde_json::json!({
///     "url": "redis://127.0.0.1:6379",
///     "prefix": "shop:events",
///     "max_attempts": 3
/// })).unwrap();
/// assert_eq!(options.consumer_group, "gorgon");
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`. Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every key; buses with the same prefix share events. Keys are
    /// `{prefix}:stream`, `{prefix}:dead`, `{prefix}:attempts`, `{prefix}:group:<id>` (the braces make
    /// them one Redis Cluster hash slot). Default `gorgon:events`.
    pub prefix: String,
    /// The application's name on the stream. A subscriber's Redis consumer group is
    /// `<consumer_group>|<subscriber id>|<pattern>`: two applications sharing a stream get each event
    /// once each, instances of one application share the work. Default `gorgon`.
    pub consumer_group: String,
    /// This instance's consumer name within the groups. Keep it stable across restarts (e.g. the pod
    /// name) to resume its own pending events at once; otherwise they are reclaimed after
    /// [`claim_idle_ms`](Self::claim_idle_ms). Default: `<pid>-<random>`.
    pub consumer_name: Option<String>,
    /// Deliveries of one event to one subscriber before it goes to the dead-letter stream. Default 5.
    pub max_attempts: u32,
    /// Wait before the first retry of a failed delivery; doubled each attempt. Default 500 ms.
    pub backoff_initial_ms: u64,
    /// Longest wait between retries. Default 30 000 ms.
    pub backoff_max_ms: u64,
    /// A pending delivery idle this long belongs to a dead consumer and is reclaimed by a live one
    /// (`XAUTOCLAIM`). Live consumers refresh what they hold every third of it. Default 30 000 ms.
    pub claim_idle_ms: u64,
    /// How long one `XREADGROUP` blocks waiting for new events. Default 1 000 ms.
    pub read_block_ms: u64,
    /// Entries read or reclaimed per round trip. Default 32.
    pub batch_size: usize,
    /// Staged groups expire this long after their last `emit`; `None` keeps them until released
    /// or cleared. Default 7 days.
    pub group_ttl_secs: Option<u64>,
    /// Approximate cap on the stream length (`XADD MAXLEN ~`): a safety bound for a subscriber
    /// that stopped reading, since trimming to it can drop events that subscriber has not read
    /// yet (at-least-once traded for memory). Acknowledged events are trimmed anyway (see
    /// `trim_interval_ms`). Default 1,000,000; `None`: no cap.
    pub max_len: Option<u64>,
    /// How often the events every consumer group has acknowledged are trimmed from the stream
    /// (`XTRIM MINID`), in milliseconds; 0 never. Default 60,000.
    pub trim_interval_ms: u64,
    /// Cap on the dead-letter stream (`XADD MAXLEN`): the oldest dead letters go first.
    /// Default 10,000.
    pub dead_letter_max_len: u64,
}

/// The URL may carry a password: it is shown as `[redacted]`.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("consumer_group", &self.consumer_group)
            .field("consumer_name", &self.consumer_name)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_initial_ms", &self.backoff_initial_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("claim_idle_ms", &self.claim_idle_ms)
            .field("read_block_ms", &self.read_block_ms)
            .field("batch_size", &self.batch_size)
            .field("group_ttl_secs", &self.group_ttl_secs)
            .field("max_len", &self.max_len)
            .field("trim_interval_ms", &self.trim_interval_ms)
            .field("dead_letter_max_len", &self.dead_letter_max_len)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "gorgon:events".into(),
            consumer_group: "gorgon".into(),
            consumer_name: None,
            max_attempts: 5,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            claim_idle_ms: 30_000,
            read_block_ms: 1_000,
            batch_size: 32,
            group_ttl_secs: Some(7 * 24 * 3600),
            max_len: Some(1_000_000),
            trim_interval_ms: 60_000,
            dead_letter_max_len: 10_000,
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |field: &'static str, reason: &str| {
            Err(Error::InvalidOptions {
                field,
                reason: reason.to_owned(),
            })
        };
        let bad_name = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '|');
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return invalid("prefix", "must be non-empty and contain no `{` or `}`");
        }
        if bad_name(&self.consumer_group) {
            return invalid(
                "consumer_group",
                "must be non-empty, without whitespace or `|`",
            );
        }
        if self.consumer_name.as_deref().is_some_and(bad_name) {
            return invalid(
                "consumer_name",
                "must be non-empty, without whitespace or `|`",
            );
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1");
        }
        if self.claim_idle_ms < 30 {
            return invalid("claim_idle_ms", "must be at least 30");
        }
        if self.read_block_ms == 0 {
            return invalid(
                "read_block_ms",
                "must be at least 1 (0 would block forever)",
            );
        }
        if self.batch_size == 0 {
            return invalid("batch_size", "must be at least 1");
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return invalid("backoff_max_ms", "must be at least backoff_initial_ms");
        }
        if self.group_ttl_secs == Some(0) {
            return invalid(
                "group_ttl_secs",
                "must be at least 1, or absent for no expiry",
            );
        }
        Ok(())
    }

    /// The wait before retry number `attempt` (1-based attempt that just failed).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(32);
        Duration::from_millis(
            self.backoff_initial_ms
                .saturating_mul(factor)
                .min(self.backoff_max_ms),
        )
    }
}
