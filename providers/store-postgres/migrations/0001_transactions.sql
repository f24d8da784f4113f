-- One summary row per transaction (workflow, transaction id): the current run, its state and
-- header. `next_seq` is the sequence number the next log record of the current run gets.
CREATE TABLE transactions (
    workflow       TEXT   NOT NULL,
    transaction_id TEXT   NOT NULL,
    run_id         TEXT   NOT NULL,
    state          TEXT   NOT NULL,
    payload        JSONB  NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    next_seq       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow, transaction_id)
);

-- Listings: by workflow and state, newest first.
CREATE INDEX transactions_by_state ON transactions (workflow, state, created_at);

-- The append-only log: one row per record, in append order (`seq`) within a run.
CREATE TABLE transaction_log (
    workflow       TEXT    NOT NULL,
    transaction_id TEXT    NOT NULL,
    run_id         TEXT    NOT NULL,
    seq            BIGINT  NOT NULL,
    kind           TEXT    NOT NULL,
    step           INTEGER,
    side           TEXT,
    attempt        INTEGER,
    record         JSON    NOT NULL,
    PRIMARY KEY (workflow, transaction_id, run_id, seq)
);
