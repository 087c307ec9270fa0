//! # pubbot-rules: the reply engine
//!
//! Decides what pubbot says. A [`RuleSet`] is compiled once from [`Rule`]s
//! (from a TOML/JSON [`RuleFile`] or the database) and then asked, for each
//! inbound message, which replies to send: [`RuleSet::decide`].
//!
//! **What it is for:** the auto-reply features operators know from
//! official-account platforms — keyword rules (`contains`, `equals`,
//! `prefix`, `regex`; case-insensitive by default; matched after Unicode
//! NFKC so full-width `ＨＥＬＬＯ` matches `hello`), several keywords per
//! rule, several replies sent `all` or `random_one`, a follow greeting, a
//! default reply — with the matching power of developer frameworks
//! (message kinds and events, sender allow-lists, active hours in a time
//! zone, priorities, `stop` or `continue`). Replies are minijinja templates.
//!
//! **What it is not for:** I/O of any kind. No clock, no randomness and no
//! storage of its own: the caller passes the time and a random value in a
//! [`Context`], so a decision is a pure function of its inputs.
//!
//! ## Speed
//! Literal keywords of all rules share one Aho-Corasick automaton per case
//! mode (and a hash map for `equals`), regex keywords one `RegexSet`; only
//! the rules those hit, plus rules without keywords, are checked, in
//! priority order. [`RuleSet::explain`] walks every rule linearly and is the
//! reference the fast path is property-tested against.
//!
//! ## Example
//! ```
//! use pubbot_rules::{Context, Incoming, IncomingKind, Options, PlannedReply, RuleFile, RuleSet};
//!
//! let file = RuleFile::from_toml(r#"
//! [[rule]]
//! name = "hours"
//! trigger = { keywords = [{ pattern = "hours" }, { pattern = "营业时间" }] }
//! replies = [{ type = "text", text = "Hi {{ user }}, we open 9:00-18:00." }]
//!
//! [[rule]]
//! name = "fallback"
//! kind = "default"
//! replies = [{ type = "text", text = "Thanks, we will answer soon." }]
//! "#).unwrap();
//! let rules = RuleSet::compile(file.rules, &Options::default()).unwrap();
//! let msg = Incoming { app_key: "app", mcid: "shop", user: "alice", kind: IncomingKind::Text, text: "Opening HOURS?", event: "", state: None };
//! let ctx = Context { now: chrono::Utc::now(), random: 0 };
//! let d = rules.decide(&msg, &ctx);
//! assert_eq!(d.replies, [PlannedReply::Text { content: "Hi alice, we open 9:00-18:00.".into() }]);
//! ```

pub mod broadcast;
mod compile;
mod decision;
mod engine;
mod index;
mod model;
mod render;

pub use compile::Options;
pub use decision::{
    apply_state, next_state, Article, CompileError, CompileErrors, Context, Decision, Explanation,
    Incoming, IncomingKind, Matched, Media, PlannedReply, Problem, Verdict,
};
pub use engine::RuleSet;
pub use index::normalize;
pub use model::{
    ActiveHours, ArticleTemplate, Flow, Keyword, MatchKind, On, Reply, ReplyMode, Rule, RuleFile,
    RuleKind, Trigger, When,
};
pub use render::{truncate_bytes, width, ARTICLES_MAX, DESCRIPTION_MAX_WIDTH, TEXT_MAX_BYTES};
