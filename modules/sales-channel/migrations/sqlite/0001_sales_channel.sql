CREATE TABLE sales_channel (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    is_disabled INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);

-- gorgon:down
DROP TABLE sales_channel;
