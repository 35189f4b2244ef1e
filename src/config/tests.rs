//! Unit tests of the settings: every problem named, all at once, no secret echoed.

use super::*;
use clap::Parser;
use secrecy::ExposeSecret;

#[derive(Parser)]
struct Harness {
    #[command(flatten)]
    run: RunArgs,
}

fn settings(args: &[&str]) -> Result<Settings, ConfigErrors> {
    let mut argv = vec!["test"];
    argv.extend_from_slice(args);
    let harness =
        Harness::try_parse_from(argv).map_err(|e| ConfigError::new("CLAP", e.to_string()))?;
    Settings::from_args(&harness.run)
}

/// The one problem of a reading that should find exactly one.
fn only(errors: ConfigErrors) -> ConfigError {
    assert_eq!(errors.errors().len(), 1, "{errors}");
    errors.into_iter().next().expect("one error")
}

/// The five settings without a default, in the order they are reported.
const REQUIRED: [(&str, &str); 5] = [
    ("AMQP_URL", "--amqp-url"),
    ("DATABASE_URL", "--database-url"),
    ("TAPTALK_BASE_URL", "--taptalk-base-url"),
    ("TAPTALK_SERVER_KEY_ID", "--taptalk-server-key-id"),
    ("TAPTALK_SERVER_KEY_SECRET", "--taptalk-server-key-secret"),
];

fn remove_required(args: &mut RunArgs) {
    args.broker.amqp_url = None;
    args.broker.amqp_url_file = None;
    args.database.database_url = None;
    args.database.database_url_file = None;
    args.taptalk.taptalk_base_url = None;
    args.taptalk.key.taptalk_server_key_id = None;
    args.taptalk.key.taptalk_server_key_secret = None;
    args.taptalk.key.taptalk_server_key_secret_file = None;
}

const COMPLETE: [&str; 10] = [
    "--amqp-url=amqp://guest:guest@127.0.0.1:5672/%2f",
    "--database-url=postgres://postgres:pw@127.0.0.1:5432/test",
    "--taptalk-base-url=http://127.0.0.1:8089",
    "--taptalk-server-key-id=key",
    "--taptalk-server-key-secret=s3cr3t",
    "--prefetch=10",
    "--concurrency=5",
    "--max-event-age=0",
    "--shutdown-grace=2s",
    "--taptalk-retry-for=1m",
];

fn without(flag: &str) -> Vec<&'static str> {
    COMPLETE
        .iter()
        .copied()
        .filter(|a| !a.starts_with(flag))
        .collect()
}

