//! The adaptive TapTalk concurrency limit (`ticket_worker::taptalk::limit`)
//! from outside, through its public API only: against a simulated TapTalk in
//! simulated time (`sim`), and in front of the real client and the stand-in
//! over HTTP in real time (`live`, ignored by default). Its unit tests stay
//! beside it in `src/taptalk/limit/tests.rs`.

mod live;
mod sim;
