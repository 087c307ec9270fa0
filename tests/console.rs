//! Issue 24: the web console, driven in a real headless Chromium over
//! WebDriver (Debian's `chromium` and `chromium-driver`, installed by
//! `scripts/test-all.sh` when missing) against the simulator and a real
//! PostgreSQL. Each test saves a screenshot of every page it visits under
//! `target/console-screenshots/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use pubbot::console::auth::add_user;
use pubbot::console::Role;
use pubbot_e2e::{eventually, World, KEY, SECRET, SHOP};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{count, import};

const PASSWORD: &str = "correct horse battery";

/// A rule stored before a test edits it in the page.
const HELLO: &str = "[[rule]]\nname = \"hello\"\ntrigger = { keywords = [{ pattern = \"hi\" }] }\nreplies = [{ type = \"text\", text = \"hello\" }]\n";

/// One chromedriver and its headless Chromium, stopped on drop.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    shots: PathBuf,
    test: &'static str,
    n: usize,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    async fn start(test: &'static str) -> Self {
        let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is not installed: `apt-get install chromium chromium-driver fonts-noto-cjk` (scripts/test-all.sh does it)");
        let port = free_port();
        let driver = tokio::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = pubbot_e2e::fresh_dir("chromium-profile");
        let caps: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                        "--window-size=1280,1000", "--lang=en-US",
                        format!("--user-data-dir={}", profile.display()),
                    ]
                }
            }))
            .expect("capabilities");
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            // Plain HTTP to the local driver: no TLS stack to build.
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("../target/console-screenshots");
                    std::fs::create_dir_all(&shots).expect("screenshot folder");
                    return Self {
                        client,
                        driver,
                        shots,
                        test,
                        n: 0,
                    };
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer: {last:?}");
    }

    async fn goto(&mut self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    /// Saves what the browser shows now as `<test>-<n>-<name>.png`.
    async fn shot(&mut self, name: &str) {
        self.n += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self
            .shots
            .join(format!("{}-{:02}-{name}.png", self.test, self.n));
        std::fs::write(&path, png).expect("write screenshot");
    }

    async fn fill(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("type");
    }

    async fn select(&self, css: &str, value: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .select_by_value(value)
            .await
            .expect("select");
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clicks what sends a form or follows a link, and waits for the page it
    /// leads to. Waiting for a text alone is not enough: the page being left
    /// may hold the same text (a heading, the textarea just sent), and the
    /// check after it would then read the database before the request ran.
    async fn follow(&self, css: &str) {
        self.client
            .execute("document.documentElement.dataset.left = '1'", vec![])
            .await
            .expect("mark the page being left");
        self.click(css).await;
        for _ in 0..100 {
            let arrived = self
                .client
                .execute(
                    "return document.readyState === 'complete' && !document.documentElement.dataset.left",
                    vec![],
                )
                .await
                .ok()
                .and_then(|v| v.as_bool());
            if arrived == Some(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "clicking {css} led to no new page:\n{}",
            self.source().await
        );
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    async fn value(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .prop("value")
            .await
            .expect("value")
            .unwrap_or_default()
    }

    async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty()
    }

    /// Waits until the page's text holds `needle` (pages reload after a
    /// form is sent).
    async fn wait_text(&self, needle: &str) {
        for _ in 0..100 {
            if self.source().await.contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed {needle:?}:\n{}", self.source().await);
    }

    async fn sign_in(&mut self, base: &str, name: &str, password: &str) {
        self.goto(&format!("{base}/")).await;
        self.wait_text("Sign in to pubbot").await;
        self.fill("#name", name).await;
        self.fill("#password", password).await;
        self.follow("main form button[type=submit]").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
    }
}

/// A daemon with the console on, and its console's base URL.
async fn console_daemon(
    connect: PgConnectOptions,
    prefix: &str,
) -> (World, PgPool, pubbot::Running, String) {
    console_daemon_with(connect, prefix, None).await
}

/// As [`console_daemon`], with `rules` stored before the daemon starts
/// (in force from its first push, not from its first reload).
async fn console_daemon_with(
    connect: PgConnectOptions,
    prefix: &str,
    rules: Option<&str>,
) -> (World, PgPool, pubbot::Running, String) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    if let Some(toml) = rules {
        import(&pool, toml).await;
    }
    let mut s = w.settings();
    s.console.listen = Some("127.0.0.1:0".parse().expect("addr"));
    s.console.secure_cookies = false;
    s.console.path_prefix = prefix.to_owned();
    let (d, _) = w.daemon(s, pool.clone()).await;
    w.add_account(d.addr).await;
    let at: SocketAddr = d.console_addr.expect("console listening");
    (w, pool, d, format!("http://{at}{prefix}"))
}

/// Log in; create a rule in the page (live validation on the way); send a
/// message through the simulator; see the reply in the conversation page.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn an_editor_writes_a_rule_and_sees_it_answer_a_user(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (w, pool, _d, base) = console_daemon(connect, "").await;
    add_user(&pool, "erin", Role::Editor, Some(PASSWORD))
        .await
        .unwrap();
    let mut b = Browser::start("editor").await;
    b.goto(&format!("{base}/")).await;
    b.shot("login").await;
    b.sign_in(&base, "erin", PASSWORD).await;
    b.wait_text("Overview").await;
    b.shot("overview").await;

    b.goto(&format!("{base}/rules/new")).await;
    b.fill("#name", "opening-hours").await;
    b.fill("#keywords", "营业时间\nhours").await;
    b.select("#match_kind", "regex").await;
    b.fill("#keywords", "hours(").await;
    b.fill("#replies", "Hi {{ user }}, we open 9-18.").await;
    // Live validation: the bad regex is named at its field before saving.
    for _ in 0..50 {
        if b.text("#err-keywords").await.contains("bad regex") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        b.text("#err-keywords").await.contains("bad regex"),
        "live validation at the field"
    );
    b.shot("rule-live-error").await;
    // Saved anyway: refused at the field, what was typed kept.
    b.follow("form.rule-form button[type=submit]").await;
    b.wait_text("bad regex").await;
    assert_eq!(b.value("#replies").await, "Hi {{ user }}, we open 9-18.");
    assert_eq!(b.value("#name").await, "opening-hours");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rules").await,
        0,
        "nothing written"
    );
    b.shot("rule-refused").await;

    b.select("#match_kind", "contains").await;
    b.fill("#keywords", "营业时间\nhours").await;
    b.follow("form.rule-form button[type=submit]").await;
    b.wait_text("Saved rule opening-hours.").await;
    b.shot("rules").await;

    // The daemon reloads the rules (NOTIFY) and answers through the simulator.
    eventually("the new rule answers", || async {
        w.say("ann", "营业时间?").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.texts("ann")
            .await
            .iter()
            .any(|t| t.contains("we open 9-18"))
    })
    .await;
    b.goto(&format!("{base}/conversations?app={KEY}&mcid={SHOP}"))
        .await;
    b.wait_text("ann").await;
    b.shot("conversations").await;
    b.goto(&format!("{base}/conversations/ann?app={KEY}&mcid={SHOP}"))
        .await;
    b.wait_text("Hi ann, we open 9-18.").await;
    assert!(
        b.source().await.contains("opening-hours"),
        "the rule that decided it is named"
    );
    b.shot("conversation").await;

    // Try a message: the same explanation as `pubbot rules test`.
    b.goto(&format!("{base}/rules/try")).await;
    b.fill("#text", "hours please").await;
    b.follow("main form button[type=submit]").await;
    b.wait_text("Explanation").await;
    assert!(b.text("#explanation").await.contains("opening-hours"));
    b.shot("try").await;

    // The other pages render, and none shows a secret.
    for page in [
        "followers",
        "menus",
        "stats",
        "audit",
        "broadcasts",
        "rules/import",
    ] {
        b.goto(&format!("{base}/{page}")).await;
        b.wait_text("</main>").await;
        b.shot(&page.replace('/', "-")).await;
        let html = b.source().await;
        assert!(!html.contains(SECRET), "{page} shows the app secret");
        assert!(!html.contains("postgres://"), "{page} shows a database URL");
    }
    // A menu file planned, then applied through the simulator.
    b.goto(&format!("{base}/menus")).await;
    b.fill("#menu-text", "[[item]]\nname = \"Shop\"\nurl = \"http://example.com/shop\"\n\n[[item]]\nname = \"Help\"\n[[item.children]]\nname = \"Hours\"\nurl = \"http://example.com/hours\"\n").await;
    b.follow("main form button[value=plan]").await;
    b.wait_text("menu-plan").await;
    assert!(b.text("#menu-plan").await.contains("add Help/Hours"));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM menu_items").await,
        0,
        "a plan calls nothing"
    );
    b.follow("main form button[value=apply]").await;
    b.wait_text("<p>Applied:</p>").await;
    b.wait_text("<code>http://example.com/hours</code>").await;
    assert_eq!(count(&pool, "SELECT count(*) FROM menu_items").await, 3);
    b.shot("menu-applied").await;
    // On a phone.
    b.client.set_window_size(390, 844).await.unwrap();
    for page in ["rules", "broadcasts"] {
        b.goto(&format!("{base}/{page}")).await;
        b.wait_text("</main>").await;
        b.shot(&format!("{page}-phone")).await;
    }
    b.client.set_window_size(1280, 1000).await.unwrap();
    b.goto(&format!("{base}/audit")).await;
    let audit = b.text("#audit").await;
    assert!(
        audit.contains("erin") && audit.contains("rule.create") && audit.contains("opening-hours"),
        "{audit}"
    );
}

