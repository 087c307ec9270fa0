//! Every metric the daemon emits, with its help text, registered when the
//! daemon starts: each counter and gauge at zero for every label set known
//! then (the fixed ones, the configured apps and accounts, the stored
//! handlers), each histogram empty, so a healthy daemon's first scrape
//! lists them all and `absent()`-style alerts and dashboards have a series
//! from the start. `deploy/README.md` is the reader's list; a test holds
//! the scrape, that list and the Grafana dashboard to each other.

use metrics::Label;

/// What kind of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, kind, help, and the label sets known before anything
/// happened (each a list of `(label, value)`; an empty list: no labels).
pub(crate) struct Metric {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) help: &'static str,
    pub(crate) known: &'static [&'static [(&'static str, &'static str)]],
}

use Kind::{Counter, Gauge, Histogram};

const NONE: &[&[(&str, &str)]] = &[&[]];

/// The metrics with label values fixed by the code. Labels whose values
/// come from the configuration or the database (`app_key`, `mcid`,
/// `rule`, `handler`) are zeroed by [`announce`].
#[rustfmt::skip]
pub(crate) const METRICS: &[Metric] = &[
    Metric { name: "pubbot_webhook_pushes_total", kind: Counter, help: "Answers to pushes by outcome (accepted, duplicate, rejected, unanswered) and reason", known: &[
        &[("outcome", "accepted"), ("reason", "")], &[("outcome", "duplicate"), ("reason", "")],
        &[("outcome", "rejected"), ("reason", "missing_parameter")], &[("outcome", "rejected"), ("reason", "unknown_app")],
        &[("outcome", "rejected"), ("reason", "bad_signature")], &[("outcome", "rejected"), ("reason", "stale")],
        &[("outcome", "rejected"), ("reason", "replay")], &[("outcome", "rejected"), ("reason", "too_large")],
        &[("outcome", "rejected"), ("reason", "slow_body")], &[("outcome", "rejected"), ("reason", "malformed")],
        &[("outcome", "rejected"), ("reason", "refused")],
        &[("outcome", "unanswered"), ("reason", "unavailable")], &[("outcome", "unanswered"), ("reason", "deadline")],
    ] },
    Metric { name: "pubbot_webhook_accept_seconds", kind: Histogram, help: "Time to make a push durable", known: NONE },
    Metric { name: "pubbot_webhook_connections_closed_total", kind: Counter, help: "Webhook connections the listener closed, by reason", known: &[
        &[("reason", "header_timeout")], &[("reason", "peer_cap")], &[("reason", "not_allowed")], &[("reason", "idle_at_cap")],
    ] },
    Metric { name: "pubbot_inbound_messages_total", kind: Counter, help: "Pushes by what ingest did with them", known: &[
        &[("outcome", "stored")], &[("outcome", "duplicate")], &[("outcome", "spooled")], &[("outcome", "unstorable")],
    ] },
    Metric { name: "pubbot_inbound_unhosted_total", kind: Counter, help: "Pushes for an account the app does not host (R16): stored, not answered", known: &[] },
    Metric { name: "pubbot_ingest_batch_size", kind: Histogram, help: "Pushes per group commit", known: NONE },
    Metric { name: "pubbot_ingest_commit_seconds", kind: Histogram, help: "Time of one group commit", known: NONE },
    Metric { name: "pubbot_ingest_queue_seconds", kind: Histogram, help: "Time a push waited for its group commit to start (a flush slot, and company)", known: NONE },
    Metric { name: "pubbot_ingest_behind_total", kind: Counter, help: "Times a group commit waited ingest.yield_after_ms or more: decide and send yield", known: NONE },
    Metric { name: "pubbot_ingest_undecided_behind_total", kind: Counter, help: "Pushes of group commits made while ingest was behind, stored undecided for the decide workers (ingest first)", known: NONE },
    Metric { name: "pubbot_ingest_spilled_total", kind: Counter, help: "Pushes spooled at once because an earlier push of the same user was still in the spool (the drain stores them in order)", known: NONE },
    Metric { name: "pubbot_ingest_yield_seconds", kind: Histogram, help: "Time a worker waited before its round because ingest was behind", known: &[&[("stage", "decide")], &[("stage", "send")], &[("stage", "retention")]] },
    Metric { name: "pubbot_pool_acquire_seconds", kind: Histogram, help: "Time a stage waited for a connection of its pool", known: &[
        &[("pool", "ingest")], &[("pool", "decide")], &[("pool", "send")], &[("pool", "settle")],
    ] },
    Metric { name: "pubbot_webhook_listen_overflows_total", kind: Counter, help: "Connections the kernel dropped at a full listen queue (the network namespace's TcpExtListenOverflows)", known: NONE },
    Metric { name: "pubbot_ingest_failures_total", kind: Counter, help: "Group commits the database failed (their pushes went to the spool)", known: NONE },
    Metric { name: "pubbot_spool_pushes_total", kind: Counter, help: "Pushes through the local spool, by outcome", known: &[
        &[("outcome", "spooled")], &[("outcome", "drained")], &[("outcome", "refused")], &[("outcome", "torn")],
    ] },
    Metric { name: "pubbot_spool_bytes", kind: Gauge, help: "Bytes in each database's spool", known: &[] },
    Metric { name: "pubbot_decided_total", kind: Counter, help: "Pushes decided", known: NONE },
    Metric { name: "pubbot_decided_at_receipt_total", kind: Counter, help: "Pushes decided at receipt, in the statement that stored them", known: NONE },
    Metric { name: "pubbot_rule_matches_total", kind: Counter, help: "Matches per rule", known: &[] },
    Metric { name: "pubbot_stored_to_decided_seconds", kind: Histogram, help: "Time a push waited in the table for a decide worker (pushes decided at receipt wait none)", known: NONE },
    Metric { name: "pubbot_replies_planned_total", kind: Counter, help: "Replies planned", known: NONE },
    Metric { name: "pubbot_held_pushes_total", kind: Counter, help: "Pushes decided without a reply because a person holds the conversation", known: NONE },
    Metric { name: "pubbot_staff_messages_total", kind: Counter, help: "Messages people wrote to users from the console", known: NONE },
    Metric { name: "pubbot_rules_loaded", kind: Gauge, help: "Rules in force, per database", known: &[] },
    Metric { name: "pubbot_rules_reloads_total", kind: Counter, help: "Rule reloads by outcome", known: &[&[("outcome", "ok")], &[("outcome", "error")]] },
    Metric { name: "pubbot_sends_total", kind: Counter, help: "Platform calls by endpoint, result and platform code", known: &[
        &[("endpoint", "send"), ("result", "sent"), ("code", "0")], &[("endpoint", "batchsend"), ("result", "sent"), ("code", "0")],
    ] },
    Metric { name: "pubbot_send_seconds", kind: Histogram, help: "Platform call latency", known: &[&[("endpoint", "send")], &[("endpoint", "batchsend")]] },
    Metric { name: "pubbot_decided_to_sent_seconds", kind: Histogram, help: "Time from a reply's planning to the platform's answer to its call, by how it reached its sender", known: &[
        &[("path", "handed_over")], &[("path", "successor")], &[("path", "claimed")], &[("path", "followed")],
    ] },
    Metric { name: "pubbot_handoff_wait_seconds", kind: Histogram, help: "Time from the start of the statement that leased handed-over replies to a sender taking them (the commit, then the hand-off queue)", known: NONE },
    Metric { name: "pubbot_send_slot_wait_seconds", kind: Histogram, help: "Time a call waited for one of the process's sender.max_in_flight slots", known: NONE },
    Metric { name: "pubbot_rate_limit_wait_seconds", kind: Histogram, help: "Time a call waited for the app's rate limit", known: NONE },
    Metric { name: "pubbot_replies_sent_total", kind: Counter, help: "Replies delivered", known: NONE },
    Metric { name: "pubbot_send_retries_total", kind: Counter, help: "Replies put back for a retry", known: NONE },
    Metric { name: "pubbot_outbound_settled_total", kind: Counter, help: "Reply outcomes recorded", known: &[
        &[("outcome", "sent")], &[("outcome", "retry")], &[("outcome", "failed")], &[("outcome", "deferred")], &[("outcome", "expired")],
    ] },
    Metric { name: "pubbot_outbound_expired_total", kind: Counter, help: "Replies older than sender.max_reply_age_secs, not sent", known: NONE },
    Metric { name: "pubbot_outbound_recovered_total", kind: Counter, help: "Replies taken back from a dead process's lease: a possible double reply", known: NONE },
    Metric { name: "pubbot_outbound_rate_limit_lifted_total", kind: Counter, help: "Replies put back for a rate limit (1008, HTTP 429) made due once the platform took the app's calls again", known: NONE },
    Metric { name: "pubbot_outbound_ambiguous_retries_total", kind: Counter, help: "Replies retried after a lost answer: a possible double reply", known: NONE },
    Metric { name: "pubbot_settle_retries_total", kind: Counter, help: "Retries of recording an outcome while the database was away", known: &[
        &[("what", "replies")], &[("what", "handler answer")], &[("what", "broadcast")], &[("what", "campaign chunk")],
    ] },
    Metric { name: "pubbot_lease_renewals_total", kind: Counter, help: "Leases renewed", known: NONE },
    Metric { name: "pubbot_lease_lost_total", kind: Counter, help: "Rows whose lease another process took while they waited", known: NONE },
    Metric { name: "pubbot_queue_depth", kind: Gauge, help: "Rows waiting per queue, per database", known: &[] },
    Metric { name: "pubbot_queue_oldest_seconds", kind: Gauge, help: "Age of the oldest waiting push and reply, per database", known: &[] },
    Metric { name: "pubbot_stage_stalled", kind: Gauge, help: "1 while a stage of a database's pipeline has work due and no progress for workers.stall_secs", known: &[] },
    Metric { name: "pubbot_db_pool_connections", kind: Gauge, help: "Connections of each stage's pool, open and idle, per database", known: &[] },
    Metric { name: "pubbot_database_up", kind: Gauge, help: "1 while the database answers its pipeline's checks, 0 while it does not", known: &[] },
    Metric { name: "pubbot_worker_failures_total", kind: Counter, help: "Failed rounds of a worker (retried)", known: &[&[("worker", "decide")], &[("worker", "send")]] },
    Metric { name: "pubbot_handler_calls_total", kind: Counter, help: "Handler bot calls by result", known: &[] },
    Metric { name: "pubbot_handler_seconds", kind: Histogram, help: "Handler call latency", known: &[] },
    Metric { name: "pubbot_handler_fallbacks_total", kind: Counter, help: "Handler calls that failed for good; the rule's fallback went out", known: &[] },
    Metric { name: "pubbot_handler_breaker_open", kind: Gauge, help: "1 while the handler's breaker is open", known: &[] },
    Metric { name: "pubbot_handler_breaker_opened_total", kind: Counter, help: "Times the handler's breaker opened", known: &[] },
    Metric { name: "pubbot_retention_days_dropped_total", kind: Counter, help: "Days of pushes and replies dropped by retention (two partitions each)", known: &[&[]] },
    Metric { name: "pubbot_broadcasts_total", kind: Counter, help: "Broadcasts ended per account, by state", known: &[] },
    Metric { name: "pubbot_campaign_chunks_total", kind: Counter, help: "Campaign chunks by result", known: &[
        &[("result", "sent")], &[("result", "pending")], &[("result", "failed")], &[("result", "unknown")],
    ] },
    Metric { name: "pubbot_campaign_users_total", kind: Counter, help: "Campaign users by their chunk's end", known: &[
        &[("result", "sent")], &[("result", "failed")], &[("result", "unknown")],
    ] },
    Metric { name: "pubbot_build_info", kind: Gauge, help: "1, labelled with the running version", known: &[] },
];

