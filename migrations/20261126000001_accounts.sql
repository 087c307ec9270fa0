-- Public accounts pubbot hosts, one row per (app key, mcid).
CREATE TABLE accounts (
    app_key      text        NOT NULL,
    mcid         text        NOT NULL,
    display_name text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_key, mcid)
);
