//! The simulator over real HTTP: every endpoint's happy path and each error
//! it can give, fault injection, the control API and the push side.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use pubbot_sim::{AppCredentials, PushConfig, RunningSim, SimConfig};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

const KEY: &str = "appkey";
const SECRET: &str = "s3cret";

/// Our own signing, written from the document's formula, not the crate's.
fn sig(secret: &str, nonce: &str, ts: &str) -> String {
    let mut h = Sha1::new();
    h.update(format!("{secret}{nonce}{ts}").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn sim() -> RunningSim {
    sim_with(SimConfig::default()).await
}

async fn sim_with(config: SimConfig) -> RunningSim {
    RunningSim::start(SimConfig {
        apps: vec![AppCredentials {
            key: KEY.into(),
            secret: SECRET.into(),
        }],
        push: PushConfig {
            timeout: Duration::from_millis(300),
            retry_delay: Duration::from_millis(20),
            ..PushConfig::default()
        },
        ..config
    })
    .await
    .unwrap()
}

/// A simulator whose pushes behave as `push` says.
async fn sim_pushing(push: PushConfig) -> RunningSim {
    RunningSim::start(SimConfig {
        apps: vec![AppCredentials {
            key: KEY.into(),
            secret: SECRET.into(),
        }],
        push,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(sim: &RunningSim) -> Self {
        Self {
            base: sim.base_url(),
            http: reqwest::Client::new(),
        }
    }

    fn signed(&self, path: &str) -> reqwest::RequestBuilder {
        let nonce = "4242";
        let ts = now().to_string();
        self.http
            .post(format!("{}{path}", self.base))
            .header("RC-App-Key", KEY)
            .header("RC-Nonce", nonce)
            .header("RC-Timestamp", &ts)
            .header("RC-Signature", sig(SECRET, nonce, &ts))
    }

    async fn form(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let r = self.signed(path).form(form).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    async fn json(&self, path: &str, body: Value) -> Value {
        let r = self.signed(path).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    fn query_signed(&self, path_and_query: &str) -> reqwest::RequestBuilder {
        let ts = now().to_string();
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        self.http.post(format!(
            "{}{path_and_query}{sep}RC-App-Key={KEY}&RC-Nonce=77&RC-Timestamp={ts}&RC-Signature={}",
            self.base,
            sig(SECRET, "77", &ts)
        ))
    }

    async fn upload(&self, kind: &str, bytes: Vec<u8>) -> Value {
        let part = reqwest::multipart::Part::bytes(bytes).file_name("f.bin");
        let form = reqwest::multipart::Form::new().part("file", part);
        let r = self
            .query_signed(&format!("/media/upload?type={kind}"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn add_account(&self, mcid: &str, route: &str) -> Value {
        self.form(
            "/mc/add.json",
            &[
                ("mcid", mcid),
                ("displayName", "第二个应用内公众号"),
                ("portraitUrl", "http://www.rongcloud.cn/images/logo.png"),
                ("uiType", "0"),
                ("introduction", "测试应用内公众号说明描述"),
                ("RC-App-Key", KEY),
                ("isFollow", "true"),
                ("routeUrl", route),
            ],
        )
        .await
    }
}

fn code(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

fn assert_err(v: &Value, want: i64, mentions: &str) {
    assert_eq!(code(v), want, "{v}");
    let msg = v["errmsg"].as_str().unwrap();
    assert!(
        msg.contains(mentions),
        "errmsg {msg:?} should mention {mentions:?}"
    );
}

// ----- signature ----------------------------------------------------------

#[tokio::test]
async fn every_call_needs_a_valid_signature() {
    let s = sim().await;
    let api = Api::new(&s);
    let url = format!("{}/mc/info.json", api.base);
    let form = [("mcid", "m"), ("RC-App-Key", KEY)];

    let unsigned = api.http.post(&url).form(&form).send().await.unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    let body: Value = unsigned.json().await.unwrap();
    assert_eq!(code(&body), 1004);

    let ts = now().to_string();
    let wrong = api
        .http
        .post(&url)
        .header("RC-App-Key", KEY)
        .header("RC-Nonce", "1")
        .header("RC-Timestamp", &ts)
        .header("RC-Signature", sig("other", "1", &ts))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let stale = (now() - 3600).to_string();
    let old = api
        .http
        .post(&url)
        .header("RC-App-Key", KEY)
        .header("RC-Nonce", "1")
        .header("RC-Timestamp", &stale)
        .header("RC-Signature", sig(SECRET, "1", &stale))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    let body: Value = old.json().await.unwrap();
    assert!(body["errmsg"]
        .as_str()
        .unwrap()
        .contains("away from the platform clock"));

    let unknown = api
        .http
        .post(&url)
        .header("RC-App-Key", "nope")
        .header("RC-Nonce", "1")
        .header("RC-Timestamp", &ts)
        .header("RC-Signature", sig(SECRET, "1", &ts))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);

    // R7: the document's `RC-imestamp` typo is not a timestamp.
    let typo = api
        .http
        .post(&url)
        .header("RC-App-Key", KEY)
        .header("RC-Nonce", "1")
        .header("RC-imestamp", &ts)
        .header("RC-Signature", sig(SECRET, "1", &ts))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(typo.status(), 401);

    // R2: milliseconds are accepted, and upper-case hex too.
    let ms = (now() * 1000).to_string();
    let ok = api
        .http
        .post(&url)
        .header("RC-App-Key", KEY)
        .header("RC-Nonce", "1")
        .header("RC-Timestamp", &ms)
        .header("RC-Signature", sig(SECRET, "1", &ms).to_uppercase())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_err(&body, 1002, "mcid \"m\" does not exist");

    let calls = api.get("/_sim/calls?path=/mc/info.json").await;
    let statuses: Vec<i64> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 200]);
}

// ----- accounts -------------------------------------------------------------

#[tokio::test]
async fn account_lifecycle_with_document_shapes() {
    let s = sim().await;
    let api = Api::new(&s);
    let info = api
        .add_account("testmcid0", "http://127.0.0.1:9/hook")
        .await;
    let keys: Vec<&str> = info["info"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "id",
        "mcid",
        "mcidHash",
        "fcid",
        "DisplayName",
        "IsFollow",
        "PortraitUrl",
        "RouteUrl",
        "FuncRouteUrl",
        "uiType",
        "isRouteOpen",
        "IsAuthorization",
        "IsGetUserInfo",
        "Introduction",
        "isCustom",
    ] {
        assert!(keys.contains(&k), "missing {k} in {info}");
    }
    assert_eq!(keys.len(), 15);
    assert_eq!(info["info"]["DisplayName"], "第二个应用内公众号");
    assert_eq!(info["info"]["isRouteOpen"], true);

    let dup = api.add_account("testmcid0", "http://x").await;
    assert_err(&dup, 1002, "already exists");

    let missing = api
        .form("/mc/add.json", &[("mcid", "x"), ("RC-App-Key", KEY)])
        .await;
    assert_err(&missing, 1002, "displayName is required");

    let refreshed = api
        .form(
            "/mc/refresh.json",
            &[
                ("mcid", "testmcid0"),
                ("displayName", "刷新应用内公众号"),
                ("portraitUrl", "p"),
                ("uiType", "0"),
                ("introduction", "i"),
                ("RC-App-Key", KEY),
            ],
        )
        .await;
    assert_eq!(refreshed["info"]["DisplayName"], "刷新应用内公众号");

    let url = api
        .form(
            "/mc/route/setUrl.json",
            &[
                ("mcid", "testmcid0"),
                ("RC-App-Key", KEY),
                ("routeUrl", "http://www.rongcloud.cn"),
            ],
        )
        .await;
    assert_eq!(url["info"]["RouteUrl"], "http://www.rongcloud.cn");

    let off = api
        .form(
            "/mc/route/setSwitch.json",
            &[
                ("mcid", "testmcid0"),
                ("RC-App-Key", KEY),
                ("isOpen", "false"),
            ],
        )
        .await;
    assert_eq!(off["info"]["isRouteOpen"], false);
    let bad_bool = api
        .form(
            "/mc/route/setSwitch.json",
            &[
                ("mcid", "testmcid0"),
                ("RC-App-Key", KEY),
                ("isOpen", "yes"),
            ],
        )
        .await;
    assert_err(&bad_bool, 1002, "isOpen must be true or false");

    let info = api
        .form(
            "/mc/info.json",
            &[("mcid", "testmcid0"), ("RC-App-Key", KEY)],
        )
        .await;
    assert_eq!(info["info"]["isRouteOpen"], false);
    assert_eq!(info["info"]["RouteUrl"], "http://www.rongcloud.cn");

    let mismatch = api
        .form(
            "/mc/info.json",
            &[("mcid", "testmcid0"), ("RC-App-Key", "other")],
        )
        .await;
    assert_err(&mismatch, 1002, "RC-App-Key");
    let no_key = api.form("/mc/info.json", &[("mcid", "testmcid0")]).await;
    assert_err(&no_key, 1002, "RC-App-Key is required");

    // R12: an account call sent as JSON is refused.
    let as_json = api
        .json("/mc/info.json", json!({"mcid": "testmcid0"}))
        .await;
    assert_err(
        &as_json,
        1002,
        "Content-Type must be application/x-www-form-urlencoded",
    );
}

// ----- menus ------------------------------------------------------------------

#[tokio::test]
async fn menus_two_levels_delete_and_order() {
    let s = sim().await;
    let api = Api::new(&s);
    api.add_account("whtest", "http://127.0.0.1:9/unused").await;
    let top = api
        .form(
            "/mc/menu/refresh.json",
            &[
                ("type", "1"),
                ("name", "融云"),
                ("url", "http://www.xxx.com"),
                ("level", "1"),
                ("mcid", "whtest"),
            ],
        )
        .await;
    let top_id = top["info"]["menuId"].as_str().unwrap().to_owned();
    assert_eq!(top_id.len(), 32);
    assert_eq!(top["info"]["Type"], 1);
    assert_eq!(top["info"]["Pid"], "");
    assert!(top["info"]["UpdateTime"].is_null());
    let top2 = api
        .form(
            "/mc/menu/refresh.json",
            &[
                ("type", "0"),
                ("name", "二"),
                ("level", "1"),
                ("mcid", "whtest"),
            ],
        )
        .await;
    let top2_id = top2["info"]["menuId"].as_str().unwrap().to_owned();

    let child = api
        .form(
            "/mc/menu/refresh.json",
            &[
                ("type", "0"),
                ("name", "测试1"),
                ("level", "2"),
                ("mcid", "whtest"),
                ("pid", &top_id),
            ],
        )
        .await;
    assert_eq!(child["info"]["Level"], 2);
    assert_eq!(child["info"]["Pid"], top_id.as_str());

    let no_pid = api
        .form(
            "/mc/menu/refresh.json",
            &[
                ("type", "0"),
                ("name", "x"),
                ("level", "2"),
                ("mcid", "whtest"),
            ],
        )
        .await;
    assert_err(&no_pid, 1002, "pid is required");
    let bad_pid = api
        .form(
            "/mc/menu/refresh.json",
            &[
                ("type", "0"),
                ("name", "x"),
                ("level", "2"),
                ("mcid", "whtest"),
                ("pid", "nope"),
            ],
        )
        .await;
    assert_err(&bad_pid, 1002, "does not exist");
    let long = api
        .form(
            "/mc/menu/refresh.json",
            &[
                ("type", "0"),
                ("name", "一二三四五六七八九十一"),
                ("level", "1"),
                ("mcid", "whtest"),
            ],
        )
        .await;
    assert_err(&long, 1002, "longer than 10 characters");
    let ten = api
        .form(
            "/mc/menu/refresh.json",
            &[
                ("type", "0"),
                ("name", "一二三四五六七八九十"),
                ("level", "1"),
                ("mcid", "whtest"),
            ],
        )
        .await;
    assert_eq!(code(&ten), 0);
    let no_url = api
        .form(
            "/mc/menu/refresh.json",
            &[
                ("type", "1"),
                ("name", "x"),
                ("level", "1"),
                ("mcid", "whtest"),
            ],
        )
        .await;
    assert_err(&no_url, 1002, "url is required when type is 1");
    let level3 = api
        .form(
            "/mc/menu/refresh.json",
            &[
                ("type", "0"),
                ("name", "x"),
                ("level", "3"),
                ("mcid", "whtest"),
            ],
        )
        .await;
    assert_err(&level3, 1002, "level must be 1 or 2");

    // R13: orders rank siblings; the tree shows them in that order.
    let ordered = api
        .form(
            "/mc/menu/order.json",
            &[
                ("menuIds", &top_id),
                ("orders", "2"),
                ("menuIds", &top2_id),
                ("orders", "1"),
            ],
        )
        .await;
    assert_eq!(ordered, json!({"errcode": 0, "errmsg": "ok"}));
    let unpaired = api
        .form(
            "/mc/menu/order.json",
            &[("menuIds", &top_id), ("orders", "2"), ("menuIds", &top2_id)],
        )
        .await;
    assert_err(&unpaired, 1002, "pair up");
    let unknown = api
        .form(
            "/mc/menu/order.json",
            &[("menuIds", "zzz"), ("orders", "1")],
        )
        .await;
    assert_err(&unknown, 1002, "does not exist");
    let accounts = api.get("/_sim/accounts").await;
    let menu = accounts[0]["menu"].as_array().unwrap();
    let ids: Vec<&str> = menu
        .iter()
        .map(|m| m["item"]["menu_id"].as_str().unwrap())
        .collect();
    let pos = |id: &str| ids.iter().position(|m| *m == id).unwrap();
    assert!(
        pos(&top2_id) < pos(&top_id),
        "order 1 before order 2: {ids:?}"
    );
    assert_eq!(menu[pos(&top_id)]["children"][0]["name"], "测试1");

    // Deleting a first-level item takes its children along.
    let deleted = api
        .form(
            "/mc/menu/delete.json",
            &[("mcid", "whtest"), ("menuId", &top_id)],
        )
        .await;
    assert_eq!(code(&deleted), 0);
    let again = api
        .form(
            "/mc/menu/delete.json",
            &[("mcid", "whtest"), ("menuId", &top_id)],
        )
        .await;
    assert_err(&again, 1002, "does not exist");
    let accounts = api.get("/_sim/accounts").await;
    assert_eq!(accounts[0]["menu"].as_array().unwrap().len(), 2);
}

// ----- followers ------------------------------------------------------------

#[tokio::test]
async fn subscribe_and_unsubscribe_at_most_fifty() {
    let s = sim().await;
    let api = Api::new(&s);
    api.add_account("mcid001", "http://127.0.0.1:9/unused")
        .await;
    let ok = api
        .json(
            "/mc/subscribe.json",
            json!({"mcId": "mcid001", "userId": ["userId1", "userId2"]}),
        )
        .await;
    assert_eq!(ok, json!({"errcode": 0, "errmsg": "ok"}));
    let many: Vec<String> = (0..51).map(|i| format!("u{i}")).collect();
    let too_many = api
        .json(
            "/mc/subscribe.json",
            json!({"mcId": "mcid001", "userId": many}),
        )
        .await;
    assert_err(&too_many, 1002, "at most 50");
    let unknown = api
        .json(
            "/mc/subscribe.json",
            json!({"mcId": "nope", "userId": ["a"]}),
        )
        .await;
    assert_err(&unknown, 1002, "does not exist");
    let no_users = api
        .json("/mc/subscribe.json", json!({"mcId": "mcid001"}))
        .await;
    assert_err(&no_users, 1002, "userId is required");
    let form = api.form("/mc/subscribe.json", &[("mcId", "mcid001")]).await;
    assert_err(&form, 1002, "Content-Type must be application/json");
    let malformed = api
        .signed("/mc/subscribe.json")
        .header("Content-Type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    let malformed: Value = malformed.json().await.unwrap();
    assert_err(&malformed, 1002, "not valid JSON");
    api.json(
        "/mc/unsubscribe.json",
        json!({"mcId": "mcid001", "userId": ["userId1"]}),
    )
    .await;
    let accounts = api.get("/_sim/accounts").await;
    assert_eq!(accounts[0]["account"]["followers"], json!(["userId2"]));
}

// ----- messages ---------------------------------------------------------------

fn png() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend_from_slice(&[0u8; 64]);
    v
}

fn amr(frames: usize) -> Vec<u8> {
    let mut v = b"#!AMR\n".to_vec();
    for _ in 0..frames {
        v.push(7 << 3);
        v.extend_from_slice(&[0u8; 31]);
    }
    v
}

#[tokio::test]
async fn send_family_delivers_to_inboxes_and_checks_limits() {
    let s = sim().await;
    let api = Api::new(&s);
    api.add_account("app.public.server112", "http://127.0.0.1:9/unused")
        .await;
    let from = format!("app.public.server112@{KEY}");

    // The document's text example.
    let sent = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("sdfxl@{KEY}"), "msgtype": "text", "text": {"content": "Hello"}})).await;
    assert_eq!(sent, json!({"errcode": 0, "errmsg": "ok"}));
    let inbox = api.get("/_sim/inbox/sdfxl").await;
    assert_eq!(inbox[0]["payload"], json!({"content": "Hello"}));
    assert_eq!(inbox[0]["endpoint"], "/message/send.json");
    assert_eq!(inbox[0]["mcid"], "app.public.server112");

    let long = "a".repeat(2001);
    let too_long = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("u@{KEY}"), "msgtype": "text", "text": {"content": long}})).await;
    assert_err(&too_long, 1002, "2001 bytes");
    let cjk = "汉".repeat(667); // 2001 bytes
    let too_long = api.json("/message/operation/send.json", json!({"fromuser": from, "touser": format!("u@{KEY}"), "msgtype": "text", "text": {"content": cjk}})).await;
    assert_err(&too_long, 1002, "at most 2000");
    let no_to = api
        .json(
            "/message/send.json",
            json!({"fromuser": from, "msgtype": "text", "text": {"content": "x"}}),
        )
        .await;
    assert_err(&no_to, 1002, "touser is required");
    let wrong_app = api.json("/message/send.json", json!({"fromuser": "app.public.server112@other", "touser": format!("u@{KEY}"), "msgtype": "text", "text": {"content": "x"}})).await;
    assert_err(&wrong_app, 1002, "fromuser");

    // Uploaded material: media_id must exist and be of the right type.
    let image = api.upload("image", png()).await;
    assert_eq!(image["type"], "image");
    let media_id = image["media_id"].as_str().unwrap();
    let ok = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("123@{KEY}"), "msgtype": "image", "image": {"media_id": media_id}})).await;
    assert_eq!(code(&ok), 0);
    let as_voice = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("123@{KEY}"), "msgtype": "voice", "voice": {"media_id": media_id}})).await;
    assert_err(&as_voice, 1002, "invalid media_id");
    let unknown = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("123@{KEY}"), "msgtype": "image", "image": {"media_id": "123434343443"}})).await;
    assert_err(&unknown, 1002, "invalid media_id");

    // Direct: by url.
    let direct = api.json("/message/operation/send.json", json!({"fromuser": from, "touser": format!("123@{KEY}"), "msgtype": "voice", "voice": {"url": "http://www.xxx.com/aaa.amr"}})).await;
    assert_eq!(code(&direct), 0);
    let inbox = api.get("/_sim/inbox/123").await;
    assert_eq!(inbox.as_array().unwrap().len(), 2);
    assert_eq!(
        inbox[1]["payload"],
        json!({"url": "http://www.xxx.com/aaa.amr"})
    );

    // News: 1..10 articles, title and picurl required, description width.
    let article = json!({"title": "haha ", "description": " hahahaahhaha", "url": "URL", "picurl": "PIC_URL"});
    let news = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("123@{KEY}"), "msgtype": "news", "news": {"articles": [article, article]}})).await;
    assert_eq!(code(&news), 0);
    let eleven: Vec<Value> = (0..11).map(|_| article.clone()).collect();
    let too_many = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("123@{KEY}"), "msgtype": "news", "news": {"articles": eleven}})).await;
    assert_err(&too_many, 1002, "11 items");
    let none = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("123@{KEY}"), "msgtype": "news", "news": {"articles": []}})).await;
    assert_err(&none, 1002, "0 items");
    let no_pic = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("123@{KEY}"), "msgtype": "news", "news": {"articles": [{"title": "t"}]}})).await;
    assert_err(&no_pic, 1002, "news.articles[0].picurl is required");
    let wide = json!({"title": "t", "picurl": "p", "description": "汉".repeat(1001)});
    let wide = api.json("/message/send.json", json!({"fromuser": from, "touser": format!("123@{KEY}"), "msgtype": "news", "news": {"articles": [wide]}})).await;
    assert_err(&wide, 1002, "2002 wide");

    // Batch: at most 100 users, only the endpoint's message types.
    let users: Vec<String> = (0..100).map(|i| format!("b{i}@{KEY}")).collect();
    let batch = api.json("/message/batchsend.json", json!({"fromuser": from, "touser": users, "msgtype": "text", "text": {"content": "Hello"}})).await;
    assert_eq!(code(&batch), 0);
    assert_eq!(
        api.get("/_sim/inbox/b99").await[0]["endpoint"],
        "/message/batchsend.json"
    );
    let users: Vec<String> = (0..101).map(|i| format!("b{i}@{KEY}")).collect();
    let over = api.json("/message/batchsend.json", json!({"fromuser": from, "touser": users, "msgtype": "text", "text": {"content": "Hello"}})).await;
    assert_err(&over, 1002, "at most 100");
    let image_batch = api.json("/message/batchsend.json", json!({"fromuser": from, "touser": [format!("b1@{KEY}")], "msgtype": "image", "image": {"url": "u"}})).await;
    assert_err(
        &image_batch,
        1002,
        "msgtype \"image\" is not supported here",
    );
    let op_batch = api.json("/message/operation/batchsend.json", json!({"fromuser": from, "touser": [format!("b1@{KEY}"), format!("b2@{KEY}")], "msgtype": "image", "image": {"url": "http://www.xxx.com/aaa.jpg"}})).await;
    assert_eq!(code(&op_batch), 0);
    let op_text = api.json("/message/operation/batchsend.json", json!({"fromuser": from, "touser": [format!("b1@{KEY}")], "msgtype": "text", "text": {"content": "x"}})).await;
    assert_err(&op_text, 1002, "not supported");
}

