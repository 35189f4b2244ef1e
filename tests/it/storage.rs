//! The `auth_tickets` table and its read path, on a real Postgres: saving is
//! idempotent per event, app backends read the current ticket through the
//! documented functions, and the `ticket_reader` role can read nothing else.
// Test code: times here are the test's own, not input to guard against.
#![allow(clippy::arithmetic_side_effects)]

use crate::support::TestDb;
use chrono::{SubsecRound, TimeDelta, Utc};
use std::time::Duration;
use ticket_worker::domain::{AuthTicket, EventId, Platform, TicketRecord};
use ticket_worker::events::FailureReason;
use ticket_worker::shutdown::Shutdown;
use ticket_worker::storage::{Known, MIGRATOR, Saved, StoredFailure, TicketStore, body_digest};

/// What the outbox holds for these tests' outcomes (its content is opaque to storage).
const READY: &str = r#"{"test":"ready"}"#;
const FAILED: &str = r#"{"test":"failed"}"#;

fn record(
    event: &str,
    user: &str,
    device: &str,
    ticket: &str,
    issued_minutes_ago: i64,
) -> TicketRecord {
    let issued_at = Utc::now().trunc_subsecs(6) - TimeDelta::minutes(issued_minutes_ago);
    TicketRecord {
        event_id: EventId::parse(event).expect("id"),
        xc_user_id: user.into(),
        user_id: format!("tt-{user}"),
        user_device_id: device.into(),
        platform: Platform::Android,
        ticket: AuthTicket::new(ticket.into()),
        issued_at,
        expires_at: issued_at + TimeDelta::hours(1),
    }
}

#[tokio::test]
async fn migrations_apply_twice_without_harm() {
    let db = TestDb::migrated().await;
    MIGRATOR.run(&db.pool).await.expect("second run is a no-op");
    assert_eq!(db.count().await, 0);
}

#[tokio::test]
async fn saving_is_idempotent_per_event_even_under_concurrency() {
    let db = TestDb::migrated().await;
    let store = TicketStore::from_pool(db.pool.clone());
    let first = record("e-1", "u1", "d1", "ticket-one", 0);
    assert_eq!(
        store.save(&first, READY).await.expect("save"),
        Saved::Inserted(first.clone())
    );
    let second = record("e-1", "u1", "d1", "ticket-two", 0);
    match store.save(&second, READY).await.expect("save again") {
        Saved::Existing(stored) => assert_eq!(
            stored.ticket.expose(),
            "ticket-one",
            "the first ticket stays"
        ),
        other => panic!("expected the existing row, got {other:?}"),
    }
    assert_eq!(
        store.find(&first.event_id).await.expect("find"),
        Some(first)
    );

    // Sixteen deliveries of one event racing: one row, everyone sees it.
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .save(
                        &record("e-race", "u2", "d2", &format!("ticket-{i}"), 0),
                        READY,
                    )
                    .await
            })
        })
        .collect();
    let mut inserted = 0;
    let mut tickets = std::collections::HashSet::new();
    for racer in racers {
        let saved = racer.await.expect("task").expect("save");
        let record = match saved {
            Saved::Inserted(record) => {
                inserted += 1;
                record
            }
            Saved::Existing(record) => record,
            Saved::Failed(failure) => panic!("no failure was recorded: {failure:?}"),
        };
        tickets.insert(record.ticket.expose().to_owned());
    }
    assert_eq!((inserted, tickets.len()), (1, 1));
    assert_eq!(db.count().await, 2);
}

async fn insert(store: &TicketStore, records: &[TicketRecord]) {
    for r in records {
        store.save(r, READY).await.expect("save");
    }
}

