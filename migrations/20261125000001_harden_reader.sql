-- Hardening the read path.
--
-- claim_auth_ticket runs with its owner's rights (SECURITY DEFINER) and was
-- created with "SET search_path FROM CURRENT", which leaves pg_temp searched
-- first: a caller's temporary table named auth_tickets, with a trigger of the
-- caller's, took the real table's place, and the trigger ran with the owner's
-- rights. As Postgres' documentation on SECURITY DEFINER advises, both
-- functions are now created again with every name in their bodies qualified
-- by the schema the table lives in, and claim_auth_ticket with a fixed
-- search_path that puts pg_temp last. The schema is only known now (it is the
-- one the first migration created the table in), so the functions are
-- created from a DO block.
--
-- current_auth_ticket runs with the caller's rights (it needs no more than
-- SELECT on auth_tickets); it gets no SET clause, which would keep Postgres
-- from inlining it, only qualified names.
--
-- CREATE OR REPLACE keeps each function's owner and privileges; PUBLIC loses
-- EXECUTE on both: only the reader role (and the owner) may call them.
DO $migration$
DECLARE
    tables text := format('%I', current_schema());
BEGIN
    EXECUTE format($ddl$
        CREATE OR REPLACE FUNCTION %1$s.current_auth_ticket(p_xc_user_id text, p_user_device_id text DEFAULT NULL)
        RETURNS TABLE (
            event_id text, user_id text, user_device_id text, user_platform text,
            ticket text, issued_at timestamptz, expires_at timestamptz, claimed_at timestamptz
        )
        LANGUAGE sql STABLE
        AS $body$
            SELECT t.event_id, t.user_id, t.user_device_id, t.user_platform,
                   t.ticket, t.issued_at, t.expires_at, t.claimed_at
            FROM %1$s.auth_tickets t
            WHERE t.xc_user_id = p_xc_user_id
              AND (p_user_device_id IS NULL OR t.user_device_id = p_user_device_id)
              AND t.expires_at > pg_catalog.now()
            ORDER BY t.expires_at DESC
            LIMIT 1
        $body$
    $ddl$, tables);

    EXECUTE format($ddl$
        CREATE OR REPLACE FUNCTION %1$s.claim_auth_ticket(p_xc_user_id text, p_user_device_id text DEFAULT NULL)
        RETURNS TABLE (
            event_id text, user_id text, user_device_id text, user_platform text,
            ticket text, issued_at timestamptz, expires_at timestamptz, claimed_at timestamptz
        )
        LANGUAGE sql VOLATILE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $body$
            UPDATE %1$s.auth_tickets t
            SET claimed_at = pg_catalog.now()
            WHERE t.event_id = (
                SELECT c.event_id
                FROM %1$s.auth_tickets c
                WHERE c.xc_user_id = p_xc_user_id
                  AND (p_user_device_id IS NULL OR c.user_device_id = p_user_device_id)
                  AND c.expires_at > pg_catalog.now()
                  AND c.claimed_at IS NULL
                ORDER BY c.expires_at DESC
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            RETURNING t.event_id, t.user_id, t.user_device_id, t.user_platform,
                      t.ticket, t.issued_at, t.expires_at, t.claimed_at
        $body$
    $ddl$, tables);

    EXECUTE format('REVOKE ALL ON FUNCTION %s.current_auth_ticket(text, text) FROM PUBLIC', tables);
    EXECUTE format('REVOKE ALL ON FUNCTION %s.claim_auth_ticket(text, text) FROM PUBLIC', tables);
END
$migration$;
