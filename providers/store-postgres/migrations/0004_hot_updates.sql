-- Room in each page for the summary row's updates to stay on the page (HOT updates): an append
-- changes only unindexed columns (next_seq; updated_at only when the state changes), so most
-- appends touch no index.
ALTER TABLE transactions SET (fillfactor = 70);
