-- Leases, epochs and wake-up times (see the crate docs): who advances a transaction, with which
-- epoch its appends are fenced, and when a parked transaction is due again.
--   owner        the worker holding the lease, NULL when no one does
--   lease_until  when that lease lapses (clock ms; 0 without a lease)
--   epoch        bumped each time the lease changes hands; an append or release must carry it
--   wake_at      when an unowned, unfinished transaction is due (clock ms; NULL: only by name)
ALTER TABLE transactions ADD COLUMN owner TEXT NULL;
ALTER TABLE transactions ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE transactions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1;
ALTER TABLE transactions ADD COLUMN wake_at INTEGER NULL;

-- claim_due: per workflow, unfinished transactions by the time they are due: a parked one at
-- `wake_at`, an owned one once its lease lapsed (`lease_until + 1`, the first instant it no
-- longer runs). Finished transactions are not in it.
CREATE INDEX transactions_due ON transactions
    (workflow, (CASE WHEN owner IS NULL THEN wake_at ELSE lease_until + 1 END))
    WHERE state NOT IN ('done', 'reverted', 'failed');

-- renew: every transaction one worker holds.
CREATE INDEX transactions_by_owner ON transactions (owner) WHERE owner IS NOT NULL;
