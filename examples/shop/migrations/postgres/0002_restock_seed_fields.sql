ALTER TABLE restock_item RENAME COLUMN sku TO product_id;
ALTER TABLE restock_order ADD COLUMN notes TEXT;

-- gorgon:down
ALTER TABLE restock_order DROP COLUMN notes;
ALTER TABLE restock_item RENAME COLUMN product_id TO sku;
