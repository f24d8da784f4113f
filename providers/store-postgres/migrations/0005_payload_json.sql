-- The payload is kept as `json` (its text as given), as the log's records already are: `jsonb`
-- refuses the `\u0000` escape that a NUL character in any input string becomes, and one such
-- payload failed a whole batched commit.
ALTER TABLE transactions ALTER COLUMN payload TYPE JSON USING payload::json;
