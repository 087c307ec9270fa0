//! The client against the simulator over real HTTP.

use std::time::Duration;

use pubbot_api_client::{
    AccountProfile, Article, Client, Error, ErrorCode, Invalid, McId, MediaKind, MediaRef,
    MenuAction, MenuId, Message, NewAccount, NewMenuItem, NewsMaterial, RetryPolicy, TimestampUnit,
    UserId,
};
use pubbot_sim::{AppCredentials, RunningSim, SimConfig};
use secrecy::SecretString;
use serde_json::{json, Value};

/// The app key of the document's examples.
const KEY: &str = "uwd1c0sxdlx2";
const SECRET: &str = "Y1W2MeFwwwRxa0";

async fn sim() -> RunningSim {
    RunningSim::start(SimConfig {
        apps: vec![AppCredentials {
            key: KEY.into(),
            secret: SECRET.into(),
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn client(sim: &RunningSim) -> Client {
    Client::builder(KEY, SecretString::from(SECRET), sim.base_url())
        .build()
        .unwrap()
}

fn retrying(sim: &RunningSim, include_sends: bool) -> Client {
    Client::builder(KEY, SecretString::from(SECRET), sim.base_url())
        .retry(RetryPolicy {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(400),
            max_retries: 2,
            max_total_delay: Duration::from_secs(5),
            include_sends,
        })
        .build()
        .unwrap()
}

struct Control {
    base: String,
    http: reqwest::Client,
}

impl Control {
    fn new(sim: &RunningSim) -> Self {
        Self {
            base: sim.base_url(),
            http: reqwest::Client::new(),
        }
    }

    /// `GET /_sim/{what}` as a JSON list.
    async fn list(&self, what: &str) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_sim/{what}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().unwrap().clone()
    }

    async fn calls(&self, path: &str) -> Vec<Value> {
        self.list(&format!("calls?path={path}")).await
    }

    async fn all_calls(&self) -> usize {
        self.list("calls").await.len()
    }

    async fn faults(&self, f: Value) {
        let r = self
            .http
            .put(format!("{}/_sim/faults", self.base))
            .json(&f)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn inbox(&self, user: &str) -> Vec<Value> {
        self.list(&format!("inbox/{user}")).await
    }

    /// The JSON body of the last call to `path`, as the platform received it.
    async fn last_body(&self, path: &str) -> Value {
        let calls = self.calls(path).await;
        serde_json::from_str(calls.last().unwrap()["body"].as_str().unwrap()).unwrap()
    }
}

fn account(mcid: &str) -> NewAccount {
    NewAccount {
        mcid: McId::from(mcid),
        profile: AccountProfile {
            display_name: "第二个应用内公众号".into(),
            portrait_url: "http://www.rongcloud.cn/images/logo.png".into(),
            ui_type: 0,
            introduction: "测试应用内公众号说明描述".into(),
        },
        is_follow: true,
        route_url: "http://127.0.0.1:9/unused".into(),
    }
}

fn png() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend_from_slice(&[0u8; 100]);
    v
}

fn article(title: &str) -> Article {
    Article {
        title: title.into(),
        description: Some(" hahahaahhaha".into()),
        url: Some("URL".into()),
        picurl: "PIC_URL".into(),
    }
}

fn users(n: usize) -> Vec<UserId> {
    (0..n).map(|i| UserId::from(format!("u{i}"))).collect()
}

#[tokio::test]
async fn accounts_and_menus() {
    let s = sim().await;
    let c = client(&s);
    let mcid = McId::from("testmcid0");
    let info = c.add_account(&account("testmcid0")).await.unwrap();
    assert_eq!(info.mcid, mcid);
    assert_eq!(info.display_name, "第二个应用内公众号");
    assert!(info.route_open);

    let dup = c.add_account(&account("testmcid0")).await.unwrap_err();
    assert!(
        matches!(
            dup,
            Error::Platform {
                code: ErrorCode::BadParameter,
                ..
            }
        ),
        "{dup}"
    );
    assert!(!dup.is_retryable());

    let profile = AccountProfile {
        display_name: "刷新应用内公众号".into(),
        portrait_url: "p".into(),
        ui_type: 0,
        introduction: "i".into(),
    };
    assert_eq!(
        c.refresh_account(&mcid, &profile)
            .await
            .unwrap()
            .display_name,
        "刷新应用内公众号"
    );
    assert_eq!(
        c.set_route_url(&mcid, "http://www.rongcloud.cn")
            .await
            .unwrap()
            .route_url,
        "http://www.rongcloud.cn"
    );
    assert!(!c.set_route_switch(&mcid, false).await.unwrap().route_open);
    let read = c.account_info(&mcid).await.unwrap();
    assert_eq!(
        (read.route_url.as_str(), read.route_open),
        ("http://www.rongcloud.cn", false)
    );
    let missing = c.account_info(&McId::from("nope")).await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::BadParameter));

    let top = c
        .add_menu_item(
            &mcid,
            &NewMenuItem {
                name: "融云".into(),
                action: MenuAction::OpenUrl("http://www.xxx.com".into()),
                parent: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (top.level, top.kind, top.url.as_str()),
        (1, 1, "http://www.xxx.com")
    );
    let child = c
        .add_menu_item(
            &mcid,
            &NewMenuItem {
                name: "测试1".into(),
                action: MenuAction::None,
                parent: Some(top.menu_id.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(child.pid, top.menu_id.as_str());
    c.order_menu(&[(child.menu_id.clone(), 1), (top.menu_id.clone(), 2)])
        .await
        .unwrap();
    let order_call = Control::new(&s).calls("/mc/menu/order.json").await;
    assert_eq!(
        order_call[0]["body"],
        format!(
            "menuIds={}&orders=1&menuIds={}&orders=2",
            child.menu_id, top.menu_id
        )
    );
    c.delete_menu_item(&mcid, &top.menu_id).await.unwrap();
    let gone = c.delete_menu_item(&mcid, &child.menu_id).await.unwrap_err();
    assert_eq!(
        gone.code(),
        Some(ErrorCode::BadParameter),
        "children go with their parent"
    );
}

#[tokio::test]
async fn validation_errors_send_nothing() {
    let s = sim().await;
    let c = client(&s);
    let ctl = Control::new(&s);
    let m = McId::from("m");
    let u = UserId::from("u");
    let before = ctl.all_calls().await;

    let long = Message::Text("a".repeat(2001));
    assert!(matches!(
        c.send(&m, &u, &long).await,
        Err(Error::Invalid(Invalid::TextTooLong {
            bytes: 2001,
            max: 2000
        }))
    ));
    let eleven = Message::News((0..11).map(|i| article(&i.to_string())).collect());
    assert!(matches!(
        c.send(&m, &u, &eleven).await,
        Err(Error::Invalid(Invalid::ArticleCount { count: 11, .. }))
    ));
    let none = Message::News(vec![]);
    assert!(matches!(
        c.send_to(&m, &u, &none).await,
        Err(Error::Invalid(Invalid::ArticleCount { count: 0, .. }))
    ));
    let mut wide = article("t");
    wide.description = Some("汉".repeat(1001));
    assert!(matches!(
        c.send(&m, &u, &Message::News(vec![wide])).await,
        Err(Error::Invalid(Invalid::DescriptionTooWide {
            width: 2002,
            ..
        }))
    ));
    let name = NewMenuItem {
        name: "一二三四五六七八九十一".into(),
        action: MenuAction::None,
        parent: None,
    };
    assert!(matches!(
        c.add_menu_item(&m, &name).await,
        Err(Error::Invalid(Invalid::MenuName { chars: 11, .. }))
    ));
    let no_url = NewMenuItem {
        name: "x".into(),
        action: MenuAction::OpenUrl(String::new()),
        parent: None,
    };
    assert!(matches!(
        c.add_menu_item(&m, &no_url).await,
        Err(Error::Invalid(Invalid::MenuUrlMissing))
    ));
    assert!(matches!(
        c.batch_send(&m, &users(101), &Message::Text("x".into()))
            .await,
        Err(Error::Invalid(Invalid::Recipients {
            count: 101,
            max: 100
        }))
    ));
    assert!(matches!(
        c.subscribe(&m, &users(51), true).await,
        Err(Error::Invalid(Invalid::Recipients { count: 51, max: 50 }))
    ));
    let mut big = png();
    big.resize(2 * 1024 * 1024 + 1, 0);
    assert!(matches!(
        c.upload_media(MediaKind::Image, "a.png", big).await,
        Err(Error::Invalid(Invalid::UploadTooLarge {
            kind: "image",
            ..
        }))
    ));
    assert!(matches!(
        c.upload_media(MediaKind::Voice, "a.amr", png()).await,
        Err(Error::Invalid(Invalid::UploadFormat { kind: "voice", .. }))
    ));
    let url_image = Message::Image(MediaRef::Url("http://x/a.jpg".into()));
    assert!(matches!(
        c.send(&m, &u, &url_image).await,
        Err(Error::Invalid(Invalid::Unsupported(_)))
    ));
    let uploaded = Message::Image(MediaRef::Uploaded("m1".into()));
    assert!(matches!(
        c.send_to_many(&m, &users(3), &uploaded).await,
        Err(Error::Invalid(Invalid::Unsupported(_)))
    ));
    let bad_news = NewsMaterial {
        thumb_media_id: "t".into(),
        author: None,
        title: None,
        content_source_url: String::new(),
        content: None,
        digest: None,
        show_cover_pic: None,
    };
    assert!(matches!(
        c.upload_news(&[bad_news]).await,
        Err(Error::Invalid(Invalid::ArticleField {
            field: "content_source_url",
            ..
        }))
    ));

    assert_eq!(ctl.all_calls().await, before, "no request left the client");
}

#[tokio::test]
async fn sends_reach_inboxes_by_the_right_endpoint() {
    let s = sim().await;
    let c = client(&s);
    let ctl = Control::new(&s);
    let m = McId::from("app.public.server112");
    c.add_account(&account("app.public.server112"))
        .await
        .unwrap();
    let alice = UserId::from("alice");

    c.send_to(&m, &alice, &Message::Text("Hello".into()))
        .await
        .unwrap();
    c.send_to(
        &m,
        &alice,
        &Message::Image(MediaRef::Url("http://www.xxx.com/aaa.jpg".into())),
    )
    .await
    .unwrap();
    let img = c
        .upload_media(MediaKind::Image, "a.png", png())
        .await
        .unwrap();
    assert_eq!(img.kind, "image");
    c.send_to(
        &m,
        &alice,
        &Message::Image(MediaRef::Uploaded(img.media_id.clone())),
    )
    .await
    .unwrap();
    c.send_to(&m, &alice, &Message::News(vec![article("haha ")]))
        .await
        .unwrap();
    let endpoints: Vec<String> = ctl
        .inbox("alice")
        .await
        .iter()
        .map(|d| d["endpoint"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        endpoints,
        [
            "/message/send.json",
            "/message/operation/send.json",
            "/message/send.json",
            "/message/send.json"
        ]
    );

    // A media id the platform does not know is the platform's 1002.
    let unknown = c
        .send(
            &m,
            &alice,
            &Message::Voice(MediaRef::Uploaded("nope".into())),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&unknown, Error::Platform { code: ErrorCode::BadParameter, message } if message == "invalid media_id")
    );

    // 250 recipients: 100 + 100 + 50.
    let outcomes = c
        .send_to_many(&m, &users(250), &Message::Text("Sale".into()))
        .await
        .unwrap();
    let sizes: Vec<usize> = outcomes.iter().map(|o| o.users.len()).collect();
    assert_eq!(sizes, [100, 100, 50]);
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
    let calls = ctl.calls("/message/batchsend.json").await;
    let touser: Vec<usize> = calls
        .iter()
        .map(|c| {
            serde_json::from_str::<Value>(c["body"].as_str().unwrap()).unwrap()["touser"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(touser, [100, 100, 50]);
    assert_eq!(ctl.inbox("u249").await.len(), 1);

    let voice = Message::Voice(MediaRef::Url("http://www.xxx.com/aaa.amr".into()));
    let outcomes = c.send_to_many(&m, &users(3), &voice).await.unwrap();
    assert!(outcomes[0].result.is_ok());
    assert_eq!(
        ctl.calls("/message/operation/batchsend.json").await.len(),
        1
    );

    // Subscribe 120 users in calls of 50; the mass send reaches them all once.
    let followers = users(120);
    let outcomes = c.subscribe_many(&m, &followers, true).await.unwrap();
    assert_eq!(
        outcomes.iter().map(|o| o.users.len()).collect::<Vec<_>>(),
        [50, 50, 20]
    );
    c.subscribe(&m, &[UserId::from("u0")], false).await.unwrap();
    let msg_id = c
        .broadcast(&m, &Message::Text("Daily".into()))
        .await
        .unwrap();
    assert!(!msg_id.as_str().is_empty());
    assert_eq!(
        ctl.inbox("u0").await.len(),
        2,
        "u0 unsubscribed: only the two batch sends"
    );
    assert_eq!(
        ctl.inbox("u119").await.last().unwrap()["msg_id"],
        msg_id.as_str()
    );
    let again = c
        .broadcast(&m, &Message::News(vec![article("x")]))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::Restricted));
    assert!(!again.is_retryable());
}

#[tokio::test]
async fn uploads_of_each_kind() {
    let s = sim().await;
    let c = client(&s);
    let image = c
        .upload_media(MediaKind::Image, "a.png", png())
        .await
        .unwrap();
    let mut jpg = vec![0xFF, 0xD8, 0xFF, 0xE0];
    jpg.extend_from_slice(&[0; 50]);
    let thumb = c
        .upload_media(MediaKind::Thumb, "t.jpg", jpg)
        .await
        .unwrap();
    let mut amr = b"#!AMR\n".to_vec();
    for _ in 0..100 {
        amr.push(7 << 3);
        amr.extend_from_slice(&[0; 31]);
    }
    let voice = c
        .upload_media(MediaKind::Voice, "v.amr", amr)
        .await
        .unwrap();
    assert_eq!(
        (
            image.kind.as_str(),
            thumb.kind.as_str(),
            voice.kind.as_str()
        ),
        ("image", "thumb", "voice")
    );
    assert!(voice.created_at > 1_000_000_000);
    let news = c
        .upload_news(&[NewsMaterial {
            thumb_media_id: thumb.media_id.clone(),
            author: Some("yyuy".into()),
            title: Some("Happy ".into()),
            content_source_url: "www.rongcloud.com".into(),
            content: Some("content".into()),
            digest: Some("digest".into()),
            show_cover_pic: Some("1".into()),
        }])
        .await
        .unwrap();
    assert_eq!(news.kind, "news");
    let m = McId::from("m");
    c.add_account(&account("m")).await.unwrap();
    c.send_all(&m, &Message::MpNews(news.media_id))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_documents_request_bodies_are_reproduced() {
    let s = sim().await;
    let c = client(&s);
    let ctl = Control::new(&s);
    let m = McId::from("app.public.server112");
    c.add_account(&account("app.public.server112"))
        .await
        .unwrap();

    c.send(&m, &UserId::from("sdfxl"), &Message::Text("Hello".into()))
        .await
        .unwrap();
    assert_eq!(
        ctl.last_body("/message/send.json").await,
        json!({"fromuser":"app.public.server112@uwd1c0sxdlx2","touser":"sdfxl@uwd1c0sxdlx2","msgtype":"text","text":{"content":"Hello"}})
    );

    let lala = Article {
        title: "lala".into(),
        description: Some(" lalalalala".into()),
        url: Some("URL".into()),
        picurl: "PIC_URL".into(),
    };
    c.operation_send(
        &m,
        &UserId::from("123"),
        &Message::News(vec![article("haha "), lala.clone()]),
    )
    .await
    .unwrap();
    assert_eq!(
        ctl.last_body("/message/operation/send.json").await,
        json!({"fromuser":"app.public.server112@uwd1c0sxdlx2","touser":"123@uwd1c0sxdlx2","msgtype":"news","news":{"articles":[
            {"title":"haha ","description":" hahahaahhaha","url":"URL","picurl":"PIC_URL"},
            {"title":"lala","description":" lalalalala","url":"URL","picurl":"PIC_URL"}]}})
    );

    c.operation_batch_send(
        &m,
        &[UserId::from("gDNQhlPfX"), UserId::from("BzUPcKM2B")],
        &Message::Image(MediaRef::Url("http://www.xxx.com/aaa.jpg".into())),
    )
    .await
    .unwrap();
    // The document's example uses another app key in touser; ours is ours.
    assert_eq!(
        ctl.last_body("/message/operation/batchsend.json").await,
        json!({"fromuser":"app.public.server112@uwd1c0sxdlx2","touser":["gDNQhlPfX@uwd1c0sxdlx2","BzUPcKM2B@uwd1c0sxdlx2"],"msgtype":"image","image":{"url":"http://www.xxx.com/aaa.jpg"}})
    );

    c.send_all(&m, &Message::Text("CONTENT".into()))
        .await
        .unwrap();
    assert_eq!(
        ctl.last_body("/message/sendall.json").await,
        json!({"fromuser":"app.public.server112@uwd1c0sxdlx2","filter":{"is_to_all":true},"text":{"content":"CONTENT"},"msgtype":"text"})
    );

    c.subscribe(
        &McId::from("app.public.server112"),
        &[UserId::from("userId1"), UserId::from("userId2")],
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        ctl.last_body("/mc/subscribe.json").await,
        json!({"mcId":"app.public.server112","userId":["userId1","userId2"]})
    );

    let add = ctl.calls("/mc/add.json").await;
    let form: Vec<(String, String)> =
        url::form_urlencoded::parse(add[0]["body"].as_str().unwrap().as_bytes())
            .into_owned()
            .collect();
    let keys: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "mcid",
            "displayName",
            "portraitUrl",
            "uiType",
            "introduction",
            "isFollow",
            "routeUrl",
            "RC-App-Key"
        ]
    );
}

#[tokio::test]
async fn platform_codes_map_to_variants() {
    let s = sim().await;
    let ctl = Control::new(&s);
    let c = client(&s);
    let m = McId::from("m");

    let wrong = Client::builder(KEY, SecretString::from("wrong"), s.base_url())
        .build()
        .unwrap();
    let e = wrong.account_info(&m).await.unwrap_err();
    assert!(matches!(e, Error::Signature(_)), "{e}");
    assert_eq!(e.code(), Some(ErrorCode::BadSignature));

    let ms = Client::builder(KEY, SecretString::from(SECRET), s.base_url())
        .timestamp_unit(TimestampUnit::Milliseconds)
        .build()
        .unwrap();
    let e = ms.account_info(&m).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(ErrorCode::BadParameter),
        "milliseconds are signed correctly: {e}"
    );

    ctl.faults(json!({"error_rate": 1.0})).await;
    let e = c.account_info(&m).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Internal));
    assert!(e.is_retryable());

    ctl.faults(json!({"rate_limit_per_sec": 1})).await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(c.account_info(&m).await.unwrap_err().code());
    }
    assert!(codes.contains(&Some(ErrorCode::RateLimited)), "{codes:?}");

    ctl.faults(json!({"latency_ms": 400})).await;
    let quick = Client::builder(KEY, SecretString::from(SECRET), s.base_url())
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let e = quick.account_info(&m).await.unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e}");
    assert!(e.is_retryable() && e.is_ambiguous());

    ctl.faults(json!({"drop_rate": 1.0})).await;
    let e = c.account_info(&m).await.unwrap_err();
    assert!(matches!(e, Error::Transport(_)) && e.is_ambiguous(), "{e}");

    let closed = Client::builder(KEY, SecretString::from(SECRET), "http://127.0.0.1:9")
        .build()
        .unwrap();
    let e = closed.account_info(&m).await.unwrap_err();
    // Refused: the request never left, so a retry cannot repeat it.
    assert!(
        matches!(e, Error::Connect(_)) && e.is_retryable() && !e.is_ambiguous(),
        "{e}"
    );
}

#[tokio::test]
async fn retries_only_what_can_help() {
    let s = sim().await;
    let ctl = Control::new(&s);
    let c = retrying(&s, false);
    c.add_account(&account("m")).await.unwrap();
    let m = McId::from("m");

    // 1002 is permanent: one call.
    c.account_info(&McId::from("nope")).await.unwrap_err();
    assert_eq!(ctl.calls("/mc/info.json").await.len(), 1);

    // 1008 above one call a second: retried with backoff until it passes.
    ctl.faults(json!({"rate_limit_per_sec": 1})).await;
    let patient = Client::builder(KEY, SecretString::from(SECRET), s.base_url())
        .retry(RetryPolicy {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
            max_retries: 8,
            max_total_delay: Duration::from_secs(10),
            include_sends: false,
        })
        .build()
        .unwrap();
    for _ in 0..3 {
        patient.account_info(&m).await.unwrap();
    }
    let info_calls = ctl.calls("/mc/info.json").await;
    assert!(
        info_calls.iter().any(|c| c["errcode"] == 1008),
        "the limit was hit"
    );
    assert_eq!(info_calls.iter().filter(|c| c["errcode"] == 0).count(), 3);
    ctl.faults(json!({})).await;

    // 1000 every time: 1 + 2 retries, then the error.
    ctl.faults(json!({"error_rate": 1.0})).await;
    let before = ctl.calls("/mc/refresh.json").await.len();
    let profile = AccountProfile {
        display_name: "d".into(),
        portrait_url: "p".into(),
        ui_type: 0,
        introduction: "i".into(),
    };
    let e = c.refresh_account(&m, &profile).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Internal));
    assert_eq!(ctl.calls("/mc/refresh.json").await.len() - before, 3);

    // Sends are not retried unless asked.
    c.send(&m, &UserId::from("u"), &Message::Text("x".into()))
        .await
        .unwrap_err();
    assert_eq!(ctl.calls("/message/send.json").await.len(), 1);
    let asked = retrying(&s, true);
    asked
        .send(&m, &UserId::from("u"), &Message::Text("x".into()))
        .await
        .unwrap_err();
    assert_eq!(ctl.calls("/message/send.json").await.len(), 4);

    // Menu ids are generated per call, so menu add is not retried either.
    let item = NewMenuItem {
        name: "x".into(),
        action: MenuAction::None,
        parent: None,
    };
    c.add_menu_item(&m, &item).await.unwrap_err();
    assert_eq!(ctl.calls("/mc/menu/refresh.json").await.len(), 1);
    let _ = MenuId::from("unused");
}

/// A platform address that answers a redirect: the call fails with the
/// status, and the signed body is not posted anywhere else.
#[tokio::test]
async fn a_redirect_is_an_error_not_a_hop() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!(
        "http://{}/message/send.json",
        elsewhere.local_addr().unwrap()
    );
    let redirecting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", redirecting.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = redirecting.accept().await {
            let mut buf = vec![0u8; 8192];
            let _ = conn.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    let c = Client::builder(KEY, SecretString::from(SECRET), base)
        .build()
        .unwrap();
    let e = c
        .send(
            &McId::from("m"),
            &UserId::from("u"),
            &Message::Text("x".into()),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Http { status: 307, .. }), "got {e:?}");
    let followed = tokio::time::timeout(Duration::from_millis(300), elsewhere.accept()).await;
    assert!(followed.is_err(), "the redirect was followed");
}
