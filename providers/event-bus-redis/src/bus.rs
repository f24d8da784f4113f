//! [`RedisEventBus`]: emit, stage, release and subscribe over Redis Streams.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gorgon_event_bus::{
    Envelope, EventBus, EventGroupId, EventId, Handler, Message, Pattern, SubscriberId,
};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{Client, Script, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consumer::Consumer;
use crate::reply;
use crate::{Error, Options};

const RELEASE_SCRIPT: &str = r"
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for _, item in ipairs(items) do
  if ARGV[2] ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', item, 'published_at', ARGV[1])
  else
    redis.call('XADD', KEYS[2], '*', 'event', item, 'published_at', ARGV[1])
  end
end
redis.call('DEL', KEYS[1])
return #items
";

const CLEAR_SOME_SCRIPT: &str = r"
local items = redis.call('LRANGE', KEYS[1], 0, -1)
if #items == 0 then return 0 end
local drop = {}
for _, name in ipairs(ARGV) do drop[name] = true end
local keep = {}
for _, item in ipairs(items) do
  local ok, envelope = pcall(cjson.decode, item)
  local named = ok and type(envelope) == 'table' and type(envelope.message) == 'table'
    and drop[envelope.message.name]
  if not named then table.insert(keep, item) end
end
local dropped = #items - #keep
if dropped > 0 then
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('DEL', KEYS[1])
  for _, item in ipairs(keep) do redis.call('RPUSH', KEYS[1], item) end
  if #keep > 0 and ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return dropped
";

/// The Redis keys of one bus prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub stream: String,
    pub dead: String,
    pub attempts: String,
    group_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let base = format!("{{{prefix}}}");
        Self {
            stream: format!("{base}:stream"),
            dead: format!("{base}:dead"),
            attempts: format!("{base}:attempts"),
            group_prefix: format!("{base}:group:"),
        }
    }

    fn staging(&self, group: &EventGroupId) -> String {
        format!("{}{}", self.group_prefix, group.as_str())
    }
}

/// What every consumer task of one bus shares.
pub(crate) struct Shared {
    pub options: Options,
    pub keys: Keys,
    pub consumer_name: String,
    pub client: Client,
    pub conn: ConnectionManager,
}

impl Shared {
    pub(crate) fn redis_group(&self, pattern: &Pattern, subscriber: &SubscriberId) -> String {
        format!(
            "{}|{}|{}",
            self.options.consumer_group,
            subscriber.as_str(),
            pattern.as_str()
        )
    }

    pub(crate) async fn ensure_group(&self, group: &str) -> Result<(), Error> {
        let result: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.stream)
            .arg(group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match result {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(Error::Redis {
                operation: "subscribe",
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

struct Subscription {
    active: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Subscription {
    fn signal_stop(&self) {
        self.active.store(false, Ordering::Release);
        let _ = self.stop.send(true);
    }
}

struct Inner {
    shared: Arc<Shared>,
    subscriptions: Mutex<HashMap<(String, SubscriberId), Subscription>>,
    shut_down: AtomicBool,
    /// Acknowledged events trimmed from the stream so far.
    trimmed: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for sub in self.subscriptions.get_mut().values() {
            sub.signal_stop();
            for task in &sub.tasks {
                task.abort();
            }
        }
    }
}

/// The Redis Streams event bus: at-least-once delivery per subscriber across processes.
///
/// Cheap to clone (one shared connection and set of consumer tasks); dropping the last clone
/// stops its consumers abruptly, like a crash ([`shutdown`](Self::shutdown) lets running handlers
/// finish). See the crate docs for the contract and the Redis layout.
#[derive(Clone)]
pub struct RedisEventBus {
    inner: Arc<Inner>,
}

/// An event a subscriber failed to handle `max_attempts` times, as kept in the dead-letter stream.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Id of the entry in the dead-letter stream.
    pub entry_id: String,
    /// The subscriber that failed.
    pub subscriber_id: String,
    /// The pattern it was subscribed with.
    pub pattern: String,
    /// Its Redis consumer group.
    pub consumer_group: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error (or why the event could not be handled).
    pub error: String,
    /// The event, when it could be decoded.
    pub event: Option<Envelope>,
    /// When it was dead-lettered.
    pub dead_at: Option<DateTime<Utc>>,
}

impl RedisEventBus {
    /// Validates `options` and connects. No consumer runs until the first `subscribe`.
    pub async fn connect(options: Options) -> Result<Self, Error> {
        options.validate()?;
        let client = Client::open(options.url.as_str()).map_err(Error::redis("connect"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(Error::redis("connect"))?;
        let consumer_name = options.consumer_name.clone().unwrap_or_else(|| {
            let random = uuid::Uuid::new_v4().simple().to_string();
            format!("{}-{}", std::process::id(), &random[..12])
        });
        let bus = Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    keys: Keys::new(&options.prefix),
                    options,
                    consumer_name,
                    client,
                    conn,
                }),
                subscriptions: Mutex::new(HashMap::new()),
                shut_down: AtomicBool::new(false),
                trimmed: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        Ok(bus.with_trimming())
    }

    /// Starts the task trimming acknowledged events (when configured and in a runtime); it
    /// ends with the last handle to the bus.
    fn with_trimming(self) -> Self {
        let every = self.inner.shared.options.trim_interval_ms;
        if every == 0 {
            return self;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self;
        };
        let bus = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(every));
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(inner) = bus.upgrade() else { return };
                let bus = RedisEventBus { inner };
                if let Err(error) = bus.trim_acknowledged().await {
                    tracing::warn!(%error, "trimming acknowledged events failed");
                }
            }
        });
        self
    }

