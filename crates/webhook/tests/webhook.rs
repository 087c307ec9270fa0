//! The webhook crate from the outside: the document's examples, lenient and
//! strict parsing, a property test, and pushes from the simulator over real
//! HTTP into a router with an in-memory inbox.

mod examples;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use pubbot_sim::{AppCredentials, PushConfig, RunningSim, SimConfig};
use pubbot_webhook::{
    parse, Accepted, CreateTime, DedupKey, Event, InboundMessage, Inbox, InboxError, McId,
    MessageBody, MsgId, ParseError, Push, UserId, Verifier, Webhook, WebhookConfig,
};
use secrecy::SecretString;
use serde_json::{json, Value};

// ----- the document's examples ----------------------------------------------

#[test]
fn every_document_example_parses() {
    let text = parse(examples::TEXT.as_bytes()).unwrap();
    assert_eq!(text.to, McId::new("toUserId"));
    assert_eq!(text.from, UserId::new("fromUserName"));
    assert_eq!(text.create_time, Some(CreateTime(134_223_445_860)));
    assert_eq!(
        text.create_time.unwrap().unix_millis(),
        134_223_445_860,
        "R5: 12 digits read as ms"
    );
    assert_eq!(text.msg_id, Some(MsgId::new("msgId")));
    assert_eq!(
        text.body,
        MessageBody::Text {
            content: "content".into()
        }
    );

    let image = parse(examples::IMAGE.as_bytes()).unwrap();
    assert_eq!(
        image.body,
        MessageBody::Image {
            pic_url: "this is a url".into()
        }
    );

    let voice = parse(examples::VOICE.as_bytes()).unwrap();
    assert_eq!(
        voice.body,
        MessageBody::Voice {
            voice_url: "this is url".into(),
            format: "AMR".into()
        }
    );

    let location = parse(examples::LOCATION.as_bytes()).unwrap();
    assert_eq!(
        location.body,
        MessageBody::Location {
            latitude: "15.501".into(),
            longitude: "142.324".into(),
            label: "POI信息".into()
        }
    );

    let imgtxt = parse(examples::IMGTXT.as_bytes()).unwrap();
    assert_eq!(
        imgtxt.body,
        MessageBody::ImgTxt {
            title: "title".into(),
            description: "description".into(),
            pic_url: "picUrl".into(),
            url: "url".into()
        }
    );
    assert_eq!(imgtxt.msg_id, Some(MsgId::new("msgId")));

    let sub = parse(examples::SUBSCRIBE.as_bytes()).unwrap();
    assert_eq!(
        sub.body,
        MessageBody::Event {
            event: Event::Subscribe
        }
    );
    assert_eq!(sub.msg_id, None);
    let unsub = parse(examples::UNSUBSCRIBE.as_bytes()).unwrap();
    assert_eq!(
        unsub.body,
        MessageBody::Event {
            event: Event::Unsubscribe
        }
    );

    // R6: messages dedup on MsgId, events on (from, CreateTime, Event).
    assert_eq!(
        text.dedup_key(),
        DedupKey::Message {
            mcid: "toUserId".into(),
            msg_id: "msgId".into()
        }
    );
    assert_eq!(
        sub.dedup_key(),
        DedupKey::Event {
            mcid: "toUserName".into(),
            from: "fromUserName".into(),
            create_time: 134_223_445_860,
            event: "subscribe".into()
        }
    );
    assert_ne!(sub.dedup_key().to_string(), unsub.dedup_key().to_string());
}

#[test]
fn lenient_where_the_platform_is_loose() {
    let plain = "<xml><MsgType>text</MsgType><Extra><Nested>x</Nested></Extra><FromUserName>u</FromUserName>\
                 <Content>  two  spaces </Content><ToUserName>m</ToUserName><MsgId>7</MsgId></xml>";
    let m = parse(plain.as_bytes()).unwrap();
    assert_eq!(
        m.body,
        MessageBody::Text {
            content: "  two  spaces ".into()
        },
        "user text is kept as sent"
    );
    assert_eq!(m.msg_id, Some(MsgId::new("7")));
    assert_eq!(m.create_time, None);

    let decl = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- c -->\n<xml>\r\n\t<ToUserName>m</ToUserName><FromUserName>u</FromUserName>\
                <MsgType><![CDATA[video]]></MsgType><MediaId>abc</MediaId><Content>a &amp; b</Content></xml>\n";
    let m = parse(decl.as_bytes()).unwrap();
    assert_eq!(
        m.body,
        MessageBody::Unknown {
            msg_type: "video".into(),
            fields: BTreeMap::from([
                ("Content".into(), "a & b".into()),
                ("MediaId".into(), "abc".into())
            ])
        }
    );
}

