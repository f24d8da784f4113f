//! The in-memory provider: one process, no persistence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    Error, FencingToken, Lease, LockKey, LockOptions, Locker, OwnerId, normalize_keys,
    validate_lease, validate_owner,
};

/// Locks held in this process's memory. Cheap to clone (clones share the locks).
///
/// Contract: as the crate docs say, within one process; nothing survives the process. Waiters are
/// woken as soon as a key is released and, for expiries, when the blocking lease runs out. Fencing
/// tokens come from one counter shared by all keys, so they also grow per key.
#[derive(Clone, Default)]
pub struct InMemoryLocker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    released: Notify,
}

#[derive(Default)]
struct State {
    holdings: HashMap<LockKey, Holding>,
    last_token: u64,
}

struct Holding {
    owner: OwnerId,
    holds: u32,
    token: FencingToken,
    expires_at: Instant,
}

impl Holding {
    fn live_for(&self, owner: &OwnerId, now: Instant) -> bool {
        self.expires_at > now && &self.owner == owner
    }
}

/// Outcome of one acquisition attempt.
enum Attempt {
    Acquired(Vec<(LockKey, FencingToken)>),
    /// Busy until at most this instant (the earliest expiry among the blocking holdings).
    Busy(Instant),
}

impl InMemoryLocker {
    /// An empty locker.
    pub fn new() -> Self {
        Self::default()
    }

    fn try_acquire(&self, keys: &[LockKey], owner: &OwnerId, lease: Duration) -> Attempt {
        let mut state = self.inner.state.lock();
        let now = Instant::now();
        let blocked_until = keys
            .iter()
            .filter_map(|key| state.holdings.get(key))
            .filter(|holding| holding.expires_at > now && &holding.owner != owner)
            .map(|holding| holding.expires_at)
            .min();
        if let Some(until) = blocked_until {
            return Attempt::Busy(until);
        }
        let expires_at = now + lease;
        let mut tokens = Vec::with_capacity(keys.len());
        for key in keys {
            let reentered = state
                .holdings
                .get_mut(key)
                .filter(|holding| holding.live_for(owner, now))
                .map(|holding| {
                    holding.holds = holding.holds.saturating_add(1);
                    holding.expires_at = holding.expires_at.max(expires_at);
                    holding.token
                });
            let token = match reentered {
                Some(token) => token,
                None => {
                    state.last_token += 1;
                    let token = FencingToken::new(state.last_token);
                    state.holdings.insert(
                        key.clone(),
                        Holding {
                            owner: owner.clone(),
                            holds: 1,
                            token,
                            expires_at,
                        },
                    );
                    token
                }
            };
            tokens.push((key.clone(), token));
        }
        Attempt::Acquired(tokens)
    }
}

#[async_trait]
impl Locker for InMemoryLocker {
    async fn acquire(
        &self,
        keys: &[LockKey],
        owner: &OwnerId,
        options: &LockOptions,
    ) -> Result<Lease, Error> {
        let keys = normalize_keys("acquire", keys)?;
        validate_owner("acquire", owner)?;
        validate_lease("acquire", options.lease)?;
        let started = Instant::now();
        let deadline = started + options.wait_timeout;
        loop {
            // Register for wake-ups before looking, so a release in between is not missed.
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_acquire(&keys, owner, options.lease) {
                Attempt::Acquired(tokens) => {
                    return Ok(Lease::new(owner.clone(), tokens, options.lease));
                }
                Attempt::Busy(until) => {
                    if Instant::now() >= deadline {
                        return Err(Error::WaitTimeout {
                            operation: "acquire",
                            keys,
                            owner: owner.clone(),
                            waited: started.elapsed(),
                        });
                    }
                    let wake_at = until.min(deadline);
                    tokio::select! {
                        () = released => {}
                        () = tokio::time::sleep_until(wake_at) => {}
                    }
                }
            }
        }
    }

    async fn renew(&self, keys: &[LockKey], owner: &OwnerId, lease: Duration) -> Result<(), Error> {
        let keys = normalize_keys("renew", keys)?;
        validate_owner("renew", owner)?;
        validate_lease("renew", lease)?;
        let mut state = self.inner.state.lock();
        let now = Instant::now();
        let all_held = keys.iter().all(|key| {
            state
                .holdings
                .get(key)
                .is_some_and(|holding| holding.live_for(owner, now))
        });
        if !all_held {
            return Err(Error::LeaseLost {
                operation: "renew",
                keys,
                owner: owner.clone(),
            });
        }
        for key in &keys {
            if let Some(holding) = state.holdings.get_mut(key) {
                holding.expires_at = holding.expires_at.max(now + lease);
            }
        }
        Ok(())
    }

    async fn release(&self, keys: &[LockKey], owner: &OwnerId) -> Result<bool, Error> {
        let keys = normalize_keys("release", keys)?;
        validate_owner("release", owner)?;
        let mut all_held = true;
        let mut freed = false;
        {
            let mut state = self.inner.state.lock();
            let now = Instant::now();
            for key in &keys {
                match state.holdings.get_mut(key) {
                    Some(holding) if holding.live_for(owner, now) => {
                        holding.holds -= 1;
                        if holding.holds == 0 {
                            state.holdings.remove(key);
                            freed = true;
                        }
                    }
                    Some(holding) if holding.expires_at <= now => {
                        state.holdings.remove(key);
                        all_held = false;
                    }
                    _ => all_held = false,
                }
            }
        }
        if freed {
            self.inner.released.notify_waiters();
        }
        Ok(all_held)
    }

    async fn release_all(&self, owner: &OwnerId) -> Result<usize, Error> {
        validate_owner("release_all", owner)?;
        let freed = {
            let mut state = self.inner.state.lock();
            let now = Instant::now();
            let mut freed = 0;
            state.holdings.retain(|_, holding| {
                if &holding.owner != owner {
                    return true;
                }
                if holding.expires_at > now {
                    freed += 1;
                }
                false
            });
            freed
        };
        if freed > 0 {
            self.inner.released.notify_waiters();
        }
        Ok(freed)
    }
}