    /// Trims from the stream the events every consumer group has acknowledged (`XTRIM MINID`
    /// at the oldest entry a group still has pending or not yet delivered); returns how many.
    /// Without any group nothing is trimmed (a subscriber may yet come). Runs every
    /// `trim_interval_ms` by itself.
    pub async fn trim_acknowledged(&self) -> Result<u64, Error> {
        let shared = &self.inner.shared;
        let mut conn = shared.conn.clone();
        let groups: Vec<HashMap<String, redis::Value>> = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&shared.keys.stream)
            .query_async(&mut conn)
            .await
        {
            Ok(groups) => groups,
            // No stream yet: nothing to trim.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                return Ok(0);
            }
            Err(e) => {
                return Err(Error::Redis {
                    operation: "trim",
                    source: e,
                });
            }
        };
        let mut keep_from: Option<StreamId> = None;
        for group in &groups {
            let text = |field: &str| match group.get(field) {
                Some(redis::Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
                Some(redis::Value::SimpleString(text)) => Some(text.clone()),
                _ => None,
            };
            let (Some(name), Some(delivered)) = (text("name"), text("last-delivered-id")) else {
                continue;
            };
            let pending = matches!(group.get("pending"), Some(redis::Value::Int(n)) if *n > 0);
            let oldest = if pending {
                let summary: (u64, Option<String>, Option<String>, redis::Value) =
                    redis::cmd("XPENDING")
                        .arg(&shared.keys.stream)
                        .arg(&name)
                        .query_async(&mut conn)
                        .await
                        .map_err(Error::redis("trim"))?;
                summary.1.as_deref().and_then(StreamId::parse)
            } else {
                StreamId::parse(&delivered).map(StreamId::next)
            };
            let Some(oldest) = oldest else { continue };
            keep_from = Some(keep_from.map_or(oldest, |k| k.min(oldest)));
        }
        let Some(keep_from) = keep_from else {
            return Ok(0);
        };
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(&shared.keys.stream)
            .arg("MINID")
            .arg(keep_from.to_string())
            .query_async(&mut conn)
            .await
            .map_err(Error::redis("trim"))?;
        self.inner.trimmed.fetch_add(trimmed, Ordering::Relaxed);
        if trimmed > 0 {
            tracing::debug!(trimmed, "trimmed acknowledged events from the stream");
        }
        Ok(trimmed)
    }

    /// Acknowledged events trimmed from the stream by this handle's bus so far.
    pub fn trimmed(&self) -> u64 {
        self.inner.trimmed.load(Ordering::Relaxed)
    }

    /// This instance's consumer name in the Redis consumer groups.
    pub fn consumer_name(&self) -> &str {
        &self.inner.shared.consumer_name
    }

    /// The options the bus runs with.
    pub fn options(&self) -> &Options {
        &self.inner.shared.options
    }

    /// Deliveries to `subscriber_id` under `pattern` that are read but not yet completed (in
    /// flight, awaiting a retry, or held by a dead consumer), across all instances.
    pub async fn pending(&self, pattern: &str, subscriber_id: &str) -> Result<u64, Error> {
        let pattern = Pattern::parse(pattern)?;
        let subscriber = SubscriberId::new(subscriber_id)?;
        let shared = &self.inner.shared;
        let result: redis::RedisResult<Value> = redis::cmd("XPENDING")
            .arg(&shared.keys.stream)
            .arg(shared.redis_group(&pattern, &subscriber))
            .query_async(&mut shared.conn.clone())
            .await;
        match result {
            Ok(Value::Array(summary)) => Ok(summary
                .first()
                .and_then(reply::int)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)),
            Ok(_) => Ok(0),
            Err(e) if e.code() == Some("NOGROUP") => Ok(0),
            Err(e) => Err(Error::Redis {
                operation: "pending",
                source: e,
            }),
        }
    }

    /// The oldest `count` entries of the dead-letter stream.
    pub async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, Error> {
        let shared = &self.inner.shared;
        let raw: Value = redis::cmd("XRANGE")
            .arg(&shared.keys.dead)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut shared.conn.clone())
            .await
            .map_err(Error::redis("dead_letters"))?;
        Ok(reply::entries(&raw)
            .into_iter()
            .map(|entry| {
                let fields = entry.fields.unwrap_or_default();
                let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
                DeadLetter {
                    subscriber_id: get("subscriber_id"),
                    pattern: get("pattern"),
                    consumer_group: get("consumer_group"),
                    attempts: get("attempts").parse().unwrap_or(0),
                    error: get("error"),
                    event: fields
                        .get("event")
                        .and_then(|e| serde_json::from_str(e).ok()),
                    dead_at: fields
                        .get("dead_at")
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc)),
                    entry_id: entry.id,
                }
            })
            .collect())
    }

    /// Stops every consumer of this bus, letting handlers that are running finish; their events
    /// are completed. Events waiting for a retry stay pending in Redis and are reclaimed by another
    /// instance (or this one's next run). Later `subscribe` calls fail with `ShutDown`.
    pub async fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::Release);
        let subscriptions: Vec<Subscription> = self
            .inner
            .subscriptions
            .lock()
            .drain()
            .map(|(_, s)| s)
            .collect();
        for sub in &subscriptions {
            sub.signal_stop();
        }
        for sub in subscriptions {
            for task in sub.tasks {
                let _ = task.await;
            }
        }
    }

    async fn emit_envelopes(&self, envelopes: &[Envelope]) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let published_at = Utc::now().to_rfc3339();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut staged = std::collections::HashSet::new();
        for envelope in envelopes {
            let json = serde_json::to_string(envelope).map_err(|source| {
                gorgon_event_bus::Error::Serialization {
                    operation: "emit",
                    event_name: envelope.message.name.clone(),
                    source,
                }
            })?;
            match &envelope.message.metadata.event_group_id {
                Some(group) => {
                    let key = shared.keys.staging(group);
                    pipe.cmd("RPUSH").arg(&key).arg(json).ignore();
                    staged.insert(key);
                }
                None => {
                    let cmd = pipe.cmd("XADD").arg(&shared.keys.stream);
                    if let Some(max_len) = shared.options.max_len {
                        cmd.arg("MAXLEN").arg("~").arg(max_len);
                    }
                    cmd.arg("*")
                        .arg("event")
                        .arg(json)
                        .arg("published_at")
                        .arg(&published_at)
                        .ignore();
                }
            }
        }
        if let Some(ttl) = shared.options.group_ttl_secs {
            for key in staged {
                pipe.cmd("EXPIRE").arg(key).arg(ttl).ignore();
            }
        }
        pipe.query_async::<()>(&mut shared.conn.clone())
            .await
            .map_err(Error::redis("emit"))
    }
}

