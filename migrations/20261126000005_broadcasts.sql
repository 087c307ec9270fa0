-- Broadcasts: the one mass send a natural day allows (R11), and campaigns
-- to followers.
--
-- The guarantee is a row only one transaction can insert: `broadcasts`
-- holds at most one live row per (app, account, platform day), the
-- platform's natural day in UTC+8 whatever zone a schedule is written in.
-- A row leaves the day free again only when nothing was sent: `failed`
-- (the platform refused it), `missed` (its time passed while every replica
-- was down), `cancelled`.

CREATE TABLE broadcast_schedules (
    id           bigserial   PRIMARY KEY,
    app_key      text        NOT NULL,
    mcid         text        NOT NULL,
    name         text        NOT NULL,
    time_of_day  time        NOT NULL,
    timezone     text        NOT NULL,
    content      jsonb       NOT NULL,
    enabled      boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL,
    cancelled_at timestamptz,
    UNIQUE (app_key, mcid, name)
);

CREATE TABLE broadcasts (
    id           bigserial   PRIMARY KEY,
    schedule_id  bigint      REFERENCES broadcast_schedules (id),
    app_key      text        NOT NULL,
    mcid         text        NOT NULL,
    platform_day date        NOT NULL,
    due_at       timestamptz NOT NULL,
    content      jsonb       NOT NULL,
    state        text        NOT NULL DEFAULT 'scheduled'
                 CHECK (state IN ('scheduled', 'sending', 'sent', 'failed', 'unknown', 'missed', 'cancelled')),
    lease_owner  text,
    lease_until  timestamptz,
    -- Set just before the platform call: a crash after it leaves `unknown`
    -- (it may have been sent); a crash before it leaves the row to be
    -- claimed again.
    called_at    timestamptz,
    rendered     jsonb,
    msg_id       text,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

-- Exactly once a day: one live row per account and platform day.
CREATE UNIQUE INDEX broadcasts_one_a_day ON broadcasts (app_key, mcid, platform_day)
    WHERE state IN ('scheduled', 'sending', 'sent', 'unknown');
CREATE INDEX broadcasts_due ON broadcasts (due_at) WHERE state = 'scheduled';
CREATE INDEX broadcasts_sending ON broadcasts (lease_until) WHERE state = 'sending';

-- Campaigns: one message to many followers, in batchsend chunks of <= 100
-- users, shared by replicas (FOR UPDATE SKIP LOCKED), resumable.
CREATE TABLE campaigns (
    id          bigserial   PRIMARY KEY,
    app_key     text        NOT NULL,
    mcid        text        NOT NULL,
    content     jsonb       NOT NULL,
    source      text        NOT NULL,
    state       text        NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'done', 'cancelled')),
    users       integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE TABLE campaign_chunks (
    campaign_id     bigint      NOT NULL REFERENCES campaigns (id),
    seq             integer     NOT NULL,
    users           text[]      NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'unknown', 'cancelled')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner     text,
    lease_until     timestamptz,
    called_at       timestamptz,
    error           text,
    sent_at         timestamptz,
    PRIMARY KEY (campaign_id, seq)
);

CREATE INDEX campaign_chunks_due ON campaign_chunks (next_attempt_at) WHERE state = 'pending';
CREATE INDEX campaign_chunks_sending ON campaign_chunks (lease_until) WHERE state = 'sending';
