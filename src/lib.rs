//! ticket-worker: turns login events on RabbitMQ into TapTalk.io auth tickets
//! stored in Postgres, and announces them with `ticket.ready`.

pub mod broker;
pub mod configuration;
pub mod domain;
pub mod events;
pub mod fake_taptalk;
pub mod pipeline;
pub mod retry;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod taptalk;
pub mod telemetry;
pub mod worker;
