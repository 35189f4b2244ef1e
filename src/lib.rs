//! ticket-worker: turns login events on RabbitMQ into TapTalk.io auth tickets
//! stored in Postgres, and announces them with `ticket.ready`.
//!
//! Follow one login event through the code in the order it runs:
//!
//! 1. [`worker`] takes a delivery from the work queue (sessions, reconnects,
//!    pauses during outages, graceful shutdown), and [`broker::inbound`]
//!    reads it into a [`delivery::Message`];
//! 2. [`pipeline`] decides what becomes of it (a [`delivery::Decision`]):
//!    [`events::LoginEvent`] parses and checks it into [`domain`] values;
//!    [`storage`] looks for an outcome already recorded for its `eventID`;
//!    [`taptalk::TaptalkClient`] requests the ticket, retried by [`retry`];
//!    [`storage`] saves the row and its announcement (the outbox). Lookups
//!    and saves of many events in flight are folded into one statement each;
//!    every TapTalk and Postgres call reports to [`health`], which pauses
//!    intake when one of them fails for everybody;
//! 3. [`broker::settle`] carries the decision out: it publishes
//!    [`events::TicketReady`] (or `ticket.failed`, a dead letter, a copy put
//!    back) with a confirm through [`broker::Publisher`], then acknowledges
//!    the delivery through [`broker::acks`], in bulk. The [`relay`] publishes
//!    any announcement whose delivery was lost before that.
//!
//! Around it: [`config`] (settings and their checks), [`startup`] (wiring),
//! [`observe`] (logs, counters), [`shutdown`] (the stop signal), [`purge`]
//! (deleting long-expired tickets), [`commands`] (the command line: `run`,
//! `migrate`, `fake-taptalk`, `demo`, `publish`, and `dlq` for the dead
//! letters, with [`broker::dead_letters`]). `demo` and `fake-taptalk` drive
//! the TapTalk stand-in (the `fake-taptalk` crate) and exist only with the
//! `stand-in` feature, on by default and off in the container image. The
//! benchmark, which measures the worker against a broker-only ceiling, is a
//! crate of its own (`ticket-bench`, bench/) that uses this library.

pub mod broker;
pub mod commands;
pub mod config;
pub(crate) mod delivery;
pub mod domain;
pub mod events;
pub mod health;
pub mod observe;
pub(crate) mod pipeline;
pub mod purge;
pub mod relay;
pub mod retry;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod taptalk;
pub mod time;
pub mod worker;