#[tokio::test]
async fn current_auth_ticket_returns_the_newest_unexpired_ticket_of_a_user_or_device() {
    let db = TestDb::migrated().await;
    let store = TicketStore::from_pool(db.pool.clone());
    insert(
        &store,
        &[
            record("e-expired", "ana", "phone", "t-expired", 90),
            record("e-old", "ana", "phone", "t-old", 30),
            record("e-new-phone", "ana", "phone", "t-new-phone", 10),
            record("e-newest-laptop", "ana", "laptop", "t-laptop", 5),
            record("e-other", "budi", "phone", "t-budi", 1),
        ],
    )
    .await;
    let current = |user: &'static str, device: Option<&'static str>| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT ticket FROM current_auth_ticket($1, $2)")
                .bind(user)
                .bind(device)
                .fetch_optional(&pool)
                .await
                .expect("query")
        }
    };
    assert_eq!(current("ana", None).await.as_deref(), Some("t-laptop"));
    assert_eq!(
        current("ana", Some("phone")).await.as_deref(),
        Some("t-new-phone")
    );
    assert_eq!(current("ana", Some("tablet")).await, None);
    assert_eq!(current("nobody", None).await, None);
    let one_argument: Option<String> =
        sqlx::query_scalar("SELECT ticket FROM current_auth_ticket('budi')")
            .fetch_optional(&db.pool)
            .await
            .expect("query");
    assert_eq!(one_argument.as_deref(), Some("t-budi"));
}

#[tokio::test]
async fn claim_auth_ticket_hands_each_ticket_out_once() {
    let db = TestDb::migrated().await;
    let store = TicketStore::from_pool(db.pool.clone());
    insert(
        &store,
        &[
            record("c-expired", "ana", "phone", "t-expired", 90),
            record("c-old", "ana", "phone", "t-old", 30),
            record("c-new", "ana", "phone", "t-new", 10),
        ],
    )
    .await;
    let claim = || async {
        sqlx::query_as::<_, (String, Option<chrono::DateTime<Utc>>)>(
            "SELECT ticket, claimed_at FROM claim_auth_ticket('ana', 'phone')",
        )
        .fetch_optional(&db.pool)
        .await
        .expect("claim")
    };
    let first = claim().await.expect("a ticket");
    assert_eq!(first.0, "t-new");
    assert!(first.1.is_some(), "marked claimed");
    assert_eq!(claim().await.map(|c| c.0).as_deref(), Some("t-old"));
    assert_eq!(claim().await, None, "expired tickets are never handed out");
}

#[tokio::test]
async fn the_ticket_reader_role_reads_tickets_and_nothing_else() {
    let db = TestDb::migrated().await;
    let store = TicketStore::from_pool(db.pool.clone());
    insert(
        &store,
        &[
            record("r-1", "ana", "phone", "t-1", 1),
            record("r-2", "budi", "phone", "t-2", 1),
        ],
    )
    .await;
    sqlx::query("CREATE TABLE customer_secrets (value text)")
        .execute(&db.pool)
        .await
        .expect("other table");

    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL ROLE ticket_reader")
        .execute(&mut *tx)
        .await
        .expect("become ticket_reader");
    let via_function: String = sqlx::query_scalar("SELECT ticket FROM current_auth_ticket('ana')")
        .fetch_one(&mut *tx)
        .await
        .expect("read through the function");
    assert_eq!(via_function, "t-1");
    let claimed: String = sqlx::query_scalar("SELECT ticket FROM claim_auth_ticket('budi')")
        .fetch_one(&mut *tx)
        .await
        .expect("claim through the function");
    assert_eq!(claimed, "t-2");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_tickets")
        .fetch_one(&mut *tx)
        .await
        .expect("select");
    assert_eq!(rows, 2);
    tx.rollback().await.expect("rollback");

    for forbidden in [
        "SELECT * FROM customer_secrets",
        "SELECT * FROM _sqlx_migrations",
        "SELECT * FROM event_outcomes",
        "DELETE FROM auth_tickets",
        "UPDATE auth_tickets SET ticket = 'x'",
        "INSERT INTO auth_tickets (event_id) VALUES ('x')",
    ] {
        let mut tx = db.pool.begin().await.expect("begin");
        sqlx::query("SET LOCAL ROLE ticket_reader")
            .execute(&mut *tx)
            .await
            .expect("become ticket_reader");
        let error = sqlx::query(sqlx::AssertSqlSafe(forbidden))
            .execute(&mut *tx)
            .await
            .expect_err(forbidden);
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "{forbidden}: permission denied"
        );
        tx.rollback().await.expect("rollback");
    }
}

