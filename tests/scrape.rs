//! Issue 26 item 3: a healthy daemon's first scrape lists every metric it
//! can emit, with help text, so dashboards and `absent()` alerts have a
//! series from the start; the scrape, `deploy/README.md` and the Grafana
//! dashboard name the same metrics.

use std::collections::BTreeSet;

use pubbot_e2e::{scrape, World};

use super::import;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/README.md"))
        .unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("pubbot_"))
        .map(str::to_owned)
        .collect()
}

fn dashboard() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut exprs = Vec::new();
        collect_exprs(&json, &mut exprs);
        for e in exprs {
            let mut rest = e.as_str();
            while let Some(i) = rest.find("pubbot_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name)
                    .to_owned();
                out.insert(base);
            }
        }
    }
    out
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_owned());
                    }
                }
                collect_exprs(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_healthy_daemons_first_scrape_lists_every_metric_with_help(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    // A stored handler: its series are known at start too.
    sqlx::query("INSERT INTO handlers (name, url, secret) VALUES ('orders', 'http://127.0.0.1:9/hook', 'whsec_dGVzdA==')")
        .execute(&pool)
        .await
        .unwrap();
    // A stored rule: its match counter is there at zero.
    import(&pool, "[[rule]]\nname = \"hours\"\ntrigger = { keywords = [{ pattern = \"hours\" }] }\nreplies = [{ type = \"text\", text = \"9-18\" }]\n").await;
    let (d, _) = w.daemon(w.settings(), pool.clone()).await;
    let text = scrape(d.admin_addr).await;
    let helped: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let series = |name: &str| {
        text.lines().any(|l| {
            !l.starts_with('#')
                && [name.to_owned(), format!("{name}_count")].iter().any(|n| {
                    l.strip_prefix(n.as_str())
                        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                })
        })
    };
    let documented = documented();
    assert!(documented.len() > 40, "{documented:?}");
    let mut missing = Vec::new();
    for name in &documented {
        if !helped.contains(name) || !series(name) {
            missing.push(name.clone());
        }
    }
    assert!(missing.is_empty(), "documented but absent from a healthy daemon's scrape (or without help): {missing:?}\n{text}");
    for name in &helped {
        assert!(
            documented.contains(name),
            "{name} is exposed but not in deploy/README.md"
        );
    }
    for name in dashboard() {
        assert!(
            helped.contains(&name),
            "the Grafana dashboard reads {name}, which the daemon does not expose"
        );
    }
    // Known label sets are there from the start (at zero; other tests in
    // this process share the recorder, so only their presence is checked).
    for line in [
        "pubbot_outbound_recovered_total",
        "pubbot_rule_matches_total{rule=\"hours\"}",
        "pubbot_spool_pushes_total{outcome=\"refused\"}",
        "pubbot_handler_calls_total{handler=\"orders\",result=\"error\"}",
        "pubbot_broadcasts_total{app_key=\"e2e-app\",mcid=\"shop\",state=\"unknown\"}",
    ] {
        assert!(
            text.lines()
                .any(|l| l.strip_prefix(line).is_some_and(|v| v.starts_with(' '))),
            "{line:?} not in the scrape"
        );
    }
    d.shutdown().await;
}
