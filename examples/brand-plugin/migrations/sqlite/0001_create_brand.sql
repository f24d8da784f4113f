CREATE TABLE brand (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    country TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE UNIQUE INDEX brand_name ON brand (name) WHERE deleted_at IS NULL;

-- gorgon:down
DROP TABLE brand;
