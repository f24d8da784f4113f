CREATE TABLE shop_order (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    total NUMERIC NOT NULL,
    points_used BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);

-- gorgon:down
DROP TABLE shop_order;
