-- event_outcomes: the final outcome of each login event that has one, so that
-- every copy of an event (a redelivery, a duplicate publish, another replica)
-- ends the same way: the first outcome written wins, by primary key.
--   issued: the ticket is in auth_tickets;
--   failed: ticket.failed was (or is being) sent with this reason.
-- Invalid events are not recorded: their body, not the database, decides.
CREATE TABLE event_outcomes (
    event_id   text        PRIMARY KEY,
    outcome    text        NOT NULL CHECK (outcome IN ('issued', 'failed')),
    reason     text,                      -- failed: expired, rejected_by_upstream, retries_exhausted
    message    text,
    field      text,
    decided_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX event_outcomes_decided_at_idx ON event_outcomes (decided_at);

-- Tickets stored before this table existed are issued outcomes.
INSERT INTO event_outcomes (event_id, outcome, decided_at)
SELECT event_id, 'issued', issued_at FROM auth_tickets
ON CONFLICT DO NOTHING;