/// Schedule a broadcast and see it in history; a one-off on a day the
/// daily schedule holds is refused, saying so, until "replace" is ticked.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn broadcasts_are_scheduled_and_a_taken_day_is_refused_until_replaced(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (_w, pool, _d, base) = console_daemon(connect, "").await;
    add_user(&pool, "erin", Role::Editor, Some(PASSWORD))
        .await
        .unwrap();
    let mut b = Browser::start("broadcasts").await;
    b.sign_in(&base, "erin", PASSWORD).await;
    b.wait_text("Overview").await;
    b.goto(&format!("{base}/broadcasts?app={KEY}&mcid={SHOP}"))
        .await;
    let tomorrow = (chrono::Utc::now().with_timezone(&chrono_tz::Asia::Shanghai)
        + chrono::Duration::days(1))
    .date_naive();
    // A daily schedule: the coming days name it.
    b.fill("#daily-name", "morning").await;
    b.fill("#daily-at", "23:59").await;
    b.fill("#daily-text", "Good night, {{ followers }} followers")
        .await;
    b.follow("#daily-form button[type=submit]").await;
    b.wait_text("Daily schedule \"morning\"").await;
    assert!(
        b.text("#coming").await.contains("daily \"morning\""),
        "{}",
        b.text("#coming").await
    );
    b.shot("daily").await;
    // A one-off on a day the daily send announced: refused, saying which
    // send holds the day, what was typed kept.
    b.fill("#once-at", &format!("{tomorrow} 10:00")).await;
    b.fill("#once-text", "Sale starts tomorrow").await;
    b.follow("#once-form button[type=submit]").await;
    b.wait_text("already taken").await;
    let why = b.text("#err-once").await;
    assert!(why.contains("morning"), "{why}");
    assert!(why.contains("one mass send a natural day"), "{why}");
    assert_eq!(
        b.value("#once-text").await,
        "Sale starts tomorrow",
        "what was typed is kept"
    );
    b.shot("day-taken").await;
    // "Replace" takes the day from the daily send, for that day only.
    b.click("#once-replace").await;
    b.follow("#once-form button[type=submit]").await;
    b.wait_text("scheduled for platform day").await;
    assert!(b.text("#history").await.contains("Sale starts tomorrow"));
    let coming = b.text("#coming").await;
    assert!(
        coming.contains(&tomorrow.to_string()) && coming.contains("one-off"),
        "{coming}"
    );
    assert!(
        coming.contains("daily \"morning\""),
        "other days keep the daily send: {coming}"
    );
    b.shot("replaced").await;
    // A second one-off the same day: refused.
    b.fill("#once-at", &format!("{tomorrow} 18:00")).await;
    b.fill("#once-text", "Evening news").await;
    b.follow("#once-form button[type=submit]").await;
    b.wait_text("already taken").await;
    assert!(b.text("#err-once").await.contains("broadcast #"));
    assert_eq!(
        count(&pool, &format!("SELECT count(*) FROM broadcasts WHERE platform_day = '{tomorrow}' AND state = 'scheduled'")).await,
        1,
        "one send a day"
    );
}

