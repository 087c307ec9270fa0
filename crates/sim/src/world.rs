//! The platform's state and the business rules of every endpoint. Pure
//! functions over [`World`]: no I/O here, the HTTP layer (`api.rs`) parses
//! and authenticates, this module decides.

mod accounts;
mod followers;
mod media;
mod menus;
mod messages;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{Faults, SimConfig};
use crate::error::ApiError;
use crate::limits::{self};

/// A public account (`mcid`) of one app.
#[derive(Debug, Clone, Serialize)]
pub struct Account {
    /// Sequence id.
    pub id: i64,
    /// The account id.
    pub mcid: String,
    /// Display name.
    pub display_name: String,
    /// Avatar URL.
    pub portrait_url: String,
    /// Display type (0: in the conversation list).
    pub ui_type: i64,
    /// Description.
    pub introduction: String,
    /// Whether it is a global account.
    pub is_follow: bool,
    /// Where pushes go.
    pub route_url: String,
    /// Whether pushes are sent at all.
    pub route_open: bool,
    /// Users following the account.
    pub followers: BTreeSet<String>,
    /// The natural day (UTC+8) of the last mass send (R11).
    pub last_sendall_day: Option<NaiveDate>,
}

impl Account {
    fn info(&self) -> Value {
        json!({"info": {
            "id": self.id,
            "mcid": self.mcid,
            "mcidHash": mcid_hash(&self.mcid),
            "fcid": 0,
            "DisplayName": self.display_name,
            "IsFollow": self.is_follow,
            "PortraitUrl": self.portrait_url,
            "RouteUrl": self.route_url,
            "FuncRouteUrl": "",
            "uiType": self.ui_type,
            "isRouteOpen": self.route_open,
            "IsAuthorization": false,
            "IsGetUserInfo": true,
            "Introduction": self.introduction,
            "isCustom": false,
        }})
    }
}

fn mcid_hash(mcid: &str) -> i64 {
    // A stable, positive 31-bit hash (FNV-1a); the document shows a number.
    let mut h: u32 = 0x811c_9dc5;
    for b in mcid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i64::from(h & 0x7FFF_FFFF)
}

/// A menu item.
#[derive(Debug, Clone, Serialize)]
pub struct Menu {
    /// Sequence id.
    pub id: i64,
    /// Generated 32-hex id.
    pub menu_id: String,
    /// Owning account.
    pub mcid: String,
    /// 1 or 2.
    pub level: u8,
    /// Name, at most 10 characters.
    pub name: String,
    /// 0 none, 1 open url.
    pub kind: u8,
    /// Target of kind 1.
    pub url: String,
    /// Parent of a level-2 item, empty for level 1.
    pub pid: String,
    /// Rank among its siblings (R13).
    pub order: i64,
}

impl Menu {
    fn info(&self) -> Value {
        json!({"info": {
            "id": self.id,
            "menuId": self.menu_id,
            "Type": self.kind,
            "Name": self.name,
            "Url": self.url,
            "Level": self.level,
            "Pid": self.pid,
            "mcid": self.mcid,
            "UpdateTime": null,
            "CreateTime": null,
            "order": self.order,
        }})
    }
}

/// Uploaded material.
#[derive(Debug, Clone, Serialize)]
pub struct Media {
    /// The id later sends refer to.
    pub media_id: String,
    /// `image`, `thumb`, `voice` or `news`.
    pub kind: String,
    /// Upload time, seconds.
    pub created_at: i64,
    /// Size of an uploaded file.
    pub bytes: usize,
    /// Articles of news material.
    pub articles: Vec<Value>,
}

/// One message an account delivered to one user, whichever endpoint sent it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Global delivery sequence.
    pub seq: u64,
    /// App key.
    pub app_key: String,
    /// Sending account.
    pub mcid: String,
    /// Receiving user.
    pub user_id: String,
    /// The API path that delivered it.
    pub endpoint: String,
    /// `text`, `image`, `voice`, `news` or `mpnews`.
    pub msgtype: String,
    /// The payload object as sent (`{"content":..}`, `{"url":..}`, ...).
    pub payload: Value,
    /// Mass-send id, for sendall.
    pub msg_id: Option<String>,
    /// Delivery time, Unix milliseconds.
    pub at_ms: i64,
}

/// One API call, as the call log keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// Global call sequence.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Path called.
    pub path: String,
    /// `RC-App-Key` as sent, if any.
    pub app_key: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    /// `errcode` answered (0 on success).
    pub errcode: u32,
    /// `errmsg` answered.
    pub errmsg: String,
    /// The request body (lossy UTF-8, cut at 4 KiB).
    pub body: String,
    /// Whether the connection was dropped on purpose (fault injection).
    pub dropped: bool,
}

/// Per-app state.
#[derive(Debug, Default)]
pub struct AppWorld {
    pub(crate) secret: String,
    pub(crate) accounts: BTreeMap<String, Account>,
    pub(crate) menus: BTreeMap<String, Menu>,
    pub(crate) media: HashMap<String, Media>,
    rate_window: (i64, u32),
}

