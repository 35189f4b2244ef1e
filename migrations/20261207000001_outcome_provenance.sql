-- Which copy of an event a recorded failure is for. Copies of one event can
-- differ (a publisher may send another body under the same eventID), and the
-- first outcome recorded wins:
--   xc_user_id, user_device_id: the user and device of the copy that recorded
--     the failure, so that every later copy is answered with the ticket.failed
--     that was recorded, not with what the later copy claims;
--   body_sha256: the SHA-256 of that copy's body, so that `dlq replay` clears
--     a recorded failure only to replay the very copy it was recorded for; a
--     dead letter of another copy cannot overturn the event's outcome.
-- NULL on rows recorded before this migration (and on issued outcomes).
ALTER TABLE event_outcomes
    ADD COLUMN xc_user_id     text,
    ADD COLUMN user_device_id text,
    ADD COLUMN body_sha256    bytea;
