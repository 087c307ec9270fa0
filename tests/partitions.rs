//! Day partitions and the keys a distributed engine needs (issue 25):
//! an existing deployment migrates with replies in flight, and every
//! unique index of the hot tables holds the tenant and partition keys.

use std::borrow::Cow;

use pubbot_e2e::{eventually, metric, scrape, World, KEY, SHOP};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{count, import, RULES};

/// The first migration of day partitions.
const PARTITIONS: i64 = 20_261_203_000_012;

/// The migrations before day partitions: the schema a deployment has
/// before it upgrades.
fn before_partitions() -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            pubbot::db::MIGRATOR
                .iter()
                .filter(|m| m.version < PARTITIONS)
                .cloned()
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// A push as the platform writes it, as the old schema stored it.
fn stored_push(user: &str, msg_id: &str, text: &str) -> String {
    let xml = format!(
        "<xml><ToUserName><![CDATA[{SHOP}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{text}]]></Content>\
         <MsgId>{msg_id}</MsgId></xml>",
        chrono::Utc::now().timestamp()
    );
    serde_json::to_string(&pubbot_webhook::parse(xml.as_bytes()).unwrap()).unwrap()
}

/// Rows of every state under the old schema, then the upgrade, then a
/// daemon: what was sent stays sent, what was to send goes once, a reply
/// whose sender died mid-call goes again inside the counted window, an
/// undecided push is decided and answered.
#[sqlx::test(migrations = false)]
async fn a_deployment_migrates_to_day_partitions_with_replies_in_flight(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    before_partitions().run(&pool).await.unwrap();
    import(&pool, RULES).await;
    let push = |user: &str, n: i64, status: &str, ago_hours: i32| {
        let pool = pool.clone();
        let message = stored_push(user, &format!("m{n}"), "opening hours?");
        let (user, status) = (user.to_owned(), status.to_owned());
        async move {
            sqlx::query(
                "INSERT INTO inbound_messages (id, app_key, mcid, user_id, msg_type, dedup_key, msg_id, message, raw, trace_id,
                                               status, received_at)
                 VALUES ($1, $2, $3, $4, 'text', $5, $6, $7::json, '', 't' || $1, $8, now() - make_interval(hours => $9))",
            )
            .bind(n)
            .bind(KEY)
            .bind(SHOP)
            .bind(&user)
            .bind(format!("m:{}:{SHOP}:m{n}", SHOP.len()))
            .bind(format!("m{n}"))
            .bind(message)
            .bind(status)
            .bind(ago_hours)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let reply = |n: i64, user: &str, text: &str, status: &str, leased: bool| {
        let pool = pool.clone();
        let (user, text, status) = (user.to_owned(), text.to_owned(), status.to_owned());
        async move {
            sqlx::query(
                "INSERT INTO outbound_messages (inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id,
                                                status, attempts, lease_owner, lease_until)
                 VALUES ($1, 0, $2, $3, $4, 'hours', json_build_object('type', 'text', 'content', $5::text), 't', $6,
                         CASE WHEN $7 THEN 1 ELSE 0 END, CASE WHEN $7 THEN 'gone-replica' END,
                         CASE WHEN $7 THEN now() - interval '1 minute' END)",
            )
            .bind(n)
            .bind(KEY)
            .bind(SHOP)
            .bind(&user)
            .bind(text)
            .bind(status)
            .bind(leased)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // Yesterday: alice was answered. Today: bob's reply waits, carol's
    // sender died mid-call, dave's push was not decided yet.
    push("alice", 1, "done", 24).await;
    reply(1, "alice", "sent before the upgrade", "sent", false).await;
    push("bob", 2, "done", 0).await;
    reply(2, "bob", "queued before the upgrade", "pending", false).await;
    push("carol", 3, "done", 0).await;
    reply(3, "carol", "in flight at the upgrade", "sending", true).await;
    push("dave", 4, "pending", 0).await;

    pubbot::db::MIGRATOR.run(&pool).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbound_messages").await,
        4
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbound_messages").await,
        3
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE pubbot_day_of(id) = day
                AND day = (received_at AT TIME ZONE 'UTC')::date AND (id & 1099511627775) BETWEEN 1 AND 4"
        )
        .await,
        4,
        "each push in its day, its old id in the low bits"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages o JOIN inbound_messages i ON i.id = o.inbound_id AND i.day = o.day"
        )
        .await,
        3,
        "each reply still names its push, in the push's day"
    );

    let (d, _) = w.daemon(w.settings(), pool.clone()).await;
    w.add_account(d.addr).await;
    eventually("bob, carol and dave answered", || async {
        !w.inbox("bob").await.is_empty()
            && !w.inbox("carol").await.is_empty()
            && !w.inbox("dave").await.is_empty()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        w.texts("alice").await,
        Vec::<String>::new(),
        "not sent again"
    );
    assert_eq!(w.texts("bob").await, ["queued before the upgrade"]);
    assert_eq!(w.texts("carol").await, ["in flight at the upgrade"]);
    assert_eq!(w.texts("dave").await, ["9-18"], "decided once");
    assert!(
        metric(
            &scrape(d.admin_addr).await,
            "pubbot_outbound_recovered_total"
        ) >= 1.0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE user_id = 'dave'"
        )
        .await,
        1
    );
}

/// The hot tables and what a distributed engine (Citus) needs of them:
/// every primary key and unique index holds the distribution columns
/// (app_key, and the account), and on partitioned tables the partition
/// key; the same on every partition (docs/scaling.md, "Citus").
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn every_unique_index_of_a_hot_table_holds_the_tenant_key(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool: PgPool = PgPoolOptions::new().connect_with(connect).await.unwrap();
    let hot = [
        "inbound_messages",
        "outbound_messages",
        "followers",
        "conversation_state",
        "takeovers",
    ];
    let rows: Vec<(String, String, Vec<String>, Option<String>)> = sqlx::query_as(
        "SELECT t.relname::text, ix.relname::text,
                array_agg(a.attname::text ORDER BY a.attname),
                (SELECT pg_get_partkeydef(p.oid) FROM pg_class p
                  WHERE p.oid = coalesce((SELECT inhparent FROM pg_inherits WHERE inhrelid = t.oid), t.oid)
                    AND p.relkind = 'p')
           FROM pg_index i
           JOIN pg_class t ON t.oid = i.indrelid
           JOIN pg_class ix ON ix.oid = i.indexrelid
           JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(i.indkey)
          WHERE i.indisunique
            AND (t.relname = ANY($1)
                 OR EXISTS (SELECT 1 FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent
                             WHERE h.inhrelid = t.oid AND p.relname = ANY($1)))
          GROUP BY t.relname, ix.relname, t.oid",
    )
    .bind(&hot[..])
    .fetch_all(&pool)
    .await
    .unwrap();
    let tables: std::collections::HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for t in hot {
        assert!(tables.contains(t), "{t} has a unique index");
    }
    assert!(
        rows.iter().any(|r| r.0.starts_with("inbound_messages_2")),
        "partitions are looked at too"
    );
    for (table, index, cols, partkey) in &rows {
        for needed in ["app_key", "mcid"] {
            assert!(
                cols.iter().any(|c| c == needed),
                "{table}: unique index {index} ({cols:?}) lacks {needed}"
            );
        }
        if let Some(key) = partkey {
            assert_eq!(key, "RANGE (day)", "{table}");
            assert!(
                cols.iter().any(|c| c == "day"),
                "{table}: unique index {index} ({cols:?}) lacks the partition key"
            );
        }
    }
}
