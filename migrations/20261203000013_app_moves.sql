-- Moving an app from one database to another (`pubbot app move`, README
-- "Moving an app to another database"). Each database involved keeps a
-- row: the source says the app is `leaving` for `other_database` (every
-- pubbot then routes the app's pushes there), the destination that it is
-- `arriving` from `other_database` (its pushes are stored there but not
-- decided until the move is `done`: the source's replies go out first, in
-- the order the users wrote). A tiny table, read by every process every
-- half second.
CREATE TABLE app_moves (
    app_key        text        PRIMARY KEY,
    direction      text        NOT NULL CHECK (direction IN ('leaving', 'arriving')),
    other_database text        NOT NULL,
    state          text        NOT NULL DEFAULT 'moving' CHECK (state IN ('moving', 'done')),
    started_at     timestamptz NOT NULL DEFAULT now(),
    done_at        timestamptz
);
