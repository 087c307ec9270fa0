//! Pushes: what users do, delivered to the account's `routeUrl` as signed
//! XML with the platform's retry behaviour (R15: no answer within the
//! timeout, or no connection: drop it and try again, three retries after
//! the first try; any answer ends it).

use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::signature::sign;
use crate::Inner;

/// How a try that never got one of the platform's push connections
/// begins its detail (the load report counts them apart).
pub(crate) const NO_CONNECTION: &str = "no connection free";

/// What a user sends an account. Field names follow the push XML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum UserMessage {
    /// A text message.
    Text {
        /// `Content`.
        content: String,
    },
    /// An image message.
    Image {
        /// `PicUrl`.
        pic_url: String,
    },
    /// A voice message.
    Voice {
        /// `VoiceUrl`.
        voice_url: String,
        /// `Format`, `AMR` by default.
        #[serde(default = "amr")]
        format: String,
    },
    /// A location.
    Location {
        /// `Location_X`, latitude.
        x: f64,
        /// `Location_Y`, longitude.
        y: f64,
        /// `Label`.
        #[serde(default)]
        label: String,
    },
    /// An image-and-text message.
    Imgtxt {
        /// `Title`.
        title: String,
        /// `Description`.
        #[serde(default)]
        description: String,
        /// `PicUrl`.
        #[serde(default)]
        pic_url: String,
        /// `Url`.
        #[serde(default)]
        url: String,
    },
}

fn amr() -> String {
    "AMR".into()
}

/// What is pushed: a message or a follow event.
#[derive(Debug, Clone, PartialEq)]
pub enum PushContent {
    /// A user message, with its `MsgId`.
    Message(UserMessage, String),
    /// `subscribe` or `unsubscribe`.
    Event(&'static str),
}

impl PushContent {
    /// The `MsgType` value.
    pub fn msg_type(&self) -> &'static str {
        match self {
            Self::Event(_) => "event",
            Self::Message(m, _) => match m {
                UserMessage::Text { .. } => "text",
                UserMessage::Image { .. } => "image",
                UserMessage::Voice { .. } => "voice",
                UserMessage::Location { .. } => "location",
                UserMessage::Imgtxt { .. } => "imgtxt",
            },
        }
    }
}

fn cdata(s: &str) -> String {
    format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"))
}

/// Renders a push in the document's format. `document_style` keeps the
/// document's `<MsgId>..</MsgID>` (R4).
pub fn render_xml(
    mcid: &str,
    user: &str,
    create_time: i64,
    content: &PushContent,
    document_style: bool,
) -> String {
    let mut x = String::with_capacity(256);
    x.push_str("<xml>\n");
    x.push_str(&format!(" <ToUserName>{}</ToUserName>\n", cdata(mcid)));
    x.push_str(&format!(" <FromUserName>{}</FromUserName>\n", cdata(user)));
    x.push_str(&format!(" <CreateTime>{create_time}</CreateTime>\n"));
    x.push_str(&format!(
        " <MsgType>{}</MsgType>\n",
        cdata(content.msg_type())
    ));
    match content {
        PushContent::Event(e) => x.push_str(&format!(" <Event>{}</Event>\n", cdata(e))),
        PushContent::Message(m, msg_id) => {
            match m {
                UserMessage::Text { content } => {
                    x.push_str(&format!(" <Content>{}</Content>\n", cdata(content)))
                }
                UserMessage::Image { pic_url } => {
                    x.push_str(&format!(" <PicUrl>{}</PicUrl>\n", cdata(pic_url)))
                }
                UserMessage::Voice { voice_url, format } => {
                    x.push_str(&format!(" <VoiceUrl>{}</VoiceUrl>\n", cdata(voice_url)));
                    x.push_str(&format!(" <Format>{}</Format>\n", cdata(format)));
                }
                UserMessage::Location {
                    x: lat,
                    y: lon,
                    label,
                } => {
                    x.push_str(&format!(
                        " <Location_X>{lat}</Location_X>\n <Location_Y>{lon}</Location_Y>\n"
                    ));
                    x.push_str(&format!(" <Label>{}</Label>\n", cdata(label)));
                }
                UserMessage::Imgtxt {
                    title,
                    description,
                    pic_url,
                    url,
                } => {
                    x.push_str(&format!(" <Title>{}</Title>\n", cdata(title)));
                    x.push_str(&format!(
                        " <Description>{}</Description>\n",
                        cdata(description)
                    ));
                    x.push_str(&format!(" <PicUrl>{}</PicUrl>\n", cdata(pic_url)));
                    x.push_str(&format!(" <Url>{}</Url>\n", cdata(url)));
                }
            }
            let close = if document_style { "MsgID" } else { "MsgId" };
            x.push_str(&format!(" <MsgId>{msg_id}</{close}>\n"));
        }
    }
    x.push_str("</xml>");
    x
}

