//! The compiled rule set: one automaton for every literal keyword, one
//! `RegexSet` for every regex keyword, so deciding costs grow with the
//! message, not with the rule count; then the few candidate rules are
//! checked in priority order exactly as a linear scan would.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind as AcMatchKind};
use chrono::{DateTime, Datelike, NaiveTime, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Serialize;
use unicode_normalization::UnicodeNormalization;

use crate::model::{Flow, MatchKind, On, Reply, ReplyMode, Rule, RuleKind};
use crate::render::{self, Templates, Tmpl};

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
    fn is_event(self) -> bool {
        matches!(self, Self::Subscribe | Self::Unsubscribe | Self::Event)
    }

    fn as_str(self) -> &'static str {
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
    /// The decision (the same as [`RuleSet::decide`]'s).
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

/// Options of a rule set.
#[derive(Debug, Clone)]
pub struct Options {
    /// Time zone of rules that name none (default Asia/Shanghai, R11).
    pub default_timezone: Tz,
    /// Uploaded media by local name: name -> (app key, `media_id`) for
    /// every app that has one by that name. A reply's `media = "name"` is
    /// resolved here; an unknown name does not compile.
    pub media: std::collections::HashMap<String, Vec<(String, String)>>,
}

impl Options {
    /// Options with the default time zone named by `tz` (IANA name).
    ///
    /// # Errors
    /// When the name is not a known time zone.
    pub fn with_timezone(tz: &str) -> Result<Self, String> {
        tz.parse::<Tz>()
            .map(|default_timezone| Self {
                default_timezone,
                media: std::collections::HashMap::new(),
            })
            .map_err(|_| format!("unknown time zone {tz:?}"))
    }

    /// These options, with the uploaded media by local name.
    pub fn with_media(
        mut self,
        media: std::collections::HashMap<String, Vec<(String, String)>>,
    ) -> Self {
        self.media = media;
        self
    }

    /// Resolves a local media name for a rule scoped to `app` (or to every
    /// app).
    fn resolve_media(&self, name: &str, app: Option<&str>) -> Result<String, String> {
        let Some(all) = self.media.get(name) else {
            return Err(format!(
                "no uploaded medium is named {name:?} (pubbot media upload ... --name {name})"
            ));
        };
        match app {
            Some(a) => all
                .iter()
                .find(|(k, _)| k == a)
                .map(|(_, id)| id.clone())
                .ok_or_else(|| format!("medium {name:?} is not uploaded for app {a:?}")),
            None => match all.as_slice() {
                [(_, id)] => Ok(id.clone()),
                _ => Err(format!(
                    "medium {name:?} exists for several apps: scope the rule with app_key"
                )),
            },
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            media: std::collections::HashMap::new(),
            default_timezone: chrono_tz::Asia::Shanghai,
        }
    }
}

struct CompiledKeyword {
    kind: MatchKind,
    case_sensitive: bool,
    /// NFKC-normalised, trimmed, lowercased unless case-sensitive.
    literal: String,
    regex: Option<Regex>,
    /// Why a rule matched through this keyword (made once, cloned per match).
    why: String,
}

struct Active {
    from: NaiveTime,
    to: NaiveTime,
    days: Option<HashSet<Weekday>>,
}

pub(crate) enum CompiledReply {
    Text(Tmpl),
    Image(Media),
    Voice(Media),
    News(Vec<render::ArticleTmpl>),
}

struct CompiledRule {
    rule: Rule,
    on: On,
    tz: Tz,
    keywords: Option<Vec<CompiledKeyword>>,
    senders: Option<HashSet<String>>,
    active: Option<Active>,
    replies: Vec<CompiledReply>,
    fallback: Vec<CompiledReply>,
    /// Why a keyword-less rule matched.
    on_why: String,
}

/// Literal keywords of one case mode, in one automaton.
#[derive(Default)]
struct LiteralIndex {
    automaton: Option<AhoCorasick>,
    /// Per automaton pattern: (rule position, keyword position, kind).
    targets: Vec<Vec<(u32, u16, MatchKind)>>,
    /// Equals keywords by their text.
    equals: HashMap<String, Vec<(u32, u16)>>,
}

impl LiteralIndex {
    fn build(entries: Vec<(String, u32, u16, MatchKind)>) -> Result<Self, String> {
        let mut idx = Self::default();
        let mut pattern_ids: HashMap<String, usize> = HashMap::new();
        let mut patterns: Vec<String> = Vec::new();
        for (text, rule, kw, kind) in entries {
            if kind == MatchKind::Equals {
                idx.equals.entry(text).or_default().push((rule, kw));
                continue;
            }
            let id = *pattern_ids.entry(text.clone()).or_insert_with(|| {
                patterns.push(text);
                idx.targets.push(Vec::new());
                patterns.len() - 1
            });
            idx.targets[id].push((rule, kw, kind));
        }
        if !patterns.is_empty() {
            let ac = AhoCorasickBuilder::new()
                .match_kind(AcMatchKind::Standard)
                .build(&patterns)
                .map_err(|e| e.to_string())?;
            idx.automaton = Some(ac);
        }
        Ok(idx)
    }

    fn find(&self, text: &str, out: &mut Vec<(u32, u16)>) {
        if !self.equals.is_empty() {
            if let Some(hits) = self.equals.get(text) {
                out.extend_from_slice(hits);
            }
        }
        let Some(ac) = &self.automaton else { return };
        for m in ac.find_overlapping_iter(text) {
            for &(rule, kw, kind) in &self.targets[m.pattern().as_usize()] {
                if kind == MatchKind::Contains || m.start() == 0 {
                    out.push((rule, kw));
                }
            }
        }
    }
}

/// A compiled, immutable rule set. Build it with [`RuleSet::compile`], swap
/// it atomically when rules change.
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    ci: LiteralIndex,
    cs: LiteralIndex,
    regexes: Option<RegexSet>,
    regex_targets: Vec<(u32, u16)>,
    /// Positions of enabled, non-default rules without a keyword condition.
    keywordless: Vec<u32>,
    /// Positions of enabled default rules.
    defaults: Vec<u32>,
    templates: Templates,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

/// Unicode NFKC, trimmed (full-width and half-width forms match).
pub fn normalize(text: &str) -> String {
    normalized(text).into_owned()
}

/// [`normalize`] without a copy for ASCII text (NFKC leaves ASCII alone).
fn normalized(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        Cow::Borrowed(text.trim())
    } else {
        Cow::Owned(text.nfkc().collect::<String>().trim().to_owned())
    }
}

