//! Operator tooling end to end against the simulator: accounts and menus
//! as code (minimal calls, idempotent), media by local name, a user's
//! conversation, and failed replies retried once after fixing the rule.

use pubbot::account::{self, AccountsFile, MenuFile};
use pubbot_api_client::MediaKind;
use pubbot_e2e::{eventually, World, KEY, SECRET, SHOP};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{count, import};

fn client(w: &World) -> pubbot_api_client::Client {
    pubbot_api_client::Client::builder(KEY, SecretString::from(SECRET), w.sim.base_url())
        .build()
        .unwrap()
}

/// Every call the simulator logged, by path.
async fn calls_by_path(w: &World) -> std::collections::BTreeMap<String, usize> {
    let all = w.get("calls").await;
    let mut out = std::collections::BTreeMap::new();
    for c in all.as_array().unwrap() {
        *out.entry(c["path"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    out
}

fn delta(
    before: &std::collections::BTreeMap<String, usize>,
    after: &std::collections::BTreeMap<String, usize>,
) -> std::collections::BTreeMap<String, usize> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn accounts_file(intro: &str) -> AccountsFile {
    toml::from_str(&format!(
        r#"
[[account]]
mcid = "shop"
display_name = "Shop"
portrait_url = "http://x/shop.png"
introduction = "{intro}"
route_url = "http://127.0.0.1:9/webhook/{KEY}"

[[account]]
mcid = "cafe"
display_name = "Cafe"
portrait_url = "http://x/cafe.png"
introduction = "coffee"
route_open = false
route_url = "http://127.0.0.1:9/webhook/{KEY}"
"#
    ))
    .unwrap()
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn accounts_apply_creates_then_does_nothing_then_refreshes_one_field(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect).await;
    let c = client(&w);
    let file = accounts_file("hello");
    let plan = account::plan_accounts(&c, &file.accounts, "")
        .await
        .unwrap();
    assert_eq!(
        plan,
        [
            account::AccountStep::Add("shop".into()),
            account::AccountStep::Add("cafe".into()),
            account::AccountStep::SetSwitch("cafe".into(), false),
        ]
    );
    account::apply_accounts(&c, &file.accounts, "", &plan)
        .await
        .unwrap();
    let info = c.account_info(&"cafe".into()).await.unwrap();
    assert!(!info.route_open && info.display_name == "Cafe");

    // Again: nothing but the two info reads.
    let before = calls_by_path(&w).await;
    let plan = account::plan_accounts(&c, &file.accounts, "")
        .await
        .unwrap();
    account::apply_accounts(&c, &file.accounts, "", &plan)
        .await
        .unwrap();
    assert!(
        plan.iter()
            .all(|s| matches!(s, account::AccountStep::Same(_))),
        "{plan:?}"
    );
    let d = delta(&before, &calls_by_path(&w).await);
    assert_eq!(d, [("/mc/info.json".to_owned(), 2)].into(), "{d:?}");

    // One field changed: exactly one refresh.
    let changed = accounts_file("hello again");
    let before = calls_by_path(&w).await;
    let plan = account::plan_accounts(&c, &changed.accounts, "")
        .await
        .unwrap();
    account::apply_accounts(&c, &changed.accounts, "", &plan)
        .await
        .unwrap();
    let d = delta(&before, &calls_by_path(&w).await);
    assert_eq!(
        d,
        [
            ("/mc/info.json".to_owned(), 2),
            ("/mc/refresh.json".to_owned(), 1)
        ]
        .into(),
        "{d:?}"
    );
    assert_eq!(
        c.account_info(&"shop".into()).await.unwrap().introduction,
        "hello again"
    );
}

/// A menu as (name, url, children (name, url)) in order.
pub(super) type Tree = Vec<(String, String, Vec<(String, String)>)>;

/// The simulator's menu of `shop`.
pub(super) async fn platform_menu(w: &World) -> Tree {
    let accounts = w.get("accounts").await;
    let shop = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"]["mcid"] == SHOP)
        .unwrap()
        .clone();
    shop["menu"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let item = |v: &Value| {
                (
                    v["name"].as_str().unwrap_or("").to_owned(),
                    v["url"].as_str().unwrap_or("").to_owned(),
                )
            };
            let (n, u) = item(&t["item"]);
            let kids = t["children"].as_array().unwrap().iter().map(item).collect();
            (n, u, kids)
        })
        .collect()
}

pub(super) fn menu(text: &str) -> MenuFile {
    toml::from_str(text).unwrap()
}

pub(super) fn expected(file: &MenuFile) -> Tree {
    file.items
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.url.clone().unwrap_or_default(),
                t.children
                    .iter()
                    .map(|c| (c.name.clone(), c.url.clone().unwrap_or_default()))
                    .collect(),
            )
        })
        .collect()
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn menus_apply_minimally_and_match_the_file(_: PgPoolOptions, connect: PgConnectOptions) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    w.add_account("127.0.0.1:9".parse().unwrap()).await;
    let c = client(&w);
    let first = menu(
        r#"
[[item]]
name = "Hours"
url = "http://x/hours"
[[item]]
name = "More"
[[item.children]]
name = "Map"
url = "http://x/map"
[[item.children]]
name = "Call us"
url = "http://x/call"
"#,
    );
    let plan = account::apply_menu(&pool, &c, KEY, SHOP, &first, false)
        .await
        .unwrap();
    assert_eq!(plan.add.len(), 4);
    assert_eq!(platform_menu(&w).await, expected(&first));

    // Again: no call at all.
    let before = calls_by_path(&w).await;
    let plan = account::apply_menu(&pool, &c, KEY, SHOP, &first, false)
        .await
        .unwrap();
    assert!(plan.is_empty(), "{plan:?}");
    assert!(delta(&before, &calls_by_path(&w).await).is_empty());

    // A change: "Call us" goes, "Jobs" comes, "Map"'s url changes, the two
    // first-level items swap. Exactly: 2 deletes, 2 adds, 1 order.
    let second = menu(
        r#"
[[item]]
name = "More"
[[item.children]]
name = "Map"
url = "http://x/map2"
[[item.children]]
name = "Jobs"
url = "http://x/jobs"
[[item]]
name = "Hours"
url = "http://x/hours"
"#,
    );
    let before = calls_by_path(&w).await;
    account::apply_menu(&pool, &c, KEY, SHOP, &second, false)
        .await
        .unwrap();
    let d = delta(&before, &calls_by_path(&w).await);
    assert_eq!(
        d,
        [
            ("/mc/menu/delete.json".to_owned(), 2),
            ("/mc/menu/order.json".to_owned(), 1),
            ("/mc/menu/refresh.json".to_owned(), 2),
        ]
        .into(),
        "{d:?}"
    );
    assert_eq!(platform_menu(&w).await, expected(&second));

    // An invalid file changes nothing and names the item.
    let bad = menu(
        r#"
[[item]]
name = "Far too long a name"
"#,
    );
    let before = calls_by_path(&w).await;
    let e = account::apply_menu(&pool, &c, KEY, SHOP, &bad, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Far too long a name"), "{e}");
    assert!(delta(&before, &calls_by_path(&w).await).is_empty());
    assert_eq!(platform_menu(&w).await, expected(&second));
}

