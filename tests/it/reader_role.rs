//! The reader role, as the app backends' logins meet it: real LOGIN roles
//! connecting over TCP to a real Postgres. `claim_auth_ticket` runs with its
//! owner's rights, and a reader must not be able to borrow them (by shadowing
//! `auth_tickets` with a temporary table of its own); both read functions
//! still hand the reader its real ticket. `READER_ROLE` names the role per
//! database, so that one tenant's logins cannot read another's tickets.
// Test code: times here are the test's own, not input to guard against.
#![allow(clippy::arithmetic_side_effects)]

use crate::support::{TestDb, TestRoles, bin};
use chrono::{SubsecRound, TimeDelta, Utc};
use sqlx::{Connection, PgConnection};
use ticket_worker::domain::{AuthTicket, EventId, Platform, TicketRecord};
use ticket_worker::storage::TicketStore;

fn record(event: &str, user: &str, ticket: &str) -> TicketRecord {
    let issued_at = Utc::now().trunc_subsecs(6) - TimeDelta::minutes(1);
    TicketRecord {
        event_id: EventId::parse(event).expect("id"),
        xc_user_id: user.into(),
        user_id: format!("tt-{user}"),
        user_device_id: "phone".into(),
        platform: Platform::Android,
        ticket: AuthTicket::new(ticket.into()),
        issued_at,
        expires_at: issued_at + TimeDelta::hours(1),
    }
}

/// Connects as a login over TCP (not a Unix socket, not `SET ROLE`).
async fn connect_over_tcp(url: &str) -> PgConnection {
    let mut connection = PgConnection::connect(url)
        .await
        .expect("the login connects");
    let over_tcp: bool = sqlx::query_scalar("SELECT inet_server_addr() IS NOT NULL")
        .fetch_one(&mut connection)
        .await
        .expect("query");
    assert!(over_tcp, "the login is connected over TCP");
    connection
}

