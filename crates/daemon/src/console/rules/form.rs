//! The rule form: what an editor typed, as strings, turned into a
//! [`Rule`] and back, and the compiler's problems placed at the fields
//! they are about.

use std::collections::BTreeMap;

use pubbot_rules::{
    ActiveHours, Keyword, MatchKind, On, Reply, ReplyMode, Rule, RuleKind, Trigger,
};
use serde::{Deserialize, Serialize};

use crate::pipeline::rules::RulesError;

/// The rule form as typed: every field a string, so what was typed comes
/// back as it was when the form is refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RuleForm {
    name: String,
    app_key: String,
    mcid: String,
    kind: String,
    enabled: Option<String>,
    priority: String,
    on: String,
    event: String,
    /// One keyword a line.
    keywords: String,
    match_kind: String,
    case_sensitive: Option<String>,
    mode: String,
    /// Text replies, separated by a line holding only `---`.
    replies: String,
    active_from: String,
    active_to: String,
    /// Weekdays, `mon tue ...`; empty: every day.
    active_days: String,
    timezone: String,
    /// The version the edit began from.
    pub(super) version: String,
}

/// Problems by form field (`general` for the rest).
pub(super) type FieldErrors = BTreeMap<&'static str, Vec<String>>;

pub(super) fn enum_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn parse_enum<T: for<'de> Deserialize<'de> + Default>(s: &str) -> Result<T, String> {
    if s.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?} is not one of the choices"))
}

const SEPARATOR: &str = "---";

impl RuleForm {
    /// A new rule's form: enabled, a keyword rule on any message, keywords
    /// contained, every reply sent.
    pub(super) fn blank() -> Self {
        Self {
            enabled: Some("on".into()),
            kind: "keyword".into(),
            on: "any".into(),
            match_kind: "contains".into(),
            mode: "all".into(),
            ..Self::default()
        }
    }

