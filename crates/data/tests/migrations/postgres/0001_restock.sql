CREATE TABLE restock_order (
    id TEXT PRIMARY KEY,
    supplier TEXT NOT NULL,
    reference TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'draft',
    total NUMERIC NOT NULL,
    urgent BOOLEAN NOT NULL DEFAULT FALSE,
    metadata JSONB,
    expected_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX restock_order_reference ON restock_order (reference) WHERE deleted_at IS NULL;

CREATE TABLE restock_item (
    id TEXT PRIMARY KEY,
    restock_order_id TEXT NOT NULL REFERENCES restock_order (id),
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    unit_price NUMERIC NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE INDEX restock_item_order ON restock_item (restock_order_id);

-- gorgon:down
DROP TABLE restock_item;
DROP TABLE restock_order;