#[tokio::test]
async fn sendall_once_per_natural_day_in_utc8() {
    let s = sim().await;
    let api = Api::new(&s);
    api.add_account("m", "http://127.0.0.1:9/unused").await;
    api.json(
        "/mc/subscribe.json",
        json!({"mcId": "m", "userId": ["f1", "f2"]}),
    )
    .await;
    let from = format!("m@{KEY}");

    let no_filter = api
        .json(
            "/message/sendall.json",
            json!({"fromuser": from, "text": {"content": "x"}, "msgtype": "text"}),
        )
        .await;
    assert_err(&no_filter, 1002, "filter is required");
    let not_all = api.json("/message/sendall.json", json!({"fromuser": from, "filter": {"is_to_all": false}, "text": {"content": "x"}, "msgtype": "text"})).await;
    assert_err(&not_all, 1002, "only true");

    let first = api.json("/message/sendall.json", json!({"fromuser": from, "filter": {"is_to_all": true}, "text": {"content": "CONTENT"}, "msgtype": "text"})).await;
    assert_eq!(code(&first), 0);
    assert!(first["msg_id"].as_str().is_some_and(|m| !m.is_empty()));
    for f in ["f1", "f2"] {
        let inbox = api.get(&format!("/_sim/inbox/{f}")).await;
        assert_eq!(inbox[0]["msg_id"], first["msg_id"]);
    }
    let second = api
        .json(
            "/message/operation/sendall.json",
            json!({"fromuser": from, "text": {"content": "again"}, "msgtype": "text"}),
        )
        .await;
    assert_err(&second, 1007, "one per natural day");

    // Tomorrow (platform calendar moved a day on) it works again; news
    // material uploaded through uploadnews goes out as mpnews.
    let r = api
        .http
        .put(format!("{}/_sim/clock", api.base))
        .json(&json!({"offset_secs": 86_400}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let thumb = api.upload("thumb", png()).await;
    let news = api.query_signed("/media/uploadnews").json(&json!({"articles": [{"thumb_media_id": thumb["media_id"], "author": "yyuy", "title": "Happy ", "content_source_url": "www.rongcloud.com", "content": "content", "digest": "digest", "show_cover_pic": "1"}]})).send().await.unwrap();
    let news: Value = news.json().await.unwrap();
    assert_eq!(news["type"], "news");
    let mp = api.json("/message/sendall.json", json!({"fromuser": from, "filter": {"is_to_all": true}, "mpnews": {"media_id": news["media_id"]}, "msgtype": "mpnews"})).await;
    assert_eq!(code(&mp), 0, "{mp}");

    // R8: operation/sendall takes news inline; mpnews is accepted as alias.
    api.http
        .put(format!("{}/_sim/clock", api.base))
        .json(&json!({"offset_secs": 2 * 86_400}))
        .send()
        .await
        .unwrap();
    let article = json!({"title": "haha ", "description": " hahahaahhaha", "url": "URL", "picurl": "PIC_URL"});
    let op = api
        .json(
            "/message/operation/sendall.json",
            json!({"fromuser": from, "news": {"articles": [article]}, "msgtype": "mpnews"}),
        )
        .await;
    assert_eq!(code(&op), 0, "{op}");
    let inbox = api.get("/_sim/inbox/f2").await;
    assert_eq!(inbox.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn uploads_check_type_size_format_and_query_signature() {
    let s = sim().await;
    let api = Api::new(&s);
    let png_up = api.upload("image", png()).await;
    assert!(png_up["created_at"].as_i64().unwrap() > 1_000_000_000);
    let mut big = png();
    big.resize(2 * 1024 * 1024 + 1, 0);
    let too_big = api.upload("image", big).await;
    assert_err(&too_big, 1002, "limit is 2097152 bytes");
    let mut thumb = png();
    thumb.resize(20 * 1024 + 1, 0);
    assert_err(&api.upload("thumb", thumb).await, 1002, "20480");
    assert_err(&api.upload("voice", png()).await, 1003, "AMR");
    assert_err(&api.upload("image", amr(2)).await, 1003, "JPG or PNG");
    assert_err(&api.upload("video", png()).await, 1003, "invalid type");
    let voice = api.upload("voice", amr(50)).await;
    assert_eq!(voice["type"], "voice");
    // 12.2 kbit/s frames are 32 bytes: 61 s fit in 60 KiB? No: 61 s is
    // 3050 frames, 97.6 kB, over the size limit; use the smallest mode.
    let mut long = b"#!AMR\n".to_vec();
    for _ in 0..3050 {
        long.push(0);
        long.extend_from_slice(&[0u8; 12]);
    }
    assert!(long.len() <= 60 * 1024);
    assert_err(&api.upload("voice", long).await, 1002, "at most 60 s");

    // Header signatures do not count for uploads: the document puts them in the URL.
    let part = reqwest::multipart::Part::bytes(png()).file_name("a.png");
    let r = api
        .signed("/media/upload?type=image")
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = api
        .query_signed("/media/upload?type=image")
        .multipart(reqwest::multipart::Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    assert_err(&r.json::<Value>().await.unwrap(), 1002, "file is required");

    let news = api
        .query_signed("/media/uploadnews")
        .json(&json!({"articles": [{"thumb_media_id": "nope", "content_source_url": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_err(
        &news.json::<Value>().await.unwrap(),
        1002,
        "articles[0].thumb_media_id",
    );
}

// ----- faults -----------------------------------------------------------------

#[tokio::test]
async fn injected_faults_give_the_platform_codes() {
    let s = sim().await;
    let api = Api::new(&s);
    let info = [("mcid", "m"), ("RC-App-Key", KEY)];

    let put = |f: Value| {
        let http = api.http.clone();
        let url = format!("{}/_sim/faults", api.base);
        async move { http.put(url).json(&f).send().await.unwrap().status() }
    };
    assert_eq!(put(json!({"rate_limit_per_sec": 2})).await, 200);
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(code(&api.form("/mc/info.json", &info).await));
    }
    assert!(codes.contains(&1008), "{codes:?}");
    assert!(codes.iter().filter(|c| **c == 1002).count() <= 4);

    assert_eq!(put(json!({"error_rate": 1.0})).await, 200);
    assert_err(&api.form("/mc/info.json", &info).await, 1000, "internal");

    assert_eq!(put(json!({"drop_rate": 1.0})).await, 200);
    let dropped = api.signed("/mc/info.json").form(&info).send().await;
    let outcome = match dropped {
        Err(_) => "error",
        Ok(r) => {
            if r.text().await.is_err() {
                "error"
            } else {
                "answer"
            }
        }
    };
    assert_eq!(outcome, "error");

    assert_eq!(put(json!({"error_rate": 2.0})).await, 400);
    assert_eq!(put(json!({"typo": 1})).await, 422);
    assert_eq!(put(json!({})).await, 200);
    assert_err(
        &api.form("/mc/info.json", &info).await,
        1002,
        "does not exist",
    );
}

// ----- pushes -------------------------------------------------------------------

/// One request a receiver got: its query pairs and its body.
type Seen = (Vec<(String, String)>, String);

#[derive(Clone, Default)]
struct Receiver {
    /// What to do on each successive request: "ok", "stall", "500".
    script: Arc<Mutex<Vec<&'static str>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn receive(
    State(r): State<Receiver>,
    Query(q): Query<Vec<(String, String)>>,
    body: String,
) -> StatusCode {
    r.seen.lock().unwrap().push((q, body));
    let next = {
        let mut s = r.script.lock().unwrap();
        if s.is_empty() {
            "ok"
        } else {
            s.remove(0)
        }
    };
    match next {
        "stall" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK
        }
        "500" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    }
}

async fn receiver(script: Vec<&'static str>) -> (String, Receiver) {
    let r = Receiver {
        script: Arc::new(Mutex::new(script)),
        ..Receiver::default()
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, r)
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> &'a str {
    &q.iter().find(|(n, _)| n == k).unwrap().1
}

#[tokio::test]
async fn pushes_are_signed_xml_in_the_document_format() {
    let s = sim().await;
    let api = Api::new(&s);
    let (url, rx) = receiver(vec![]).await;
    api.add_account("mc", &url).await;

    let follow = api
        .control(
            "/_sim/follow",
            json!({"mcid": "mc", "user": "u1", "wait": true}),
        )
        .await;
    assert_eq!(follow["pushes"][0]["state"], "delivered");
    let msg = api.control("/_sim/message", json!({"mcid": "mc", "user": "u1", "type": "text", "content": "hello ]]> world", "wait": true})).await;
    let msg_id = msg["msg_id"].as_str().unwrap();
    api.control("/_sim/message", json!({"mcid": "mc", "user": "u1", "type": "location", "x": 15.501, "y": 142.324, "label": "POI信息", "wait": true})).await;

    let seen = rx.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (q, _) in &seen {
        // The receiver recomputes the signature from the document's formula.
        let expect = sig(SECRET, param(q, "rc-nonce"), param(q, "rc-timestamp"));
        assert_eq!(param(q, "rc-signature"), expect);
        let ts: i64 = param(q, "rc-timestamp").parse().unwrap();
        assert!((now() - ts).abs() < 60, "rc-timestamp is in seconds");
    }
    assert!(seen[0].1.contains("<MsgType><![CDATA[event]]></MsgType>"));
    assert!(seen[0].1.contains("<Event><![CDATA[subscribe]]></Event>"));
    assert!(!seen[0].1.contains("MsgId"));
    assert!(
        seen[1].1.contains(&format!("<MsgId>{msg_id}</MsgID>")),
        "{}",
        seen[1].1
    );
    assert!(seen[1]
        .1
        .contains("<Content><![CDATA[hello ]]]]><![CDATA[> world]]></Content>"));
    assert!(seen[2].1.contains("<Location_X>15.501</Location_X>"));
    let accounts = api.get("/_sim/accounts").await;
    assert_eq!(accounts[0]["account"]["followers"], json!(["u1"]));

    // Unfollow pushes the event and drops the follower.
    api.control(
        "/_sim/unfollow",
        json!({"mcid": "mc", "user": "u1", "wait": true}),
    )
    .await;
    assert!(rx.seen.lock().unwrap()[3].1.contains("unsubscribe"));
    assert_eq!(
        api.get("/_sim/accounts").await[0]["account"]["followers"],
        json!([])
    );
}

#[tokio::test]
async fn a_stalled_receiver_gets_a_try_and_three_retries_then_the_push_fails() {
    // R15: no answer within the timeout brings a retry, three in all.
    let s = sim().await;
    let api = Api::new(&s);
    let (url, rx) = receiver(vec!["stall", "stall", "stall", "stall"]).await;
    api.add_account("mc", &url).await;
    let r = api
        .control(
            "/_sim/message",
            json!({"mcid": "mc", "user": "u", "type": "text", "content": "hi", "wait": true}),
        )
        .await;
    let push = &r["pushes"][0];
    assert_eq!(push["state"], "failed");
    let outcomes: Vec<&str> = push["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["timeout", "timeout", "timeout", "timeout"]);
    assert_eq!(rx.seen.lock().unwrap().len(), 4);
    // Each try is signed afresh.
    let nonces: std::collections::HashSet<String> = rx
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(q, _)| param(q, "rc-nonce").to_owned())
        .collect();
    assert_eq!(nonces.len(), 4);
}

#[tokio::test]
async fn pushes_to_a_stalled_receiver_wait_for_one_of_the_platforms_connections() {
    // push.connections = 1: five pushes at once to a receiver that never
    // answers; the first holds the one connection until its timeout, the
    // others time out waiting for it instead of opening connections of
    // their own (at most one more gets in as the first lets go).
    let s = sim_pushing(PushConfig {
        timeout: Duration::from_millis(300),
        tries: 1,
        connections: 1,
        ..PushConfig::default()
    })
    .await;
    let api = Api::new(&s);
    let (url, rx) = receiver(vec!["stall"; 5]).await;
    api.add_account("mc", &url).await;
    let pushes = (0..5).map(|i| {
        api.control(
            "/_sim/message",
            json!({"mcid": "mc", "user": format!("u{i}"), "type": "text", "content": "hi", "wait": true}),
        )
    });
    for r in futures_util::future::join_all(pushes).await {
        let push = &r["pushes"][0];
        assert_eq!(push["state"], "failed");
        assert_eq!(push["attempts"][0]["outcome"], "timeout");
    }
    let seen = rx.seen.lock().unwrap().len();
    assert!((1..=2).contains(&seen), "{seen} tries reached the receiver");
}

#[tokio::test]
async fn any_answer_ends_a_push_even_an_error_status() {
    // R15: "any response ends it"; only no response brings a retry.
    let s = sim().await;
    let api = Api::new(&s);
    let (url, rx) = receiver(vec!["500"]).await;
    api.add_account("mc", &url).await;
    let r = api
        .control(
            "/_sim/message",
            json!({"mcid": "mc", "user": "u", "type": "text", "content": "hi", "wait": true}),
        )
        .await;
    let push = &r["pushes"][0];
    assert_eq!(push["state"], "failed");
    assert_eq!(push["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(push["attempts"][0]["status"], 503);
    assert_eq!(rx.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn with_retry_on_5xx_a_receiver_failing_twice_gets_the_push_on_the_third_try() {
    let s = sim_pushing(PushConfig {
        timeout: Duration::from_millis(300),
        retry_delay: Duration::from_millis(20),
        retry_on_5xx: true,
        ..PushConfig::default()
    })
    .await;
    let api = Api::new(&s);
    let (url, rx) = receiver(vec!["500", "stall"]).await;
    api.add_account("mc", &url).await;
    let r = api.control("/_sim/message", json!({"mcid": "mc", "user": "u", "type": "image", "pic_url": "this is a url", "wait": true})).await;
    let push = &r["pushes"][0];
    assert_eq!(push["state"], "delivered");
    let outcomes: Vec<&str> = push["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["http_error", "timeout", "answered"]);
    let seen = rx.seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|(_, body)| body == &seen[0].1),
        "every try carries the same XML"
    );
}

#[tokio::test]
async fn duplicates_bad_signatures_and_closed_routes() {
    let s = sim().await;
    let api = Api::new(&s);
    let (url, rx) = receiver(vec![]).await;
    let (url2, rx2) = receiver(vec![]).await;
    api.add_account("mc", &url).await;

    let r = api.control("/_sim/message", json!({"mcid": "mc", "user": "u", "type": "voice", "voice_url": "this is url", "duplicates": 2, "route_urls": [url, url2], "wait": true})).await;
    assert_eq!(r["pushes"].as_array().unwrap().len(), 3);
    let first = rx.seen.lock().unwrap().clone();
    let second = rx2.seen.lock().unwrap().clone();
    assert_eq!((first.len(), second.len()), (2, 1));
    assert_eq!(
        first[0].1, second[0].1,
        "copies carry the same MsgId and body"
    );
    assert!(first[0].1.contains("<Format><![CDATA[AMR]]></Format>"));

    api.control("/_sim/message", json!({"mcid": "mc", "user": "u", "type": "imgtxt", "title": "title", "bad_signature": true, "wait": true})).await;
    let (q, body) = rx.seen.lock().unwrap().last().unwrap().clone();
    assert!(body.contains("<MsgType><![CDATA[imgtxt]]></MsgType>"));
    assert_ne!(
        param(&q, "rc-signature"),
        sig(SECRET, param(&q, "rc-nonce"), param(&q, "rc-timestamp"))
    );

    api.form(
        "/mc/route/setSwitch.json",
        &[("mcid", "mc"), ("RC-App-Key", KEY), ("isOpen", "false")],
    )
    .await;
    let r = api
        .control(
            "/_sim/message",
            json!({"mcid": "mc", "user": "u", "type": "text", "content": "x", "wait": true}),
        )
        .await;
    assert_eq!(r["pushes"][0]["state"], "skipped");
    assert_eq!(rx.seen.lock().unwrap().len(), 3);

    let unknown = api
        .http
        .post(format!("{}/_sim/message", api.base))
        .json(&json!({"mcid": "nope", "user": "u", "type": "text", "content": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let log = api.get("/_sim/pushes").await;
    assert_eq!(log.as_array().unwrap().len(), 5);
}
