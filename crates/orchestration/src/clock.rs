//! Time, injected: the engine never reads the system clock itself.
//!
//! [`SystemClock`] is wall time with tokio timers; [`ManualClock`] only moves when a test calls
//! [`ManualClock::advance`], so retry intervals and timeouts are tested without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A boxed future, as the clock hands out.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of time in milliseconds and of timers on that time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch (or since the clock's own origin).
    fn now_ms(&self) -> u64;
    /// A future that completes once `now_ms() >= at_ms`.
    fn sleep_until(&self, at_ms: u64) -> Sleep;
}

/// Milliseconds since the Unix epoch, read from the system clock on each call (not through a
/// [`Clock`]): the time durable stores stamp `updated_at` with, and retention cuts by.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Wall-clock time; timers are tokio sleeps.
///
/// The engine reads its clock whenever a handler returns, so a reading is made cheap: it comes
/// from the CPU's counter where that runs at a constant rate (through [`quanta`]; the operating
/// system's monotonic clock elsewhere), offset to the system's wall clock. The offset is taken
/// again once a second, so a change to the wall clock (an NTP step) shows within a second.
/// The first reading in a process calibrates the counter against the monotonic clock (at most
/// 200 ms).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        WALL.get_or_init(Wall::new).now_ns() / 1_000_000
    }
    fn sleep_until(&self, at_ms: u64) -> Sleep {
        let wait = at_ms.saturating_sub(self.now_ms());
        Box::pin(async move {
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        })
    }
}

/// The process's wall clock as [`SystemClock`] reads it.
static WALL: OnceLock<Wall> = OnceLock::new();

/// A monotonic counter and its offset to the wall clock.
struct Wall {
    counter: quanta::Clock,
    /// Wall-clock nanoseconds minus counter nanoseconds (wrapping), at the last anchoring.
    offset_ns: AtomicU64,
    /// The counter reading (nanoseconds) after which the offset is taken again.
    anchor_due_ns: AtomicU64,
}

impl Wall {
    /// How long an offset serves.
    const ANCHOR_NS: u64 = 1_000_000_000;

    fn new() -> Self {
        let wall = Wall {
            counter: quanta::Clock::new(),
            offset_ns: AtomicU64::new(0),
            anchor_due_ns: AtomicU64::new(0),
        };
        wall.anchor(wall.counter_ns());
        wall
    }

    fn counter_ns(&self) -> u64 {
        self.counter.delta_as_nanos(0, self.counter.raw())
    }

    /// The longest a wall-clock reading may take between two counter readings to anchor on.
    const ANCHOR_GAP_NS: u64 = 50_000;

    /// Takes the offset from a reading of the system's wall clock, paired with the counter
    /// readings around it. A thread preempted between the two would shift the clock by the
    /// time it was off the CPU, so a reading that took long is taken again (the tightest of a
    /// few is kept).
    fn anchor(&self, at_ns: u64) {
        let mut best: Option<(u64, u64)> = None; // (gap, offset)
        for _ in 0..4 {
            let before = self.counter_ns();
            let wall_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            let after = self.counter_ns();
            let gap = after.saturating_sub(before);
            let offset = wall_ns.wrapping_sub(before + gap / 2);
            if best.is_none_or(|(tightest, _)| gap < tightest) {
                best = Some((gap, offset));
            }
            if gap <= Self::ANCHOR_GAP_NS {
                break;
            }
        }
        let (_, offset) = best.expect("at least one reading");
        self.offset_ns.store(offset, Ordering::Relaxed);
        self.anchor_due_ns
            .store(at_ns.saturating_add(Self::ANCHOR_NS), Ordering::Relaxed);
    }

    /// Wall-clock nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64 {
        let at_ns = self.counter_ns();
        if at_ns >= self.anchor_due_ns.load(Ordering::Relaxed) {
            // Threads that pass the due time together each anchor: harmless, and rare.
            self.anchor(at_ns);
        }
        at_ns.wrapping_add(self.offset_ns.load(Ordering::Relaxed))
    }
}

/// A clock that only moves when told to: for tests of retries and timeouts.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<u64>,
}

impl ManualClock {
    /// A clock standing at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now: watch::Sender::new(start_ms),
        }
    }
    /// Moves the clock forward, waking the timers that are now due.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now += by.as_millis() as u64);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new(1_000_000)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        *self.now.borrow()
    }
    fn sleep_until(&self, at_ms: u64) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, never wake.
            if rx.wait_for(|now| *now >= at_ms).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap()
    }

    /// The counter-based reading stays within a few milliseconds of the system's wall clock
    /// (other processes compare their times with it), across re-anchorings; a re-anchoring
    /// moves it by the counter's drift, well under a millisecond.
    #[test]
    fn the_system_clock_follows_the_wall_clock() {
        let clock = SystemClock;
        let mut last = clock.now_ms();
        let until = std::time::Instant::now() + Duration::from_millis(2_300);
        while std::time::Instant::now() < until {
            let before = system_ms();
            let now = clock.now_ms();
            let after = system_ms();
            assert!(
                now + 2 >= before && now <= after + 2,
                "{now} outside [{before}, {after}]"
            );
            assert!(now + 1 >= last, "went back from {last} to {now}");
            last = now;
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn manual_clock_wakes_timers_only_when_advanced() {
        let clock = ManualClock::new(0);
        let mut sleep = clock.sleep_until(100);
        assert!(futures::poll!(&mut sleep).is_pending());
        clock.advance(Duration::from_millis(99));
        assert!(futures::poll!(&mut sleep).is_pending());
        clock.advance(Duration::from_millis(1));
        sleep.await;
        assert_eq!(clock.now_ms(), 100);
    }
}