#[async_trait]
impl EventBus for RedisEventBus {
    async fn emit(&self, messages: Vec<Message>) -> Result<Vec<EventId>, gorgon_event_bus::Error> {
        let envelopes = Envelope::prepare(messages)?;
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        self.emit_envelopes(&envelopes).await?;
        Ok(envelopes.iter().map(|e| e.id).collect())
    }

    async fn subscribe(
        &self,
        pattern: &str,
        subscriber_id: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<(), gorgon_event_bus::Error> {
        let pattern = Pattern::parse(pattern)?;
        let subscriber = SubscriberId::new(subscriber_id)?;
        let key = (pattern.as_str().to_owned(), subscriber.clone());
        let duplicate = || gorgon_event_bus::Error::DuplicateSubscriber {
            pattern: pattern.as_str().to_owned(),
            subscriber_id: subscriber.as_str().to_owned(),
        };
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(gorgon_event_bus::Error::ShutDown {
                operation: "subscribe",
            });
        }
        if self.inner.subscriptions.lock().contains_key(&key) {
            return Err(duplicate());
        }
        let shared = self.inner.shared.clone();
        let group = shared.redis_group(&pattern, &subscriber);
        shared.ensure_group(&group).await?;

        let mut subscriptions = self.inner.subscriptions.lock();
        if subscriptions.contains_key(&key) {
            return Err(duplicate());
        }
        let active = Arc::new(AtomicBool::new(true));
        let (stop, stopped) = watch::channel(false);
        let consumer = Consumer::new(shared, group, pattern, subscriber, handler, active.clone());
        let tasks = consumer.spawn(stopped);
        subscriptions.insert(
            key,
            Subscription {
                active,
                stop,
                tasks,
            },
        );
        Ok(())
    }