/// Where a send's image / voice comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `media_id` of uploaded material (`/message/send.json`, `sendall`).
    Uploaded,
    /// `url` given inline (`/message/operation/...`).
    Direct,
}

/// Everything the platform knows.
#[derive(Debug)]
pub struct World {
    pub(crate) apps: HashMap<String, AppWorld>,
    inboxes: HashMap<(String, String), Vec<Delivery>>,
    delivery_seq: u64,
    calls: VecDeque<CallRecord>,
    call_seq: u64,
    call_capacity: usize,
    mass_calls: Vec<CallRecord>,
    /// Calls answered per path since start (the log above is bounded).
    call_counts: std::collections::BTreeMap<String, u64>,
    pub(crate) faults: Faults,
    /// Shift of the platform's calendar, for tests of the natural day
    /// (R11). Signatures and timestamps stay on the real clock.
    pub(crate) clock_offset_secs: i64,
    next_id: i64,
}

/// Parsed form fields (R12: account and menu calls), with repeated keys kept.
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// Parses an urlencoded body.
    pub fn parse(body: &[u8]) -> Self {
        Self(form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.get(name) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(ApiError::bad(format!("{name} is required"))),
        }
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn boolean(&self, name: &str) -> Result<bool, ApiError> {
        match self.required(name)? {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(ApiError::bad(format!(
                "{name} must be true or false, got {other:?}"
            ))),
        }
    }

    fn integer(&self, name: &str) -> Result<i64, ApiError> {
        let raw = self.required(name)?;
        raw.trim()
            .parse()
            .map_err(|_| ApiError::bad(format!("{name} must be an integer, got {raw:?}")))
    }

    /// R12: where the table lists `RC-App-Key` as a form field it is
    /// required and must name the signing app.
    fn app_key_field(&self, app_key: &str) -> Result<(), ApiError> {
        if self.required("RC-App-Key")? == app_key {
            Ok(())
        } else {
            Err(ApiError::bad(
                "RC-App-Key form field does not match the RC-App-Key header",
            ))
        }
    }
}

/// A required, non-empty list field of at most `max` entries (R9).
fn user_list<'a>(v: &'a Value, name: &str, max: usize) -> Result<&'a Vec<Value>, ApiError> {
    let list = match v.get(name) {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad(format!("{name} must be a list"))),
        None => return Err(ApiError::bad(format!("{name} is required"))),
    };
    if list.is_empty() {
        return Err(ApiError::bad(format!("{name} must not be empty")));
    }
    if list.len() > max {
        return Err(ApiError::bad(format!(
            "{name} has {} users, at most {max} are allowed",
            list.len()
        )));
    }
    Ok(list)
}

fn str_field<'a>(v: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    match v.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(ApiError::bad(format!("{name} is required")))
        }
        Some(_) => Err(ApiError::bad(format!("{name} must be a string"))),
    }
}

