CREATE TABLE sales_channel (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    is_disabled BOOLEAN NOT NULL DEFAULT FALSE,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);

-- gorgon:down
DROP TABLE sales_channel;