/// One try at delivering a push.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// When it started, Unix milliseconds.
    pub at_ms: i64,
    /// `answered`, `http_error`, `timeout` or `connect_error`.
    pub outcome: String,
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Answer body (cut at 256 bytes) or the error.
    pub detail: String,
}

/// Where a push stands.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PushState {
    /// Still trying.
    Pending,
    /// Answered with a 2xx: the platform is done with it.
    Delivered,
    /// Every try failed, or the receiver answered with an error status.
    Failed,
    /// Not sent: the account's route is closed or has no URL.
    Skipped,
}

/// One push and its tries, as the push log keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct PushRecord {
    /// Position in the push log.
    pub id: usize,
    /// App key.
    pub app_key: String,
    /// Account pushed for.
    pub mcid: String,
    /// The user who acted.
    pub user_id: String,
    /// `MsgType`.
    pub msg_type: String,
    /// `Event`, for events.
    pub event: Option<String>,
    /// `MsgId`, for messages.
    pub msg_id: Option<String>,
    /// `CreateTime` as sent (milliseconds).
    pub create_time: i64,
    /// The routeUrl it went to.
    pub url: String,
    /// Sent with a wrong signature on purpose.
    pub bad_signature: bool,
    /// The XML body.
    pub xml: String,
    /// Tries so far.
    pub attempts: Vec<Attempt>,
    /// Outcome.
    pub state: PushState,
}

/// How one try of a push went.
enum Tried {
    /// No connection of the platform's freed within the timeout.
    NoConnection,
    /// Sent; no answer within the timeout.
    NoAnswer,
    /// Sent, and reqwest's result.
    Sent(Result<(reqwest::StatusCode, String), reqwest::Error>),
}

