//! Time, injected: the engine never reads the system clock itself.
//!
//! [`SystemClock`] is wall time with tokio timers; [`ManualClock`] only moves when a test calls
//! [`ManualClock::advance`], so retry intervals and timeouts are tested without sleeping.

use std::future::Future;
use std::pin::Pin;
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

/// Wall-clock time; timers are tokio sleeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            // In u64 (`as_millis` works in u128).
            .map(|d| d.as_secs() * 1000 + u64::from(d.subsec_millis()))
            .unwrap_or(0)
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
