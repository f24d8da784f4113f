CREATE TABLE "user" (
    id TEXT PRIMARY KEY,
    first_name TEXT,
    last_name TEXT,
    email TEXT NOT NULL,
    avatar_url TEXT,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX user_email ON "user" (email) WHERE deleted_at IS NULL;

CREATE TABLE invite (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    accepted BOOLEAN NOT NULL DEFAULT FALSE,
    token TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX invite_email ON invite (email) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX invite_token ON invite (token);

-- gorgon:down
DROP TABLE invite;
DROP TABLE "user";
