//! What the rule engine is asked and what it answers: the message, the
//! context, the planned replies and the decision, and compile errors. Pure
//! values, no logic beyond [`next_state`].

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What the engine is asked about: one inbound message or event.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The app it came through.
    pub app_key: &'a str,
    /// The account written to.
    pub mcid: &'a str,
    /// The user.
    pub user: &'a str,
    /// Its kind.
    pub kind: IncomingKind,
    /// The text of a text message (empty otherwise).
    pub text: &'a str,
    /// The `Event` of an event (empty otherwise).
    pub event: &'a str,
    /// The user's conversation state (a JSON object), if any.
    pub state: Option<&'a serde_json::Value>,
}

/// Kinds of inbound messages and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingKind {
    /// Text.
    Text,
    /// Image.
    Image,
    /// Voice.
    Voice,
    /// Location.
    Location,
    /// Image and text.
    Imgtxt,
    /// Follow event.
    Subscribe,
    /// Unfollow event.
    Unsubscribe,
    /// A message type this version does not know (still a message: R4).
    Other,
    /// An event the document does not list (R14): no "any message" rule
    /// and no default rule answers it, only a rule `on = "event"`.
    Event,
}

impl IncomingKind {
    pub(crate) fn is_event(self) -> bool {
        matches!(self, Self::Subscribe | Self::Unsubscribe | Self::Event)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::Voice => "voice",
            Self::Location => "location",
            Self::Imgtxt => "imgtxt",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Other => "other",
            Self::Event => "event",
        }
    }
}

/// What the caller supplies so the engine stays pure: the time and a random
/// value (for `random_one`).
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Now.
    pub now: DateTime<Utc>,
    /// Any value; `random_one` picks with it.
    pub random: u64,
}

/// Where an image or voice comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Media {
    /// By URL.
    Url(String),
    /// Uploaded material.
    MediaId(String),
}

/// A rendered article.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Article {
    /// Title.
    pub title: String,
    /// Description.
    pub description: Option<String>,
    /// Link.
    pub url: Option<String>,
    /// Picture.
    pub picurl: String,
}

/// One reply to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlannedReply {
    /// Text, within the platform's 2000 bytes.
    Text {
        /// The content.
        content: String,
    },
    /// Image.
    Image {
        /// Where from.
        media: Media,
    },
    /// Voice.
    Voice {
        /// Where from.
        media: Media,
    },
    /// News.
    News {
        /// 1 to 10 articles.
        articles: Vec<Article>,
    },
    /// A call to a handler bot, whose answer becomes the replies (the
    /// daemon makes the call, outside any transaction).
    Handler {
        /// The handler's name.
        handler: String,
        /// The rule that matched.
        rule: String,
        /// Regex captures by index (`captures[0]` the whole match).
        #[serde(default)]
        captures: Vec<String>,
        /// Named captures.
        #[serde(default)]
        named: std::collections::BTreeMap<String, String>,
        /// What to send if the handler fails after its last try.
        #[serde(default)]
        fallback: Vec<PlannedReply>,
        /// The event sent to the handler; filled in by the daemon.
        #[serde(default)]
        event: serde_json::Value,
    },
}

/// A rule that matched, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matched {
    /// Rule id.
    pub rule_id: i64,
    /// Rule name.
    pub rule: String,
    /// Which condition made it match.
    pub why: String,
}

/// Something that went wrong while rendering; the reply was dropped or
/// shortened, never the whole decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Rule name.
    pub rule: String,
    /// What happened.
    pub message: String,
}

/// The engine's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Replies, in sending order.
    pub replies: Vec<PlannedReply>,
    /// Conversation state keys the matched rules set.
    pub state_set: std::collections::BTreeMap<String, serde_json::Value>,
    /// Keys they cleared (`"*"`: all), applied before `state_set`.
    pub state_clear: Vec<String>,
    /// Rules that matched, in priority order.
    pub matched: Vec<Matched>,
    /// Render problems.
    pub problems: Vec<Problem>,
}

/// One rule's fate in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Rule id.
    pub rule_id: i64,
    /// Rule name.
    pub rule: String,
    /// Whether it matched.
    pub matched: bool,
    /// Why it did, or why not.
    pub reason: String,
}

/// Every rule considered, in priority order, with the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Each rule and its verdict.
    pub rules: Vec<Verdict>,
    /// The decision (the same as [`RuleSet::decide`](crate::RuleSet::decide)'s).
    pub decision: Decision,
}

/// One invalid rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompileError {
    /// Rule name (or `#N` for a nameless one).
    pub rule: String,
    /// What is wrong.
    pub problem: String,
}

/// Every invalid rule of a set, all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CompileErrors(pub Vec<CompileError>);

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} invalid rule(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  rule {:?}: {}", e.rule, e.problem)?;
        }
        Ok(())
    }
}

/// The conversation state after a decision: `state` with the decision's
/// clears, then its sets, applied.
pub fn next_state(state: Option<&serde_json::Value>, d: &Decision) -> serde_json::Value {
    apply_state(state, &d.state_clear, &d.state_set)
}

/// `state` with the keys in `clear` removed (`"*"`: every key), then `set`
/// applied: the one rule for changing conversation state, whoever asks
/// (a rule's decision, a handler bot's answer).
pub fn apply_state<'a>(
    state: Option<&serde_json::Value>,
    clear: &[String],
    set: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>,
) -> serde_json::Value {
    let mut map = match state {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    for k in clear {
        if k == "*" {
            map.clear();
        } else {
            map.remove(k);
        }
    }
    for (k, v) in set {
        map.insert(k.clone(), v.clone());
    }
    serde_json::Value::Object(map)
}