fn png(size: usize, seed: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.resize(size, seed);
    v
}

const RULES: &str = r#"
[[rule]]
name = "banner"
trigger = { keywords = [{ pattern = "banner" }] }
replies = [{ type = "image", media = "welcome-banner" }]

[[rule]]
name = "broken"
trigger = { keywords = [{ pattern = "catalogue" }] }
replies = [{ type = "image", media_id = "no-such-media" }]

[[rule]]
name = "fallback"
kind = "default"
replies = [{ type = "text", text = "ok {{ text }}" }]
"#;

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn media_by_name_conversations_and_a_failed_reply_retried_once(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    let c = client(&w);
    let dir = pubbot_e2e::fresh_dir("media");

    // Over the limit: refused here, nothing uploaded.
    let big = dir.join("big.png");
    std::fs::write(&big, png(30 * 1024, 1)).unwrap();
    let e = account::upload(&pool, &c, KEY, MediaKind::Thumb, &big, None)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("30720 bytes"), "{e:#}");
    assert!(w.calls("/media/upload").await.is_empty());

    // The same file twice: one upload.
    let banner = dir.join("banner.png");
    std::fs::write(&banner, png(1024, 2)).unwrap();
    let a = account::upload(
        &pool,
        &c,
        KEY,
        MediaKind::Image,
        &banner,
        Some("welcome-banner"),
    )
    .await
    .unwrap();
    let b = account::upload(
        &pool,
        &c,
        KEY,
        MediaKind::Image,
        &banner,
        Some("welcome-banner"),
    )
    .await
    .unwrap();
    assert!(!a.reused && b.reused);
    assert_eq!(a.media.media_id, b.media.media_id);
    assert_eq!(w.calls("/media/upload").await.len(), 1);

    // A rule naming the medium sends its media_id.
    import(&pool, RULES).await;
    let (d, _) = w.daemon(w.settings(), pool.clone()).await;
    w.add_account(d.addr).await;
    w.say("ann", "show me the banner").await;
    w.say("ann", "the catalogue please").await;
    w.say("ann", "thanks").await;
    eventually("the replies settled", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status IN ('sent', 'failed')",
        )
        .await
            == 3
    })
    .await;
    let inbox = w.inbox("ann").await;
    assert_eq!(inbox[0]["payload"]["media_id"], a.media.media_id.as_str());

    // The conversation, in order, with the rules named; the 1002 shows.
    let conv = pubbot::admin::inspect::conversation(&pool, "ann", Some(SHOP), 10)
        .await
        .unwrap();
    let lines: Vec<(String, String, String)> = conv
        .iter()
        .map(|e| {
            (
                e.summary.clone(),
                e.replies[0].rule.clone(),
                e.replies[0].status.clone(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (
                "show me the banner".to_owned(),
                "banner".to_owned(),
                "sent".to_owned()
            ),
            (
                "the catalogue please".to_owned(),
                "broken".to_owned(),
                "failed".to_owned()
            ),
            (
                "thanks".to_owned(),
                "fallback".to_owned(),
                "sent".to_owned()
            ),
        ]
    );
    assert!(conv[1].replies[0]
        .error
        .as_deref()
        .unwrap()
        .contains("1002"));

    // Listed as failed; after fixing the rule, retried once.
    let failed =
        pubbot::admin::inspect::failed(&pool, chrono::Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap();
    assert_eq!(failed.len(), 1);
    let id = failed[0].id;
    import(
        &pool,
        r#"
[[rule]]
name = "broken"
trigger = { keywords = [{ pattern = "catalogue" }] }
replies = [{ type = "image", media = "welcome-banner" }]
"#,
    )
    .await;
    let options = pubbot_rules::Options::default();
    let r = pubbot::admin::inspect::retry(&pool, &options, &[id])
        .await
        .unwrap();
    assert_eq!(r[0].outcome.to_string(), "retried");
    let again = pubbot::admin::inspect::retry(&pool, &options, &[id])
        .await
        .unwrap();
    assert!(
        again[0].outcome.to_string().starts_with("not failed"),
        "{again:?}"
    );
    eventually("the retried reply delivered", || async {
        w.inbox("ann").await.len() == 3
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let inbox = w.inbox("ann").await;
    assert_eq!(inbox.len(), 3, "once");
    assert_eq!(inbox[2]["payload"]["media_id"], a.media.media_id.as_str());
    d.shutdown().await;
}