#[tokio::test]
async fn events_long_decided_are_purged_with_their_tickets_and_recent_ones_kept() {
    let db = TestDb::migrated().await;
    let store = TicketStore::from_pool(db.pool.clone());
    let mut records: Vec<TicketRecord> = (0..7)
        .map(|i| record(&format!("old-{i}"), "ana", "phone", "t", 60 * 26))
        .collect();
    records.push(record("recently-expired", "ana", "phone", "t", 90));
    records.push(record("current", "ana", "phone", "t", 5));
    insert(&store, &records).await;
    let failure = StoredFailure {
        reason: FailureReason::Expired,
        message: "late".into(),
        field: None,
        about: None,
    };
    store
        .record_failure(
            &EventId::parse("failed-just-now").expect("id"),
            &failure,
            FAILED,
            &body_digest(b"{}"),
        )
        .await
        .expect("record");
    // One old event's announcement was confirmed long ago; the others'
    // never were, and go with them, counted.
    store
        .delete_announced(&["old-0".into()])
        .await
        .expect("announced");
    let mut purged = Vec::new();
    loop {
        let batch = store
            .purge_batch(Duration::from_secs(24 * 3600), 3)
            .await
            .expect("purge");
        purged.push(batch);
        if batch.events < 3 {
            break;
        }
    }
    assert_eq!(
        purged.iter().map(|p| p.events).collect::<Vec<_>>(),
        [3, 3, 1],
        "in batches of 3"
    );
    assert_eq!(
        purged.iter().map(|p| p.unannounced).sum::<u64>(),
        6,
        "all but old-0 were never announced"
    );
    let again =
        ticket_worker::purge::purge(&store, Duration::from_secs(24 * 3600), 3, &Shutdown::new())
            .await
            .expect("purge");
    assert_eq!(again, 0, "nothing left to purge");
    let waiting: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM ticket_event_outbox ORDER BY event_id")
            .fetch_all(&db.pool)
            .await
            .expect("outbox");
    assert_eq!(waiting, ["current", "failed-just-now", "recently-expired"]);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM auth_tickets ORDER BY event_id")
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    assert_eq!(left, ["current", "recently-expired"]);
    let outcomes: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outcomes")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(
        outcomes, 3,
        "outcomes go with their tickets; the recent failure stays"
    );
}

#[tokio::test]
async fn the_first_outcome_recorded_for_an_event_wins() {
    let db = TestDb::migrated().await;
    let store = TicketStore::from_pool(db.pool.clone());
    let expired = StoredFailure {
        reason: FailureReason::Expired,
        message: "too late".into(),
        field: None,
        about: None,
    };

    // A failure first: a later ticket for the event is not kept.
    let id = EventId::parse("failed-first").expect("id");
    assert_eq!(
        store
            .record_failure(&id, &expired, FAILED, &body_digest(b"{}"))
            .await
            .expect("record"),
        Known::Failed(expired.clone())
    );
    assert_eq!(
        store
            .save(&record("failed-first", "ana", "phone", "t-late", 0), READY)
            .await
            .expect("save"),
        Saved::Failed(expired.clone())
    );
    assert_eq!(store.find(&id).await.expect("find"), None);
    assert_eq!(
        store.known(&id).await.expect("known"),
        Known::Failed(expired.clone())
    );

    // A ticket first: a later failure gives way to it.
    let issued = record("issued-first", "ana", "phone", "t-1", 0);
    store.save(&issued, READY).await.expect("save");
    let id = issued.event_id.clone();
    assert_eq!(
        store
            .record_failure(&id, &expired, FAILED, &body_digest(b"{}"))
            .await
            .expect("record"),
        Known::Issued(issued.clone())
    );
    assert_eq!(
        store.known(&id).await.expect("known"),
        Known::Issued(issued)
    );

    // Racing: a failure and tickets for one event at once; one outcome stands.
    for round in 0..20 {
        let event = format!("race-{round}");
        let saves: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                let record = record(&event, "u", "d", &format!("t-{i}"), 0);
                tokio::spawn(async move {
                    store
                        .save(&record, READY)
                        .await
                        .map(|s| matches!(s, Saved::Inserted(_)))
                })
            })
            .collect();
        let failure = {
            let (store, expired, id) = (
                store.clone(),
                expired.clone(),
                EventId::parse(&event).expect("id"),
            );
            tokio::spawn(async move {
                store
                    .record_failure(&id, &expired, FAILED, &body_digest(b"{}"))
                    .await
            })
        };
        let inserted: usize = futures_util::future::join_all(saves)
            .await
            .into_iter()
            .map(|r| usize::from(r.expect("task").expect("save")))
            .sum();
        let known = failure.await.expect("task").expect("record");
        let id = EventId::parse(&event).expect("id");
        match store.known(&id).await.expect("known") {
            Known::Issued(_) => {
                assert_eq!((inserted, matches!(known, Known::Issued(_))), (1, true))
            }
            Known::Failed(_) => {
                assert_eq!(inserted, 0);
                assert_eq!(
                    store.find(&id).await.expect("find"),
                    None,
                    "no ticket beside a failure"
                );
            }
            Known::Nothing => panic!("an outcome was recorded"),
        }
    }
}

