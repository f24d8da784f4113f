CREATE TABLE api_key (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    salt TEXT NOT NULL DEFAULT '',
    redacted TEXT NOT NULL,
    title TEXT NOT NULL,
    type TEXT NOT NULL,
    last_used_at TIMESTAMPTZ,
    created_by TEXT NOT NULL,
    revoked_by TEXT,
    revoked_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX api_key_token ON api_key (token);

-- gorgon:down
DROP TABLE api_key;
