//! The conformance suite every [`Locker`] provider runs against itself (feature `testing`).
//!
//! Each case is a public async function taking the provider as `Arc<dyn Locker>`; it panics on a
//! contract violation. Cases use fresh random keys and owners, so they can share one backend and run
//! concurrently. [`locker_suite!`](crate::locker_suite) expands to one `#[tokio::test]` per case:
//!
//! ```text
//! async fn locker() -> Arc<dyn Locker> { Arc::new(MyLocker::connect(..).await.unwrap()) }
//! gorgon_locking::locker_suite!(locker());
//! ```
//!
//! Leases that must expire are a few hundred milliseconds; leases that must be renewed are at
//! least a second, so a renewal round trip on a busy machine (CI runs several suites at once)
//! stays well inside them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::{Error, FencingToken, LockKey, LockOptions, Locker, LockerExt, OwnerId};

/// Expands to one `#[tokio::test]` per suite case; `$make` is an expression evaluating to a
/// future of `Arc<dyn Locker>` (called once per test). The calling crate needs `tokio`.
#[macro_export]
macro_rules! locker_suite {
    ($make:expr) => {
        $crate::locker_suite!(@cases $make;
            mutual_exclusion_under_eight_concurrent_tasks,
            waiting_past_the_timeout_is_a_typed_error,
            an_expired_lease_frees_the_lock,
            renewal_keeps_the_lock_while_a_long_job_runs,
            locks_are_reentrant_for_the_same_owner,
            release_all_frees_every_key_of_the_owner,
            fencing_tokens_strictly_increase,
            a_stale_holders_release_keeps_the_new_holders_lock,
            multi_key_acquisition_is_all_or_nothing_and_deadlock_free,
            a_job_that_loses_its_lease_is_cancelled,
            a_panicking_job_releases_its_keys,
            a_stalled_holder_loses_the_lock_and_its_fenced_write_is_refused,
            invalid_requests_are_typed_errors
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let locker: ::std::sync::Arc<dyn $crate::Locker> = $make.await;
                $crate::testing::$case(locker).await;
            }
        )*
    };
}

/// A fresh key unique to one test run.
pub fn unique_key(name: &str) -> LockKey {
    LockKey::new(format!("suite-{name}-{}", uuid::Uuid::new_v4()))
}

fn options(wait_ms: u64, lease_ms: u64) -> LockOptions {
    LockOptions::new(
        Duration::from_millis(wait_ms),
        Duration::from_millis(lease_ms),
    )
}

#[track_caller]
fn assert_wait_timeout<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::WaitTimeout { .. }) => {}
        other => panic!("expected Error::WaitTimeout, got {other:?}"),
    }
}

/// Asserts that a key is currently held by somebody (another owner cannot take it right now).
async fn assert_held(locker: &dyn Locker, key: &LockKey) {
    assert_wait_timeout(
        locker
            .acquire(
                std::slice::from_ref(key),
                &OwnerId::random(),
                &options(0, 1_000),
            )
            .await,
    );
}

/// Asserts that a key is free (another owner takes it at once), then releases it again.
async fn assert_free(locker: &dyn Locker, key: &LockKey) {
    let probe = OwnerId::random();
    let keys = std::slice::from_ref(key);
    locker
        .acquire(keys, &probe, &options(0, 1_000))
        .await
        .unwrap_or_else(|error| panic!("{key} should be free: {error}"));
    assert!(locker.release(keys, &probe).await.unwrap());
}

/// A protected resource for the suite: it remembers the highest fencing token it has accepted and
/// refuses writes carrying a lower one. (Providers' own tests use a real table or Redis key.)
#[derive(Default)]
pub struct FencedRegister {
    state: Mutex<(u64, Option<String>)>,
}

impl FencedRegister {
    /// Stores `value` if `token` is at least the highest token seen; returns whether it was stored.
    pub fn write(&self, token: FencingToken, value: &str) -> bool {
        let mut state = self.state.lock();
        if token.get() < state.0 {
            return false;
        }
        *state = (token.get(), Some(value.to_owned()));
        true
    }

