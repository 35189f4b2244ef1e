-- Hardening the read path: read functions that cannot be turned against
-- their owner, and a reader role per database instead of one for the cluster.
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

-- The reader role, named by the operator. Roles are cluster-wide: with one
-- ticket_reader for every database, a login made for one database's tickets
-- could read every other's. The name comes from the session setting
-- ticket_worker.reader_role, which the worker sets from READER_ROLE on its
-- connections; without it, ticket_reader, as before. One name per database
-- (or tenant) keeps them apart.
--
-- The role is created if missing (NOLOGIN; app backends log in with roles of
-- their own, members of this one). Creating a role needs CREATEROLE; without
-- it the migration goes on and leaves the role to the DBA (see the README),
-- granting it what it needs if it exists already. It gets USAGE on the
-- schema, SELECT on auth_tickets and EXECUTE on the two read functions,
-- nothing more. When the name is not ticket_reader, ticket_reader loses here
-- what the first migration granted it; the role itself stays (it is
-- cluster-wide and may serve other databases).
--
-- The name is read when this migration runs, once per database: choosing
-- another later takes the manual SQL in the README.
DO $migration$
DECLARE
    tables text := format('%I', current_schema());
    reader text := coalesce(nullif(current_setting('ticket_worker.reader_role', true), ''), 'ticket_reader');
BEGIN
    -- The worker checks READER_ROLE; this catches a setting made elsewhere.
    IF reader !~ '^[a-z_][a-z0-9_]*$' OR octet_length(reader) > 63
        OR reader IN ('public', 'none') OR reader LIKE 'pg\_%' THEN
        RAISE EXCEPTION 'ticket_worker.reader_role (READER_ROLE) % is not a plain role name', quote_literal(reader)
            USING HINT = 'Use 1 to 63 lowercase letters, digits and underscores, starting with a letter or underscore; not public, none or pg_….';
    END IF;
    -- A reader that can do what the owner of the tables can is no reader.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = reader
               AND (rolsuper OR pg_has_role(reader, current_user, 'USAGE'))) THEN
        RAISE EXCEPTION 'READER_ROLE % is a superuser or has the rights of %, who owns the tickets', reader, current_user
            USING HINT = 'Choose a role of the app backends'' own, e.g. tickets_acme_reader.';
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = reader) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', reader);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL; -- created by a concurrent migration
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'role % not created (no CREATEROLE privilege); see README "Reading tickets"', reader;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = reader) THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', tables, reader);
        EXECUTE format('GRANT SELECT ON %s.auth_tickets TO %I', tables, reader);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s.current_auth_ticket(text, text) TO %I', tables, reader);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s.claim_auth_ticket(text, text) TO %I', tables, reader);
    END IF;

    IF reader <> 'ticket_reader' AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ticket_reader') THEN
        EXECUTE format('REVOKE USAGE ON SCHEMA %s FROM ticket_reader', tables);
        EXECUTE format('REVOKE SELECT ON %s.auth_tickets FROM ticket_reader', tables);
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s.current_auth_ticket(text, text) FROM ticket_reader', tables);
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s.claim_auth_ticket(text, text) FROM ticket_reader', tables);
    END IF;
END
$migration$;
