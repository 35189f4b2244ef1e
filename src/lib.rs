//! ticket-worker: turns login events on RabbitMQ into TapTalk.io auth tickets
//! stored in Postgres, and announces them with `ticket.ready`.
//!
//! Follow one login event through the code in the order it runs:
//!
//! 1. [`worker`] takes a delivery from the work queue (bounded concurrency,
//!    reconnects, pauses during TapTalk outages, graceful shutdown);
//! 2. [`pipeline`] decides what happens to it and settles it;
//! 3. [`events::LoginEvent`] parses and checks it into [`domain`] values;
//! 4. [`storage`] looks for a ticket already stored for its `eventID`;
//! 5. [`taptalk::TaptalkClient`] requests the ticket, retried by [`retry`];
//!    every TapTalk and Postgres call reports to the [`breaker`], which pauses
//!    intake when one of them fails for everybody;
//! 6. [`storage`] saves the row and its announcement (the outbox) in one
//!    statement; [`broker::Publisher`] publishes [`events::TicketReady`] with
//!    a confirm; the delivery is acknowledged. The [`relay`] publishes any
//!    announcement whose delivery was lost before that.
//!
//! Around it: [`configuration`] (settings and their checks), [`startup`]
//! (wiring), [`telemetry`] (logs), [`shutdown`] (the stop signal), [`purge`]
//! (deleting long-expired tickets), [`cli`]
//! (commands), [`fake_taptalk`] (the TapTalk stand-in), [`demo`] and
//! [`publish`] (the `demo` and `publish` commands), [`bench`] (the
//! `bench` command: the worker measured against a broker-only ceiling).

pub mod bench;
pub mod breaker;
pub mod broker;
pub mod cli;
pub mod configuration;
pub mod demo;
pub mod domain;
pub mod events;
pub mod fake_taptalk;
pub mod pipeline;
pub mod publish;
pub mod purge;
pub mod relay;
pub mod retry;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod taptalk;
pub mod telemetry;
pub mod worker;
