-- Day partitions for the two tables that grow with traffic, and keys a
-- distributed engine can take (docs/scaling.md).
--
-- * `inbound_messages` and `outbound_messages` are partitioned by `day`
--   (UTC). A push's day comes from its CreateTime (R5), so the platform's
--   retries of one push land in the one partition and the dedup key (R6)
--   stays unique within it; a reply's day is its push's day, so a day's
--   replies go with its pushes. Retention drops whole partitions
--   (admin::partitions).
-- * An id carries its day: `pubbot_id(day, n)` puts the day in the bits
--   above 2^40, so a statement that names rows by id names their
--   partitions too (`day = pubbot_day_of(id)` or, for an array of ids,
--   `day BETWEEN pubbot_day_lo(ids) AND pubbot_day_hi(ids)`), and ids keep
--   growing with time: the order of ids is still the order of writing.
-- * Every primary key and unique constraint holds the tenant key
--   (app_key, mcid) and the partition key; the foreign key from a reply to
--   its push goes (a distributed engine enforces it only between co-located
--   shards; the outbox is the one writer of replies and plans them from the
--   push in the same statement).
-- * `partition_days` lists each day's partitions and whether the day is
--   settled: nothing in it is open (an undecided push, a reply not sent)
--   and nothing can open again without reopening the day first. The
--   statements that look for open rows look only at days from the oldest
--   unsettled one (`pipeline::window`), so the partitions of a month cost
--   them nothing.

CREATE FUNCTION pubbot_id(day date, n bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ((day - date '1970-01-01')::bigint << 40) | (n & ((1::bigint << 40) - 1)) $$;

CREATE FUNCTION pubbot_day_of(id bigint) RETURNS date
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT date '1970-01-01' + (id >> 40)::int $$;

CREATE FUNCTION pubbot_day_lo(ids bigint[]) RETURNS date
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT coalesce(date '1970-01-01' + (min(x) >> 40)::int, date 'infinity') FROM unnest(ids) x $$;

CREATE FUNCTION pubbot_day_hi(ids bigint[]) RETURNS date
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT coalesce(date '1970-01-01' + (max(x) >> 40)::int, date '-infinity') FROM unnest(ids) x $$;

CREATE TABLE partition_days (
    day        date        PRIMARY KEY,
    settled    boolean     NOT NULL DEFAULT false,
    dropping   boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz
);

-- Creates both tables' partitions for every day in [first, last] that has
-- none; any replica may call it at any time (one at a time, by the
-- advisory lock; none creates a partition twice). Returns how many days
-- it added. Each partition is created on its own and then attached, which
-- takes a SHARE UPDATE EXCLUSIVE lock on the parent (pushes and replies
-- go on meanwhile); CREATE TABLE .. PARTITION OF would take an ACCESS
-- EXCLUSIVE one.
CREATE FUNCTION pubbot_create_partitions(first date, last date) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    d date;
    t text;
    p text;
    added integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pubbot_partitions'));
    d := first;
    WHILE d <= last LOOP
        IF NOT EXISTS (SELECT 1 FROM partition_days WHERE day = d) THEN
            FOREACH t IN ARRAY ARRAY['inbound_messages', 'outbound_messages'] LOOP
                p := t || '_' || to_char(d, 'YYYYMMDD');
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', p, t);
                EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', t, p, d, d + 1);
            END LOOP;
            INSERT INTO partition_days (day) VALUES (d);
            added := added + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN added;
END;
$$;

-- The tables as they were, kept until their rows are copied.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_inbound_id_fkey;
DROP TRIGGER inbound_added ON inbound_messages;
DROP TRIGGER outbound_added ON outbound_messages;
ALTER SEQUENCE inbound_messages_id_seq OWNED BY NONE;
ALTER SEQUENCE outbound_messages_id_seq OWNED BY NONE;
ALTER TABLE inbound_messages RENAME TO inbound_messages_unpartitioned;
ALTER TABLE outbound_messages RENAME TO outbound_messages_unpartitioned;
DROP INDEX inbound_by_user, inbound_pending, inbound_pending_by_user,
           outbound_due, outbound_failed, outbound_open_by_user, outbound_open_handlers, outbound_sending;
ALTER TABLE inbound_messages_unpartitioned DROP CONSTRAINT inbound_messages_pkey;
ALTER TABLE inbound_messages_unpartitioned DROP CONSTRAINT inbound_messages_app_key_dedup_key_key;
ALTER TABLE outbound_messages_unpartitioned DROP CONSTRAINT outbound_messages_pkey;
ALTER TABLE outbound_messages_unpartitioned DROP CONSTRAINT outbound_messages_planned_once;

CREATE TABLE inbound_messages (
    id           bigint      NOT NULL,
    day          date        NOT NULL,
    app_key      text        NOT NULL,
    mcid         text        NOT NULL,
    user_id      text        NOT NULL,
    msg_type     text        NOT NULL,
    dedup_key    text        NOT NULL,
    msg_id       text,
    create_time  bigint,
    message      json        NOT NULL,
    raw          bytea       NOT NULL,
    trace_id     text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL DEFAULT 'pending'
                 CONSTRAINT inbound_messages_status CHECK (status IN ('pending', 'done')),
    processed_at timestamptz,
    state_change json,
    CONSTRAINT inbound_messages_id_day CHECK (pubbot_day_of(id) = day),
    CONSTRAINT inbound_messages_pkey PRIMARY KEY (id, day, app_key, mcid),
    CONSTRAINT inbound_messages_dedup UNIQUE (app_key, mcid, dedup_key, day)
) PARTITION BY RANGE (day);

CREATE INDEX inbound_by_user ON inbound_messages (app_key, mcid, user_id, id);
CREATE INDEX inbound_pending ON inbound_messages (id) WHERE status = 'pending';
CREATE INDEX inbound_pending_by_user ON inbound_messages (app_key, mcid, user_id, id) WHERE status = 'pending';

CREATE TABLE outbound_messages (
    id              bigint      NOT NULL,
    day             date        NOT NULL,
    inbound_id      bigint,
    reply_index     integer     NOT NULL,
    sub_index       integer     NOT NULL DEFAULT 0,
    app_key         text        NOT NULL,
    mcid            text        NOT NULL,
    user_id         text        NOT NULL,
    rule_name       text        NOT NULL,
    payload         json        NOT NULL,
    trace_id        text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                    CONSTRAINT outbound_messages_status CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'expired')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner     text,
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    handler         text,
    CONSTRAINT outbound_messages_id_day CHECK (pubbot_day_of(id) = day),
    CONSTRAINT outbound_messages_pkey PRIMARY KEY (id, day, app_key, mcid),
    CONSTRAINT outbound_messages_planned_once UNIQUE (app_key, mcid, inbound_id, reply_index, sub_index, day)
) PARTITION BY RANGE (day);