/// A viewer sees the pages but cannot edit: no edit controls, and a change
/// sent anyway is refused. Served under a path prefix, as behind a proxy.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_viewer_reads_but_cannot_edit(_: PgPoolOptions, connect: PgConnectOptions) {
    let (_w, pool, _d, base) = console_daemon(connect, "/pubbot").await;
    add_user(&pool, "vic", Role::Viewer, Some(PASSWORD))
        .await
        .unwrap();
    import(&pool, HELLO).await;
    let mut b = Browser::start("viewer").await;
    b.sign_in(&base, "vic", PASSWORD).await;
    b.wait_text("Overview").await;
    b.goto(&format!("{base}/rules")).await;
    b.wait_text("hello").await;
    assert!(
        !b.has("a[href$='/rules/new']").await,
        "no New rule for a viewer"
    );
    assert!(
        !b.has("button.toggle").await,
        "no enable/disable for a viewer"
    );
    b.shot("rules").await;
    b.follow("table.rules a").await;
    b.wait_text("Rule “hello”").await;
    assert!(
        !b.has("form.rule-form button[type=submit]").await,
        "no Save for a viewer"
    );
    b.shot("rule").await;
    // The form sent anyway (its fieldset enabled by hand): refused.
    b.client
        .execute("document.querySelector('fieldset').disabled = false; var s = document.createElement('button'); s.type = 'submit'; s.id = 'force'; document.querySelector('form.rule-form').appendChild(s);", vec![])
        .await
        .unwrap();
    b.follow("#force").await;
    b.wait_text("403").await;
    assert!(b
        .source()
        .await
        .contains("your role (viewer) cannot do this"));
    b.shot("refused").await;
    let version: i32 = sqlx::query_scalar("SELECT version FROM rules WHERE name = 'hello'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, 1, "the rule is unchanged");
}

