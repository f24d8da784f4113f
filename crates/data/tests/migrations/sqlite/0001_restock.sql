CREATE TABLE restock_order (
    id TEXT PRIMARY KEY,
    supplier TEXT NOT NULL,
    reference TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'draft',
    total TEXT NOT NULL,
    urgent INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    expected_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE UNIQUE INDEX restock_order_reference ON restock_order (reference) WHERE deleted_at IS NULL;

CREATE TABLE restock_item (
    id TEXT PRIMARY KEY,
    restock_order_id TEXT NOT NULL REFERENCES restock_order (id),
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    unit_price TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE INDEX restock_item_order ON restock_item (restock_order_id);

-- gorgon:down
DROP TABLE restock_item;
DROP TABLE restock_order;
