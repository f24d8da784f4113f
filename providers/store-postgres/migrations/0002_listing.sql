-- Executions listing, newest first: keyset pages over (created_at, workflow, transaction_id) in
-- byte order (COLLATE "C", as the queries compare them), over every workflow or within one.
CREATE INDEX transactions_newest
    ON transactions (created_at DESC, workflow COLLATE "C" DESC, transaction_id COLLATE "C" DESC);
CREATE INDEX transactions_by_workflow_newest
    ON transactions (workflow, created_at DESC, transaction_id COLLATE "C" DESC);
-- Retention: finished transactions by their last update.
CREATE INDEX transactions_finished ON transactions (updated_at)
    WHERE state IN ('done', 'reverted', 'failed');
