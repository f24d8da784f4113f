-- Lease ends and wake-up times are the database's time, never a worker's: workers hand over
-- durations and every statement reads this clock (the statement's start, in Unix ms; stable
-- within a statement, so comparisons with it can use the lease and wake-up indexes).
CREATE FUNCTION gorgon_now_ms() RETURNS BIGINT
    LANGUAGE sql STABLE
    AS $$ SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint $$;