#[test]
fn strict_where_it_matters() {
    let dtd = "<!DOCTYPE xml [<!ENTITY a \"aaaaaaaaaa\">]><xml><ToUserName>&a;</ToUserName></xml>";
    assert_eq!(parse(dtd.as_bytes()), Err(ParseError::Dtd));
    let entity = "<xml><ToUserName>&a;</ToUserName><FromUserName>u</FromUserName><MsgType>text</MsgType></xml>";
    assert!(matches!(
        parse(entity.as_bytes()),
        Err(ParseError::Malformed(_))
    ));
    let no_type = "<xml><ToUserName>m</ToUserName><FromUserName>u</FromUserName></xml>";
    assert_eq!(
        parse(no_type.as_bytes()),
        Err(ParseError::Missing("MsgType"))
    );
    let empty_to = "<xml><ToUserName><![CDATA[]]></ToUserName><FromUserName>u</FromUserName><MsgType>text</MsgType></xml>";
    assert_eq!(
        parse(empty_to.as_bytes()),
        Err(ParseError::Missing("ToUserName"))
    );
    assert_eq!(parse(b"<root/>"), Err(ParseError::Root("root".into())));
    assert!(matches!(
        parse(b"<xml><ToUserName>m</ToUserName>"),
        Err(ParseError::Malformed(_))
    ));
    assert!(matches!(
        parse(b"not xml at all"),
        Err(ParseError::Malformed(_))
    ));
    let bad_time = "<xml><ToUserName>m</ToUserName><FromUserName>u</FromUserName><MsgType>text</MsgType><CreateTime>soon</CreateTime></xml>";
    assert_eq!(
        parse(bad_time.as_bytes()),
        Err(ParseError::CreateTime("soon".into()))
    );
}

fn arb_text() -> impl Strategy<Value = String> {
    // Any text XML can carry (no control characters but tab/newline).
    proptest::string::string_regex("[ -~\t\n\u{4e00}-\u{4e20}\u{ff01}-\u{ff10}]{0,40}").unwrap()
}

fn arb_id() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[A-Za-z0-9_.@-]{1,20}").unwrap()
}

fn arb_message() -> impl Strategy<Value = InboundMessage> {
    let body = prop_oneof![
        arb_text().prop_map(|content| MessageBody::Text { content }),
        arb_id().prop_map(|pic_url| MessageBody::Image { pic_url }),
        (arb_id(), arb_id())
            .prop_map(|(voice_url, format)| MessageBody::Voice { voice_url, format }),
        (arb_id(), arb_id(), arb_text()).prop_map(|(latitude, longitude, label)| {
            MessageBody::Location {
                latitude,
                longitude,
                label: label.trim().to_owned(),
            }
        }),
        (arb_id(), arb_text(), arb_id(), arb_id()).prop_map(
            |(title, description, pic_url, url)| MessageBody::ImgTxt {
                title,
                description,
                pic_url,
                url
            }
        ),
        prop_oneof![
            Just(Event::Subscribe),
            Just(Event::Unsubscribe),
            arb_id().prop_map(Event::Other)
        ]
        .prop_map(|event| MessageBody::Event { event }),
        (
            proptest::string::string_regex("video|file|link").unwrap(),
            proptest::collection::btree_map("[A-Z][a-z]{1,8}", arb_id(), 0..3)
        )
            .prop_map(|(msg_type, fields)| MessageBody::Unknown { msg_type, fields }),
    ];
    (
        arb_id(),
        arb_id(),
        proptest::option::of(0i64..=9_999_999_999_999),
        proptest::option::of(arb_id()),
        body,
    )
        .prop_map(|(to, from, t, id, body)| {
            let msg_id = if matches!(body, MessageBody::Event { .. }) {
                None
            } else {
                id.map(MsgId::new)
            };
            InboundMessage {
                to: McId::new(to),
                from: UserId::new(from),
                create_time: t.map(CreateTime),
                msg_id,
                body,
            }
        })
}

