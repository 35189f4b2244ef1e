//! The project's stand-in for TapTalk.io (served by `ticket-worker fake-taptalk`),
//! since the real service cannot be reached from development and CI machines.
//!
//! It implements `POST /v1/server/auth_ticket/request` as the TapTalk docs
//! describe it: the `Server-Key` check, the field rules answered with
//! `ParamValidationFailed` and the field's code, the response envelope, a
//! stable `userID` per `xcUserID`, and a fresh random ticket per request.
//! [`Knobs`] add latency, a share of 503s, 429s and hanging requests, or a
//! wrong-key mode, for tests and benchmarks, and a capacity ([`Knobs::capacity`],
//! [`Knobs::max_queue`]: see `line.rs`) that makes requests wait in line and
//! sheds them beyond it; [`FakeTaptalk::load`] says how long requests spent
//! inside.

//!
//! It builds on [`taptalk_api`] alone: nothing of the worker (no RabbitMQ,
//! Postgres or configuration) is known here, so the worker's tests meet it as
//! they would meet TapTalk.

mod answer;
mod knobs;
mod line;
pub mod logins;
mod rules;
mod server;

pub use knobs::Knobs;
pub use line::{LoadStats, TimeInside};
pub use rules::check as check_fields;
pub use server::{FakeStats, FakeTaptalk, IssuedRecord};