fn now_ms(offset_secs: i64) -> i64 {
    Utc::now().timestamp_millis() + offset_secs * 1000
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

impl World {
    /// A world with the configured apps and nothing else.
    pub fn new(config: &SimConfig) -> Self {
        let apps = config
            .apps
            .iter()
            .map(|a| {
                (
                    a.key.clone(),
                    AppWorld {
                        secret: a.secret.clone(),
                        ..AppWorld::default()
                    },
                )
            })
            .collect();
        Self {
            apps,
            inboxes: HashMap::new(),
            delivery_seq: 0,
            calls: VecDeque::new(),
            call_seq: 0,
            call_capacity: config.call_log_capacity,
            mass_calls: Vec::new(),
            call_counts: std::collections::BTreeMap::new(),
            faults: config.faults.clone(),
            clock_offset_secs: 0,
            next_id: 0,
        }
    }

    /// The platform's "now", Unix milliseconds (real clock).
    pub fn now_ms(&self) -> i64 {
        now_ms(0)
    }

    /// The platform's natural day: China Standard Time (R11).
    pub fn today(&self) -> NaiveDate {
        let cst = FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
        DateTime::from_timestamp_millis(now_ms(self.clock_offset_secs))
            .unwrap_or_default()
            .with_timezone(&cst)
            .date_naive()
    }

    fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn app_mut(&mut self, app_key: &str) -> Result<&mut AppWorld, ApiError> {
        self.apps
            .get_mut(app_key)
            .ok_or_else(|| ApiError::Unauthorized(format!("unknown app key {app_key:?}")))
    }

    /// The call log, oldest first.
    pub fn calls(&self) -> impl Iterator<Item = &CallRecord> {
        self.calls.iter()
    }

    /// Calls answered per path since start, whatever the call log kept.
    pub fn call_counts(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.call_counts
    }

    /// Every mass send call (`sendall`), whatever the call log's capacity
    /// dropped: one a natural day at most is accepted (R11), so they are
    /// few, and a long run still has every one.
    pub fn mass_calls(&self) -> impl Iterator<Item = &CallRecord> {
        self.mass_calls.iter()
    }

    /// Appends to the call log, dropping the oldest entry past capacity
    /// (mass sends are kept apart as well: [`Self::mass_calls`]).
    pub fn record_call(&mut self, mut record: CallRecord) {
        *self.call_counts.entry(record.path.clone()).or_default() += 1;
        self.call_seq += 1;
        record.seq = self.call_seq;
        if is_mass_send(&record.path) {
            self.mass_calls.push(record.clone());
        }
        if self.calls.len() >= self.call_capacity.max(1) {
            self.calls.pop_front();
        }
        self.calls.push_back(record);
    }

    /// What one user received from any account of the app.
    pub fn inbox(&self, app_key: &str, user_id: &str) -> &[Delivery] {
        self.inboxes
            .get(&(app_key.to_owned(), user_id.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// Every delivery of the app, in delivery order.
    pub fn deliveries(&self, app_key: &str) -> Vec<&Delivery> {
        let mut all: Vec<&Delivery> = self
            .inboxes
            .iter()
            .filter(|((app, _), _)| app == app_key)
            .flat_map(|(_, v)| v.iter())
            .collect();
        all.sort_by_key(|d| d.seq);
        all
    }

    /// Fault injection: the per-app rate limit (1008) and random 1000s.
    pub fn inject(&mut self, app_key: &str) -> Result<(), ApiError> {
        let faults = self.faults.clone();
        let second = self.now_ms().div_euclid(1000);
        if let Some(limit) = faults.rate_limit_per_sec {
            let app = self.app_mut(app_key)?;
            if app.rate_window.0 != second {
                app.rate_window = (second, 0);
            }
            app.rate_window.1 += 1;
            if app.rate_window.1 > limit {
                return Err(ApiError::RateLimited(format!(
                    "rate limit exceeded: at most {limit} calls per second"
                )));
            }
        }
        if faults.error_rate > 0.0 && rand::rng().random_bool(faults.error_rate) {
            return Err(ApiError::Internal("internal error (injected)".into()));
        }
        Ok(())
    }
}

fn ok() -> Value {
    json!({"errcode": 0, "errmsg": "ok"})
}

fn user_of(touser: &str, app_key: &str) -> Result<String, ApiError> {
    match touser.rsplit_once('@') {
        Some((user, key)) if key == app_key && !user.is_empty() => Ok(user.to_owned()),
        Some(_) => Err(ApiError::bad(format!(
            "touser {touser:?}: app key does not match RC-App-Key"
        ))),
        None => Err(ApiError::bad(format!(
            "touser {touser:?} must be {{userId}}@{{appKey}}"
        ))),
    }
}

fn articles_of(v: &Value) -> Result<&Vec<Value>, ApiError> {
    let articles = match v.get("articles") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad("articles must be a list")),
        None => return Err(ApiError::bad("articles is required")),
    };
    if articles.is_empty() || articles.len() > limits::ARTICLES_MAX {
        return Err(ApiError::bad(format!(
            "articles has {} items, 1 to {} are allowed",
            articles.len(),
            limits::ARTICLES_MAX
        )));
    }
    if articles.iter().any(|a| !a.is_object()) {
        return Err(ApiError::bad("articles entries must be objects"));
    }
    Ok(articles)
}

fn check_article(a: &Value) -> Result<(), ApiError> {
    str_field(a, "title")?;
    str_field(a, "picurl")?;
    match a.get("description") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) => {
            let w = limits::width(d);
            if w > limits::DESCRIPTION_MAX_WIDTH {
                return Err(ApiError::bad(format!(
                    "description is {w} wide, at most {} (a CJK character counts 2)",
                    limits::DESCRIPTION_MAX_WIDTH
                )));
            }
        }
        Some(_) => return Err(ApiError::bad("description must be a string")),
    }
    match a.get("url") {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(_) => Err(ApiError::bad("url must be a string")),
    }
}

fn at_article(i: usize, e: &ApiError) -> ApiError {
    ApiError::bad(format!("articles[{i}].{}", e.message()))
}

fn prefixed(key: &str, e: &ApiError) -> ApiError {
    match e {
        ApiError::BadParameter(m) => ApiError::bad(format!("{key}.{m}")),
        other => other.clone(),
    }
}

/// Whether `path` is a mass send (`/message/sendall.json`,
/// `/message/operation/sendall.json`).
pub fn is_mass_send(path: &str) -> bool {
    path.ends_with("/sendall.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_call_log_keeps_every_mass_send() {
        let mut w = World::new(&SimConfig {
            call_log_capacity: 3,
            ..SimConfig::default()
        });
        let call = |path: &str| CallRecord {
            seq: 0,
            at_ms: 0,
            path: path.to_owned(),
            app_key: None,
            status: 200,
            errcode: 0,
            errmsg: String::new(),
            body: String::new(),
            dropped: false,
        };
        w.record_call(call("/message/sendall.json"));
        for _ in 0..10 {
            w.record_call(call("/message/send.json"));
        }
        w.record_call(call("/message/operation/sendall.json"));
        assert_eq!(w.calls().count(), 3, "the log is capped");
        let mass: Vec<u64> = w.mass_calls().map(|c| c.seq).collect();
        assert_eq!(
            mass,
            [1, 12],
            "both mass sends, with their sequence numbers"
        );
        assert_eq!(w.call_counts()["/message/send.json"], 10);
    }
}