CREATE INDEX outbound_due ON outbound_messages (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbound_failed ON outbound_messages (created_at) WHERE status = 'failed';
CREATE INDEX outbound_open_by_user ON outbound_messages (app_key, mcid, user_id, inbound_id, reply_index, sub_index)
    WHERE status IN ('pending', 'sending');
CREATE INDEX outbound_open_handlers ON outbound_messages (app_key, mcid, user_id)
    WHERE handler IS NOT NULL AND status IN ('pending', 'sending');
CREATE INDEX outbound_sending ON outbound_messages (lease_until) WHERE status = 'sending';

ALTER SEQUENCE inbound_messages_id_seq OWNED BY inbound_messages.id;
ALTER SEQUENCE outbound_messages_id_seq OWNED BY outbound_messages.id;

-- Partitions for every day the old rows have, to a week ahead.
SELECT pubbot_create_partitions(
    least(current_date - 1,
          (SELECT min((received_at AT TIME ZONE 'UTC')::date) FROM inbound_messages_unpartitioned),
          (SELECT min((created_at AT TIME ZONE 'UTC')::date) FROM outbound_messages_unpartitioned)),
    current_date + 7);

-- The rows, each in its day, with its id carrying the day (the old id in
-- the low bits, so the order of ids is kept). A reply goes to its push's day.
INSERT INTO inbound_messages
       (id, day, app_key, mcid, user_id, msg_type, dedup_key, msg_id, create_time, message, raw, trace_id,
        received_at, status, processed_at, state_change)
SELECT pubbot_id((received_at AT TIME ZONE 'UTC')::date, id), (received_at AT TIME ZONE 'UTC')::date,
       app_key, mcid, user_id, msg_type, dedup_key, msg_id, create_time, message, raw, trace_id,
       received_at, status, processed_at, state_change
  FROM inbound_messages_unpartitioned;

INSERT INTO outbound_messages
       (id, day, inbound_id, reply_index, sub_index, app_key, mcid, user_id, rule_name, payload, trace_id,
        status, attempts, next_attempt_at, lease_owner, lease_until, last_error, created_at, sent_at, handler)
SELECT pubbot_id(d.day, o.id), d.day, pubbot_id(d.day, o.inbound_id), o.reply_index, o.sub_index, o.app_key,
       o.mcid, o.user_id, o.rule_name, o.payload, o.trace_id, o.status, o.attempts, o.next_attempt_at,
       o.lease_owner, o.lease_until, o.last_error, o.created_at, o.sent_at, o.handler
  FROM outbound_messages_unpartitioned o
  LEFT JOIN inbound_messages_unpartitioned i ON i.id = o.inbound_id
  CROSS JOIN LATERAL (SELECT coalesce((i.received_at AT TIME ZONE 'UTC')::date,
                                      (o.created_at AT TIME ZONE 'UTC')::date) AS day) d;

DROP TABLE outbound_messages_unpartitioned;
DROP TABLE inbound_messages_unpartitioned;

CREATE TRIGGER inbound_added
    AFTER INSERT ON inbound_messages
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION pubbot_inbound_added();

CREATE TRIGGER outbound_added
    AFTER INSERT ON outbound_messages
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION pubbot_outbound_added();
