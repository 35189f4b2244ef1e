//! What the tests need of their surroundings: the binary under test and the
//! servers' URLs (the product's tests/it/support has the same defaults).

/// `ticket-bench`, with an empty environment but for what every run needs.
pub(crate) fn bin() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ticket-bench"));
    command.env_clear().env("RUST_BACKTRACE", "0");
    command
}

pub(crate) fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub(crate) fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A short unique suffix for names.
pub(crate) fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
