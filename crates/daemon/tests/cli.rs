//! The `pubbot` binary as an operator meets it: one-line errors with
//! distinct exit codes, stdout for output only, `DATABASE_URL`, the rules
//! commands, `--help` examples, and the demo driven from a pipe — which
//! also checks the metrics an exchange leaves (values, and that every
//! metric exposed is listed in `deploy/README.md`), JSON logs line by line,
//! and that no secret reaches a log line at `trace`.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pubbot");

/// A `postgres://` URL for the test's database, with `password` in it (the
/// test server trusts local connections, so it is carried but unused).
fn url(opts: &PgConnectOptions, password: &str) -> String {
    let host = match opts.get_host() {
        "localhost" => "127.0.0.1",
        h => h,
    };
    format!(
        "postgres://{}:{password}@{host}:{}/{}",
        opts.get_username(),
        opts.get_port(),
        opts.get_database().unwrap_or("postgres")
    )
}

/// Runs `pubbot` with `args` and `env` (nothing inherited but PATH).
async fn pubbot(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run pubbot");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("pubbot: error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"))
}

#[tokio::test]
async fn configuration_and_usage_errors_are_one_line_with_their_own_exit_codes() {
    let (code, out, err) = pubbot(&["config"], &[("PUBBOT__WORKERS__SENDERS", "9")]).await;
    assert_eq!(code, 78, "{err}");
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(error_line(&err).contains("senders"), "{err}");

    let (code, _, err) = pubbot(&["config"], &[("DATABASE_URL", "mysql://root@db/x")]).await;
    assert_eq!(code, 78, "{err}");
    assert!(
        error_line(&err).contains("PostgreSQL") && err.contains("DATABASE_URL"),
        "{err}"
    );

    let (code, _, err) = pubbot(&["no-such-command"], &[]).await;
    assert_eq!(code, 2, "{err}");

    // DATABASE_URL is honoured, below PUBBOT__DATABASE__URL, and `config`
    // says which won (never the password).
    let (code, out, _) = pubbot(
        &["config"],
        &[("DATABASE_URL", "postgres://u:hunter2@db.example:6000/p")],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.contains("db.example:6000") && out.contains("from DATABASE_URL"),
        "{out}"
    );
    assert!(!out.contains("hunter2"));
    let (_, out, _) = pubbot(
        &["config"],
        &[
            ("DATABASE_URL", "postgres://db.example:6000/p"),
            ("PUBBOT__DATABASE__URL", "postgres://ours.example/p"),
        ],
    )
    .await;
    assert!(
        out.contains("ours.example:5432") && out.contains("from PUBBOT__DATABASE__URL"),
        "{out}"
    );
}

