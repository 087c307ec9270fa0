//! Messages (rows 11..16): send, batchsend, the mass send, and the inboxes they fill.

use serde_json::{json, Value};

use super::{
    articles_of, at_article, check_article, ok, prefixed, random_hex, str_field, user_list,
    user_of, Delivery, Source, World,
};
use crate::error::ApiError;
use crate::limits;

impl World {
    /// `send`, `operation/send`, `batchsend`, `operation/batchsend`.
    pub fn send(
        &mut self,
        app_key: &str,
        endpoint: &str,
        body: &Value,
        allowed: &[&str],
        source: Source,
        batch: bool,
    ) -> Result<Value, ApiError> {
        let mcid = self.sender(app_key, body)?;
        let users = if batch {
            let list = user_list(body, "touser", limits::BATCH_MAX_USERS)?;
            list.iter()
                .map(|u| {
                    u.as_str()
                        .ok_or_else(|| ApiError::bad("touser entries must be strings"))
                        .and_then(|u| user_of(u, app_key))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![user_of(str_field(body, "touser")?, app_key)?]
        };
        let (msgtype, payload) = self.payload(app_key, body, allowed, source)?;
        for user in users {
            self.deliver(app_key, &mcid, &user, endpoint, &msgtype, &payload, None);
        }
        Ok(ok())
    }

    /// `sendall` and `operation/sendall`: once per natural day (R11).
    pub fn send_all(
        &mut self,
        app_key: &str,
        endpoint: &str,
        body: &Value,
        allowed: &[&str],
        source: Source,
    ) -> Result<Value, ApiError> {
        let mcid = self.sender(app_key, body)?;
        if source == Source::Uploaded {
            match body.get("filter") {
                None => return Err(ApiError::bad("filter is required")),
                Some(f) => match f.get("is_to_all") {
                    None | Some(Value::Bool(true)) => {}
                    Some(Value::Bool(false)) => {
                        return Err(ApiError::bad("filter.is_to_all: only true is supported"))
                    }
                    Some(_) => return Err(ApiError::bad("filter.is_to_all must be true or false")),
                },
            }
        }
        let (msgtype, payload) = self.payload(app_key, body, allowed, source)?;
        let today = self.today();
        let account = self.account_mut(app_key, &mcid)?;
        if account.last_sendall_day == Some(today) {
            return Err(ApiError::Restricted(format!(
                "mass send already used on {today} (one per natural day, UTC+8)"
            )));
        }
        account.last_sendall_day = Some(today);
        let followers: Vec<String> = account.followers.iter().cloned().collect();
        let msg_id = random_hex(20);
        for user in followers {
            self.deliver(
                app_key,
                &mcid,
                &user,
                endpoint,
                &msgtype,
                &payload,
                Some(msg_id.clone()),
            );
        }
        Ok(json!({"errcode": 0, "errmsg": "ok", "msg_id": msg_id}))
    }

    fn sender(&mut self, app_key: &str, body: &Value) -> Result<String, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad("body must be a JSON object"));
        }
        let from = str_field(body, "fromuser")?;
        let (mcid, key) = from
            .rsplit_once('@')
            .ok_or_else(|| ApiError::bad("fromuser must be {mcid}@{appKey}"))?;
        if key != app_key {
            return Err(ApiError::bad("fromuser: app key does not match RC-App-Key"));
        }
        self.account_mut(app_key, mcid)?;
        Ok(mcid.to_owned())
    }

    fn payload(
        &self,
        app_key: &str,
        body: &Value,
        allowed: &[&str],
        source: Source,
    ) -> Result<(String, Value), ApiError> {
        let msgtype = str_field(body, "msgtype")?;
        if !allowed.contains(&msgtype) {
            return Err(ApiError::bad(format!(
                "msgtype {msgtype:?} is not supported here (use one of {})",
                allowed.join(", ")
            )));
        }
        let app = self
            .apps
            .get(app_key)
            .ok_or_else(|| ApiError::Unauthorized("unknown app".into()))?;
        let key = if msgtype == "mpnews" && source == Source::Direct && body.get("mpnews").is_none()
        {
            "news" // R8: operation/sendall takes news; mpnews accepted as its alias
        } else {
            msgtype
        };
        let inner = body
            .get(key)
            .filter(|v| v.is_object())
            .ok_or_else(|| ApiError::bad(format!("{key} is required and must be an object")))?;
        let payload = match (msgtype, source) {
            ("text", _) => {
                let content = str_field(inner, "content").map_err(|e| prefixed("text", &e))?;
                if content.len() > limits::TEXT_MAX_BYTES {
                    return Err(ApiError::bad(format!(
                        "text.content is {} bytes, at most {} are allowed",
                        content.len(),
                        limits::TEXT_MAX_BYTES
                    )));
                }
                json!({"content": content})
            }
            ("image" | "voice", Source::Uploaded) | ("mpnews", Source::Uploaded) => {
                let media_id = str_field(inner, "media_id").map_err(|e| prefixed(key, &e))?;
                let want = if msgtype == "mpnews" { "news" } else { msgtype };
                match app.media.get(media_id) {
                    Some(m) if m.kind == want => json!({"media_id": media_id}),
                    _ => return Err(ApiError::bad("invalid media_id")),
                }
            }
            ("image" | "voice", Source::Direct) => {
                let url = str_field(inner, "url").map_err(|e| prefixed(key, &e))?;
                json!({"url": url})
            }
            ("news" | "mpnews", _) => {
                let articles = articles_of(inner).map_err(|e| prefixed(key, &e))?;
                for (i, a) in articles.iter().enumerate() {
                    check_article(a).map_err(|e| prefixed(key, &at_article(i, &e)))?;
                }
                json!({"articles": articles})
            }
            _ => {
                return Err(ApiError::bad(format!(
                    "msgtype {msgtype:?} is not supported here"
                )))
            }
        };
        Ok((msgtype.to_owned(), payload))
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        app_key: &str,
        mcid: &str,
        user: &str,
        endpoint: &str,
        msgtype: &str,
        payload: &Value,
        msg_id: Option<String>,
    ) {
        self.delivery_seq += 1;
        let delivery = Delivery {
            seq: self.delivery_seq,
            app_key: app_key.to_owned(),
            mcid: mcid.to_owned(),
            user_id: user.to_owned(),
            endpoint: endpoint.to_owned(),
            msgtype: msgtype.to_owned(),
            payload: payload.clone(),
            msg_id,
            at_ms: self.now_ms(),
        };
        self.inboxes
            .entry((app_key.to_owned(), user.to_owned()))
            .or_default()
            .push(delivery);
    }
}