pub(crate) async fn deliver(inner: Arc<Inner>, id: usize, secret: String) {
    let (url, xml, bad) = {
        let w = inner.lock_pushes();
        let r = &w[id];
        (r.url.clone(), r.xml.clone(), r.bad_signature)
    };
    let push = inner.config.push.clone();
    let tries = push.tries.max(1);
    // Parsed once for all pushes to it, not once a try (a routeUrl that
    // does not parse fails every try alike, as a connection error).
    let parsed = inner.route_url(&url);
    let query = parsed
        .as_ref()
        .ok()
        .and_then(|u| u.query().map(str::to_owned));
    for attempt in 1..=tries {
        let nonce = rand::rng().random::<u64>().to_string();
        let ts = chrono::Utc::now().timestamp().to_string();
        let mut signature = sign(&secret, &nonce, &ts);
        if bad {
            signature = sign("not-the-secret", &nonce, &ts);
        }
        let signed = format!("rc-nonce={nonce}&rc-timestamp={ts}&rc-signature={signature}");
        let target = parsed.clone().map(|mut u| {
            match &query {
                Some(q) => u.set_query(Some(&format!("{q}&{signed}"))),
                None => u.set_query(Some(&signed)),
            }
            u
        });
        let at_ms = chrono::Utc::now().timestamp_millis();
        // A try waits at most the timeout for one of the platform's
        // connections (and is given up, counted as a timeout, if none
        // frees), then has the whole timeout for its answer: the 5 seconds
        // of R15 run from the request. (With the wait counted in the
        // answer's time, an overloaded generator dropped requests mid-flight
        // that had a fraction of a second left, each drop closing a
        // connection: tens of thousands of sockets in TIME_WAIT, the
        // kernel's port search, and a generator that stopped sending while
        // the receiver sat idle; BENCHMARKS.md, session 6.)
        let try_once = |slot| async {
            let _slot = slot;
            let request = match &target {
                Ok(u) => inner.http.post(u.clone()),
                // reqwest refuses it when sent: a failed try, as always.
                Err(_) => inner.http.post(url.as_str()),
            };
            let resp = request
                .header("Content-Type", "text/xml; charset=utf-8")
                .body(xml.clone())
                .send()
                .await?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, body))
        };
        let tried = match tokio::time::timeout(push.timeout, inner.push_slots.acquire()).await {
            Err(_) => Tried::NoConnection,
            Ok(slot) => match tokio::time::timeout(push.timeout, try_once(slot)).await {
                Ok(answer) => Tried::Sent(answer),
                Err(_) => Tried::NoAnswer,
            },
        };
        let record = match tried {
            Tried::Sent(Ok((status, body))) => {
                let detail: String = body.chars().take(256).collect();
                let outcome = if status.is_success() {
                    "answered"
                } else {
                    "http_error"
                };
                Attempt {
                    at_ms,
                    outcome: outcome.into(),
                    status: Some(status.as_u16()),
                    detail,
                }
            }
            Tried::NoConnection => Attempt {
                at_ms,
                outcome: "timeout".into(),
                status: None,
                detail: format!("{NO_CONNECTION} within {:?}", push.timeout),
            },
            Tried::NoAnswer => Attempt {
                at_ms,
                outcome: "timeout".into(),
                status: None,
                detail: format!("no answer within {:?}", push.timeout),
            },
            Tried::Sent(Err(e)) if e.is_timeout() => Attempt {
                at_ms,
                outcome: "timeout".into(),
                status: None,
                detail: e.to_string(),
            },
            Tried::Sent(Err(e)) => Attempt {
                at_ms,
                outcome: "connect_error".into(),
                status: None,
                detail: e.to_string(),
            },
        };
        // R15: any answer ends the push; a 5xx is retried only when asked.
        let retry_status = push.retry_on_5xx && record.status.is_some_and(|s| s >= 500);
        let done = record.status.is_some() && !retry_status;
        let delivered = record.outcome == "answered";
        tracing::debug!(id, attempt, outcome = %record.outcome, "push attempt");
        {
            let mut log = inner.lock_pushes();
            let r = &mut log[id];
            r.attempts.push(record);
            if delivered {
                r.state = PushState::Delivered;
            } else if done || attempt == tries {
                r.state = PushState::Failed;
            }
        }
        if done {
            break;
        }
        if attempt < tries {
            tokio::time::sleep(push.retry_delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_document_text_example_shape() {
        let xml = render_xml(
            "toUserId",
            "fromUserName",
            134_223_445_860,
            &PushContent::Message(
                UserMessage::Text {
                    content: "content".into(),
                },
                "msgId".into(),
            ),
            true,
        );
        assert_eq!(
            xml,
            "<xml>\n <ToUserName><![CDATA[toUserId]]></ToUserName>\n <FromUserName><![CDATA[fromUserName]]></FromUserName>\n <CreateTime>134223445860</CreateTime>\n <MsgType><![CDATA[text]]></MsgType>\n <Content><![CDATA[content]]></Content>\n <MsgId>msgId</MsgID>\n</xml>"
        );
    }

    #[test]
    fn cdata_terminator_is_split() {
        assert_eq!(cdata("a]]>b"), "<![CDATA[a]]]]><![CDATA[>b]]>");
    }
}
