//! The rule model: serde types shared by TOML/JSON files, the database and
//! the engine. Field names are stable; every field is documented where an
//! operator reads it (`README.md`, "Reply rules").

use serde::{Deserialize, Serialize};

/// A file of rules: `[[rule]]` tables in TOML, `{"rule": [...]}` in JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// The rules, in file order.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

impl RuleFile {
    /// Reads TOML.
    ///
    /// # Errors
    /// The TOML error, with line and column.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Writes TOML.
    ///
    /// # Errors
    /// Only for values TOML cannot hold.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    /// Reads JSON.
    ///
    /// # Errors
    /// The JSON error, with line and column.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Writes JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// One reply rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Database id; ties of priority go to the lower id (0: file order).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: i64,
    /// Unique, human name (`pubbot rules enable NAME`).
    pub name: String,
    /// The app it belongs to; unset: every app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
    /// The account it belongs to; unset: every account of the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcid: Option<String>,
    /// Disabled rules are kept but never match.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// Higher first.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub priority: i32,
    /// `keyword` (the default), `follow` (greeting on subscribe) or
    /// `default` (reply when no other rule matched a message).
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: RuleKind,
    /// What must hold for the rule to match.
    #[serde(default, skip_serializing_if = "is_default")]
    pub trigger: Trigger,
    /// What to send. May be empty when the rule calls a `handler` or only
    /// changes the conversation state.
    #[serde(default)]
    pub replies: Vec<Reply>,
    /// Conditions on the user's conversation state (`when.state.step =
    /// "ask_size"`): every key must hold that value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Keys of the conversation state to set when the rule matches.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub set_state: std::collections::BTreeMap<String, serde_json::Value>,
    /// Keys of the conversation state to clear (`"*"`: all of it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clear_state: Vec<String>,
    /// A handler bot (`pubbot handler add NAME`) called over HTTP to answer,
    /// after the rule's own replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// What to send when the handler fails after its last try (or its
    /// breaker is open); empty: nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<Reply>,
    /// `all` (each, in order) or `random_one`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: ReplyMode,
    /// `stop` (default) or `continue` to lower-priority rules.
    #[serde(default, skip_serializing_if = "is_default")]
    pub flow: Flow,
    /// IANA time zone for active hours and template dates; unset: the rule
    /// set's default (Asia/Shanghai).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// Conditions beyond the message itself.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Conversation state keys and the values they must have.
    #[serde(default)]
    pub state: std::collections::BTreeMap<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_zero(v: &i64) -> bool {
    *v == 0
}
fn is_zero32(v: &i32) -> bool {
    *v == 0
}
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// What kind of rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// An ordinary rule.
    #[default]
    Keyword,
    /// Matches `subscribe` events: the follow greeting.
    Follow,
    /// Used only when no other rule matched a (non-event) message.
    Default,
}

/// Conditions, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Which messages: `any` (default), `text`, `image`, `voice`,
    /// `location`, `imgtxt`, or the events `subscribe`, `unsubscribe`, and
    /// `event` (an event the document does not list, R14).
    #[serde(default, skip_serializing_if = "is_default")]
    pub on: On,
    /// With `on = "event"`: the `Event` value (a menu click's `CLICK`, say;
    /// compared case-insensitively). Unset: every unlisted event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Text keywords; any one matching is enough. Unset: no keyword
    /// condition. Set but empty: a compile error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<Keyword>>,
    /// Only these users; unset: everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<Vec<String>>,
    /// Only at these local times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHours>,
}

/// Message kinds and events a rule can be about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// Any message (not events).
    #[default]
    Any,
    /// Text messages.
    Text,
    /// Images.
    Image,
    /// Voices.
    Voice,
    /// Locations.
    Location,
    /// Image-and-text messages.
    Imgtxt,
    /// The follow event.
    Subscribe,
    /// The unfollow event.
    Unsubscribe,
    /// An event the document does not list (menu clicks, job notices):
    /// answered only by a rule that names it this way (R14).
    Event,
}

/// One keyword.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyword {
    /// The text (or regular expression). Compared after Unicode NFKC and
    /// trimming on both sides, so full-width `ＨＥＬＬＯ` matches `hello`.
    pub pattern: String,
    /// `contains` (default), `equals`, `prefix` or `regex`.
    #[serde(default, rename = "match", skip_serializing_if = "is_default")]
    pub match_kind: MatchKind,
    /// Case-sensitive matching (default: insensitive).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub case_sensitive: bool,
}

/// How a keyword matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// Anywhere in the text.
    #[default]
    Contains,
    /// The whole text.
    Equals,
    /// At the start.
    Prefix,
    /// A regular expression (Rust `regex` syntax) anywhere in the text;
    /// its captures are available to templates.
    Regex,
}

/// Local times a rule is active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHours {
    /// Start, `HH:MM`, inclusive.
    pub from: String,
    /// End, `HH:MM`, exclusive; earlier than `from` means across midnight.
    pub to: String,
    /// Weekdays (`mon`..`sun`) of the local day; unset: every day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<String>>,
}

/// One reply. Text fields are minijinja templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// A text message.
    Text {
        /// Template of the text.
        text: String,
    },
    /// An image, by URL, uploaded `media_id`, or the local name of a
    /// medium uploaded with `pubbot media upload` (exactly one).
    Image {
        /// URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Uploaded material.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_id: Option<String>,
        /// Local name of uploaded material, resolved to its `media_id`
        /// when the rule set compiles.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media: Option<String>,
    },
    /// A voice, by URL, uploaded `media_id` or local media name (exactly
    /// one).
    Voice {
        /// URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Uploaded material.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_id: Option<String>,
        /// Local name of uploaded material.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media: Option<String>,
    },
    /// News, 1 to 10 articles.
    News {
        /// The articles.
        articles: Vec<ArticleTemplate>,
    },
}

/// An article of a news reply; `title` and `description` are templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArticleTemplate {
    /// Template of the title (required).
    pub title: String,
    /// Template of the description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Picture URL (required).
    pub picurl: String,
}

/// How many of a rule's replies go out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyMode {
    /// Each, in order.
    #[default]
    All,
    /// One, picked with the caller's random value.
    RandomOne,
}

/// Whether lower-priority rules are considered after this one matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// Stop here.
    #[default]
    Stop,
    /// Go on.
    Continue,
}
