CREATE TABLE "user" (
    id TEXT PRIMARY KEY,
    first_name TEXT,
    last_name TEXT,
    email TEXT NOT NULL,
    avatar_url TEXT,
    metadata TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE UNIQUE INDEX user_email ON "user" (email) WHERE deleted_at IS NULL;

CREATE TABLE invite (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    accepted INTEGER NOT NULL DEFAULT 0,
    token TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    metadata TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE UNIQUE INDEX invite_email ON invite (email) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX invite_token ON invite (token);

-- gorgon:down
DROP TABLE invite;
DROP TABLE "user";