/// The complete flags with one flag set to another value.
fn with(extra: &'static str) -> Vec<&'static str> {
    let name = extra.split('=').next().unwrap_or(extra);
    let mut args = without(name);
    args.push(extra);
    args
}

#[test]
fn a_complete_configuration_parses_and_hides_its_secrets() {
    let settings = settings(&COMPLETE).expect("valid");
    assert_eq!(settings.max_event_age, None);
    assert_eq!(
        settings.max_clock_skew,
        crate::events::DEFAULT_MAX_CLOCK_SKEW,
        "the default, which publish checks with"
    );
    assert_eq!(
        settings.taptalk.retry.give_up_after,
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        settings.broker.topology.work_queue,
        "taptalk.logins.ticket-worker"
    );
    let debug = format!("{settings:?}");
    assert!(
        !debug.contains("s3cr3t") && !debug.contains(":pw@") && !debug.contains("guest:guest"),
        "{debug}"
    );
}

/// Parses the complete flag set; flags given explicitly win over any
/// variable in the test's environment, so the result does not depend on it.
fn complete_args() -> RunArgs {
    let mut argv = vec!["test"];
    argv.extend_from_slice(&COMPLETE);
    Harness::try_parse_from(argv)
        .map(|h| h.run)
        .expect("complete flags parse")
}

#[test]
fn each_missing_setting_is_named() {
    type Remove = fn(&mut RunArgs);
    let cases: [(&str, &str, Remove); 5] = [
        ("--amqp-url", "AMQP_URL", |a| a.broker.amqp_url = None),
        ("--database-url", "DATABASE_URL", |a| {
            a.database.database_url = None
        }),
        ("--taptalk-base-url", "TAPTALK_BASE_URL", |a| {
            a.taptalk.taptalk_base_url = None
        }),
        ("--taptalk-server-key-id", "TAPTALK_SERVER_KEY_ID", |a| {
            a.taptalk.key.taptalk_server_key_id = None
        }),
        (
            "--taptalk-server-key-secret",
            "TAPTALK_SERVER_KEY_SECRET",
            |a| {
                a.taptalk.key.taptalk_server_key_secret = None;
                a.taptalk.key.taptalk_server_key_secret_file = None;
            },
        ),
    ];
    for (flag, setting, remove) in cases {
        let mut args = complete_args();
        remove(&mut args);
        let error = only(Settings::from_args(&args).map(|_| ()).expect_err(flag));
        assert_eq!(error.setting, setting);
        assert!(error.problem.starts_with("missing"), "{error}");
        assert!(error.problem.contains(flag), "{error}");
    }
}

#[test]
fn with_nothing_set_one_reading_names_all_five_required_settings() {
    let mut args = complete_args();
    remove_required(&mut args);
    let errors = Settings::from_args(&args).map(|_| ()).expect_err("empty");
    let names: Vec<&str> = REQUIRED.iter().map(|(setting, _)| *setting).collect();
    assert_eq!(errors.settings(), names, "{errors}");
    for ((setting, flag), error) in REQUIRED.iter().zip(errors.errors()) {
        assert!(error.problem.starts_with("missing"), "{error}");
        assert!(
            error
                .problem
                .contains(&format!("set the environment variable {setting}"))
                && error.problem.contains(flag),
            "says what to do: {error}"
        );
    }
    // One line per setting, under a count.
    let text = errors.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"5 configuration errors:"), "{text}");
    for (setting, _) in REQUIRED {
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with(&format!("  {setting}: missing")))
                .count(),
            1,
            "{text}"
        );
    }
    assert_eq!(lines.len(), 6, "{text}");
}

#[test]
fn missing_and_malformed_settings_are_reported_together_without_secrets() {
    let mut args = complete_args();
    args.broker.amqp_url = None;
    args.broker.names.work_queue = String::new();
    args.broker.names.delivery_limit = 0;
    args.database.database_url = Some("mysql://root:topsecret-db@h/x".into());
    args.database.reader_role = "Tickets".into();
    args.taptalk.taptalk_base_url = Some("ftp://x".into());
    args.taptalk.key.taptalk_server_key_id = Some("a:b".into());
    args.taptalk.key.taptalk_server_key_secret_file = Some("/nonexistent/secret".into());
    args.concurrency = "0".into();
    args.max_event_age = "soon".into();
    args.purge_every = "0".into();
    let errors = Settings::from_args(&args).map(|_| ()).expect_err("bad");
    assert_eq!(
        errors.settings(),
        [
            "AMQP_URL",
            "WORK_QUEUE",
            "DELIVERY_LIMIT",
            "DATABASE_URL",
            "READER_ROLE",
            "TAPTALK_BASE_URL",
            "TAPTALK_SERVER_KEY_ID",
            "TAPTALK_SERVER_KEY_SECRET",
            "CONCURRENCY",
            "MAX_EVENT_AGE",
            "PURGE_EVERY",
        ],
        "{errors}"
    );
    assert!(
        errors
            .get("TAPTALK_SERVER_KEY_SECRET")
            .is_some_and(|e| e.problem.contains("not both")),
        "{errors}"
    );
    let text = format!("{errors} {errors:?}");
    assert!(
        !text.contains("topsecret") && !text.contains("s3cr3t"),
        "{text}"
    );
}

