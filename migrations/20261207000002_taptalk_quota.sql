-- taptalk_quota: one token bucket per TapTalk server key, shared by every
-- replica that uses the key (TAPTALK_QUOTA), so that a quota TapTalk sets for
-- the key holds for the whole deployment however many replicas run. Tokens
-- refill at `rate` per second up to `burst`; a replica takes a few at a time
-- (one statement for several requests) and uses them at once. The clock is
-- the database's: one for all replicas.
CREATE TABLE taptalk_quota (
    key_id       text             PRIMARY KEY,
    rate         double precision NOT NULL CHECK (rate > 0),
    burst        double precision NOT NULL CHECK (burst >= 1),
    tokens       double precision NOT NULL,
    refreshed_at timestamptz      NOT NULL DEFAULT clock_timestamp()
);