/// What a reader login runs to take over `claim_auth_ticket`'s rights: a
/// temporary `auth_tickets` with a row for the victim and a `BEFORE UPDATE`
/// trigger whose function lives in `pg_temp`. If the function's `UPDATE`
/// lands on this table, the trigger runs as the function's owner and tries
/// three things the reader may not do; each on its own, so that any one
/// succeeding shows.
const SHADOW_AUTH_TICKETS: &str = r#"
CREATE TEMP TABLE auth_tickets (
    event_id text PRIMARY KEY, xc_user_id text NOT NULL, user_id text NOT NULL,
    user_device_id text NOT NULL, user_platform text NOT NULL, ticket text NOT NULL,
    issued_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,
    claimed_at timestamptz, created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO pg_temp.auth_tickets
    (event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at)
VALUES ('shadow', 'victim', 'tt-victim', 'phone', 'android', 't-shadow', now(), now() + interval '1 hour');
CREATE TEMP TABLE trigger_ran (as_user text);
CREATE FUNCTION pg_temp.escalate() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO pg_temp.trigger_ran VALUES (current_user);
    BEGIN
        EXECUTE 'CREATE TABLE public.pwned (note text)';
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        INSERT INTO public.event_outcomes (event_id, outcome) VALUES ('pwned', 'issued');
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN NEW;
END
$f$;
CREATE TRIGGER escalate BEFORE UPDATE ON pg_temp.auth_tickets
    FOR EACH ROW EXECUTE FUNCTION pg_temp.escalate();
"#;

#[tokio::test]
async fn a_reader_login_cannot_borrow_claim_auth_tickets_rights_and_still_reads_its_ticket() {
    let db = TestDb::migrated().await;
    // Declared after the database: dropped first, while the database lives.
    let mut roles = TestRoles::default();
    let store = TicketStore::from_pool(db.pool.clone());
    store
        .save(&record("real-1", "victim", "t-real"), "{}")
        .await
        .expect("save");
    let login = roles.create_login(&db, "ticket_reader").await;
    let mut reader = connect_over_tcp(&login).await;

    sqlx::raw_sql(SHADOW_AUTH_TICKETS)
        .execute(&mut reader)
        .await
        .expect("a reader may create temporary tables, functions and triggers");
    let claimed: Option<String> =
        sqlx::query_scalar("SELECT ticket FROM claim_auth_ticket('victim', NULL)")
            .fetch_optional(&mut reader)
            .await
            .expect("the reader may claim");

    let mut happened = Vec::new();
    let ran_as: Vec<String> = sqlx::query_scalar("SELECT as_user FROM pg_temp.trigger_ran")
        .fetch_all(&mut reader)
        .await
        .expect("query");
    if !ran_as.is_empty() {
        happened.push(format!("the reader's trigger ran as {ran_as:?}"));
    }
    let pwned: bool = sqlx::query_scalar("SELECT to_regclass('public.pwned') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .expect("query");
    if pwned {
        happened.push("it created the table public.pwned".into());
    }
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = session_user")
            .fetch_one(&mut reader)
            .await
            .expect("query");
    if superuser {
        happened.push("it made the reader's login a superuser".into());
    }
    let outcomes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_outcomes WHERE event_id = 'pwned'")
            .fetch_one(&db.pool)
            .await
            .expect("query");
    if outcomes > 0 {
        happened.push("it wrote to event_outcomes".into());
    }
    assert!(
        happened.is_empty(),
        "claim_auth_ticket ran the reader's code with its owner's rights: {}",
        happened.join("; ")
    );

    assert_eq!(
        claimed.as_deref(),
        Some("t-real"),
        "claim_auth_ticket hands out the real ticket, not the reader's temporary row"
    );
    let marked: bool = sqlx::query_scalar(
        "SELECT claimed_at IS NOT NULL FROM auth_tickets WHERE event_id = 'real-1'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("query");
    assert!(marked, "the real row is marked claimed");
    let current: Option<String> =
        sqlx::query_scalar("SELECT ticket FROM current_auth_ticket('victim')")
            .fetch_optional(&mut reader)
            .await
            .expect("the reader may read the current ticket");
    assert_eq!(
        current.as_deref(),
        Some("t-real"),
        "current_auth_ticket reads the real table, whatever the caller's search_path finds first"
    );
    let _ = reader.close().await;
}

/// `ticket-worker migrate` on `db` with `READER_ROLE`: its exit code and stderr.
fn migrate(db: &TestDb, reader_role: &str) -> (i32, String) {
    let output = bin()
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("READER_ROLE", reader_role)
        .output()
        .expect("run ticket-worker migrate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The SQLSTATE `sql` fails with on `connection`; it must fail.
async fn refused(connection: &mut PgConnection, sql: &'static str) -> Option<String> {
    let error = sqlx::query(sql)
        .execute(connection)
        .await
        .map(|_| ())
        .expect_err(sql);
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

/// Privileges granted to `role` in the database `pool` is connected to, on
/// schemas, tables and functions, whoever granted them.
async fn grants_to(pool: &sqlx::PgPool, role: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT format('%s on %s', a.privilege_type, o.name) FROM (
             SELECT nspname::text AS name, nspacl AS acl FROM pg_namespace
             UNION ALL SELECT relname::text, relacl FROM pg_class
             UNION ALL SELECT oid::regprocedure::text, proacl FROM pg_proc
         ) o, aclexplode(o.acl) a
         WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
         ORDER BY 1",
    )
    .bind(role)
    .fetch_all(pool)
    .await
    .expect("query the grants")
}

#[tokio::test]
async fn each_tenants_reader_role_reads_its_own_database_and_no_other() {
    let acme = TestDb::create().await;
    let globex = TestDb::create().await;
    // Declared after the databases: dropped first, while they live.
    let mut roles = TestRoles::default();
    let acme_reader = roles.name("tw_acme_reader");
    let globex_reader = roles.name("tw_globex_reader");
    for (db, reader) in [(&acme, &acme_reader), (&globex, &globex_reader)] {
        let (code, stderr) = migrate(db, reader);
        assert_eq!(code, 0, "migrate with READER_ROLE={reader}: {stderr}");
        TicketStore::from_pool(db.pool.clone())
            .save(&record("e-1", "ana", &format!("t-{}", db.name)), "{}")
            .await
            .expect("save");
    }
    let acme_ticket = format!("t-{}", acme.name);
    let can_login: bool = sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(&acme_reader)
        .fetch_one(&acme.pool)
        .await
        .expect("the migration created the reader role");
    assert!(!can_login, "the reader role is NOLOGIN");

    // A login of acme's reads acme's tickets, through both functions and the table.
    let login = roles.create_login(&acme, &acme_reader).await;
    let mut in_acme = connect_over_tcp(&login).await;
    for read in [
        "SELECT ticket FROM current_auth_ticket('ana')",
        "SELECT ticket FROM auth_tickets WHERE xc_user_id = 'ana'",
        "SELECT ticket FROM claim_auth_ticket('ana', NULL)",
    ] {
        let ticket: String = sqlx::query_scalar(read)
            .fetch_one(&mut in_acme)
            .await
            .expect(read);
        assert_eq!(ticket, acme_ticket, "{read}");
    }
    let _ = in_acme.close().await;

    // The same login in globex's database is refused everything.
    let mut other = url::Url::parse(&login).expect("a URL");
    other.set_path(&format!("/{}", globex.name));
    let mut in_globex = connect_over_tcp(other.as_str()).await;
    for read in [
        "SELECT ticket FROM auth_tickets",
        "SELECT ticket FROM current_auth_ticket('ana')",
        "SELECT ticket FROM claim_auth_ticket('ana', NULL)",
    ] {
        assert_eq!(
            refused(&mut in_globex, read).await.as_deref(),
            Some("42501"),
            "{read} in another tenant's database: permission denied"
        );
    }
    let _ = in_globex.close().await;
    let unclaimed: bool =
        sqlx::query_scalar("SELECT claimed_at IS NULL FROM auth_tickets WHERE event_id = 'e-1'")
            .fetch_one(&globex.pool)
            .await
            .expect("query");
    assert!(unclaimed, "globex's ticket was not handed out");

    // Neither the cluster-wide ticket_reader nor the other tenant's role holds
    // anything in a database migrated for a role of its own.
    for (db, stranger) in [(&acme, &globex_reader), (&globex, &acme_reader)] {
        for role in ["ticket_reader", stranger.as_str()] {
            assert_eq!(
                grants_to(&db.pool, role).await,
                Vec::<String>::new(),
                "{role} in {}",
                db.name
            );
            let can: (bool, bool, bool) = sqlx::query_as(
                "SELECT has_table_privilege($1, 'auth_tickets', 'SELECT'),
                        has_function_privilege($1, 'current_auth_ticket(text, text)', 'EXECUTE'),
                        has_function_privilege($1, 'claim_auth_ticket(text, text)', 'EXECUTE')",
            )
            .bind(role)
            .fetch_one(&db.pool)
            .await
            .expect("query");
            assert_eq!(can, (false, false, false), "{role} in {}", db.name);
        }
    }
    let mut acme_grants = grants_to(&acme.pool, &acme_reader).await;
    acme_grants.sort();
    assert_eq!(
        acme_grants,
        [
            "EXECUTE on claim_auth_ticket(text,text)",
            "EXECUTE on current_auth_ticket(text,text)",
            "SELECT on auth_tickets",
            "USAGE on public",
        ],
        "the reader role gets what app backends need and nothing more"
    );
}

#[test]
fn a_malformed_reader_role_stops_migrate_and_run_with_exit_code_2() {
    for bad in [
        "Tickets",
        "acme-reader",
        "x; DROP TABLE auth_tickets",
        "public",
        "pg_monitor",
    ] {
        for command in ["migrate", "run"] {
            let output = bin()
                .arg(command)
                .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
                .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
                .env("TAPTALK_BASE_URL", "http://127.0.0.1:9")
                .env("TAPTALK_SERVER_KEY_ID", "key")
                .env("TAPTALK_SERVER_KEY_SECRET", "secret")
                .env("READER_ROLE", bad)
                .output()
                .expect("run the binary");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command} {bad:?}: {stderr}");
            assert!(
                stderr.contains("READER_ROLE"),
                "{command} {bad:?}: {stderr}"
            );
        }
    }
    let output = bin()
        .args(["migrate", "--reader-role=Tickets"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2), "the flag is checked as well");
}

#[tokio::test]
async fn the_migration_refuses_a_reader_role_that_could_do_more_than_read() {
    // A superuser (a name the worker cannot tell apart): the migration says no.
    let db = TestDb::create().await;
    let (code, stderr) = migrate(&db, "postgres");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("READER_ROLE postgres is a superuser"),
        "{stderr}"
    );

    // PUBLIC, set past the worker's check: no grant to everybody.
    let db = TestDb::create().await;
    let store = TicketStore::connect_lazy_with_reader_role(
        &secrecy::SecretString::from(db.url.clone()),
        1,
        "public",
    )
    .expect("a pool");
    let error = store.migrate().await.expect_err("public is refused");
    assert!(
        error.to_string().contains("not a plain role name"),
        "{error}"
    );
    store.pool().close().await;
    let public_grants: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.relname = 'auth_tickets' AND a.grantee = 0",
    )
    .fetch_one(&db.pool)
    .await
    .expect("query");
    assert_eq!(public_grants, 0, "auth_tickets is not granted to PUBLIC");
}

#[tokio::test]
async fn migrating_again_with_another_reader_role_says_what_the_operator_must_do() {
    let db = TestDb::create().await;
    let mut roles = TestRoles::default();
    let first = roles.name("tw_first_reader");
    let second = roles.name("tw_second_reader");
    let (code, stderr) = migrate(&db, &first);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("the reader role may read the tickets, and no other role may"),
        "{stderr}"
    );
    // The grants were made by the first run; another name changes nothing
    // by itself, and migrate says so, with the SQL to run.
    let (code, stderr) = migrate(&db, &second);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("READER_ROLE {second} may not read the tickets"))
            && stderr.contains(&format!("GRANT SELECT ON auth_tickets TO \"{second}\""))
            && stderr.contains(&format!("REVOKE SELECT ON auth_tickets FROM \"{first}\"")),
        "{stderr}"
    );
    assert_eq!(grants_to(&db.pool, &second).await, Vec::<String>::new());
}
