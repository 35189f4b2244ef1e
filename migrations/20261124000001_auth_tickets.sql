-- auth_tickets: one row per login event, holding the ticket TapTalk issued for it.
-- The ticket is a bearer credential valid for one hour; it lives here and
-- nowhere else (events on the bus only say that it is ready).
CREATE TABLE auth_tickets (
    event_id       text        PRIMARY KEY,          -- the login event's eventID (idempotency key)
    xc_user_id     text        NOT NULL,             -- the user's id on the customer's side
    user_id        text        NOT NULL,             -- TapTalk's user id for xc_user_id
    user_device_id text        NOT NULL,
    user_platform  text        NOT NULL CHECK (user_platform IN ('android', 'ios', 'web')),
    ticket         text        NOT NULL,
    issued_at      timestamptz NOT NULL,             -- when the ticket request was sent
    expires_at     timestamptz NOT NULL,             -- issued_at + 1 hour
    claimed_at     timestamptz,                      -- set by claim_auth_ticket() when an app backend hands it out
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The read path: the newest unexpired ticket of a user, optionally of one device.
CREATE INDEX auth_tickets_user_idx ON auth_tickets (xc_user_id, user_device_id, expires_at DESC);
-- The purge: expired rows are deleted by age.
CREATE INDEX auth_tickets_expires_at_idx ON auth_tickets (expires_at);

-- current_auth_ticket(xc_user_id, user_device_id DEFAULT NULL):
-- the newest unexpired ticket of the user (of that device, when given), or no row.
CREATE FUNCTION current_auth_ticket(p_xc_user_id text, p_user_device_id text DEFAULT NULL)
RETURNS TABLE (
    event_id text, user_id text, user_device_id text, user_platform text,
    ticket text, issued_at timestamptz, expires_at timestamptz, claimed_at timestamptz
)
LANGUAGE sql STABLE
AS $$
    SELECT t.event_id, t.user_id, t.user_device_id, t.user_platform,
           t.ticket, t.issued_at, t.expires_at, t.claimed_at
    FROM auth_tickets t
    WHERE t.xc_user_id = p_xc_user_id
      AND (p_user_device_id IS NULL OR t.user_device_id = p_user_device_id)
      AND t.expires_at > now()
    ORDER BY t.expires_at DESC
    LIMIT 1
$$;

-- claim_auth_ticket(xc_user_id, user_device_id DEFAULT NULL):
-- like current_auth_ticket, but hands each ticket out once: it returns the
-- newest unexpired ticket not claimed yet and marks it claimed, atomically.
CREATE FUNCTION claim_auth_ticket(p_xc_user_id text, p_user_device_id text DEFAULT NULL)
RETURNS TABLE (
    event_id text, user_id text, user_device_id text, user_platform text,
    ticket text, issued_at timestamptz, expires_at timestamptz, claimed_at timestamptz
)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
    UPDATE auth_tickets t
    SET claimed_at = now()
    WHERE t.event_id = (
        SELECT c.event_id
        FROM auth_tickets c
        WHERE c.xc_user_id = p_xc_user_id
          AND (p_user_device_id IS NULL OR c.user_device_id = p_user_device_id)
          AND c.expires_at > now()
          AND c.claimed_at IS NULL
        ORDER BY c.expires_at DESC
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING t.event_id, t.user_id, t.user_device_id, t.user_platform,
              t.ticket, t.issued_at, t.expires_at, t.claimed_at
$$;

REVOKE ALL ON FUNCTION claim_auth_ticket(text, text) FROM PUBLIC;

-- ticket_reader: the role for app backends. It can read auth_tickets and call
-- the two functions above, and nothing else. Grant it to a login role:
--   CREATE ROLE app_backend LOGIN PASSWORD '…' IN ROLE ticket_reader;
-- Creating a role needs CREATEROLE; without it the migration goes on and
-- leaves the role to the DBA (see the README).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ticket_reader') THEN
        BEGIN
            CREATE ROLE ticket_reader NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL; -- created by a concurrent migration
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'role ticket_reader not created (no CREATEROLE privilege); see README "Reading tickets"';
                RETURN;
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ticket_reader', current_schema());
    GRANT SELECT ON auth_tickets TO ticket_reader;
    GRANT EXECUTE ON FUNCTION current_auth_ticket(text, text) TO ticket_reader;
    GRANT EXECUTE ON FUNCTION claim_auth_ticket(text, text) TO ticket_reader;
END
$$;
