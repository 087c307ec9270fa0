//! Apps on several databases (README "Apps on several databases"): one
//! pubbot serves an app on the test's database and another on a PostgreSQL
//! cluster of the test's own. Stopping that cluster stops only its app:
//! the other app's pushes are answered at their first try and replied to
//! as fast as before, while the stopped app's pushes are spooled, answered,
//! and replied to once, in order, after the cluster is back.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pubbot::config::OtherDatabase;
use pubbot_e2e::{eventually, metric, scrape, Cluster, World, ECHO, KEY, SECRET, SHOP};
use pubbot_sim::{AppCredentials, PushConfig, RunningSim, SimConfig};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::import;

/// The app placed on the second cluster.
const EAST: &str = "east-app";
const EAST_SECRET: &str = "east-secret";

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

async fn sim_get(w: &World, path: &str) -> Vec<Value> {
    w.http
        .get(format!("{}/_sim/{path}", w.sim.base_url()))
        .send()
        .await
        .expect("get")
        .json::<Value>()
        .await
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn texts(w: &World, app: &str, user: &str) -> Vec<String> {
    sim_get(w, &format!("inbox/{user}?app_key={app}"))
        .await
        .iter()
        .filter_map(|d| d["payload"]["content"].as_str().map(str::to_owned))
        .collect()
}

/// Pushed texts per (app, user), and when each was pushed.
type Written = (
    HashMap<(&'static str, String), Vec<String>>,
    Vec<(&'static str, String, i64)>,
);

/// `users` users of each app write `per_user` texts each, one every
/// `every`, each pushed once the platform is done with the user's previous
/// one (answered, after any retries), as a person writes after their last
/// message went: the platform's retries cannot reorder a user's pushes.
async fn write_paced(
    http: reqwest::Client,
    url: String,
    apps: Vec<&'static str>,
    users: usize,
    per_user: usize,
    every: Duration,
) -> Written {
    let mut tasks = tokio::task::JoinSet::new();
    for app in apps {
        for u in 0..users {
            let (http, url) = (http.clone(), url.clone());
            tasks.spawn(async move {
                let user = format!("u-{u}");
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let (mut texts, mut sent) = (Vec::new(), Vec::new());
                for k in 0..per_user {
                    tick.tick().await;
                    let text = format!("{user}.{k}");
                    sent.push((app, text.clone(), now_ms()));
                    let r = http
                        .post(&url)
                        .json(&json!({"app_key": app, "mcid": SHOP, "user": user, "type": "text", "content": text, "wait": true}))
                        .send()
                        .await
                        .expect("push");
                    assert_eq!(r.status(), 200);
                    texts.push(format!("re: {text}"));
                }
                ((app, user), texts, sent)
            });
        }
    }
    let (mut written, mut sent_at) = (HashMap::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (key, texts, sent) = done.expect("a user's pushes");
        written.insert(key, texts);
        sent_at.extend(sent);
    }
    (written, sent_at)
}

fn p99(mut v: Vec<i64>) -> i64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_stopped_database_stops_only_the_apps_placed_on_it(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // The second cluster, migrated, with the same rules.
    let cluster = Cluster::start();
    let east = PgPoolOptions::new()
        .max_connections(2)
        .connect(&cluster.url())
        .await
        .expect("the second cluster");
    pubbot::db::migrate(&east).await.unwrap();
    import(&east, ECHO).await;
    east.close().await;

    let sim = RunningSim::start(SimConfig {
        apps: vec![
            AppCredentials {
                key: KEY.into(),
                secret: SECRET.into(),
            },
            AppCredentials {
                key: EAST.into(),
                secret: EAST_SECRET.into(),
            },
        ],
        push: PushConfig {
            timeout: Duration::from_secs(1),
            retry_delay: Duration::from_millis(300),
            tries: 3,
            ..PushConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let w = World {
        sim,
        http: reqwest::Client::new(),
        connect,
    };
    let main = w.pool(None).await;
    import(&main, ECHO).await;
    let mut settings = w.settings();
    settings.workers.stall_secs = 2;
    let mut east_app = settings.apps[0].clone();
    east_app.key = EAST.into();
    east_app.secret = Some(SecretString::from(EAST_SECRET));
    east_app.database = Some("east".into());
    settings.apps.push(east_app);
    settings.databases.insert(
        "east".into(),
        OtherDatabase {
            url: Some(SecretString::from(cluster.url())),
            url_file: None,
            max_connections: Some(10),
            acquire_timeout_secs: None,
            idle_in_transaction_timeout_secs: None,
        },
    );
    let (d, _) = w.daemon(settings, main.clone()).await;
    for (key, secret) in [(KEY, SECRET), (EAST, EAST_SECRET)] {
        w.add_account_of(key, secret, format!("http://{}/webhook/{key}", d.addr))
            .await;
    }

    // 100 pushes a second, half to each app, for 14 s (20 users an app, a
    // text every 400 ms each); the second cluster is stopped from second 3
    // to second 11.
    let pushing = tokio::spawn(write_paced(
        w.http.clone(),
        format!("{}/_sim/message", w.sim.base_url()),
        vec![KEY, EAST],
        20,
        35,
        Duration::from_millis(400),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped_at = now_ms();
    cluster.down();

    // While it is down: the process stays ready (the healthy app's
    // replicas must stay in the balancer), names the stopped database,
    // and says it is down in its metrics.
    let admin = d.admin_addr;
    eventually("the stopped database is reported", || async {
        metric(
            &scrape(admin).await,
            "pubbot_database_up{database=\"east\"}",
        ) == 0.0
    })
    .await;
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "ready while one database answers");
    let body = ready.text().await.unwrap();
    assert!(body.contains("database east:"), "{body}");
    let one = reqwest::get(format!("http://{admin}/readyz?database=east"))
        .await
        .unwrap();
    assert_eq!(one.status(), 503);
    let other = reqwest::get(format!("http://{admin}/readyz?database=default"))
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(
        metric(
            &scrape(admin).await,
            "pubbot_database_up{database=\"default\"}"
        ),
        1.0
    );

    let left = Duration::from_secs(11).saturating_sub(Duration::from_millis(
        u64::try_from(now_ms() - stopped_at + 3000).unwrap_or(0),
    ));
    tokio::time::sleep(left).await;
    let restarted_at = now_ms();
    cluster.up();
    let (written, sent_at) = pushing.await.unwrap();

    // Every push of both apps answered exactly once, with a 200; the
    // healthy app's at their first try (a loaded test machine may make one
    // in a hundred wait past the simulator's 1 s, outage or not).
    let pushes = w.pushes_answered_once().await;
    assert_eq!(pushes.len(), 1400);
    let retried = pushes
        .iter()
        .filter(|p| p["app_key"] == KEY && p["attempts"].as_array().unwrap().len() > 1)
        .count();
    eprintln!("healthy app: {retried} of 700 pushes needed a second try");
    assert!(
        retried <= 7,
        "{retried} of the healthy app's 700 pushes were tried again"
    );
    // Each user of each app: one reply per push, in the order written.
    eventually("every push replied to", || async {
        for ((app, user), want) in &written {
            if texts(&w, app, user).await.len() < want.len() {
                return false;
            }
        }
        true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A reply whose call was under way when the database stopped, and
    // whose lease ran out before its outcome could be written, is sent
    // again: the named window (`pubbot_outbound_recovered_total`). Any
    // other second reply is a failure.
    let mut again = 0;
    for ((app, user), want) in &written {
        let mut got = texts(&w, app, user).await;
        let n = got.len();
        got.dedup();
        again += n - got.len();
        assert_eq!(
            &got, want,
            "{app}/{user}: one reply per push, in the order written"
        );
    }
    let recovered = metric(&scrape(admin).await, "pubbot_outbound_recovered_total");
    assert!(
        again as f64 <= recovered,
        "{again} replies sent twice, {recovered} counted"
    );

    // The healthy app's push -> reply times: as before the outage.
    let delivered: HashMap<String, i64> = sim_get(&w, &format!("deliveries?app_key={KEY}"))
        .await
        .iter()
        .filter_map(|d| {
            Some((
                d["payload"]["content"]
                    .as_str()?
                    .trim_start_matches("re: ")
                    .to_owned(),
                d["at_ms"].as_i64()?,
            ))
        })
        .collect();
    let (mut before, mut during) = (Vec::new(), Vec::new());
    for (app, text, at) in &sent_at {
        if *app != KEY {
            continue;
        }
        let took = delivered[text] - at;
        if *at < stopped_at {
            before.push(took);
        } else if *at < restarted_at {
            during.push(took);
        }
    }
    let (before, during) = (p99(before), p99(during));
    eprintln!("healthy app p99 push -> reply: {before} ms before, {during} ms while the other database was down");
    assert!(
        during <= before * 3 + 300,
        "the healthy app slowed down: p99 {during} ms against {before} ms"
    );
    // The stopped app's pushes waited in its own spool.
    assert!(
        metric(
            &scrape(admin).await,
            "pubbot_spool_pushes_total{outcome=\"spooled\"}"
        ) >= 1.0,
        "the stopped app's pushes were spooled"
    );
    let east_count: i64 = {
        let east = PgPoolOptions::new()
            .max_connections(1)
            .connect(&cluster.url())
            .await
            .unwrap();
        sqlx::query_scalar("SELECT count(*) FROM inbound_messages WHERE app_key = $1")
            .bind(EAST)
            .fetch_one(&east)
            .await
            .unwrap()
    };
    assert_eq!(
        east_count, 700,
        "each of its pushes stored once, on its own database"
    );
    let main_count: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_messages")
        .fetch_one(&main)
        .await
        .unwrap();
    assert_eq!(
        main_count, 700,
        "the default database holds only its app's pushes"
    );
    d.shutdown().await;
}

/// `pubbot app move` while pushes flow: the app's pushes switch to the
/// other database, wait there undecided until the old one has sent every
/// reply it planned, and are answered after; the daemon is then restarted
/// with the app placed on the new database. Every push is answered once,
/// every user gets one reply per push in the order they wrote, and the new
/// database holds the app's whole history.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn an_app_moves_to_another_database_while_it_is_served(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::with_push_tries(connect.clone(), 8).await;
    let main = w.pool(None).await;
    import(&main, ECHO).await;
    // The destination: a second database on the same server.
    // (The test database's name is near PostgreSQL's 63 bytes already.)
    let east_name = format!("pubbot_east_{:08x}", rand::random::<u32>());
    sqlx::query(&format!("CREATE DATABASE \"{east_name}\""))
        .execute(&main)
        .await
        .unwrap();
    let addr = pubbot_e2e::db_addr(&connect);
    let east_url = format!(
        "postgres://{}@{}:{}/{east_name}",
        connect.get_username(),
        addr.ip(),
        addr.port()
    );
    {
        let east = PgPoolOptions::new()
            .max_connections(2)
            .connect(&east_url)
            .await
            .unwrap();
        pubbot::db::migrate(&east).await.unwrap();
        import(&east, ECHO).await;
        east.close().await;
    }
    let mut settings = w.settings();
    settings.ingest.spool_dir = pubbot_e2e::fresh_dir("move-spool").display().to_string();
    settings.databases.insert(
        "east".into(),
        OtherDatabase {
            url: Some(SecretString::from(east_url.clone())),
            url_file: None,
            max_connections: Some(10),
            acquire_timeout_secs: None,
            idle_in_transaction_timeout_secs: None,
        },
    );
    // Refused, saying what to do: an app without move_to, an unknown app.
    let e = pubbot::admin::moves::run(&settings, KEY, Duration::ZERO, Duration::ZERO, |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("has no move_to"), "{e}");
    let e = pubbot::admin::moves::run(&settings, "nope", Duration::ZERO, Duration::ZERO, |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not configured"), "{e}");
    settings.apps[0].move_to = Some("east".into());
    // The move connects to both databases by their URLs, as the CLI does.
    settings.database.url = SecretString::from(format!(
        "postgres://{}@{}:{}/{}",
        connect.get_username(),
        addr.ip(),
        addr.port(),
        connect.get_database().expect("a database")
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let d = pubbot::start(
        settings.clone(),
        main.clone(),
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("daemon");
    w.add_account(at).await;

    // 10 users write every 200 ms each for 8 s.
    let pushing = tokio::spawn(write_paced(
        w.http.clone(),
        format!("{}/_sim/message", w.sim.base_url()),
        vec![KEY],
        10,
        40,
        Duration::from_millis(200),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = pubbot::admin::moves::run(
        &settings,
        KEY,
        Duration::from_secs(1),
        Duration::from_secs(30),
        |step| eprintln!("{step}"),
    )
    .await
    .expect("the move");
    assert_eq!(
        (report.from.as_str(), report.to.as_str()),
        ("default", "east")
    );
    assert!(report.pushes > 0, "{report:?}");
    let tables: Vec<&str> = report.state.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        tables,
        ["accounts", "followers", "conversation_state", "takeovers"]
    );
    // Run again: nothing more to do.
    let again = pubbot::admin::moves::run(&settings, KEY, Duration::ZERO, Duration::ZERO, |_| {})
        .await
        .unwrap();
    assert!(again.already_done);

    // The pushes that came after the move are answered by the new
    // database, while the daemon still has move_to.
    let mut written: HashMap<String, Vec<String>> = pushing
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|((_, user), texts)| (user, texts))
        .collect();

    // The app placed on its new database, the daemon restarted there. (After
    // the load: a push that meets the only replica restarting is retried by
    // the platform, and may come after the user's next one whatever pubbot
    // does; behind a balancer, replicas restart one at a time.)
    d.shutdown().await;
    let mut after = settings.clone();
    after.apps[0].database = Some("east".into());
    after.apps[0].move_to = None;
    // A new process gets the spool directory's lock; this one may not have
    // let go of it yet.
    after.ingest.spool_dir = pubbot_e2e::fresh_dir("moved-spool").display().to_string();
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .expect("the same port");
    let d = pubbot::start(
        after,
        main.clone(),
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("daemon on the new placement");
    for (user, texts) in &mut written {
        w.say(user, "after").await;
        texts.push("re: after".into());
    }

    let pushes = w.pushes_answered_once().await;
    assert_eq!(pushes.len(), 410);
    eventually("every push replied to", || async {
        for (user, want) in &written {
            if w.texts(user).await.len() < want.len() {
                return false;
            }
        }
        true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (user, want) in &written {
        assert_eq!(
            &w.texts(user).await,
            want,
            "{user}: one reply per push, in the order written"
        );
    }
    // A late retry of a push the old database answered, arriving at the
    // new one: its key was copied, so it is a duplicate, not a new push.
    let first = &pushes[0];
    let ts = (now_ms() / 1000).to_string();
    let nonce = rand::random::<u64>().to_string();
    let sig = pubbot_sim::signature::sign(SECRET, &nonce, &ts);
    let replay = w
        .http
        .post(format!(
            "http://{at}/webhook/{KEY}?rc-nonce={nonce}&rc-timestamp={ts}&rc-signature={sig}"
        ))
        .body(first["xml"].as_str().unwrap().to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let user = first["user_id"].as_str().unwrap();
    assert_eq!(&w.texts(user).await, &written[user], "no second reply");

    let east = PgPoolOptions::new()
        .max_connections(1)
        .connect(&east_url)
        .await
        .unwrap();
    let count = |pool: sqlx::PgPool, sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(
        count(
            east.clone(),
            "SELECT count(*) FROM inbound_messages WHERE status = 'done'"
        )
        .await,
        410,
        "the new database holds every push, each once, decided"
    );
    assert_eq!(
        count(
            east.clone(),
            "SELECT count(*) FROM outbound_messages WHERE status = 'sent'"
        )
        .await,
        410,
        "and every reply"
    );
    assert_eq!(
        count(main.clone(), "SELECT count(*) FROM inbound_messages").await,
        report.pushes,
        "what the old one stored was copied"
    );
    d.shutdown().await;
    east.close().await;
    sqlx::query(&format!("DROP DATABASE \"{east_name}\" WITH (FORCE)"))
        .execute(&main)
        .await
        .unwrap();
}