#[tokio::test]
async fn an_unreachable_database_names_where_and_exits_69() {
    let (code, out, err) = pubbot(
        &["rules", "list"],
        &[
            (
                "PUBBOT__DATABASE__URL",
                "postgres://pubbot@127.0.0.1:1/pubbot",
            ),
            ("PUBBOT__DATABASE__ACQUIRE_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    assert_eq!(code, 69, "{err}");
    assert!(out.is_empty());
    let line = error_line(&err);
    assert!(
        line.contains("127.0.0.1:1") && line.contains("tried for 1 s"),
        "{line}"
    );
    // Each cause once.
    let parts: Vec<&str> = line.split(": ").collect();
    let mut seen = std::collections::HashSet::new();
    assert!(
        parts.iter().all(|p| seen.insert(*p)),
        "a cause repeats: {line}"
    );
}

#[tokio::test]
async fn every_command_has_help_with_an_example() {
    for args in [
        vec!["migrate"],
        vec!["serve"],
        vec!["config"],
        vec!["rules", "import"],
        vec!["rules", "export"],
        vec!["rules", "list"],
        vec!["rules", "enable"],
        vec!["rules", "disable"],
        vec!["rules", "delete"],
        vec!["rules", "test"],
        vec!["broadcast", "schedule"],
        vec!["broadcast", "once"],
        vec!["broadcast", "list"],
        vec!["broadcast", "show"],
        vec!["broadcast", "cancel"],
        vec!["broadcast", "history"],
        vec!["broadcast", "resolve"],
        vec!["campaign", "send"],
        vec!["campaign", "status"],
        vec!["campaign", "cancel"],
        vec!["followers", "count"],
        vec!["followers", "list"],
        vec!["followers", "export"],
        vec!["followers", "subscribe"],
        vec!["followers", "unsubscribe"],
        vec!["prune"],
        vec!["account", "apply"],
        vec!["account", "info"],
        vec!["menu", "apply"],
        vec!["menu", "show"],
        vec!["media", "upload"],
        vec!["media", "news"],
        vec!["media", "list"],
        vec!["conversation"],
        vec!["outbound", "failed"],
        vec!["outbound", "retry"],
        vec!["handler", "add"],
        vec!["handler", "list"],
        vec!["handler", "test"],
    ] {
        let mut a = args.clone();
        a.push("--help");
        let (code, out, _) = pubbot(&a, &[]).await;
        assert_eq!(code, 0, "{args:?}");
        assert!(
            out.contains("Example"),
            "{args:?} --help has no example:\n{out}"
        );
    }
    if cfg!(feature = "demo") {
        let (_, out, _) = pubbot(&["demo", "--help"], &[]).await;
        assert!(out.contains("Example") && out.contains("/quit"), "{out}");
    }
    let (_, out, _) = pubbot(&["--help"], &[]).await;
    assert!(
        out.contains("DATABASE_URL") && out.contains("Exit codes"),
        "{out}"
    );
}

/// `pubbot console user ...`: users are added with a password from a file,
/// listed without their hashes, refused with a clear reason, removed.
#[sqlx::test(migrations = false)]
async fn console_users_are_added_listed_and_removed(_: PgPoolOptions, opts: PgConnectOptions) {
    let db = url(&opts, "unused");
    let env = [("PUBBOT__DATABASE__URL", db.as_str())];
    let (code, _, err) = pubbot(&["migrate"], &env).await;
    assert_eq!(code, 0, "{err}");
    let dir = std::env::temp_dir().join(format!("pubbot-cli-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("alice.pw");
    std::fs::write(&pw, "a long enough password\n").unwrap();
    let pw = pw.to_str().unwrap();
    let (code, out, err) = pubbot(
        &[
            "console",
            "user",
            "add",
            "alice",
            "--role",
            "editor",
            "--password-file",
            pw,
        ],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "added console user alice (editor)");
    let short = dir.join("short.pw");
    std::fs::write(&short, "short\n").unwrap();
    let (code, _, err) = pubbot(
        &[
            "console",
            "user",
            "add",
            "bob",
            "--role",
            "viewer",
            "--password-file",
            short.to_str().unwrap(),
        ],
        &env,
    )
    .await;
    assert_eq!(code, 1);
    assert!(error_line(&err).contains("at least 10 characters"), "{err}");
    let (code, _, err) = pubbot(
        &[
            "console",
            "user",
            "add",
            "bob",
            "--role",
            "root",
            "--no-password",
        ],
        &env,
    )
    .await;
    assert_eq!(code, 2, "a bad role is a usage error");
    assert!(err.contains("viewer, editor, admin"), "{err}");
    let (code, out, err) = pubbot(&["console", "user", "list", "--json"], &env).await;
    assert_eq!(code, 0, "{err}");
    let users: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["role"], "editor");
    assert!(!out.contains("argon2"), "no hash is shown: {out}");
    let (code, out, err) = pubbot(&["console", "user", "remove", "alice"], &env).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "removed console user alice");
    let (code, _, err) = pubbot(&["console", "user", "remove", "alice"], &env).await;
    assert_eq!(code, 1);
    assert!(
        error_line(&err).contains("no console user named \"alice\""),
        "{err}"
    );
}

#[sqlx::test(migrations = false)]
async fn rules_commands_write_only_their_output_to_stdout(
    _: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = url(&opts, "unused");
    let env = [
        ("PUBBOT__DATABASE__URL", db.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let (code, _, err) = pubbot(&["migrate"], &env).await;
    assert_eq!(code, 0, "{err}");
    let dir = std::env::temp_dir().join(format!("pubbot-cli-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"a\"\nreplies = [{ type = \"text\", text = \"A\" }]\n[[rule]]\nname = \"b\"\nkind = \"default\"\nreplies = [{ type = \"text\", text = \"B\" }]\n",
    )
    .unwrap();
    let (code, out, err) = pubbot(&["rules", "import", rules.to_str().unwrap()], &env).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("imported 2 rule(s) from {}", rules.display())
    );

    // Logs at debug go to stderr: the export is a rule file and nothing else.
    let (code, out, err) = pubbot(&["rules", "export"], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.is_empty(), "debug logs went somewhere");
    let exported = dir.join("exported.toml");
    std::fs::write(&exported, &out).unwrap();
    let (code, _, err) = pubbot(&["rules", "import", exported.to_str().unwrap()], &env).await;
    assert_eq!(code, 0, "the export imports again: {err}");

    let (_, out, _) = pubbot(&["rules", "list"], &env).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("NAME") && lines[0].contains("PRIORITY"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");

    // --replace says what it removed; delete removes one.
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"a\"\nreplies = [{ type = \"text\", text = \"A\" }]\n",
    )
    .unwrap();
    let (_, out, _) = pubbot(
        &["rules", "import", "--replace", rules.to_str().unwrap()],
        &env,
    )
    .await;
    assert!(
        out.contains("removed 1 rule(s) the file does not name: b"),
        "{out}"
    );
    let (code, out, _) = pubbot(&["rules", "delete", "a"], &env).await;
    assert_eq!((code, out.trim()), (0, "deleted a"));
    let (code, _, err) = pubbot(&["rules", "delete", "a"], &env).await;
    assert_eq!(code, 1);
    assert!(error_line(&err).contains("no rule named \"a\""), "{err}");

    // Strict at import: an undefined template variable is refused, naming
    // the rule; a scope naming an unconfigured app is warned about.
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"typo\"\napp_key = \"elsewhere\"\nreplies = [{ type = \"text\", text = \"Hi {{ usr }}\" }]\n",
    )
    .unwrap();
    let (code, _, err) = pubbot(&["rules", "import", rules.to_str().unwrap()], &env).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("warning: rule \"typo\": app \"elsewhere\" is not configured"),
        "{err}"
    );
    let line = error_line(&err);
    assert!(line.contains("typo") && line.contains("usr"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// The demo is in the binary only with the `demo` feature (on in the
// workspace's test build: the end-to-end crate asks for it).
#[cfg(feature = "demo")]
mod demo {
    use std::collections::BTreeMap;
    use std::process::Stdio;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    /// Reads the demo's stdout until a line contains `want`; returns every line
    /// read.
    async fn until<R: tokio::io::AsyncBufRead + Unpin>(
        lines: &mut tokio::io::Lines<R>,
        want: &str,
        seen: &mut Vec<String>,
    ) {
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = lines.next_line().await.expect("stdout") {
                let hit = l.contains(want);
                seen.push(l);
                if hit {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(
            found,
            "no {want:?} in the demo's output:\n{}",
            seen.join("\n")
        );
    }

    /// The value of `name` with every one of `labels` (`key="value"`).
    fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with(name)
                    && l[name.len()..].starts_with(if labels.is_empty() { " " } else { "{" })
                    && labels.iter().all(|want| l.contains(want))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    #[sqlx::test(migrations = false)]
    async fn the_demo_runs_from_a_pipe_with_metrics_json_logs_and_no_secret_in_them(
        _: PgPoolOptions,
        opts: PgConnectOptions,
    ) {
        let password = "pw-never-logged-8c1f";
        let db = url(&opts, password);
        let mut child = Command::new(BIN)
            .args([
                "demo",
                "--sim-listen",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--console-listen",
                "127.0.0.1:0",
                "--rules",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/demo-rules.toml"),
            ])
            .env("PUBBOT__DATABASE__URL", &db)
            .env("PUBBOT__LOG__FORMAT", "json")
            .env("RUST_LOG", "trace")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("demo");
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = child.stderr.take().unwrap();
        let logs = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = r.next_line().await {
                all.push(l);
            }
            all
        });
        let mut seen = Vec::new();
        until(&mut lines, "metrics ", &mut seen).await;
        let metrics_url = seen
            .last()
            .and_then(|l| l.split_whitespace().last())
            .unwrap()
            .to_owned();
        until(&mut lines, "Now you", &mut seen).await;
        assert!(
            seen.iter()
                .any(|l| l.contains("web console") && l.contains("sign in as demo / pubbot-demo")),
            "the demo prints the console's address and its login:\n{}",
            seen.join("\n")
        );
        // The scripted exchange: follow, hours, ＨＥＬＬＯ, a picture.
        let script = seen.join("\n");
        assert!(script.contains("Welcome, alice!"), "{script}");
        assert!(script.contains("We are open 9:00-18:00"), "{script}");
        assert!(
            script.contains("[news] Thanks for the picture, alice"),
            "{script}"
        );

        stdin
            .write_all(b"/user bob\nyour hours?\nsomething else\n")
            .await
            .unwrap();
        until(&mut lines, "a person will answer soon", &mut seen).await;
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        stdin.write_all(b"/quit\n").await.unwrap();
        until(&mut lines, "stopping", &mut seen).await;
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the demo stops on /quit")
            .unwrap();
        assert!(status.success());
        let out = seen.join("\n");
        assert!(out.contains("shop -> bob: We are open"), "{out}");

        // The exchange's counters: 1 follow + 3 from alice + 2 from bob.
        assert_eq!(
            metric(
                &text,
                "pubbot_inbound_messages_total",
                &["outcome=\"stored\""]
            ),
            6.0,
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                "pubbot_rule_matches_total",
                &["rule=\"opening-hours\""]
            ),
            2.0
        );
        assert_eq!(
            metric(&text, "pubbot_rule_matches_total", &["rule=\"welcome\""]),
            1.0
        );
        assert_eq!(
            metric(&text, "pubbot_rule_matches_total", &["rule=\"fallback\""]),
            1.0
        );
        assert_eq!(
            metric(&text, "pubbot_replies_sent_total", &[]),
            6.0,
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                "pubbot_sends_total",
                &["code=\"0\"", "endpoint=\"send\"", "result=\"sent\""]
            ),
            6.0,
            "{text}"
        );
        assert_eq!(metric(&text, "pubbot_build_info", &["version="]), 1.0);

        // Every metric exposed is documented (deploy/README.md), so the list
        // cannot drift.
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/README.md"
        ))
        .unwrap();
        let documented: std::collections::HashSet<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let exposed: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        assert!(exposed.len() > 15, "{text}");
        for name in exposed.keys() {
            assert!(
                documented.contains(name),
                "{name} is exposed but not in deploy/README.md"
            );
        }

        // Logs: JSON, one object per line, with trace ids; no secret at trace.
        let logs = logs.await.unwrap();
        assert!(logs.len() > 50, "trace logs: {}", logs.len());
        for l in &logs {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.get("level").is_some(), "{l}");
            for secret in [password, "demo-secret"] {
                assert!(!l.contains(secret), "a secret in the logs: {l}");
            }
        }
        assert!(
            logs.iter()
                .any(|l| l.contains("\"message\":\"push\"") && l.contains("trace_id")),
            "one line per push with its trace id"
        );
        assert!(logs
            .iter()
            .any(|l| l.contains("\"message\":\"reply sent\"") && l.contains("trace_id")));
    }
}

#[sqlx::test(migrations = false)]
async fn broadcast_commands_refuse_bad_input_with_one_line(
    _: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = url(&opts, "unused");
    let dir = std::env::temp_dir().join(format!("pubbot-cli-bc-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let overlay = dir.join("app.toml");
    std::fs::write(
        &overlay,
        "[[apps]]\nkey = \"a\"\nsecret = \"s\"\napi_base_url = \"http://127.0.0.1:1\"\naccounts = [\"shop\"]\n",
    )
    .unwrap();
    let env = [("PUBBOT__DATABASE__URL", db.as_str())];
    let cfg = overlay.to_str().unwrap();
    assert_eq!(pubbot(&["migrate"], &env).await.0, 0);
    let run = |args: Vec<&'static str>| {
        let mut all = vec!["--config", cfg];
        all.extend(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            pubbot(&refs, &env).await
        }
    };
    // An account the app does not host.
    let (code, _, err) = run(vec![
        "broadcast",
        "schedule",
        "--account",
        "nope",
        "--name",
        "m",
        "--at",
        "09:00",
        "--text",
        "hi",
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(error_line(&err).contains("not hosted"), "{err}");
    // A time zone that does not exist.
    let (code, _, err) = run(vec![
        "broadcast",
        "schedule",
        "--account",
        "shop",
        "--name",
        "m",
        "--at",
        "09:00",
        "--timezone",
        "Mars/Base",
        "--text",
        "hi",
    ])
    .await;
    assert_eq!(code, 1);
    assert!(error_line(&err).contains("Mars/Base"), "{err}");
    // Over the limit (R9).
    let long = "x".repeat(2001);
    let long: &'static str = Box::leak(long.into_boxed_str());
    let (code, _, err) = run(vec![
        "broadcast",
        "once",
        "--account",
        "shop",
        "--now",
        "--text",
        long,
    ])
    .await;
    assert_eq!(code, 1);
    assert!(error_line(&err).contains("2001 bytes"), "{err}");
    // A good one, then the day taken, named; JSON output parses.
    let (code, out, err) = run(vec![
        "broadcast",
        "once",
        "--account",
        "shop",
        "--at",
        "2030-01-02 09:00",
        "--text",
        "hi",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["platform_day"], "2030-01-02");
    let (code, _, err) = run(vec![
        "broadcast",
        "once",
        "--account",
        "shop",
        "--at",
        "2030-01-02 10:00",
        "--text",
        "again",
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        error_line(&err).contains(&format!("taken by broadcast #{}", b["id"])),
        "{err}"
    );
    let (code, out, _) = run(vec!["broadcast", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("day 2030-01-02"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 27 item 7: every "not found" exits non-zero, with one line.
#[sqlx::test(migrations = false)]
async fn what_is_not_found_exits_non_zero(_: PgPoolOptions, opts: PgConnectOptions) {
    let db = url(&opts, "unused");
    let env = [("PUBBOT__DATABASE__URL", db.as_str())];
    assert_eq!(pubbot(&["migrate"], &env).await.0, 0);
    let (code, out, err) = pubbot(&["outbound", "retry", "9999"], &env).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(error_line(&err), "pubbot: error: no such reply: #9999");
    assert!(out.contains("reply #9999: no such reply"), "{out}");
    let (code, _, err) = pubbot(&["conversation", "nobody"], &env).await;
    assert_eq!(code, 1);
    assert_eq!(
        error_line(&err),
        "pubbot: error: no pushes from nobody (not found)"
    );
    let (code, _, err) = pubbot(&["rules", "enable", "no-such-rule"], &env).await;
    assert_eq!(code, 1);
    assert!(error_line(&err).contains("no rule named"), "{err}");
    let (code, _, err) = pubbot(&["broadcast", "show", "4242"], &env).await;
    assert_eq!(code, 1);
    assert!(error_line(&err).contains("no broadcast #4242"), "{err}");
}
