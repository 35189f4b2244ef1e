//! The integration tests, as one binary: one module per area, the support
//! code (`support/`) compiled once for all of them.
//!
//! Every test talks to real servers: the machine's RabbitMQ and Postgres (each
//! test in its own vhost or exchanges and queues, and its own database), the
//! TapTalk stand-in over HTTP, and, for tests that kill, restart or reconfigure
//! a server, private instances they start and remove themselves
//! (`support::private`). `TEST_AMQP_URL`, `TEST_DATABASE_URL` point them
//! elsewhere; `TEST_LOG=1` shows the worker's logs. Run one area with
//! `cargo test --test it pipeline::`.

mod support;

mod acks;
mod architecture;
mod cli;
mod connect_errors;
mod dlq;
mod docs;
mod event_logs;

mod faults;
mod forged_headers;
mod io_loop;
mod kubernetes;
mod limiter;
mod monitoring;
mod operate;
mod parser;
mod pipeline;
mod production;
mod reader_role;
mod security;
mod services;
mod stand_in;
mod storage;
mod tail;
mod topology;
mod traces;
mod upstream_envelope;
