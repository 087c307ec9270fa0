#!/usr/bin/env python3
"""Where a message waits: the daemon's per-stage histograms from one
/metrics scrape, as count, mean and p50 / p90 / p99 (interpolated within
buckets, as Prometheus' histogram_quantile does).

    curl -s http://127.0.0.1:19090/metrics | scripts/stages.py
"""
import re
import sys

STAGES = [
    ("pubbot_webhook_accept_seconds", "push answered (stored)"),
    ("pubbot_ingest_queue_seconds", "  batch fill wait"),
    ('pubbot_pool_acquire_seconds{pool="ingest"}', "  ingest pool acquire"),
    ("pubbot_ingest_commit_seconds", "  group commit"),
    ("pubbot_stored_to_decided_seconds", "stored -> decided (decide workers)"),
    ('pubbot_pool_acquire_seconds{pool="decide"}', "  decide pool acquire"),
    ('pubbot_decided_to_sent_seconds{path="handed_over"}', "decided -> answered: handed over"),
    ('pubbot_decided_to_sent_seconds{path="followed"}', "decided -> answered: followed in process"),
    ('pubbot_decided_to_sent_seconds{path="successor"}', "decided -> answered: after the one before"),
    ('pubbot_decided_to_sent_seconds{path="claimed"}', "decided -> answered: claimed from table"),
    ('pubbot_pool_acquire_seconds{pool="send"}', "  send pool acquire"),
    ("pubbot_handoff_wait_seconds", "  hand-off wait (from statement start)"),
    ("pubbot_send_slot_wait_seconds", "  call slot wait"),
    ("pubbot_rate_limit_wait_seconds", "  rate limit wait"),
    ('pubbot_send_seconds{endpoint="send"}', "  platform call (send)"),
    ('pubbot_pool_acquire_seconds{pool="settle"}', "  settle pool acquire"),
    ('pubbot_ingest_yield_seconds{stage="decide"}', "decide yielding to ingest"),
    ('pubbot_ingest_yield_seconds{stage="send"}', "send yielding to ingest"),
]

buckets = {}
for line in sys.stdin:
    m = re.match(r'^(\w+)_bucket\{(.*)\} (\S+)$', line)
    if not m:
        continue
    name, labels, value = m.groups()
    le = re.search(r'le="([^"]+)"', labels).group(1)
    rest = ",".join(l for l in labels.split(",") if not l.startswith("le="))
    key = f"{name}{{{rest}}}" if rest else name
    buckets.setdefault(key, []).append((float("inf") if le == "+Inf" else float(le), float(value)))


def quantile(q, bs):
    bs = sorted(bs)
    total = bs[-1][1]
    if total == 0:
        return None
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in bs:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return prev_le


print(f"{'stage':38} {'count':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
for key, label in STAGES:
    bs = buckets.get(key)
    if not bs or sorted(bs)[-1][1] == 0:
        print(f"{label:38} {0:>9}")
        continue
    qs = [quantile(q, bs) * 1000 for q in (0.5, 0.9, 0.99)]
    print(f"{label:38} {int(sorted(bs)[-1][1]):>9} " + " ".join(f"{v:>8.1f}" for v in qs))
