-- Events a subscriber failed on every attempt (or could not read), kept for inspection.
CREATE TABLE gorgon_dead_letters (
    id TEXT PRIMARY KEY,
    subscriber TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    data TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE INDEX gorgon_dead_letters_subscriber ON gorgon_dead_letters (subscriber, created_at);

-- The link tables `db migrate` created, and the definition each was created from.
CREATE TABLE gorgon_link_tables (
    table_name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- gorgon:down
DROP TABLE gorgon_link_tables;
DROP TABLE gorgon_dead_letters;