/// Lowercase for case-insensitive keywords, without a copy when nothing
/// changes.
fn fold(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        }
    } else {
        Cow::Owned(text.to_lowercase())
    }
}

fn parse_hhmm(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M").ok()
}

fn parse_day(s: &str) -> Option<Weekday> {
    match s.trim().to_ascii_lowercase().as_str() {
        "mon" | "monday" => Some(Weekday::Mon),
        "tue" | "tuesday" => Some(Weekday::Tue),
        "wed" | "wednesday" => Some(Weekday::Wed),
        "thu" | "thursday" => Some(Weekday::Thu),
        "fri" | "friday" => Some(Weekday::Fri),
        "sat" | "saturday" => Some(Weekday::Sat),
        "sun" | "sunday" => Some(Weekday::Sun),
        _ => None,
    }
}

fn compile_media(
    url: &Option<String>,
    media_id: &Option<String>,
    local: &Option<String>,
    what: &str,
    resolve: impl Fn(&str) -> Result<String, String>,
) -> Result<Media, String> {
    match (
        url.as_deref().map(str::trim),
        media_id.as_deref().map(str::trim),
        local.as_deref().map(str::trim),
    ) {
        (Some(u), None, None) if !u.is_empty() => Ok(Media::Url(u.to_owned())),
        (None, Some(m), None) if !m.is_empty() => Ok(Media::MediaId(m.to_owned())),
        (None, None, Some(n)) if !n.is_empty() => resolve(n).map(Media::MediaId),
        _ => Err(format!(
            "{what} reply needs exactly one of url, media_id or media (a local name)"
        )),
    }
}