proptest! {
    // `ProptestConfig::default()` reads PROPTEST_CASES (256 when unset), so
    // a long fuzz run is `PROPTEST_CASES=1000000 cargo test -p pubbot-webhook`.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn arbitrary_xmlish_never_panics(s in "(<xml>|</xml>|<MsgId>|</MsgID>|<!\\[CDATA\\[|\\]\\]>|<Content>|</Content>|&amp;|&|<|>|[a-z ]){0,40}") {
        let _ = parse(s.as_bytes());
    }

    #[test]
    fn hostile_bytes_inside_a_valid_push_never_panic(
        m in arb_message(),
        at in 0usize..400,
        hostile in prop_oneof![
            Just(b"&#0;".to_vec()),
            Just(b"&#x0;".to_vec()),
            Just(vec![0u8]),
            Just(b"&#xD800;".to_vec()),
            Just(b"&#55296;".to_vec()),
            Just(b"&#xDFFF;".to_vec()),
            Just(vec![0xFFu8]),
            Just(vec![0xC3u8]),
            Just(vec![0xEDu8, 0xA0, 0x80]),
            proptest::collection::vec(any::<u8>(), 1..4),
        ],
    ) {
        let mut xml = m.to_xml().into_bytes();
        let at = at.min(xml.len());
        xml.splice(at..at, hostile);
        if let Ok(parsed) = parse(&xml) {
            // Whatever is accepted is valid UTF-8 text (the type says so)
            // and keeps its dedup key computable.
            let _ = parsed.dedup_key();
        }
    }

    #[test]
    fn serialised_messages_round_trip(m in arb_message()) {
        let xml = m.to_xml();
        prop_assert_eq!(parse(xml.as_bytes()).unwrap(), m);
    }
}

// ----- receiving over HTTP -----------------------------------------------------

const KEY: &str = "appkey";
const SECRET: &str = "s3cret";

#[derive(Clone, Default)]
struct MemoryInbox {
    stored: Arc<Mutex<Vec<Push>>>,
    keys: Arc<Mutex<HashSet<String>>>,
    /// "ok", "down" (Unavailable), "slow" (past the deadline), "refuse".
    mode: Arc<Mutex<&'static str>>,
}

impl Inbox for MemoryInbox {
    async fn accept(&self, push: Push) -> Result<Accepted, InboxError> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            "down" => return Err(InboxError::Unavailable("database down".into())),
            "refuse" => return Err(InboxError::Refused("unknown account".into())),
            "slow" => tokio::time::sleep(Duration::from_secs(2)).await,
            _ => {}
        }
        if self.keys.lock().unwrap().insert(push.dedup_key.to_string()) {
            self.stored.lock().unwrap().push(push);
            Ok(Accepted::New)
        } else {
            Ok(Accepted::Duplicate)
        }
    }
}