    /// The value last accepted.
    pub fn value(&self) -> Option<String> {
        self.state.lock().1.clone()
    }
}

/// 8 tasks × 25 read-modify-write increments of an unsynchronised counter under one lock end with
/// exactly 200, and no two jobs ever overlap.
///
/// The in-memory provider cannot be shared by two OS processes, so this in-process case is its
/// whole mutual-exclusion proof; the PostgreSQL and Redis providers add a 2-process test on a
/// counter stored in their backend.
pub async fn mutual_exclusion_under_eight_concurrent_tasks(locker: Arc<dyn Locker>) {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let key = unique_key("counter");
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (locker, key, counter, inside) =
            (locker.clone(), key.clone(), counter.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                let keys = [key.clone()];
                let owner = OwnerId::random();
                locker
                    .with_lock(&keys, &owner, &options(30_000, 10_000), |_lease| async {
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "jobs overlapped");
                        let read = counter.load(Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        counter.store(read + 1, Ordering::SeqCst);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                    .expect("execute under contention");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    assert_eq!(counter.load(Ordering::SeqCst), TASKS * INCREMENTS);
}

/// A key held by another owner makes `acquire` and `execute` fail with `WaitTimeout` after the
/// wait timeout, and `execute` does not run its job.
pub async fn waiting_past_the_timeout_is_a_typed_error(locker: Arc<dyn Locker>) {
    let key = unique_key("timeout");
    let keys = [key.clone()];
    let holder = OwnerId::random();
    locker
        .acquire(&keys, &holder, &options(0, 30_000))
        .await
        .unwrap();

    let started = Instant::now();
    let waiter = OwnerId::random();
    match locker.acquire(&keys, &waiter, &options(150, 30_000)).await {
        Err(Error::WaitTimeout {
            operation,
            keys: reported,
            owner,
            ..
        }) => {
            assert_eq!(operation, "acquire");
            assert_eq!(reported, keys);
            assert_eq!(owner, waiter);
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(150));

    let ran = AtomicBool::new(false);
    let result = locker
        .with_lock(&keys, &waiter, &options(100, 30_000), |_| async {
            ran.store(true, Ordering::SeqCst);
        })
        .await;
    match result {
        Err(Error::WaitTimeout { operation, .. }) => assert_eq!(operation, "execute"),
        other => panic!("expected WaitTimeout from execute, got {other:?}"),
    }
    assert!(!ran.load(Ordering::SeqCst), "the job ran without the lock");
    assert!(locker.release(&keys, &holder).await.unwrap());
}

/// A holder that neither renews nor releases loses the key when its lease elapses; a waiter then
/// gets it with a greater fencing token.
pub async fn an_expired_lease_frees_the_lock(locker: Arc<dyn Locker>) {
    let key = unique_key("expiry");
    let keys = [key.clone()];
    let first = locker
        .acquire(&keys, &OwnerId::random(), &options(0, 300))
        .await
        .unwrap();
    assert_held(locker.as_ref(), &key).await;
    let started = Instant::now();
    let second_owner = OwnerId::random();
    let second = locker
        .acquire(&keys, &second_owner, &options(10_000, 30_000))
        .await
        .expect("the expired lease should free the key");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the key was free too early: {:?}",
        started.elapsed()
    );
    assert!(second.token(&key) > first.token(&key));
    assert!(locker.release(&keys, &second_owner).await.unwrap());
}

/// A job running for several lease lengths keeps its lock, because `execute` renews the lease.
pub async fn renewal_keeps_the_lock_while_a_long_job_runs(locker: Arc<dyn Locker>) {
    let key = unique_key("renewal");
    let keys = [key.clone()];
    let owner = OwnerId::random();
    let probe = locker.clone();
    locker
        .with_lock(&keys, &owner, &options(0, 1_000), |_| async {
            // 2.5 lease lengths, probing the lock every half lease.
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert_held(probe.as_ref(), &key).await;
            }
        })
        .await
        .expect("the renewed lease should survive the whole job");
    assert_free(locker.as_ref(), &key).await;
}

/// An owner that holds a key takes it again without waiting (same fencing token); the key stays
/// held until every hold is released.
pub async fn locks_are_reentrant_for_the_same_owner(locker: Arc<dyn Locker>) {
    let key = unique_key("reentrant");
    let keys = [key.clone()];
    let workflow = OwnerId::random();
    let nested_ran = locker
        .with_lock(&keys, &workflow, &options(1_000, 10_000), |outer| {
            let locker = locker.clone();
            let (key, keys, workflow) = (key.clone(), keys.clone(), workflow.clone());
            async move {
                let inner_token = locker
                    .with_lock(&keys, &workflow, &options(0, 10_000), |inner| {
                        let key = key.clone();
                        async move { inner.token(&key) }
                    })
                    .await
                    .expect("a nested lock by the same owner must not wait");
                assert_eq!(inner_token, outer.token(&key));
                assert_held(locker.as_ref(), &key).await;
                true
            }
        })
        .await
        .unwrap();
    assert!(nested_ran);
    assert_free(locker.as_ref(), &key).await;

    let first = locker
        .acquire(&keys, &workflow, &options(0, 10_000))
        .await
        .unwrap();
    let second = locker
        .acquire(&keys, &workflow, &options(0, 10_000))
        .await
        .unwrap();
    assert_eq!(first.token(&key), second.token(&key));
    assert!(locker.release(&keys, &workflow).await.unwrap());
    assert_held(locker.as_ref(), &key).await;
    assert!(locker.release(&keys, &workflow).await.unwrap());
    assert_free(locker.as_ref(), &key).await;
    assert!(!locker.release(&keys, &workflow).await.unwrap());
}

/// `release_all` frees every key of one owner (whatever the hold count) and nobody else's.
pub async fn release_all_frees_every_key_of_the_owner(locker: Arc<dyn Locker>) {
    let (one, two, other) = (
        unique_key("all-1"),
        unique_key("all-2"),
        unique_key("all-3"),
    );
    let owner = OwnerId::random();
    let bystander = OwnerId::random();
    let opts = options(0, 30_000);
    locker
        .acquire(std::slice::from_ref(&one), &owner, &opts)
        .await
        .unwrap();
    locker
        .acquire(&[one.clone(), two.clone()], &owner, &opts)
        .await
        .unwrap();
    locker
        .acquire(std::slice::from_ref(&other), &bystander, &opts)
        .await
        .unwrap();

    assert_eq!(locker.release_all(&owner).await.unwrap(), 2);
    assert_free(locker.as_ref(), &one).await;
    assert_free(locker.as_ref(), &two).await;
    assert_held(locker.as_ref(), &other).await;
    assert_eq!(locker.release_all(&owner).await.unwrap(), 0);
    assert_eq!(locker.release_all(&bystander).await.unwrap(), 1);
    assert_free(locker.as_ref(), &other).await;
}

/// Tokens for one key strictly increase across releases and expiries.
pub async fn fencing_tokens_strictly_increase(locker: Arc<dyn Locker>) {
    let key = unique_key("fencing");
    let keys = [key.clone()];
    let mut seen = Vec::new();
    for _ in 0..5 {
        let owner = OwnerId::random();
        let lease = locker
            .acquire(&keys, &owner, &options(1_000, 10_000))
            .await
            .unwrap();
        seen.push(lease.token(&key).expect("a token per key"));
        assert!(locker.release(&keys, &owner).await.unwrap());
    }
    let expiring = locker
        .acquire(&keys, &OwnerId::random(), &options(1_000, 100))
        .await
        .unwrap();
    seen.push(expiring.token(&key).unwrap());
    let owner = OwnerId::random();
    let after_expiry = locker
        .acquire(&keys, &owner, &options(5_000, 10_000))
        .await
        .unwrap();
    seen.push(after_expiry.token(&key).unwrap());
    assert!(locker.release(&keys, &owner).await.unwrap());
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens did not strictly increase: {seen:?}"
    );
}

/// After a lease expired and another owner took the key, the old holder's `release` reports
/// `false` and its `renew` fails with `LeaseLost`, and the new holder keeps the key.
pub async fn a_stale_holders_release_keeps_the_new_holders_lock(locker: Arc<dyn Locker>) {
    let key = unique_key("stale");
    let keys = [key.clone()];
    let stale = OwnerId::random();
    locker
        .acquire(&keys, &stale, &options(0, 200))
        .await
        .unwrap();
    let fresh = OwnerId::random();
    locker
        .acquire(&keys, &fresh, &options(10_000, 30_000))
        .await
        .unwrap();

    assert!(!locker.release(&keys, &stale).await.unwrap());
    match locker.renew(&keys, &stale, Duration::from_secs(30)).await {
        Err(Error::LeaseLost { owner, .. }) => assert_eq!(owner, stale),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert_eq!(locker.release_all(&stale).await.unwrap(), 0);
    assert_held(locker.as_ref(), &key).await;
    assert!(locker.release(&keys, &fresh).await.unwrap());
    assert_free(locker.as_ref(), &key).await;
}

/// A multi-key acquisition that cannot get every key takes none, and callers locking the same
/// keys in opposite orders never deadlock.
pub async fn multi_key_acquisition_is_all_or_nothing_and_deadlock_free(locker: Arc<dyn Locker>) {
    let (a, b) = (unique_key("a"), unique_key("b"));
    let holder = OwnerId::random();
    locker
        .acquire(std::slice::from_ref(&b), &holder, &options(0, 30_000))
        .await
        .unwrap();
    assert_wait_timeout(
        locker
            .acquire(
                &[a.clone(), b.clone()],
                &OwnerId::random(),
                &options(100, 30_000),
            )
            .await,
    );
    assert_free(locker.as_ref(), &a).await;
    assert!(
        locker
            .release(std::slice::from_ref(&b), &holder)
            .await
            .unwrap()
    );

    let mut tasks = Vec::new();
    for order in [[a.clone(), b.clone()], [b.clone(), a.clone()]] {
        let locker = locker.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                let owner = OwnerId::random();
                let lease = locker
                    .with_lock(&order, &owner, &options(20_000, 10_000), |lease| async {
                        tokio::task::yield_now().await;
                        lease
                    })
                    .await
                    .expect("opposite key orders must not deadlock");
                assert_eq!(lease.tokens().len(), 2);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
}

/// When the lease is lost while the job runs, `execute` drops the job and returns `LeaseLost`.
pub async fn a_job_that_loses_its_lease_is_cancelled(locker: Arc<dyn Locker>) {
    let key = unique_key("lost");
    let keys = [key.clone()];
    let owner = OwnerId::random();
    let intruder = OwnerId::random();
    let finished = AtomicBool::new(false);
    let started = Instant::now();
    let result = locker
        .with_lock(&keys, &owner, &options(0, 2_000), |_| async {
            // Simulate losing the lease: the holding vanishes and another owner takes the key.
            locker.release_all(&owner).await.unwrap();
            locker
                .acquire(&keys, &intruder, &options(0, 30_000))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            finished.store(true, Ordering::SeqCst);
        })
        .await;
    match result {
        Err(Error::LeaseLost {
            operation,
            owner: lost_by,
            ..
        }) => {
            assert_eq!(operation, "execute");
            assert_eq!(lost_by, owner);
        }
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert!(
        !finished.load(Ordering::SeqCst),
        "the job was not cancelled"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_held(locker.as_ref(), &key).await;
    assert!(locker.release(&keys, &intruder).await.unwrap());
}

/// A job that panics still releases its keys; the panic reaches the caller.
pub async fn a_panicking_job_releases_its_keys(locker: Arc<dyn Locker>) {
    let key = unique_key("panic");
    let task = {
        let (locker, key) = (locker.clone(), key.clone());
        tokio::spawn(async move {
            let keys = [key];
            locker
                .with_lock(&keys, &OwnerId::random(), &options(0, 30_000), |_| async {
                    panic!("the job fails");
                })
                .await
        })
    };
    let joined = task.await;
    assert!(
        joined.is_err_and(|error| error.is_panic()),
        "the panic must reach the caller"
    );
    assert_free(locker.as_ref(), &key).await;
}

/// A holder that stalls past its lease loses the key to a new holder with a greater token; the
/// protected resource accepts the new holder's write and refuses the stalled holder's.
pub async fn a_stalled_holder_loses_the_lock_and_its_fenced_write_is_refused(
    locker: Arc<dyn Locker>,
) {
    let key = unique_key("stalled");
    let keys = [key.clone()];
    let register = FencedRegister::default();
    let stalled = locker
        .acquire(&keys, &OwnerId::random(), &options(0, 200))
        .await
        .unwrap();
    let stalled_token = stalled.token(&key).unwrap();
    assert!(register.write(stalled_token, "stalled holder, before its stall"));

    // The stall: no renewal, the lease runs out, someone else takes the key and writes.
    let fresh_owner = OwnerId::random();
    let fresh = locker
        .acquire(&keys, &fresh_owner, &options(10_000, 30_000))
        .await
        .unwrap();
    let fresh_token = fresh.token(&key).unwrap();
    assert!(fresh_token > stalled_token);
    assert!(register.write(fresh_token, "fresh holder"));

    // The stalled holder wakes up and writes with its old token: refused.
    assert!(!register.write(stalled_token, "stalled holder, after its stall"));
    assert_eq!(register.value().as_deref(), Some("fresh holder"));
    assert!(
        locker
            .renew(&keys, stalled.owner(), Duration::from_secs(1))
            .await
            .is_err()
    );
    assert!(locker.release(&keys, &fresh_owner).await.unwrap());
}

/// No keys, an empty or oversized key, too many keys, an empty owner or a zero lease are
/// `InvalidRequest`, not panics.
pub async fn invalid_requests_are_typed_errors(locker: Arc<dyn Locker>) {
    #[track_caller]
    fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>) {
        match result {
            Err(Error::InvalidRequest { .. }) => {}
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }
    let owner = OwnerId::random();
    let good = [unique_key("valid")];
    let opts = options(0, 1_000);
    assert_invalid(locker.acquire(&[], &owner, &opts).await);
    assert_invalid(locker.acquire(&[LockKey::from("")], &owner, &opts).await);
    let huge = LockKey::new("k".repeat(crate::MAX_KEY_BYTES + 1));
    assert_invalid(locker.acquire(&[huge], &owner, &opts).await);
    let many: Vec<LockKey> = (0..=crate::MAX_KEYS)
        .map(|i| unique_key(&format!("many-{i}")))
        .collect();
    assert_invalid(locker.acquire(&many, &owner, &opts).await);
    assert_invalid(locker.acquire(&good, &OwnerId::from(""), &opts).await);
    assert_invalid(locker.acquire(&good, &owner, &options(0, 0)).await);
    assert_invalid(locker.renew(&[], &owner, Duration::from_secs(1)).await);
    assert_invalid(locker.renew(&good, &owner, Duration::ZERO).await);
    assert_invalid(locker.release(&[], &owner).await);
    assert_invalid(locker.release_all(&OwnerId::from("")).await);
    assert_invalid(
        locker
            .with_lock(&good, &owner, &options(0, 0), |_| async {})
            .await,
    );
    assert_free(locker.as_ref(), &good[0]).await;
}