fn labels(set: &[(&'static str, String)]) -> Vec<Label> {
    set.iter().map(|(k, v)| Label::new(*k, v.clone())).collect()
}

/// Registers one series at zero (an empty histogram).
fn zero(m: &Metric, set: &[(&'static str, String)]) {
    let l = labels(set);
    match m.kind {
        Counter => metrics::counter!(m.name, l).increment(0),
        Gauge => {
            // A gauge keeps its value if something set it already.
            metrics::gauge!(m.name, l).increment(0.0);
        }
        Histogram => {
            let _ = metrics::histogram!(m.name, l);
        }
    }
}

fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// What the configuration and the database know before anything
/// happened: the labels [`METRICS`] cannot list.
#[derive(Debug, Default, Clone)]
pub(crate) struct Known {
    /// Configured apps and their listed accounts.
    pub(crate) accounts: Vec<(String, Vec<String>)>,
    /// Stored handler bots.
    pub(crate) handlers: Vec<String>,
    /// Each stage pool's name.
    pub(crate) pools: Vec<&'static str>,
    /// The database these are on (`default`, or a `[databases.NAME]`).
    pub(crate) database: String,
}

/// Describes every metric and registers its known series at zero. Safe to
/// call more than once (zero adds nothing).
pub(crate) fn announce(known: &Known) {
    for m in METRICS {
        match m.kind {
            Counter => metrics::describe_counter!(m.name, m.help),
            Gauge => metrics::describe_gauge!(m.name, m.help),
            Histogram => metrics::describe_histogram!(m.name, m.help),
        }
        for set in m.known {
            let set: Vec<(&'static str, String)> =
                set.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            zero(m, &set);
        }
    }
    let by = |name: &str, sets: Vec<Vec<(&'static str, String)>>| {
        if let Some(m) = find(name) {
            for set in sets {
                zero(m, &set);
            }
        }
    };
    by(
        "pubbot_inbound_unhosted_total",
        known
            .accounts
            .iter()
            .map(|(a, _)| vec![("app_key", a.clone())])
            .collect(),
    );
    let accounts: Vec<(String, String)> = known
        .accounts
        .iter()
        .flat_map(|(a, ms)| ms.iter().map(move |m| (a.clone(), m.clone())))
        .collect();
    by(
        "pubbot_broadcasts_total",
        accounts
            .iter()
            .flat_map(|(a, m)| {
                ["sent", "failed", "unknown", "missed"].map(|s| {
                    vec![
                        ("app_key", a.clone()),
                        ("mcid", m.clone()),
                        ("state", s.to_owned()),
                    ]
                })
            })
            .collect(),
    );
    for h in &known.handlers {
        let one = vec![vec![("handler", h.clone())]];
        by(
            "pubbot_handler_calls_total",
            ["ok", "error", "invalid", "breaker_open"]
                .map(|r| vec![("handler", h.clone()), ("result", r.to_owned())])
                .to_vec(),
        );
        for name in [
            "pubbot_handler_seconds",
            "pubbot_handler_fallbacks_total",
            "pubbot_handler_breaker_open",
            "pubbot_handler_breaker_opened_total",
        ] {
            by(name, one.clone());
        }
    }
    let db = || ("database", known.database.clone());
    by(
        "pubbot_db_pool_connections",
        known
            .pools
            .iter()
            .flat_map(|p| {
                ["open", "idle"]
                    .map(|s| vec![db(), ("pool", (*p).to_owned()), ("state", s.to_owned())])
            })
            .collect(),
    );
    for name in ["pubbot_spool_bytes", "pubbot_rules_loaded"] {
        by(name, vec![vec![db()]]);
    }
    by(
        "pubbot_queue_depth",
        [
            "inbound_pending",
            "outbound_pending",
            "outbound_due",
            "outbound_sending",
        ]
        .map(|q| vec![db(), ("queue", q.to_owned())])
        .to_vec(),
    );
    by(
        "pubbot_queue_oldest_seconds",
        ["inbound_pending", "outbound_pending"]
            .map(|q| vec![db(), ("queue", q.to_owned())])
            .to_vec(),
    );
    by(
        "pubbot_stage_stalled",
        ["ingest", "decide", "send"]
            .map(|s| vec![db(), ("stage", s.to_owned())])
            .to_vec(),
    );
}

/// Registers a rule's match counter at zero (every loaded rule, at each
/// reload).
pub(crate) fn rule_loaded(rule: &str) {
    metrics::counter!("pubbot_rule_matches_total", "rule" => rule.to_owned()).increment(0);
}
