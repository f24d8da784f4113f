-- Leases: the worker advancing a transaction (`owner`, until `lease_until`, clock ms), the
-- epoch every write is checked against (fencing), and when a waiting transaction wants to be
-- advanced again (`wake_at`). A finished transaction has neither owner nor wake-up time.
ALTER TABLE transactions
    ADD COLUMN owner       TEXT,
    ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN epoch       BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN wake_at     BIGINT;

-- claim_due: parked transactions by wake-up time, owned ones by lease expiry.
CREATE INDEX transactions_parked ON transactions (wake_at) WHERE owner IS NULL AND wake_at IS NOT NULL;
CREATE INDEX transactions_owned ON transactions (lease_until) WHERE owner IS NOT NULL;
-- renew: every lease of one owner.
CREATE INDEX transactions_by_owner ON transactions (owner) WHERE owner IS NOT NULL;
