-- One summary row per transaction (workflow, transaction id): the current run, its state and
-- header. `next_seq` is the sequence number the next log record of the current run gets.
CREATE TABLE transactions (
    workflow       TEXT    NOT NULL,
    transaction_id TEXT    NOT NULL,
    run_id         TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    payload        TEXT    NOT NULL, -- JSON
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    next_seq       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow, transaction_id)
) WITHOUT ROWID;

-- Listings: by workflow and state, newest first.
CREATE INDEX transactions_by_state ON transactions (workflow, state, created_at);

-- The append-only log: one row per record, in append order (`seq`) within a run.
CREATE TABLE transaction_log (
    workflow       TEXT    NOT NULL,
    transaction_id TEXT    NOT NULL,
    run_id         TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    step           INTEGER,
    side           TEXT,
    attempt        INTEGER,
    record         TEXT    NOT NULL, -- JSON
    PRIMARY KEY (workflow, transaction_id, run_id, seq)
) WITHOUT ROWID;