#[tokio::test]
async fn each_outcome_is_queued_for_announcement_with_it_and_only_once() {
    let db = TestDb::migrated().await;
    let store = TicketStore::from_pool(db.pool.clone());
    let outbox = || async {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT event_id, routing_key, body FROM ticket_event_outbox ORDER BY event_id",
        )
        .fetch_all(&db.pool)
        .await
        .expect("outbox")
    };
    store
        .save(&record("o-1", "ana", "phone", "t-1", 0), READY)
        .await
        .expect("save");
    // A second copy of the event, and a failure for it: no second announcement.
    store
        .save(&record("o-1", "ana", "phone", "t-2", 0), r#"{"other":1}"#)
        .await
        .expect("save again");
    let expired = StoredFailure {
        reason: FailureReason::Expired,
        message: "late".into(),
        field: None,
        about: None,
    };
    let id = EventId::parse("o-1").expect("id");
    store
        .record_failure(&id, &expired, FAILED, &body_digest(b"{}"))
        .await
        .expect("record");
    let failed_id = EventId::parse("o-2").expect("id");
    store
        .record_failure(&failed_id, &expired, FAILED, &body_digest(b"{}"))
        .await
        .expect("record");
    assert_eq!(
        outbox().await,
        [
            ("o-1".into(), "ticket.ready".into(), READY.into()),
            ("o-2".into(), "ticket.failed".into(), FAILED.into()),
        ]
    );

    // Fresh announcements are the pipeline's: the relay leaves them alone.
    let due = store
        .take_due_announcements(Duration::from_secs(60), 10)
        .await
        .expect("take");
    assert!(due.is_empty());
    // Old ones are taken once, and not again while they are being relayed.
    sqlx::query("UPDATE ticket_event_outbox SET attempted_at = now() - interval '2 minutes'")
        .execute(&db.pool)
        .await
        .expect("age");
    let due = store
        .take_due_announcements(Duration::from_secs(60), 1)
        .await
        .expect("take");
    assert_eq!(due.len(), 1, "at most the batch");
    let rest = store
        .take_due_announcements(Duration::from_secs(60), 10)
        .await
        .expect("take");
    assert_eq!(rest.len(), 1, "the other one");
    assert_ne!(due[0].event_id, rest[0].event_id);
    assert!(
        store
            .take_due_announcements(Duration::from_secs(60), 10)
            .await
            .expect("take")
            .is_empty(),
        "taken rows wait another minute"
    );
    let deleted = store
        .delete_announced(&["o-1".into(), "o-2".into(), "o-3".into()])
        .await
        .expect("delete");
    assert_eq!(deleted, 2);
    assert!(outbox().await.is_empty());
}