/// A form without the CSRF token is refused; a rule saved by someone else
/// meanwhile is not overwritten; failed sign-ins are limited.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn forgeries_lost_updates_and_password_guessing_are_refused(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (_w, pool, _d, base) = console_daemon(connect, "").await;
    add_user(&pool, "erin", Role::Editor, Some(PASSWORD))
        .await
        .unwrap();
    import(&pool, HELLO).await;
    let mut b = Browser::start("forgeries").await;
    b.sign_in(&base, "erin", PASSWORD).await;
    b.wait_text("Overview").await;

    // No CSRF token: refused before anything is done.
    b.goto(&format!("{base}/rules")).await;
    b.client
        .execute("document.querySelectorAll('form.inline input[name=_csrf]').forEach(function (e) { e.remove(); });", vec![])
        .await
        .unwrap();
    b.follow("button.toggle").await;
    b.wait_text("CSRF").await;
    b.shot("csrf-refused").await;
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM rules WHERE name = 'hello'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(enabled, "the forged form changed nothing");

    // Two editors: the second save began from an old version.
    b.goto(&format!("{base}/rules")).await;
    b.follow("table.rules a").await;
    b.wait_text("Rule “hello”").await;
    sqlx::query("UPDATE rules SET body = jsonb_set(body, '{priority}', '7'), version = version + 1 WHERE name = 'hello'")
        .execute(&pool)
        .await
        .unwrap();
    b.fill("#replies", "hello from me").await;
    b.follow("form.rule-form button[type=submit]").await;
    b.wait_text("saved by someone else").await;
    assert_eq!(
        b.value("#replies").await,
        "hello from me",
        "the edit is kept on the page"
    );
    let body: serde_json::Value = sqlx::query_scalar("SELECT body FROM rules WHERE name = 'hello'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        body.to_string().contains("\"hello\"") && !body.to_string().contains("hello from me"),
        "{body}"
    );
    b.shot("conflict").await;

    // Password guessing: the sixth try within the window is refused even
    // with the right password.
    b.client.delete_all_cookies().await.unwrap();
    for _ in 0..5 {
        b.sign_in(&base, "erin", "wrong password!").await;
        b.wait_text("Wrong name or password.").await;
    }
    b.sign_in(&base, "erin", PASSWORD).await;
    b.wait_text("too many failed sign-ins").await;
    b.shot("rate-limited").await;
}

