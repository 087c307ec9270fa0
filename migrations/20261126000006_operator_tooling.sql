-- Operator tooling: uploaded media by local name, and the menu items pubbot
-- created (the platform has add, delete and order, but no way to list a
-- menu, so pubbot keeps the ids it was given).

CREATE TABLE media (
    app_key    text        NOT NULL,
    name       text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('image', 'voice', 'thumb', 'news')),
    sha256     text        NOT NULL,
    media_id   text        NOT NULL,
    file_name  text        NOT NULL,
    bytes      bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_key, name)
);

-- The same file uploaded again (under any name) reuses its media_id.
CREATE INDEX media_by_content ON media (app_key, kind, sha256);

CREATE TABLE menu_items (
    app_key   text    NOT NULL,
    mcid      text    NOT NULL,
    menu_id   text    NOT NULL,
    parent_id text,
    level     integer NOT NULL CHECK (level IN (1, 2)),
    name      text    NOT NULL,
    kind      integer NOT NULL CHECK (kind IN (0, 1)),
    url       text    NOT NULL DEFAULT '',
    position  integer NOT NULL,
    PRIMARY KEY (app_key, mcid, menu_id)
);

-- Reading one user's conversation (pubbot conversation USER) in time order.
CREATE INDEX inbound_by_user ON inbound_messages (app_key, mcid, user_id, id);
CREATE INDEX outbound_failed ON outbound_messages (created_at) WHERE status = 'failed';
