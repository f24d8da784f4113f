//! The in-memory provider passes the locking suite.
//!
//! The "Done means" counter test runs here as 8 concurrent tasks in one process
//! (`mutual_exclusion_under_eight_concurrent_tasks`): the in-memory provider's locks live in one
//! process's memory, so two OS processes cannot share them by construction. The two-process
//! version runs against the PostgreSQL and Redis providers.

use std::sync::Arc;

use gorgon_locking::{InMemoryLocker, LockOptions, Locker};

async fn locker() -> Arc<dyn Locker> {
    Arc::new(InMemoryLocker::new())
}

gorgon_locking::locker_suite!(locker());

#[test]
fn options_deserialize_from_milliseconds_and_reject_unknown_fields() {
    let options: LockOptions =
        serde_json::from_str(r#"{ "wait_timeout_ms": 250, "lease_ms": 9000 }"#).unwrap();
    assert_eq!(
        options,
        LockOptions::new(
            std::time::Duration::from_millis(250),
            std::time::Duration::from_secs(9)
        )
    );
    let defaults: LockOptions = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, LockOptions::default());
    assert!(serde_json::from_str::<LockOptions>(r#"{ "lease": 1 }"#).is_err());
}
