//! ticket-worker: turns login events on RabbitMQ into TapTalk.io auth tickets
//! stored in Postgres, and announces them with `ticket.ready`.

pub mod domain;
pub mod events;
pub mod fake_taptalk;
pub mod retry;
pub mod storage;
pub mod taptalk;
