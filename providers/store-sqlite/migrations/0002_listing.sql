-- Executions listing, newest first (keyset pages over created_at, workflow, transaction_id),
-- over every workflow or within one; and retention: finished transactions by last update.
CREATE INDEX transactions_newest ON transactions (created_at DESC, workflow DESC, transaction_id DESC);
CREATE INDEX transactions_by_workflow_newest ON transactions (workflow, created_at DESC, transaction_id DESC);
CREATE INDEX transactions_finished ON transactions (updated_at)
    WHERE state IN ('done', 'reverted', 'failed');
