-- Pushes decided at receipt are stored `done` with their replies planned
-- in the same statement: no decide worker needs waking for them. Like
-- outbound_added (0003), the inbound trigger notifies only when a pending
-- row was added, so a batch decided at receipt commits without a NOTIFY
-- (which takes a database-wide lock at commit).
CREATE OR REPLACE FUNCTION pubbot_inbound_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM added WHERE status = 'pending') THEN
        PERFORM pg_notify('pubbot_inbound', '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER inbound_added ON inbound_messages;
CREATE TRIGGER inbound_added
    AFTER INSERT ON inbound_messages
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION pubbot_inbound_added();
