ALTER TABLE restock_order ADD COLUMN note TEXT;
