CREATE TABLE loyalty_account (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    email TEXT NOT NULL,
    points INTEGER NOT NULL DEFAULT 0 CHECK (points >= 0),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE UNIQUE INDEX loyalty_account_customer ON loyalty_account (customer_id) WHERE deleted_at IS NULL;

-- gorgon:down
DROP TABLE loyalty_account;