    /// The form for a stored rule.
    pub(super) fn from_rule(r: &Rule, version: i32) -> Self {
        let keywords = r.trigger.keywords.clone().unwrap_or_default();
        Self {
            name: r.name.clone(),
            app_key: r.app_key.clone().unwrap_or_default(),
            mcid: r.mcid.clone().unwrap_or_default(),
            kind: enum_name(&r.kind),
            enabled: r.enabled.then(|| "on".into()),
            priority: r.priority.to_string(),
            on: enum_name(&r.trigger.on),
            event: r.trigger.event.clone().unwrap_or_default(),
            keywords: keywords
                .iter()
                .map(|k| k.pattern.clone())
                .collect::<Vec<_>>()
                .join("\n"),
            match_kind: keywords
                .first()
                .map_or_else(|| "contains".into(), |k| enum_name(&k.match_kind)),
            case_sensitive: keywords
                .first()
                .is_some_and(|k| k.case_sensitive)
                .then(|| "on".into()),
            mode: enum_name(&r.mode),
            replies: r
                .replies
                .iter()
                .filter_map(|x| match x {
                    Reply::Text { text } => Some(text.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(&format!("\n{SEPARATOR}\n")),
            active_from: r
                .trigger
                .active
                .as_ref()
                .map(|a| a.from.clone())
                .unwrap_or_default(),
            active_to: r
                .trigger
                .active
                .as_ref()
                .map(|a| a.to.clone())
                .unwrap_or_default(),
            active_days: r
                .trigger
                .active
                .as_ref()
                .and_then(|a| a.days.clone())
                .unwrap_or_default()
                .join(" "),
            timezone: r.timezone.clone().unwrap_or_default(),
            version: version.to_string(),
        }
    }

    /// The rule the form describes. Parts of `base` the form does not show
    /// (state conditions and changes, a handler, image or news replies)
    /// are kept as they are.
    pub(super) fn to_rule(&self, base: Option<&Rule>) -> Result<Rule, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut rule = base.cloned().unwrap_or_else(|| Rule {
            id: 0,
            name: String::new(),
            app_key: None,
            mcid: None,
            enabled: true,
            priority: 0,
            kind: RuleKind::default(),
            trigger: Trigger::default(),
            replies: Vec::new(),
            when: None,
            set_state: BTreeMap::new(),
            clear_state: Vec::new(),
            handler: None,
            fallback: Vec::new(),
            mode: ReplyMode::default(),
            flow: pubbot_rules::Flow::default(),
            timezone: None,
        });
        let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        rule.name = self.name.trim().to_owned();
        if rule.name.is_empty() {
            errors
                .entry("name")
                .or_default()
                .push("a rule needs a name".into());
        }
        rule.app_key = opt(&self.app_key);
        rule.mcid = opt(&self.mcid);
        rule.enabled = self.enabled.is_some();
        match self.priority.trim() {
            "" => rule.priority = 0,
            p => match p.parse() {
                Ok(n) => rule.priority = n,
                Err(_) => errors
                    .entry("priority")
                    .or_default()
                    .push(format!("{p:?} is not a whole number")),
            },
        }
        match parse_enum::<RuleKind>(&self.kind) {
            Ok(k) => rule.kind = k,
            Err(e) => errors.entry("kind").or_default().push(e),
        }
        match parse_enum::<On>(&self.on) {
            Ok(o) => rule.trigger.on = o,
            Err(e) => errors.entry("on").or_default().push(e),
        }
        rule.trigger.event = opt(&self.event);
        let match_kind = match parse_enum::<MatchKind>(&self.match_kind) {
            Ok(m) => m,
            Err(e) => {
                errors.entry("match_kind").or_default().push(e);
                MatchKind::default()
            }
        };
        let words: Vec<Keyword> = self
            .keywords
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|pattern| Keyword {
                pattern: pattern.to_owned(),
                match_kind,
                case_sensitive: self.case_sensitive.is_some(),
            })
            .collect();
        rule.trigger.keywords = (!words.is_empty()).then_some(words);
        match parse_enum::<ReplyMode>(&self.mode) {
            Ok(m) => rule.mode = m,
            Err(e) => errors.entry("mode").or_default().push(e),
        }
        if !has_other_replies(base) {
            rule.replies = split_replies(&self.replies)
                .into_iter()
                .map(|text| Reply::Text { text })
                .collect();
        }
        rule.trigger.active = match (opt(&self.active_from), opt(&self.active_to)) {
            (None, None) => {
                if !self.active_days.trim().is_empty() {
                    errors
                        .entry("active")
                        .or_default()
                        .push("weekdays need a time window (from and to)".into());
                }
                None
            }
            (Some(from), Some(to)) => Some(ActiveHours {
                from,
                to,
                days: Some(
                    self.active_days
                        .split([' ', ','])
                        .map(|d| d.trim().to_lowercase())
                        .filter(|d| !d.is_empty())
                        .collect::<Vec<_>>(),
                )
                .filter(|d| !d.is_empty()),
            }),
            _ => {
                errors
                    .entry("active")
                    .or_default()
                    .push("an active window needs both from and to (HH:MM)".into());
                None
            }
        };
        rule.timezone = opt(&self.timezone);
        if errors.is_empty() {
            Ok(rule)
        } else {
            Err(errors)
        }
    }
}

pub(super) fn split_replies(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim() == SEPARATOR {
            out.push(cur.join("\n"));
            cur.clear();
        } else {
            cur.push(line);
        }
    }
    out.push(cur.join("\n"));
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether a rule has replies the form does not edit (images, voices,
/// news): then its replies are kept as stored and edited by import.
pub(super) fn has_other_replies(rule: Option<&Rule>) -> bool {
    rule.is_some_and(|r| r.replies.iter().any(|x| !matches!(x, Reply::Text { .. })))
}

/// The form field a compiler problem is about (the compiler's messages
/// name what they are about first; `general` for the rest).
pub(super) fn field_of(problem: &str) -> &'static str {
    let p = problem.to_lowercase();
    if p.starts_with("keyword") || p.contains("keywords") || p.starts_with("a keyword") {
        "keywords"
    } else if p.starts_with("reply ") || p.starts_with("no replies") {
        "replies"
    } else if p.starts_with("active hours") || p.starts_with("unknown weekday") {
        "active"
    } else if p.starts_with("unknown time zone") {
        "timezone"
    } else if p.starts_with("a follow rule") || p.starts_with("a default rule") {
        "kind"
    } else if p.starts_with("trigger.event") {
        "event"
    } else {
        "general"
    }
}

pub(super) fn compile_errors(name: &str, e: &RulesError) -> FieldErrors {
    let mut out = FieldErrors::new();
    match e {
        RulesError::Compile(list) => {
            for err in &list.0 {
                if err.rule == name {
                    out.entry(field_of(&err.problem))
                        .or_default()
                        .push(err.problem.clone());
                } else {
                    out.entry("general")
                        .or_default()
                        .push(format!("rule {:?}: {}", err.rule, err.problem));
                }
            }
        }
        RulesError::NameTaken(_) => {
            out.entry("name").or_default().push(e.to_string());
        }
        other => {
            out.entry("general").or_default().push(other.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> RuleForm {
        RuleForm {
            name: "hours".into(),
            kind: "keyword".into(),
            enabled: Some("on".into()),
            on: "any".into(),
            keywords: "hours\n营业时间\n".into(),
            match_kind: "equals".into(),
            mode: "random_one".into(),
            replies: "We open at 9.\n---\n9点开门。".into(),
            active_from: "09:00".into(),
            active_to: "21:00".into(),
            active_days: "mon tue".into(),
            priority: "5".into(),
            ..RuleForm::default()
        }
    }

    #[test]
    fn a_form_and_its_rule_describe_the_same_rule() {
        let rule = form().to_rule(None).unwrap();
        assert_eq!(rule.priority, 5);
        assert_eq!(rule.mode, ReplyMode::RandomOne);
        assert_eq!(rule.replies.len(), 2);
        let kw = rule.trigger.keywords.as_ref().unwrap();
        assert_eq!(kw.len(), 2);
        assert!(kw.iter().all(|k| k.match_kind == MatchKind::Equals));
        assert_eq!(
            rule.trigger.active.as_ref().unwrap().days.as_ref().unwrap(),
            &["mon", "tue"]
        );
        let again = RuleForm::from_rule(&rule, 3).to_rule(None).unwrap();
        assert_eq!(again, rule);
    }

    #[test]
    fn what_cannot_be_read_is_named_at_its_field() {
        let mut f = form();
        f.priority = "high".into();
        f.active_to = String::new();
        f.name = " ".into();
        let e = f.to_rule(None).unwrap_err();
        assert!(e["priority"][0].contains("whole number"), "{e:?}");
        assert!(e["active"][0].contains("both from and to"), "{e:?}");
        assert!(e["name"][0].contains("needs a name"), "{e:?}");
    }

    #[test]
    fn compiler_problems_land_at_their_fields() {
        let options = pubbot_rules::Options::with_timezone("Asia/Shanghai").unwrap();
        let mut f = form();
        f.match_kind = "regex".into();
        f.keywords = "(".into();
        f.replies = "{{ user".into();
        f.active_from = "9am".into();
        f.timezone = "Mars/Olympus".into();
        let rule = f.to_rule(None).unwrap();
        let e = pubbot_rules::RuleSet::compile(vec![rule], &options).unwrap_err();
        let fields = compile_errors("hours", &RulesError::Compile(e));
        for field in ["keywords", "replies", "active", "timezone"] {
            assert!(fields.contains_key(field), "{field} missing in {fields:?}");
        }
        assert!(!fields.contains_key("general"), "{fields:?}");
    }
}
