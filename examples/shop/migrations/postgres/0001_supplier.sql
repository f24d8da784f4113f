CREATE TABLE supplier (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    accepts_orders BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);

CREATE TABLE restock_order (
    id TEXT PRIMARY KEY,
    supplier_id TEXT NOT NULL REFERENCES supplier (id),
    status TEXT NOT NULL DEFAULT 'draft',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE INDEX restock_order_supplier ON restock_order (supplier_id);

CREATE TABLE restock_item (
    id TEXT PRIMARY KEY,
    restock_order_id TEXT NOT NULL REFERENCES restock_order (id),
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    unit_cost NUMERIC NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE INDEX restock_item_order ON restock_item (restock_order_id);

-- gorgon:down
DROP TABLE restock_item;
DROP TABLE restock_order;
DROP TABLE supplier;