#[test]
fn one_problem_is_one_line() {
    let error = ConfigErrors::from(ConfigError::new("PREFETCH", "must be between 1 and 65535"));
    assert_eq!(
        error.to_string(),
        "configuration error: PREFETCH: must be between 1 and 65535"
    );
}

#[test]
fn malformed_values_are_named_without_echoing_secrets() {
    let error = settings(
        &[
            &without("--amqp-url")[..],
            &["--amqp-url=amqp://u:topsecret@[bad"],
        ]
        .concat(),
    )
    .map(|_| ())
    .expect_err("bad url");
    let error = only(error);
    assert_eq!(error.setting, "AMQP_URL");
    assert!(!error.to_string().contains("topsecret"), "{error}");
    for (extra, setting) in [
        ("--max-event-age=soon", "MAX_EVENT_AGE"),
        ("--max-clock-skew=-5s", "MAX_CLOCK_SKEW"),
        ("--concurrency=0", "CONCURRENCY"),
        ("--taptalk-timeout=0", "TAPTALK_TIMEOUT"),
        ("--work-queue=", "WORK_QUEUE"),
        ("--delivery-limit=0", "DELIVERY_LIMIT"),
    ] {
        let error = only(settings(&with(extra)).map(|_| ()).expect_err(extra));
        assert_eq!(error.setting, setting, "{extra}");
    }
    let error = settings(
        &[
            &without("--taptalk-base-url")[..],
            &["--taptalk-base-url=ftp://x"],
        ]
        .concat(),
    )
    .map(|_| ())
    .expect_err("ftp");
    assert_eq!(only(error).setting, "TAPTALK_BASE_URL");
}

