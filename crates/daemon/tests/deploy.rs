//! The deployment files parse and say what `deploy/README.md` promises:
//! every Kubernetes manifest, the systemd unit (and `systemd-analyze
//! verify` where systemd is installed), the configuration overlays they
//! ship (loaded by pubbot's own loader, so a key typo fails here), the
//! Dockerfile and the Grafana dashboard.

use std::path::{Path, PathBuf};

use pubbot::config::Settings;
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let dir = root().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
            out.push((f.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out
}

use serde::Deserialize as _;

fn kind<'a>(all: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    &all.iter()
        .find(|(_, v)| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .1
}

/// Loads a shipped overlay with pubbot's loader, pointing its secret files
/// at temporary ones.
fn load_overlay(toml: &str) -> Settings {
    let dir = std::env::temp_dir().join(format!("pubbot-deploy-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = toml.to_owned();
    for line in toml.lines() {
        let line = line.trim();
        for key in ["secret_file", "url_file"] {
            if let Some(v) = line
                .strip_prefix(key)
                .and_then(|r| r.trim().strip_prefix('='))
            {
                let path = v.trim().trim_matches('"');
                let local = dir.join(key);
                let content = if key == "url_file" {
                    "postgres://pubbot@db/pubbot"
                } else {
                    "secret"
                };
                std::fs::write(&local, content).unwrap();
                text = text.replace(path, local.to_str().unwrap());
            }
        }
    }
    let file = dir.join("overlay.toml");
    std::fs::write(&file, text).unwrap();
    let s = Settings::load_from(Some(&file), Vec::new()).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    std::fs::remove_dir_all(&dir).unwrap();
    s
}

#[test]
fn the_kubernetes_manifests_parse_and_hold_what_operators_need() {
    let all = manifests();
    for (file, v) in &all {
        assert!(
            v["apiVersion"].is_string() && v["kind"].is_string(),
            "{file}"
        );
        if v["kind"] != "Kustomization" {
            assert!(v["metadata"]["name"].is_string(), "{file}");
        }
    }
    let defaults = Settings::load_from(None, Vec::new()).unwrap();

    let d = kind(&all, "Deployment", "pubbot");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > defaults.shutdown_deadline_secs, "grace {grace}");
    assert!(pod["affinity"]["podAntiAffinity"].is_mapping());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    // The pod's name is the lease identity.
    let env = c["env"].as_sequence().unwrap();
    assert!(env.iter().any(|e| e["name"] == "PUBBOT__WORKER_ID"
        && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["requests"].is_mapping() && c["resources"]["limits"].is_mapping());
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let ports: Vec<u64> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8080, 9090]);
    // Secrets as files, the spool on a volume.
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["mountPath"] == "/run/secrets/pubbot"));
    assert!(mounts.iter().any(|m| m["mountPath"] == "/var/lib/pubbot"));
    assert!(pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v["secret"]["secretName"] == "pubbot"));
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "9090"
    );

    // The ConfigMap's overlay loads, and serves what the probes expect.
    let cm = kind(&all, "ConfigMap", "pubbot");
    let s = load_overlay(cm["data"]["pubbot.toml"].as_str().unwrap());
    assert_eq!(s.http.admin_listen.port(), 9090);
    assert_eq!(s.http.listen.port(), 8080);
    assert_eq!(s.database_url_source, "database.url_file");
    assert_eq!(
        s.spool_dir().unwrap(),
        PathBuf::from("/var/lib/pubbot/spool")
    );

    let job = kind(&all, "Job", "pubbot-migrate");
    let args = &job["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args.as_sequence().unwrap().last().unwrap(), "migrate");
    let svc = kind(&all, "Service", "pubbot");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "webhook");
    let pdb = kind(&all, "PodDisruptionBudget", "pubbot");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    kind(&all, "ServiceMonitor", "pubbot");
    kind(&all, "Secret", "pubbot");
}

fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_systemd_unit_is_hardened_notifies_and_verifies() {
    let unit = read("deploy/systemd/pubbot.service");
    let one = |k: &str| unit_values(&unit, k).first().cloned().unwrap_or_default();
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("StateDirectory"), "pubbot");
    assert_eq!(one("ConfigurationDirectory"), "pubbot");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(one("SystemCallFilter"), "@system-service");
    assert!(unit_values(&unit, "LoadCredential").len() >= 2);
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    let defaults = Settings::load_from(None, Vec::new()).unwrap();
    assert!(stop > defaults.shutdown_deadline_secs);

    let s = load_overlay(&read("deploy/systemd/pubbot.toml"));
    assert_eq!(s.ingest.spool_dir, "spool", "resolved under StateDirectory");

    // Verified with ExecStart pointing at the binary just built (the
    // installed path does not exist here).
    let dir = std::env::temp_dir().join(format!("pubbot-unit-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("pubbot.service");
    std::fs::write(
        &local,
        unit.replace("/usr/local/bin/pubbot", env!("CARGO_BIN_EXE_pubbot")),
    )
    .unwrap();
    match std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&local)
        .output()
    {
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && err.trim().is_empty(),
                "systemd-analyze verify:\n{err}"
            );
        }
        Err(e) => eprintln!("systemd-analyze not run ({e}); structure checked above"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_dockerfile_ships_the_binary_only_as_non_root() {
    let d = read("Dockerfile");
    assert!(d.contains("FROM rust:") && d.contains(" AS build"));
    assert!(d.contains("cargo build --release --locked -p pubbot --bin pubbot"));
    assert!(
        !d.contains("--features"),
        "the production image has no demo"
    );
    assert!(d.contains("USER 65532"));
    assert!(d.contains("ENTRYPOINT [\"/usr/local/bin/pubbot\"]"));
}

#[test]
fn the_dashboard_uses_documented_metrics_only() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/pubbot.json")).unwrap();
    let doc = read("deploy/README.md");
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(base) = word.strip_prefix("pubbot_") {
                    let name = format!("pubbot_{base}");
                    let family = name
                        .trim_end_matches("_bucket")
                        .trim_end_matches("_sum")
                        .trim_end_matches("_count");
                    assert!(
                        doc.contains(&format!("`{family}`")),
                        "{family} in the dashboard is not documented"
                    );
                }
            }
        }
    }
}

#[test]
fn the_example_files_parse() {
    let dir = root().join("config/examples");
    let accounts: pubbot::account::AccountsFile =
        toml::from_str(&std::fs::read_to_string(dir.join("accounts.toml")).unwrap()).unwrap();
    assert_eq!(accounts.accounts.len(), 2);
    let menu: pubbot::account::MenuFile =
        toml::from_str(&std::fs::read_to_string(dir.join("menu.toml")).unwrap()).unwrap();
    pubbot::account::validate_menu(&menu).unwrap();
    let news: pubbot::account::NewsFile =
        toml::from_str(&std::fs::read_to_string(dir.join("articles.toml")).unwrap()).unwrap();
    assert_eq!(news.articles.len(), 1);
    let rules = pubbot_rules::RuleFile::from_toml(
        &std::fs::read_to_string(dir.join("media-rules.toml")).unwrap(),
    )
    .unwrap();
    // Compiles once the medium it names is uploaded.
    let media = std::collections::HashMap::from([(
        "welcome-banner".to_owned(),
        vec![("demo-app".to_owned(), "m1".to_owned())],
    )]);
    pubbot_rules::RuleSet::compile(
        rules.rules,
        &pubbot_rules::Options::default().with_media(media),
    )
    .unwrap();
    let s = load_overlay(&std::fs::read_to_string(dir.join("demo-app.toml")).unwrap());
    assert_eq!(s.apps[0].key, "demo-app");
}
