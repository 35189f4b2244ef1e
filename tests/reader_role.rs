//! The reader role, as the app backends' logins meet it: real LOGIN roles
//! connecting over TCP to a real Postgres. `claim_auth_ticket` runs with its
//! owner's rights, and a reader must not be able to borrow them (by shadowing
//! `auth_tickets` with a temporary table of its own); both read functions
//! still hand the reader its real ticket.

mod support;

use chrono::{SubsecRound, TimeDelta, Utc};
use sqlx::{Connection, PgConnection};
use support::{TestDb, TestRoles};
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
        .save(&record("real-1", "victim", "t-real"))
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
