//! The bench crate's integration tests, as one binary: `ticket-bench`, the
//! real binary, run on the machine's RabbitMQ and Postgres (each run in a
//! vhost, or exchanges and queues, and a database of its own, which it
//! removes). `TEST_AMQP_URL`, `TEST_DATABASE_URL` point them elsewhere.

mod support;

mod bench;
