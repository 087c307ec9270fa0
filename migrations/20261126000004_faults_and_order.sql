-- The pipeline under faults, and replies in the order users wrote.
--
-- `raw` keeps the push exactly as received, as bytes: a push may hold what
-- `text` cannot (a NUL, invalid UTF-8), and one such push must never fail
-- the group commit of its neighbours.
ALTER TABLE inbound_messages ALTER COLUMN raw TYPE bytea USING convert_to(raw, 'UTF8');

-- Per-user order: a reply is sent only when every earlier push of its user
-- is decided and every earlier reply of its user is settled. These two
-- partial indexes answer "is anything earlier still open for this user?"
-- for the claim and for the deciding transaction.
CREATE INDEX inbound_pending_by_user ON inbound_messages (app_key, mcid, user_id, id)
    WHERE status = 'pending';
CREATE INDEX outbound_open_by_user ON outbound_messages (app_key, mcid, user_id, inbound_id, reply_index)
    WHERE status IN ('pending', 'sending');

-- `expired`: a reply older than `sender.max_reply_age_secs` is not sent.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'expired'));