/// Import and export are the TOML the CLI reads, round trip exact.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn rules_exported_from_the_console_import_back_unchanged(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (_w, pool, _d, base) = console_daemon(connect, "").await;
    add_user(&pool, "erin", Role::Editor, Some(PASSWORD))
        .await
        .unwrap();
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/demo-rules.toml"
    ))
    .unwrap();
    let mut b = Browser::start("import").await;
    b.sign_in(&base, "erin", PASSWORD).await;
    b.wait_text("Overview").await;
    b.goto(&format!("{base}/rules/import")).await;
    b.fill(
        "#text",
        "[[rule]]\nname = \"x\"\nreplies = [{ type = \"text\", text = \"{{ nope(\" }]\n",
    )
    .await;
    b.follow("main form button[type=submit]").await;
    b.wait_text("import-errors").await;
    assert!(b.text("#import-errors").await.contains("rule \"x\""));
    b.shot("import-refused").await;
    b.client
        .execute(
            "document.querySelector('#text').value = arguments[0];",
            vec![serde_json::Value::String(file.clone())],
        )
        .await
        .unwrap();
    b.follow("main form button[type=submit]").await;
    b.wait_text("Imported").await;
    b.shot("imported").await;
    let exported = pubbot::pipeline::rules::export(&pool)
        .await
        .unwrap()
        .to_toml()
        .unwrap();
    // The console's export is the CLI's, byte for byte, and imports back
    // to the same rules.
    let cookie = b.client.get_named_cookie("pubbot_session").await.unwrap();
    let page = reqwest::Client::new()
        .get(format!("{base}/rules/export"))
        .header("cookie", format!("pubbot_session={}", cookie.value()))
        .send()
        .await
        .unwrap();
    assert!(page.status().is_success());
    let text = page.text().await.unwrap();
    assert_eq!(text, exported);
    let again = pubbot_rules::RuleFile::from_toml(&text).unwrap();
    assert_eq!(again, pubbot_rules::RuleFile::from_toml(&file).unwrap());
}

/// Human takeover: a person takes a conversation; the bot stays silent for
/// that user while the page shows what the user writes as it arrives;
/// the person's message reaches the user through the outbox; released,
/// the bot answers again.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_person_takes_over_a_conversation_and_gives_it_back(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (w, pool, _d, base) = console_daemon_with(
        connect,
        "",
        Some("[[rule]]\nname = \"echo\"\nkind = \"default\"\nreplies = [{ type = \"text\", text = \"bot: {{ text }}\" }]\n"),
    )
    .await;
    add_user(&pool, "erin", Role::Editor, Some(PASSWORD))
        .await
        .unwrap();
    w.say("bea", "hello").await;
    eventually("the bot answers", || async {
        w.texts("bea").await.iter().any(|t| t == "bot: hello")
    })
    .await;

    let mut b = Browser::start("takeover").await;
    b.sign_in(&base, "erin", PASSWORD).await;
    b.wait_text("Overview").await;
    b.goto(&format!("{base}/conversations/bea?app={KEY}&mcid={SHOP}"))
        .await;
    b.wait_text("bot: hello").await;
    b.follow("#hold-form button").await;
    b.wait_text("You hold this conversation").await;

    // Held: the user's next message is stored and shown, and not answered.
    w.say("bea", "is a person there?").await;
    b.wait_text("is a person there?").await; // the page refreshes itself
    b.shot("held").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !w.texts("bea")
            .await
            .iter()
            .any(|t| t.contains("is a person there")),
        "the bot stayed silent"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE user_id = 'bea' AND status = 'done'"
        )
        .await,
        2,
        "the held push is decided, without a reply"
    );

    // Too long for a text message: refused at the field, the text kept.
    b.client
        .execute(
            "document.querySelector('#message-text').value = 'x'.repeat(5000);",
            vec![],
        )
        .await
        .unwrap();
    b.follow("#message-form button").await;
    b.wait_text("a text message is at most").await;
    assert_eq!(b.value("#message-text").await.len(), 5000);
    b.shot("message-refused").await;

    b.fill("#message-text", "Yes — Erin here. 你好!").await;
    b.follow("#message-form button").await;
    b.wait_text("queued").await;
    eventually("the person's message reaches the user", || async {
        w.texts("bea")
            .await
            .iter()
            .any(|t| t == "Yes — Erin here. 你好!")
    })
    .await;
    b.wait_text("staff:erin").await;
    b.shot("message-sent").await;

    b.follow("#hold-form button").await;
    b.wait_text("Released").await;
    w.say("bea", "thanks").await;
    eventually("the bot answers again", || async {
        w.texts("bea").await.iter().any(|t| t == "bot: thanks")
    })
    .await;
    // In the order the user wrote, the person's message in its place.
    let texts = w.texts("bea").await;
    assert_eq!(
        texts,
        ["bot: hello", "Yes — Erin here. 你好!", "bot: thanks"]
    );
    b.goto(&format!("{base}/audit")).await;
    let audit = b.text("#audit").await;
    assert!(
        audit.contains("conversation.hold")
            && audit.contains("conversation.message")
            && audit.contains("conversation.release"),
        "{audit}"
    );
}

