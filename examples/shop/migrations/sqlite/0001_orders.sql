CREATE TABLE shop_order (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    total TEXT NOT NULL,
    points_used INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);

-- gorgon:down
DROP TABLE shop_order;