impl RuleSet {
    /// Compiles rules, reporting every invalid one at once.
    ///
    /// # Errors
    /// [`CompileErrors`]: bad regex, empty keyword list or pattern, unknown
    /// time zone, bad active hours, wrong article count, missing fields,
    /// template syntax errors, duplicate names — each naming its rule.
    pub fn compile(rules: Vec<Rule>, options: &Options) -> Result<Self, CompileErrors> {
        let mut errors = Vec::new();
        let mut order: Vec<(usize, Rule)> = rules.into_iter().enumerate().collect();
        // Priority order: higher first, then lower id, then file order.
        order.sort_by(|(ia, a), (ib, b)| {
            b.priority
                .cmp(&a.priority)
                .then(a.id.cmp(&b.id))
                .then(ia.cmp(ib))
        });
        let mut templates = Templates::new();
        let mut compiled = Vec::with_capacity(order.len());
        let mut names = HashSet::new();
        for (file_pos, rule) in order {
            let label = if rule.name.trim().is_empty() {
                format!("#{}", file_pos + 1)
            } else {
                rule.name.clone()
            };
            let mut problems = Vec::new();
            if rule.name.trim().is_empty() {
                problems.push("name is empty".to_owned());
            } else if !names.insert(rule.name.clone()) {
                problems.push("another rule has the same name".to_owned());
            }
            let position = compiled.len();
            match compile_rule(&rule, position, options, &mut templates) {
                Ok(c) if problems.is_empty() => compiled.push(c),
                Ok(_) => {}
                Err(mut p) => problems.append(&mut p),
            }
            errors.extend(problems.into_iter().map(|problem| CompileError {
                rule: label.clone(),
                problem,
            }));
        }
        if !errors.is_empty() {
            return Err(CompileErrors(errors));
        }
        Self::index(compiled, templates).map_err(|e| {
            CompileErrors(vec![CompileError {
                rule: "(index)".into(),
                problem: e,
            }])
        })
    }