#[test]
fn secrets_come_from_files() {
    let dir = std::env::temp_dir().join(format!("tw-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("secret");
    std::fs::write(&path, "from-file\n").expect("write");
    let mut args = complete_args();
    args.taptalk.key.taptalk_server_key_secret_file = Some(path.clone());
    let error = only(Settings::from_args(&args).map(|_| ()).expect_err("both"));
    assert!(error.problem.contains("not both"), "{error}");

    args.taptalk.key.taptalk_server_key_secret = None;
    let settings = Settings::from_args(&args).expect("valid");
    assert_eq!(
        settings.taptalk.server_key.header_value().expose_secret(),
        "a2V5OmZyb20tZmlsZQ=="
    );

    args.taptalk.key.taptalk_server_key_secret_file = Some(dir.join("missing"));
    let error = only(
        Settings::from_args(&args)
            .map(|_| ())
            .expect_err("unreadable"),
    );
    assert!(
        error
            .problem
            .contains("cannot read TAPTALK_SERVER_KEY_SECRET_FILE"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn secret_files_must_be_small_regular_non_empty_files() {
    let dir = std::env::temp_dir().join(format!("tw-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let huge = dir.join("huge");
    std::fs::write(&huge, "x".repeat(70_000)).expect("write");
    let cases: [(std::path::PathBuf, &str); 4] = [
        // Read until memory ran out, before.
        ("/dev/zero".into(), "not a regular file"),
        (dir.clone(), "not a regular file"),
        (empty, "is empty: write the secret into it"),
        (huge, "holds 70000 bytes"),
    ];
    for (path, says) in cases {
        let mut args = complete_args();
        args.taptalk.key.taptalk_server_key_secret = None;
        args.taptalk.key.taptalk_server_key_secret_file = Some(path.clone());
        let error = only(Settings::from_args(&args).map(|_| ()).expect_err("refused"));
        assert_eq!(error.setting, "TAPTALK_SERVER_KEY_SECRET", "{path:?}");
        assert!(error.problem.contains(says), "{path:?}: {error}");
        assert!(
            error.problem.contains("TAPTALK_SERVER_KEY_SECRET_FILE"),
            "{error}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_reader_role_is_a_plain_postgres_identifier() {
    let longest = "r".repeat(63);
    for good in ["tickets_acme_reader", "_r2", &longest] {
        let mut args = complete_args();
        args.database.reader_role = good.to_owned();
        let settings = Settings::from_args(&args).expect(good);
        assert_eq!(settings.database.reader_role, good);
    }
    let too_long = "r".repeat(64);
    for bad in [
        "",
        "Tickets",
        "1reader",
        "tickets-reader",
        "tickets reader",
        "r\"; DROP ROLE postgres; --",
        "lecteur_é",
        &too_long,
        "public",
        "none",
        "pg_read_all_data",
    ] {
        let mut args = complete_args();
        args.database.reader_role = bad.to_owned();
        let error = only(Settings::from_args(&args).map(|_| ()).expect_err(bad));
        assert_eq!(error.setting, "READER_ROLE", "{bad}");
    }
}

#[test]
fn concurrency_prefetch_and_rate_limit_are_auto_or_checked_numbers() {
    let defaults = complete(&[]).expect("defaults");
    assert_eq!(defaults.prefetch, crate::worker::Prefetch::Auto);
    assert_eq!(
        defaults.limit.concurrency,
        crate::taptalk::limit::Concurrency::Auto
    );
    assert_eq!((defaults.limit.min, defaults.limit.max), (16, 1024));
    assert!(defaults.rate_limit.is_none());

    let fixed = complete(&[
        "--concurrency",
        "8",
        "--prefetch",
        "32",
        "--taptalk-rate-limit",
        "2.5",
    ])
    .expect("fixed values");
    assert_eq!(fixed.prefetch, crate::worker::Prefetch::Fixed(32));
    assert_eq!(fixed.limit.starting_limit(), 8);
    assert_eq!(fixed.rate_limit.map(|r| r.per_second()), Some(2.5));

    let errors = complete(&[
        "--concurrency",
        "lots",
        "--prefetch",
        "0",
        "--taptalk-rate-limit",
        "fast",
    ])
    .map(|_| ())
    .expect_err("bad values");
    assert_eq!(
        errors.settings(),
        ["PREFETCH", "CONCURRENCY", "TAPTALK_RATE_LIMIT"],
        "{errors}"
    );
    let bounds = complete(&["--concurrency-min", "100", "--concurrency-max", "10"])
        .map(|_| ())
        .expect_err("min above max");
    assert_eq!(bounds.settings(), ["CONCURRENCY_MIN"], "{bounds}");
    assert!(bounds.to_string().contains("CONCURRENCY_MAX"), "{bounds}");
}

/// The complete flags, less PREFETCH and CONCURRENCY, plus `extra`.
fn complete(extra: &[&'static str]) -> Result<Settings, ConfigErrors> {
    let mut args: Vec<&str> = COMPLETE
        .iter()
        .copied()
        .filter(|a| !a.starts_with("--prefetch") && !a.starts_with("--concurrency"))
        .collect();
    args.extend_from_slice(extra);
    settings(&args)
}

#[test]
fn amqp_url_takes_a_list_of_brokers() {
    let mut args = complete_args();
    args.broker.amqp_url = Some(
        "amqp://ops:pw-list@rabbit-0:5672/%2f,amqp://rabbit-1:5672,amqp://rabbit-2:5672".into(),
    );
    let settings = Settings::from_args(&args).expect("a list of three brokers");
    assert_eq!(settings.broker.login_user().as_deref(), Some("ops"));
    args.broker.amqp_url = Some("amqp://ops:pw-list@rabbit-0:5672/%2f,rabbit-1:5672".into());
    let error = only(
        Settings::from_args(&args)
            .map(|_| ())
            .expect_err("not a URL"),
    );
    assert_eq!(error.setting, "AMQP_URL");
    assert!(!error.problem.contains("pw-list"), "{error}");
}