#[tokio::test]
async fn a_batch_of_saves_stores_each_event_once_and_answers_each_copy_as_it_stands() {
    let db = TestDb::migrated().await;
    let store = TicketStore::from_pool(db.pool.clone());
    // Known before the batch: one event already has a ticket, one a failure.
    let earlier = record("b-issued", "u0", "d0", "ticket-earlier", 0);
    store.save(&earlier, READY).await.expect("save earlier");
    let failure = StoredFailure {
        reason: FailureReason::Expired,
        message: "too old".into(),
        field: None,
        about: None,
    };
    store
        .record_failure(
            &EventId::parse("b-failed").expect("id"),
            &failure,
            FAILED,
            &body_digest(b"{}"),
        )
        .await
        .expect("record failure");

    let batch: Vec<(TicketRecord, String)> = [
        record("b-new-1", "u1", "d1", "ticket-1", 0),
        record("b-issued", "u0", "d0", "ticket-late", 0),
        record("b-new-2", "u2", "d2", "ticket-2", 0),
        record("b-failed", "u3", "d3", "ticket-3", 0),
        // The same event twice in one batch: stored once, for its first copy.
        record("b-new-1", "u1", "d1", "ticket-1-again", 0),
    ]
    .into_iter()
    .map(|r| (r, READY.to_owned()))
    .collect();
    let answers: Vec<Saved> = store
        .save_many(&batch)
        .await
        .expect("one statement")
        .into_iter()
        .map(|a| a.expect("answer"))
        .collect();
    assert_eq!(answers[0], Saved::Inserted(batch[0].0.clone()));
    assert!(
        matches!(&answers[1], Saved::Existing(stored) if stored.ticket.expose() == "ticket-earlier"),
        "{:?}",
        answers[1]
    );
    assert_eq!(answers[2], Saved::Inserted(batch[2].0.clone()));
    assert_eq!(answers[3], Saved::Failed(failure.clone()));
    assert!(
        matches!(&answers[4], Saved::Existing(stored) if stored.ticket.expose() == "ticket-1"),
        "{:?}",
        answers[4]
    );
    // Rows: earlier + two new; outbox: one ready event per stored ticket (the
    // earlier one's is still there too) and the failure's.
    assert_eq!(db.count().await, 3);
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_event_outbox")
        .fetch_one(&db.pool)
        .await
        .expect("count outbox");
    assert_eq!(queued, 4);

    // One lookup statement answers for several events, in the order asked,
    // unknown ones included, and repeats.
    let ids: Vec<EventId> = ["b-new-2", "b-nobody", "b-failed", "b-new-2"]
        .iter()
        .map(|id| EventId::parse(id).expect("id"))
        .collect();
    let known: Vec<Known> = store
        .known_many(&ids)
        .await
        .expect("lookup")
        .into_iter()
        .map(|k| k.expect("known"))
        .collect();
    assert!(matches!(&known[0], Known::Issued(r) if r.ticket.expose() == "ticket-2"));
    assert_eq!(known[1], Known::Nothing);
    assert_eq!(known[2], Known::Failed(failure));
    assert_eq!(known[0], known[3]);
}

#[tokio::test]
async fn migrating_waits_through_backends_terminated_while_a_migration_runs() {
    let db = TestDb::create().await;
    let store =
        TicketStore::connect_lazy(&secrecy::SecretString::from(db.url.clone()), 2).expect("pool");
    // Hold the first migration in place: it grants USAGE on the schema, and
    // waits while this open transaction has changed the schema's privileges.
    let mut blocker = db.pool.begin().await.expect("begin");
    sqlx::query("GRANT USAGE ON SCHEMA public TO PUBLIC")
        .execute(&mut *blocker)
        .await
        .expect("hold the schema's row");
    // Terminate the migration while it waits (its transaction rolls back),
    // then let the schema go.
    let killer = async {
        let started = std::time::Instant::now();
        let mut terminated = 0i64;
        while terminated == 0 && started.elapsed() < Duration::from_secs(30) {
            terminated += sqlx::query_scalar::<_, i64>(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid() AND state = 'active'
                   AND wait_event_type = 'Lock'",
            )
            .bind(&db.name)
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        blocker.rollback().await.expect("release the schema");
        terminated
    };
    let (migrated, terminated) = tokio::join!(ticket_worker::startup::migrate(&store), killer);
    assert!(terminated > 0, "the waiting migration was terminated");
    migrated.expect("migrations wait for Postgres and finish");
    MIGRATOR.run(&db.pool).await.expect("nothing left to apply");
    assert_eq!(db.count().await, 0);
}
