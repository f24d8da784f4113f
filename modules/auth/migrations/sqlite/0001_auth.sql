CREATE TABLE auth_identity (
    id TEXT PRIMARY KEY,
    app_metadata TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);

CREATE TABLE provider_identity (
    id TEXT PRIMARY KEY,
    entity_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    auth_identity_id TEXT NOT NULL REFERENCES auth_identity (id) ON DELETE CASCADE,
    user_metadata TEXT,
    provider_metadata TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE UNIQUE INDEX provider_identity_entity ON provider_identity (entity_id, provider) WHERE deleted_at IS NULL;
CREATE INDEX provider_identity_auth_identity ON provider_identity (auth_identity_id);

-- gorgon:down
DROP TABLE provider_identity;
DROP TABLE auth_identity;