    async fn unsubscribe(
        &self,
        pattern: &str,
        subscriber_id: &str,
    ) -> Result<bool, gorgon_event_bus::Error> {
        let pattern = Pattern::parse(pattern)?;
        let subscriber = SubscriberId::new(subscriber_id)?;
        let removed = self
            .inner
            .subscriptions
            .lock()
            .remove(&(pattern.as_str().to_owned(), subscriber));
        Ok(removed.map(|sub| sub.signal_stop()).is_some())
    }

    async fn release_group(&self, group: &EventGroupId) -> Result<usize, gorgon_event_bus::Error> {
        let shared = &self.inner.shared;
        let max_len = shared
            .options
            .max_len
            .map(|n| n.to_string())
            .unwrap_or_default();
        let released: i64 = Script::new(RELEASE_SCRIPT)
            .key(shared.keys.staging(group))
            .key(&shared.keys.stream)
            .arg(Utc::now().to_rfc3339())
            .arg(max_len)
            .invoke_async(&mut shared.conn.clone())
            .await
            .map_err(Error::redis("release_group"))?;
        Ok(usize::try_from(released).unwrap_or(0))
    }

    async fn clear_group(
        &self,
        group: &EventGroupId,
        only: Option<&[&str]>,
    ) -> Result<usize, gorgon_event_bus::Error> {
        let shared = &self.inner.shared;
        let key = shared.keys.staging(group);
        let mut conn = shared.conn.clone();
        let dropped: i64 = match only {
            None => {
                let (len, _): (i64, i64) = redis::pipe()
                    .atomic()
                    .cmd("LLEN")
                    .arg(&key)
                    .cmd("DEL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .map_err(Error::redis("clear_group"))?;
                len
            }
            Some([]) => 0,
            Some(names) => {
                let script = Script::new(CLEAR_SOME_SCRIPT);
                let mut invocation = script.key(&key);
                for name in names {
                    invocation.arg(*name);
                }
                invocation
                    .invoke_async(&mut conn)
                    .await
                    .map_err(Error::redis("clear_group"))?
            }
        };
        Ok(usize::try_from(dropped).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_cluster_slot() {
        let keys = Keys::new("shop:events");
        assert_eq!(keys.stream, "{shop:events}:stream");
        assert_eq!(
            keys.staging(&EventGroupId::new("run-1").unwrap()),
            "{shop:events}:group:run-1"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let options = Options {
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
            ..Options::default()
        };
        assert_eq!(options.backoff(1), Duration::from_millis(100));
        assert_eq!(options.backoff(3), Duration::from_millis(400));
        assert_eq!(options.backoff(10), Duration::from_millis(1_000));
        assert_eq!(options.backoff(u32::MAX), Duration::from_millis(1_000));
    }

    #[test]
    fn bad_options_are_typed_errors() {
        for options in [
            Options {
                max_attempts: 0,
                ..Options::default()
            },
            Options {
                prefix: "a{b}".into(),
                ..Options::default()
            },
            Options {
                consumer_name: Some("has space".into()),
                ..Options::default()
            },
            Options {
                read_block_ms: 0,
                ..Options::default()
            },
        ] {
            assert!(matches!(
                options.validate(),
                Err(Error::InvalidOptions { .. })
            ));
        }
        assert!(Options::default().validate().is_ok());
        let unknown = serde_json::from_value::<Options>(serde_json::json!({"urll": "x"}));
        assert!(unknown.is_err(), "unknown option keys are refused");
    }
}

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64);

impl StreamId {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }
    /// The smallest id after this one.
    fn next(self) -> Self {
        match self.1.checked_add(1) {
            Some(seq) => StreamId(self.0, seq),
            None => StreamId(self.0.saturating_add(1), 0),
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}
