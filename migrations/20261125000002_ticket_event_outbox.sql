-- ticket_event_outbox: the ticket event (ticket.ready or ticket.failed) that
-- announces an event's outcome, written in the same statement as the outcome
-- itself, and deleted once RabbitMQ has confirmed it. Whatever happens to the
-- login event's delivery afterwards (a crash, a lost connection, the broker's
-- delivery limit), a row left here is published by the relay, so an outcome
-- that was stored is always announced.
CREATE TABLE ticket_event_outbox (
    event_id     text        PRIMARY KEY,
    routing_key  text        NOT NULL CHECK (routing_key IN ('ticket.ready', 'ticket.failed')),
    body         text        NOT NULL,                -- the event's JSON, exactly as published
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempted_at timestamptz NOT NULL DEFAULT now()   -- when the worker or the relay last set out to publish it
);

CREATE INDEX ticket_event_outbox_attempted_at_idx ON ticket_event_outbox (attempted_at);
