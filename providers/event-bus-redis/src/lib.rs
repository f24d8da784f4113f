//! Redis Streams provider of the Gorgon event bus: [`RedisEventBus`], configured by [`Options`].
//!
//! # Use it
//!
//! 1. Deserialize [`Options`] from configuration (`url`, `prefix`, `consumer_group`, retry settings).
//! 2. `let bus: Arc<dyn EventBus> = Arc::new(RedisEventBus::connect(options).await?);`
//! 3. Subscribe and emit as with any `gorgon_event_bus::EventBus`; watch
//!    [`RedisEventBus::pending`] and [`RedisEventBus::dead_letters`] in operations.
//! 4. On shutdown call [`RedisEventBus::shutdown`] to let running handlers finish.
//!
//! # How it works
//!
//! ```text
//!  emit ──XADD──► {prefix}:stream ◄── one consumer group per (application, subscriber id, pattern)
//!  emit(grouped) ─RPUSH─► {prefix}:group:<id> ──release_group (Lua: XADD all, DEL)──┘
//!                                          └──clear_group (DEL / Lua filter)──► dropped
//!  each instance × subscription: XREADGROUP → handler → XACK      (completion per event × subscriber)
//!                                   failure → retry with backoff → {prefix}:dead after max_attempts
//!                        dead consumer's entries ──XAUTOCLAIM after claim_idle──► a live consumer
//! ```
//!
//! Every event is appended to one stream, whether or not the emitting instance has subscribers
//! (Medusa drops events without a local subscriber, medusa#14526). Each subscription is a Redis
//! consumer group named `<consumer_group>|<subscriber id>|<pattern>`, so every subscriber reads the
//! stream independently and the instances that subscribe the same id share its deliveries.
//!
//! # Contract
//!
//! - **At least once per subscriber.** An event is complete for a subscriber when its handler
//!   returned `Ok` and the entry was acknowledged in that subscriber's group. A failure (error,
//!   panic, or a crash of the process mid-handler) redelivers the event **to that subscriber
//!   only**: the others already acknowledged it in their own groups and never run again.
//! - **Retries:** a failed delivery is retried by the same instance after
//!   `backoff_initial_ms · 2^(attempt-1)` (capped at `backoff_max_ms`); attempts are counted in Redis
//!   (`{prefix}:attempts`), so a crash mid-handler counts as an attempt. After `max_attempts` the
//!   event goes to the dead-letter stream `{prefix}:dead` with the subscriber, pattern, attempts,
//!   last error and the event, and is acknowledged. [`Event::attempt`](gorgon_event_bus::Event)
//!   tells the handler which attempt it is; handlers should be idempotent on `Event::id`.
//! - **Crash of a subscriber process:** its unacknowledged entries stay pending in Redis; the same
//!   consumer name resumes them at once on restart, another instance reclaims them once idle for
//!   `claim_idle_ms`. Live consumers keep their in-flight entries fresh, so a slow handler is not
//!   stolen while its instance lives.
//! - **Ordering:** one subscriber on one instance receives events in stream order; a retried event
//!   can come after later ones; with several instances per subscriber, order is per instance.
//! - **Durable subscriptions:** a subscriber's group stays after `unsubscribe` or a restart, so
//!   events published meanwhile are delivered when that subscriber id subscribes again. A
//!   subscriber id is only ever delivered events published after its first subscription.
//! - **Grouped events** are staged in Redis (`{prefix}:group:<id>`) and survive a restart of the
//!   emitting process; `release_group` moves them to the stream atomically (a Lua script), in
//!   emission order; they expire `group_ttl_secs` after the last emit into the group.
//! - `emit` of several messages is one atomic `MULTI`: all are published or staged, or none.
//!
//! # Costs
//!
//! Each subscription on an instance runs one task and holds one dedicated connection for its
//! blocking `XREADGROUP`; every subscriber group reads every event (events its pattern does not
//! match are acknowledged without running the handler). The stream is not trimmed unless
//! [`Options::max_len`] is set.

mod bus;
mod consumer;
mod error;
mod options;
mod reply;

pub use bus::{DeadLetter, RedisEventBus};
pub use error::Error;
pub use options::Options;