struct Setup {
    sim: RunningSim,
    inbox: MemoryInbox,
    hook_url: String,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    let inbox = MemoryInbox {
        mode: Arc::new(Mutex::new("ok")),
        ..MemoryInbox::default()
    };
    let apps = HashMap::from([(
        KEY.to_owned(),
        vec![SecretString::from("retired"), SecretString::from(SECRET)],
    )]);
    let verifier = Verifier::new(apps, Duration::from_secs(300), 10_000);
    let config = WebhookConfig {
        max_body_bytes: 4096,
        accept_deadline: Duration::from_millis(300),
        // Past the simulator's push timeout below, as 6 s is past the
        // platform's 5.
        unanswered_hold: Duration::from_millis(800),
        ..WebhookConfig::default()
    };
    let router = Webhook::new(config, verifier, inbox.clone()).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/webhook/{KEY}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let sim = RunningSim::start(SimConfig {
        apps: vec![AppCredentials {
            key: KEY.into(),
            secret: SECRET.into(),
        }],
        push: PushConfig {
            timeout: Duration::from_millis(600),
            retry_delay: Duration::from_millis(20),
            ..PushConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    // Create the account on the simulator (signed, as the platform wants).
    let ts = chrono_now().to_string();
    let r = http
        .post(format!("{}/mc/add.json", sim.base_url()))
        .header("RC-App-Key", KEY)
        .header("RC-Nonce", "1")
        .header("RC-Timestamp", &ts)
        .header(
            "RC-Signature",
            pubbot_sim::signature::sign(SECRET, "1", &ts),
        )
        .form(&[
            ("mcid", "shop"),
            ("displayName", "Shop"),
            ("portraitUrl", "p"),
            ("uiType", "0"),
            ("introduction", "i"),
            ("RC-App-Key", KEY),
            ("isFollow", "true"),
            ("routeUrl", hook_url.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    Setup {
        sim,
        inbox,
        hook_url,
        http,
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Setup {
    async fn push(&self, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/_sim/message", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn follow(&self) -> Value {
        let r = self
            .http
            .post(format!("{}/_sim/follow", self.sim.base_url()))
            .json(&json!({"mcid": "shop", "user": "alice", "wait": true}))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    fn stored(&self) -> Vec<Push> {
        self.inbox.stored.lock().unwrap().clone()
    }

    fn statuses(push: &Value) -> Vec<u64> {
        push["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["status"].as_u64().unwrap_or(0))
            .collect()
    }

    /// Posts `body` signed with `secret` at `ts` and returns the status.
    async fn post_raw(&self, secret: &str, nonce: &str, ts: i64, body: &str) -> u16 {
        let ts = ts.to_string();
        let sig = pubbot_sim::signature::sign(secret, nonce, &ts);
        self.http
            .post(format!(
                "{}?rc-nonce={nonce}&rc-timestamp={ts}&rc-signature={sig}",
                self.hook_url
            ))
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test]
async fn simulator_pushes_arrive_typed_and_acknowledged() {
    let s = setup().await;
    let follow = s.follow().await;
    assert_eq!(follow["pushes"][0]["state"], "delivered");
    assert_eq!(Setup::statuses(&follow["pushes"][0]), [200]);
    assert_eq!(
        follow["pushes"][0]["attempts"][0]["detail"], "",
        "the answer is an empty body"
    );
    let msg = s.push(json!({"mcid": "shop", "user": "alice", "type": "text", "content": "营业时间？", "wait": true})).await;
    let stored = s.stored();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0].message.body,
        MessageBody::Event {
            event: Event::Subscribe
        }
    );
    assert_eq!(
        stored[1].message.body,
        MessageBody::Text {
            content: "营业时间？".into()
        }
    );
    assert_eq!(
        stored[1].message.msg_id.as_ref().unwrap().as_str(),
        msg["msg_id"].as_str().unwrap()
    );
    assert_eq!(stored[1].app_key, KEY);
    assert!(
        String::from_utf8_lossy(&stored[1].raw).contains("</MsgID>"),
        "raw body kept as received"
    );
}

#[tokio::test]
async fn duplicate_deliveries_are_acknowledged_and_stored_once() {
    let s = setup().await;
    let r = s.push(json!({"mcid": "shop", "user": "bob", "type": "location", "x": 1.5, "y": 2.5, "label": "here", "duplicates": 2, "concurrent": true, "wait": true})).await;
    for p in r["pushes"].as_array().unwrap() {
        assert_eq!(Setup::statuses(p), [200]);
    }
    assert_eq!(s.stored().len(), 1);
}

#[tokio::test]
async fn bad_signatures_are_refused_and_nothing_is_stored() {
    let s = setup().await;
    let r = s.push(json!({"mcid": "shop", "user": "eve", "type": "text", "content": "x", "bad_signature": true, "wait": true})).await;
    assert_eq!(
        Setup::statuses(&r["pushes"][0]),
        [401],
        "any answer ends the platform's tries (R15)"
    );
    assert!(s.stored().is_empty());

    let body = examples::TEXT;
    let now = chrono_now();
    assert_eq!(s.post_raw("wrong", "n1", now, body).await, 401);
    assert_eq!(
        s.post_raw(SECRET, "n2", now - 301, body).await,
        403,
        "stale"
    );
    assert_eq!(
        s.post_raw(SECRET, "n3", now + 301, body).await,
        403,
        "from the future"
    );
    assert_eq!(
        s.post_raw(SECRET, "n4", now * 1000, body).await,
        200,
        "milliseconds (R2)"
    );
    assert_eq!(
        s.post_raw("retired", "n5", now, body).await,
        200,
        "a rotated-out secret still valid"
    );
    assert_eq!(
        s.post_raw(SECRET, "n4", now * 1000, body).await,
        409,
        "replay of an accepted push"
    );
    let missing = s
        .http
        .post(format!("{}?rc-nonce=1&rc-timestamp=2", s.hook_url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(missing.text().await.unwrap(), "", "rejections leak nothing");
    let other_app = s.hook_url.replace(KEY, "otherapp");
    let r = s
        .http
        .post(format!(
            "{other_app}?rc-nonce=1&rc-timestamp={now}&rc-signature=00"
        ))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The two accepted copies of the same example are one message (R6).
    assert_eq!(s.stored().len(), 1);
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let s = setup().await;
    let now = chrono_now();
    assert_eq!(
        s.post_raw(SECRET, "a", now, "<xml><ToUserName>m</ToUserName></xml>")
            .await,
        400
    );
    assert_eq!(
        s.post_raw(SECRET, "b", now, "definitely not xml").await,
        400
    );
    let big = format!("<xml>{}</xml>", "x".repeat(5000));
    assert_eq!(s.post_raw(SECRET, "c", now, &big).await, 413);
    assert!(s.stored().is_empty());
    // A refused push is not remembered: the same query with a good body passes.
    assert_eq!(s.post_raw(SECRET, "a", now, examples::IMAGE).await, 200);
}

#[tokio::test]
async fn a_push_the_inbox_cannot_keep_gets_no_answer_and_the_platform_retries() {
    // R15: any answer ends the platform's tries, so a push that is not
    // durable must get none in time.
    let s = setup().await;
    *s.inbox.mode.lock().unwrap() = "down";
    let r = s
        .push(
            json!({"mcid": "shop", "user": "carol", "type": "text", "content": "hi", "wait": true}),
        )
        .await;
    let outcomes: Vec<&str> = r["pushes"][0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes, ["timeout"; 4],
        "no status reached the platform; a first try and three retries"
    );
    assert_eq!(r["pushes"][0]["state"], "failed");
    assert!(s.stored().is_empty());

    // Down for the first tries only: a later try is stored and answered.
    let push = {
        let s_http = s.http.clone();
        let url = format!("{}/_sim/message", s.sim.base_url());
        tokio::spawn(async move {
            s_http
                .post(url)
                .json(&json!({"mcid": "shop", "user": "dave", "type": "text", "content": "later", "wait": true}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(900)).await;
    *s.inbox.mode.lock().unwrap() = "ok";
    let r = push.await.unwrap();
    assert_eq!(r["pushes"][0]["state"], "delivered");
    let statuses = Setup::statuses(&r["pushes"][0]);
    assert_eq!(statuses.last(), Some(&200));
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 0),
        "{statuses:?}"
    );
    assert_eq!(s.stored().len(), 1);

    // A slow inbox: held past the (simulated) platform timeout, not
    // answered at the deadline.
    *s.inbox.mode.lock().unwrap() = "slow";
    let now = chrono_now();
    let started = std::time::Instant::now();
    assert_eq!(s.post_raw(SECRET, "slow", now, examples::TEXT).await, 503);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "held until the platform has given up on the try"
    );

    *s.inbox.mode.lock().unwrap() = "refuse";
    assert_eq!(
        s.post_raw(SECRET, "refused", now, examples::TEXT).await,
        422
    );

    // Back up: the same query that got no answer is accepted (not a replay).
    *s.inbox.mode.lock().unwrap() = "ok";
    assert_eq!(s.post_raw(SECRET, "slow", now, examples::TEXT).await, 200);
    assert_eq!(s.stored().len(), 2);
}
