//! Compiling rules: options, the checked and compiled form of each rule
//! (keywords, active hours, templates, media names), every problem of every
//! rule reported at once.

use std::collections::HashSet;

use chrono::{NaiveTime, Weekday};
use chrono_tz::Tz;
use regex::{Regex, RegexBuilder};

use crate::decision::Media;
use crate::index::{fold, normalize};
use crate::model::{MatchKind, On, Reply, Rule, RuleKind};
use crate::render::{self, CompiledReply, Templates};

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

pub(crate) struct CompiledKeyword {
    pub(crate) kind: MatchKind,
    pub(crate) case_sensitive: bool,
    /// NFKC-normalised, trimmed, lowercased unless case-sensitive.
    pub(crate) literal: String,
    pub(crate) regex: Option<Regex>,
    /// Why a rule matched through this keyword (made once, cloned per match).
    pub(crate) why: String,
}

pub(crate) struct Active {
    pub(crate) from: NaiveTime,
    pub(crate) to: NaiveTime,
    pub(crate) days: Option<HashSet<Weekday>>,
}

pub(crate) struct CompiledRule {
    pub(crate) rule: Rule,
    pub(crate) on: On,
    pub(crate) tz: Tz,
    pub(crate) keywords: Option<Vec<CompiledKeyword>>,
    pub(crate) senders: Option<HashSet<String>>,
    pub(crate) active: Option<Active>,
    pub(crate) replies: Vec<CompiledReply>,
    pub(crate) fallback: Vec<CompiledReply>,
    /// Why a keyword-less rule matched.
    pub(crate) on_why: String,
}

pub(crate) fn parse_hhmm(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M").ok()
}

pub(crate) fn parse_day(s: &str) -> Option<Weekday> {
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

pub(crate) fn compile_media(
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

pub(crate) fn compile_rule(
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

pub(crate) fn compile_replies(
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