    fn index(rules: Vec<CompiledRule>, templates: Templates) -> Result<Self, String> {
        let mut ci = Vec::new();
        let mut cs = Vec::new();
        let mut regex_sources = Vec::new();
        let mut regex_targets = Vec::new();
        let mut keywordless = Vec::new();
        let mut defaults = Vec::new();
        for (pos, r) in rules.iter().enumerate() {
            let pos = u32::try_from(pos).map_err(|_| "too many rules".to_owned())?;
            if !r.rule.enabled {
                continue;
            }
            if r.rule.kind == RuleKind::Default {
                defaults.push(pos);
                continue;
            }
            let Some(keywords) = &r.keywords else {
                keywordless.push(pos);
                continue;
            };
            for (k, kw) in keywords.iter().enumerate() {
                let k = u16::try_from(k).map_err(|_| "too many keywords in one rule".to_owned())?;
                match kw.kind {
                    MatchKind::Regex => {
                        let src = kw
                            .regex
                            .as_ref()
                            .map(|r| r.as_str().to_owned())
                            .unwrap_or_default();
                        regex_sources.push((src, kw.case_sensitive));
                        regex_targets.push((pos, k));
                    }
                    kind if kw.case_sensitive => cs.push((kw.literal.clone(), pos, k, kind)),
                    kind => ci.push((kw.literal.clone(), pos, k, kind)),
                }
            }
        }
        let regexes = if regex_sources.is_empty() {
            None
        } else {
            // Case-insensitivity is carried inline so one set serves both.
            let patterns: Vec<String> = regex_sources
                .iter()
                .map(|(src, cs)| {
                    if *cs {
                        src.clone()
                    } else {
                        format!("(?i:{src})")
                    }
                })
                .collect();
            Some(
                RegexSetBuilder::new(patterns)
                    .dfa_size_limit(64 << 20)
                    .size_limit(256 << 20)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
        };
        Ok(Self {
            rules,
            ci: LiteralIndex::build(ci)?,
            cs: LiteralIndex::build(cs)?,
            regexes,
            regex_targets,
            keywordless,
            defaults,
            templates,
        })
    }

    /// How many rules it holds (enabled or not).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Candidate (rule position, first matching keyword) pairs from the
    /// automata, sorted by position.
    fn keyword_hits(&self, normalized: &str) -> Vec<(u32, u16)> {
        let mut hits = Vec::new();
        if normalized.is_empty() {
            return hits;
        }
        self.cs.find(normalized, &mut hits);
        if self.ci.automaton.is_some() || !self.ci.equals.is_empty() {
            self.ci.find(&fold(normalized), &mut hits);
        }
        if let Some(set) = &self.regexes {
            for i in set.matches(normalized).iter() {
                hits.push(self.regex_targets[i]);
            }
        }
        hits.sort_unstable();
        hits.dedup_by_key(|(rule, _)| *rule);
        hits
    }

    /// Decides the replies to `msg`.
    pub fn decide(&self, msg: &Incoming<'_>, ctx: &Context) -> Decision {
        let normalized = if msg.kind == IncomingKind::Text {
            normalized(msg.text)
        } else {
            Cow::Borrowed("")
        };
        let hits = self.keyword_hits(&normalized);
        // Merge keyword hits with keyword-less rules, in priority order.
        let mut walk: Vec<(u32, Option<u16>)> =
            Vec::with_capacity(hits.len() + self.keywordless.len());
        let (mut a, mut b) = (0, 0);
        while a < hits.len() || b < self.keywordless.len() {
            let take_hit = match (hits.get(a), self.keywordless.get(b)) {
                (Some(h), Some(k)) => h.0 < *k,
                (Some(_), None) => true,
                _ => false,
            };
            if take_hit {
                walk.push((hits[a].0, Some(hits[a].1)));
                a += 1;
            } else {
                walk.push((self.keywordless[b], None));
                b += 1;
            }
        }
        let mut decision = Decision::default();
        for (pos, kw) in walk {
            let rule = &self.rules[pos as usize];
            if let Ok(why) = rule.conditions(msg, ctx, kw) {
                self.apply(rule, msg, ctx, &normalized, kw, why, &mut decision);
                if rule.rule.flow == Flow::Stop {
                    break;
                }
            }
        }
        if decision.matched.is_empty() && !msg.kind.is_event() {
            for &pos in &self.defaults {
                let rule = &self.rules[pos as usize];
                if let Ok((why, kw)) = rule.full_match(msg, ctx, &normalized, &fold(&normalized)) {
                    self.apply(
                        rule,
                        msg,
                        ctx,
                        &normalized,
                        kw,
                        format!("default rule: {why}"),
                        &mut decision,
                    );
                    if rule.rule.flow == Flow::Stop {
                        break;
                    }
                }
            }
        }
        decision
    }

    /// The same decision by scanning every rule in priority order, with the
    /// reason each rule did or did not match: the CLI's dry run.
    pub fn explain(&self, msg: &Incoming<'_>, ctx: &Context) -> Explanation {
        let mut verdicts = Vec::with_capacity(self.rules.len());
        let decision = self.linear(msg, ctx, Some(&mut verdicts));
        Explanation {
            rules: verdicts,
            decision,
        }
    }

    /// The naive linear scan: every rule in priority order, keywords checked
    /// one by one. The reference [`Self::decide`] is tested and benchmarked
    /// against; use `decide`.
    pub fn decide_linear(&self, msg: &Incoming<'_>, ctx: &Context) -> Decision {
        self.linear(msg, ctx, None)
    }

    fn linear(
        &self,
        msg: &Incoming<'_>,
        ctx: &Context,
        mut verdicts: Option<&mut Vec<Verdict>>,
    ) -> Decision {
        let normalized = if msg.kind == IncomingKind::Text {
            normalized(msg.text)
        } else {
            Cow::Borrowed("")
        };
        let folded = fold(&normalized);
        let mut decision = Decision::default();
        let mut note = |rule: &CompiledRule, matched: bool, reason: &dyn Fn() -> String| {
            if let Some(v) = verdicts.as_deref_mut() {
                v.push(Verdict {
                    rule_id: rule.rule.id,
                    rule: rule.rule.name.clone(),
                    matched,
                    reason: reason(),
                });
            }
        };
        let mut stopped: Option<&str> = None;
        for rule in self
            .rules
            .iter()
            .filter(|r| r.rule.kind != RuleKind::Default)
        {
            if let Some(by) = stopped {
                note(rule, false, &|| {
                    format!("not considered: {by:?} matched first and stops")
                });
                continue;
            }
            match rule.full_match(msg, ctx, &normalized, &folded) {
                Ok((why, kw)) => {
                    note(rule, true, &|| why.clone());
                    self.apply(rule, msg, ctx, &normalized, kw, why, &mut decision);
                    if rule.rule.flow == Flow::Stop {
                        stopped = Some(&rule.rule.name);
                    }
                }
                Err(reason) => note(rule, false, &|| reason.to_string()),
            }
        }
        let others_matched = !decision.matched.is_empty();
        let mut stopped: Option<&str> = None;
        for rule in self
            .rules
            .iter()
            .filter(|r| r.rule.kind == RuleKind::Default)
        {
            if others_matched {
                note(rule, false, &|| "default rule: another rule matched".into());
            } else if msg.kind.is_event() {
                note(rule, false, &|| {
                    "default rule: events get no default reply".into()
                });
            } else if let Some(by) = stopped {
                note(rule, false, &|| {
                    format!("not considered: default {by:?} matched first and stops")
                });
            } else {
                match rule.full_match(msg, ctx, &normalized, &folded) {
                    Ok((why, kw)) => {
                        let why = format!("default rule: {why}");
                        note(rule, true, &|| why.clone());
                        self.apply(rule, msg, ctx, &normalized, kw, why, &mut decision);
                        if rule.rule.flow == Flow::Stop {
                            stopped = Some(&rule.rule.name);
                        }
                    }
                    Err(reason) => note(rule, false, &|| reason.to_string()),
                }
            }
        }
        decision
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        rule: &CompiledRule,
        msg: &Incoming<'_>,
        ctx: &Context,
        normalized: &str,
        kw: Option<u16>,
        why: String,
        out: &mut Decision,
    ) {
        out.matched.push(Matched {
            rule_id: rule.rule.id,
            rule: rule.rule.name.clone(),
            why,
        });
        let regex = kw
            .and_then(|k| rule.keywords.as_ref().and_then(|ks| ks.get(usize::from(k))))
            .and_then(|k| k.regex.as_ref());
        let captures = regex.and_then(|re| re.captures(normalized));
        let names: Vec<Option<&str>> = regex
            .map(|r| r.capture_names().collect())
            .unwrap_or_default();
        let vars = render::Vars::new(msg, ctx, rule.tz, captures.as_ref(), &names);
        let chosen: Vec<&CompiledReply> = match rule.rule.mode {
            ReplyMode::All => rule.replies.iter().collect(),
            ReplyMode::RandomOne => {
                let n = rule.replies.len() as u64;
                // Pure: the caller's random value, mixed with the rule id so
                // two random rules do not always pick the same index.
                let pick = ctx
                    .random
                    .wrapping_add((rule.rule.id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                    % n.max(1);
                rule.replies.get(pick as usize).into_iter().collect()
            }
        };
        let render_all = |replies: Vec<&CompiledReply>, out: &mut Decision| {
            let mut planned_all = Vec::new();
            for reply in replies {
                match render::reply(&self.templates, reply, &vars) {
                    Ok((planned, notes)) => {
                        out.problems
                            .extend(notes.into_iter().map(|message| Problem {
                                rule: rule.rule.name.clone(),
                                message,
                            }));
                        planned_all.extend(planned);
                    }
                    Err(message) => out.problems.push(Problem {
                        rule: rule.rule.name.clone(),
                        message,
                    }),
                }
            }
            planned_all
        };
        let planned = render_all(chosen, out);
        out.replies.extend(planned);
        if let Some(handler) = &rule.rule.handler {
            let fallback = render_all(rule.fallback.iter().collect(), out);
            let list: Vec<String> = captures
                .as_ref()
                .map(|c| {
                    c.iter()
                        .map(|m| m.map(|m| m.as_str().to_owned()).unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default();
            let named = captures
                .as_ref()
                .map(|c| {
                    names
                        .iter()
                        .enumerate()
                        .filter_map(|(i, n)| {
                            n.map(|n| {
                                (
                                    n.to_owned(),
                                    c.get(i).map(|m| m.as_str().to_owned()).unwrap_or_default(),
                                )
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.replies.push(PlannedReply::Handler {
                handler: handler.clone(),
                rule: rule.rule.name.clone(),
                captures: list,
                named,
                fallback,
                event: serde_json::Value::Null,
            });
        }
        out.state_clear
            .extend(rule.rule.clear_state.iter().cloned());
        for k in &rule.rule.clear_state {
            if k == "*" {
                out.state_set.clear();
            } else {
                out.state_set.remove(k);
            }
        }
        out.state_set.extend(
            rule.rule
                .set_state
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
}

/// The conversation state after a decision: `state` with the decision's
/// clears, then its sets, applied.
pub fn next_state(state: Option<&serde_json::Value>, d: &Decision) -> serde_json::Value {
    let mut map = match state {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    for k in &d.state_clear {
        if k == "*" {
            map.clear();
        } else {
            map.remove(k);
        }
    }
    for (k, v) in &d.state_set {
        map.insert(k.clone(), v.clone());
    }
    serde_json::Value::Object(map)
}

impl CompiledRule {
    /// Every condition but the keywords (already known to hold when `kw` is
    /// given by the index, or absent for keyword-less rules).
    fn conditions(
        &self,
        msg: &Incoming<'_>,
        ctx: &Context,
        kw: Option<u16>,
    ) -> Result<String, Cow<'static, str>> {
        if !self.rule.enabled {
            return Err(Cow::Borrowed("disabled"));
        }
        if let Some(app) = &self.rule.app_key {
            if app != msg.app_key {
                return Err(format!("for app {app:?}").into());
            }
        }
        if let Some(mcid) = &self.rule.mcid {
            if mcid != msg.mcid {
                return Err(format!("for account {mcid:?}").into());
            }
        }
        let kind_ok = match self.on {
            On::Any => !msg.kind.is_event(),
            On::Text => msg.kind == IncomingKind::Text,
            On::Image => msg.kind == IncomingKind::Image,
            On::Voice => msg.kind == IncomingKind::Voice,
            On::Location => msg.kind == IncomingKind::Location,
            On::Imgtxt => msg.kind == IncomingKind::Imgtxt,
            On::Subscribe => msg.kind == IncomingKind::Subscribe,
            On::Unsubscribe => msg.kind == IncomingKind::Unsubscribe,
            // R14: only a rule that names unlisted events answers one.
            On::Event => {
                msg.kind == IncomingKind::Event
                    && self
                        .rule
                        .trigger
                        .event
                        .as_deref()
                        .is_none_or(|e| e.eq_ignore_ascii_case(msg.event))
            }
        };
        if !kind_ok {
            return Err(format!("on {:?}, got {}", self.on, msg.kind.as_str())
                .to_lowercase()
                .into());
        }
        if let Some(when) = &self.rule.when {
            for (key, want) in &when.state {
                let have = msg.state.and_then(|s| s.get(key));
                if have != Some(want) {
                    return Err(format!(
                        "state.{key} is {}, wants {want}",
                        have.map_or_else(|| "unset".to_owned(), ToString::to_string)
                    )
                    .into());
                }
            }
        }
        if let Some(senders) = &self.senders {
            if !senders.contains(msg.user) {
                return Err(format!("sender {:?} not in the allow-list", msg.user).into());
            }
        }
        if let Some(active) = &self.active {
            let local = ctx.now.with_timezone(&self.tz);
            let t = NaiveTime::from_hms_opt(local.hour(), local.minute(), 0).unwrap_or_default();
            let in_hours = if active.from <= active.to {
                t >= active.from && t < active.to
            } else {
                t >= active.from || t < active.to
            };
            if !in_hours {
                return Err(format!(
                    "outside active hours ({} local {})",
                    local.format("%H:%M"),
                    self.tz
                )
                .into());
            }
            if let Some(days) = &active.days {
                if !days.contains(&local.weekday()) {
                    return Err(format!("not an active day ({} local)", local.weekday()).into());
                }
            }
        }
        Ok(match (kw, &self.keywords) {
            (Some(k), Some(ks)) => ks[usize::from(k)].why.clone(),
            _ => self.on_why.clone(),
        })
    }

    /// Every condition, keywords checked one by one (the linear scan).
    /// Keywords first: they rule out most rules without allocating.
    fn full_match(
        &self,
        msg: &Incoming<'_>,
        ctx: &Context,
        normalized: &str,
        folded: &str,
    ) -> Result<(String, Option<u16>), Cow<'static, str>> {
        let kw = match &self.keywords {
            None => None,
            Some(ks) => {
                let found = ks.iter().position(|k| {
                    let text = if k.case_sensitive || k.kind == MatchKind::Regex {
                        normalized
                    } else {
                        folded
                    };
                    !text.is_empty()
                        && match k.kind {
                            MatchKind::Contains => text.contains(k.literal.as_str()),
                            MatchKind::Equals => text == k.literal,
                            MatchKind::Prefix => text.starts_with(k.literal.as_str()),
                            MatchKind::Regex => k.regex.as_ref().is_some_and(|r| r.is_match(text)),
                        }
                });
                match found {
                    Some(i) => Some(u16::try_from(i).unwrap_or(u16::MAX)),
                    None if msg.kind != IncomingKind::Text => {
                        return Err(Cow::Borrowed("keywords need a text message"))
                    }
                    None => return Err(Cow::Borrowed("no keyword matched")),
                }
            }
        };
        self.conditions(msg, ctx, kw).map(|why| (why, kw))
    }
}

fn compile_rule(
    rule: &Rule,
    position: usize,
    options: &Options,
    templates: &mut Templates,
) -> Result<CompiledRule, Vec<String>> {
    let mut problems = Vec::new();
    let tz = match &rule.timezone {
        None => options.default_timezone,
        Some(name) => name.parse::<Tz>().unwrap_or_else(|_| {
            problems.push(format!("unknown time zone {name:?}"));
            options.default_timezone
        }),
    };
    let on = match (rule.kind, rule.trigger.on) {
        (RuleKind::Follow, On::Any | On::Subscribe) => On::Subscribe,
        (RuleKind::Follow, other) => {
            problems.push(
                format!("a follow rule is about subscribe events, not {other:?}").to_lowercase(),
            );
            other
        }
        (RuleKind::Default, On::Subscribe | On::Unsubscribe | On::Event) => {
            problems.push("a default rule answers messages, not events".into());
            rule.trigger.on
        }
        (_, on) => on,
    };
    if rule.trigger.event.is_some() && on != On::Event {
        problems.push("trigger.event needs on = \"event\"".into());
    }
    let keywords = match &rule.trigger.keywords {
        None => None,
        Some(list) if list.is_empty() => {
            problems.push("keywords is empty (leave it out to match without keywords)".into());
            None
        }
        Some(list) => {
            if !matches!(on, On::Any | On::Text) {
                problems.push(
                    format!("keywords need text messages, but the rule is on {on:?}")
                        .to_lowercase(),
                );
            }
            let mut out = Vec::with_capacity(list.len());
            for k in list {
                let how = match k.match_kind {
                    MatchKind::Contains => "contains",
                    MatchKind::Equals => "equals",
                    MatchKind::Prefix => "prefix",
                    MatchKind::Regex => "regex",
                };
                let why = format!("keyword {:?} ({how})", k.pattern);
                if k.pattern.trim().is_empty() {
                    problems.push("a keyword pattern is empty".into());
                    continue;
                }
                let (literal, regex) = if k.match_kind == MatchKind::Regex {
                    match RegexBuilder::new(&k.pattern)
                        .case_insensitive(!k.case_sensitive)
                        .size_limit(1 << 20)
                        .build()
                    {
                        Ok(r) => (String::new(), Some(r)),
                        Err(e) => {
                            problems.push(format!("keyword {:?}: bad regex: {e}", k.pattern));
                            continue;
                        }
                    }
                } else {
                    let n = normalize(&k.pattern);
                    (
                        if k.case_sensitive {
                            n.clone()
                        } else {
                            fold(&n).into_owned()
                        },
                        None,
                    )
                };
                out.push(CompiledKeyword {
                    kind: k.match_kind,
                    case_sensitive: k.case_sensitive,
                    literal,
                    regex,
                    why,
                });
            }
            Some(out)
        }
    };
    let active = rule.trigger.active.as_ref().and_then(|a| {
        let mut days = None;
        if let Some(list) = &a.days {
            let mut set = HashSet::new();
            for d in list {
                match parse_day(d) {
                    Some(w) => {
                        set.insert(w);
                    }
                    None => problems.push(format!("unknown weekday {d:?} (mon..sun)")),
                }
            }
            days = Some(set);
        }
        match (parse_hhmm(&a.from), parse_hhmm(&a.to)) {
            (Some(from), Some(to)) => Some(Active { from, to, days }),
            _ => {
                problems.push(format!(
                    "active hours must be HH:MM, got {:?} to {:?}",
                    a.from, a.to
                ));
                None
            }
        }
    });
    let changes_state = !rule.set_state.is_empty() || !rule.clear_state.is_empty();
    if rule.replies.is_empty() && rule.handler.is_none() && !changes_state {
        problems.push("no replies (and no handler or state change)".into());
    }
    if rule.handler.as_deref().is_some_and(|h| h.trim().is_empty()) {
        problems.push("handler is empty".into());
    }
    if !rule.fallback.is_empty() && rule.handler.is_none() {
        problems.push("fallback needs a handler".into());
    }
    let replies = compile_replies(
        &rule.replies,
        &format!("{position}"),
        rule,
        options,
        templates,
        &mut problems,
        "reply",
    );
    let fallback = compile_replies(
        &rule.fallback,
        &format!("{position}/fallback"),
        rule,
        options,
        templates,
        &mut problems,
        "fallback",
    );
    let senders = rule
        .trigger
        .senders
        .as_ref()
        .map(|s| s.iter().cloned().collect());
    if problems.is_empty() {
        Ok(CompiledRule {
            rule: rule.clone(),
            on,
            tz,
            keywords,
            senders,
            active,
            replies,
            fallback,
            on_why: format!("on {on:?}").to_lowercase(),
        })
    } else {
        Err(problems)
    }
}

fn compile_replies(
    list: &[Reply],
    prefix: &str,
    rule: &Rule,
    options: &Options,
    templates: &mut render::Templates,
    problems: &mut Vec<String>,
    what: &str,
) -> Vec<CompiledReply> {
    let mut replies = Vec::with_capacity(list.len());
    for (j, reply) in list.iter().enumerate() {
        let key = format!("{prefix}/{j}");
        let compiled = match reply {
            Reply::Text { text } => templates
                .add(&format!("{key}/text"), text)
                .map(CompiledReply::Text),
            Reply::Image {
                url,
                media_id,
                media,
            } => compile_media(url, media_id, media, "an image", |n| {
                options.resolve_media(n, rule.app_key.as_deref())
            })
            .map(CompiledReply::Image),
            Reply::Voice {
                url,
                media_id,
                media,
            } => compile_media(url, media_id, media, "a voice", |n| {
                options.resolve_media(n, rule.app_key.as_deref())
            })
            .map(CompiledReply::Voice),
            Reply::News { articles } => {
                render::compile_articles(templates, &key, articles).map(CompiledReply::News)
            }
        };
        match compiled {
            Ok(c) => replies.push(c),
            Err(e) => problems.push(format!("{what} {}: {e}", j + 1)),
        }
    }
    replies
}