/// Behind an authenticating proxy: the trusted header signs the user in,
/// only from a trusted address.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_trusted_proxy_header_signs_in_only_from_a_trusted_proxy(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    let page = |trusted: &'static str| {
        let mut s = w.settings();
        s.console.listen = Some("127.0.0.1:0".parse().expect("addr"));
        s.console.secure_cookies = false;
        s.console.trusted_user_header = "X-Forwarded-User".into();
        s.console.trusted_proxies = vec![trusted.parse().unwrap()];
        s
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (d, _) = w.daemon(page("127.0.0.1/32"), pool.clone()).await;
    let at = d.console_addr.unwrap();
    let r = http
        .get(format!("http://{at}/rules"))
        .header("X-Forwarded-User", "pat")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("HttpOnly"));
    let html = r.text().await.unwrap();
    assert!(
        html.contains("pat") && html.contains("viewer"),
        "a proxy user gets proxy_default_role"
    );
    d.shutdown().await;
    // The same header from an address not trusted: to the sign-in page.
    let (d, _) = w.daemon(page("10.0.0.0/8"), pool.clone()).await;
    let at = d.console_addr.unwrap();
    let r = http
        .get(format!("http://{at}/rules"))
        .header("X-Forwarded-User", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/login"));
}

/// A reply the platform refused for good shows as failed in the
/// conversation; its retry button sends it again once the platform is
/// back.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_failed_reply_is_retried_from_the_conversation(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, "[[rule]]\nname = \"hours\"\ntrigger = { keywords = [{ pattern = \"hours\" }] }\nreplies = [{ type = \"text\", text = \"9-18\" }]\n").await;
    let mut s = w.settings();
    s.console.listen = Some("127.0.0.1:0".parse().expect("addr"));
    s.console.secure_cookies = false;
    s.sender.max_attempts = 2;
    s.sender.backoff_min_ms = 50;
    s.sender.backoff_max_ms = 100;
    let (d, _) = w.daemon(s, pool.clone()).await;
    w.add_account(d.addr).await;
    let base = format!("http://{}", d.console_addr.unwrap());
    add_user(&pool, "erin", Role::Editor, Some(PASSWORD))
        .await
        .unwrap();
    w.put("faults", serde_json::json!({"error_rate": 1.0}))
        .await;
    w.say("cal", "hours").await;
    eventually("the reply failed", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'failed'",
        )
        .await
            == 1
    })
    .await;
    w.put("faults", serde_json::json!({"error_rate": 0.0}))
        .await;
    let mut b = Browser::start("retry").await;
    b.sign_in(&base, "erin", PASSWORD).await;
    b.wait_text("Overview").await;
    b.goto(&format!("{base}/conversations/cal?app={KEY}&mcid={SHOP}"))
        .await;
    b.wait_text("Retry reply").await;
    b.shot("failed").await;
    b.follow("#thread form.inline button").await;
    b.wait_text("retried").await;
    eventually("the retried reply arrives", || async {
        w.texts("cal").await == ["9-18"]
    })
    .await;
    b.shot("retried").await;
}
