#!/usr/bin/env python3
"""PostgreSQL's own time for the ingest statement, per push, by batch size.

Usage: scripts/bench-statement.py [--url URL] [--rev REV ...] [--sizes 40,200]
                                  [--batches 200]

Takes the ingest statement (`crates/daemon/src/pipeline/ingest/statement.rs`)
as it is in the working tree, and as it is at each `--rev` (any git
revision), prepares each in a database of its own (`pubbot_stmt_bench`,
created from `migrations/` and dropped after), and executes them in turn on
the same data: batches of pushes from 1,000 users decided at receipt with
one reply each, 70% of the leased replies marked sent between batches (so
users have open replies, as under load). The time is the server's
(`EXPLAIN (ANALYZE, TIMING OFF)`'s execution time: no network, no client),
on the generic plan the daemon's prepared statements use after their first
five executions (which are left out). Prints the median per push for each
statement and batch size; compare statements within one run.
"""

import argparse
import datetime
import glob
import os
import random
import re
import statistics
import subprocess
import sys

STATEMENT = "crates/daemon/src/pipeline/ingest/statement.rs"
TYPES = ("text[],text[],text[],text[],text[],text[],int8[],text[],bytea[],text[],bool[],"
         "int8[],int4[],text[],text[],text,float8,bool,date[],date,date")
DB = "pubbot_stmt_bench"


def statement_sql(source):
    m = re.search(r'sqlx::query!\(\s*r#"(.*?)"#', source, re.S)
    if not m:
        sys.exit("no sqlx::query! in the ingest statement's source")
    # sqlx's column overrides ("name!", "name?: Type") are plain names here.
    return re.sub(r'AS "([a-z_]+)[!?][^"]*"', r"AS \1", m.group(1))


def source_at(rev):
    if rev is None:
        with open(STATEMENT, encoding="utf-8") as f:
            return f.read()
    return subprocess.run(["git", "show", f"{rev}:{STATEMENT}"], check=True,
                          capture_output=True, text=True).stdout


def psql(url, sql):
    r = subprocess.run(["psql", url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"],
                       input=sql, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr.strip())
    return r.stdout


def lit(s):
    return "'" + s.replace("'", "''") + "'"


def arr(xs, ty):
    return "ARRAY[" + ",".join(xs) + "]::" + ty


def batch_args(rng, size, serial, today):
    cols = [[] for _ in range(16)]
    for n in range(size):
        serial += 1
        user = f"u{rng.randrange(1000)}"
        row = [lit("bench-app"), lit("bench"), lit(user), lit("text"), lit(f"m{serial}"),
               lit(f"m{serial}"), str(1764900000000 + serial),
               lit('{"content":"bench %d","fromUserId":"%s"}' % (serial, user)),
               "'\\x3c786d6c3e'::bytea", lit(f"t{serial}"), "true", str(n + 1), "0",
               lit("bench"), lit('{"type":"text","content":"ack %d"}' % serial), lit(today)]
        for c, v in zip(cols, row):
            c.append(v)
    types = ["text[]"] * 6 + ["int8[]", "text[]", "bytea[]", "text[]", "bool[]", "int8[]",
                              "int4[]", "text[]", "text[]", "date[]"]
    a = [arr(c, t) for c, t in zip(cols, types)]
    args = a[:15] + ["'w1'", "60", "true", a[15], f"'{today}'::date", f"('{today}'::date + 2)"]
    return ",".join(args), serial


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=os.environ.get("DATABASE_URL",
                                                    "postgres://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--rev", action="append", default=[],
                   help="also the statement at this git revision (repeatable)")
    p.add_argument("--sizes", default="40,200", help="batch sizes, comma-separated")
    p.add_argument("--batches", type=int, default=200, help="batches per statement and size")
    a = p.parse_args()
    names = ["working tree"] + a.rev
    sqls = [statement_sql(source_at(None))] + [statement_sql(source_at(r)) for r in a.rev]
    base = a.url.rsplit("/", 1)[0]
    url = f"{base}/{DB}"
    psql(a.url, f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB};")
    try:
        migrations = "".join(open(f, encoding="utf-8").read() + "\n"
                             for f in sorted(glob.glob("migrations/*.sql")))
        psql(url, migrations)
        today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        rng = random.Random(7)
        serial = 0
        print(f"{'statement':<24} {'batch':>6} {'median ms':>10} {'µs a push':>10}")
        for size in [int(s) for s in a.sizes.split(",")]:
            script = [f"PREPARE s{i}({TYPES}) AS {sql};" for i, sql in enumerate(sqls)]
            order = []
            for b in range(a.batches * len(sqls)):
                i = b % len(sqls)
                args, serial = batch_args(rng, size, serial, today)
                order.append(i)
                script.append(f"EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF, SUMMARY ON) EXECUTE s{i}({args});")
                script.append("UPDATE outbound_messages SET status = 'sent', sent_at = now(), "
                              "lease_owner = NULL, lease_until = NULL "
                              "WHERE status = 'sending' AND random() < 0.7;")
            script.append("DEALLOCATE ALL;")
            out = psql(url, "\n".join(script))
            times = [float(t) for t in re.findall(r"Execution Time: ([0-9.]+) ms", out)]
            if len(times) != len(order):
                sys.exit(f"expected {len(order)} timings, got {len(times)}")
            for i, name in enumerate(names):
                mine = [t for t, o in zip(times, order) if o == i][5:]
                med = statistics.median(mine)
                print(f"{name:<24} {size:>6} {med:>10.3f} {med * 1000 / size:>10.1f}")
    finally:
        psql(a.url, f"DROP DATABASE IF EXISTS {DB};")


if __name__ == "__main__":
    main()
