//! Deciding: the compiled rule set (built by [`crate::compile`], indexed by
//! [`crate::index`]): one automaton for every literal keyword, one
//! `RegexSet` for every regex keyword, so deciding costs grow with the
//! message, not with the rule count; then the few candidate rules are
//! checked in priority order exactly as a linear scan would, and the
//! winners' replies rendered ([`crate::render`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use chrono::{Datelike, NaiveTime, Timelike};
use regex::{RegexSet, RegexSetBuilder};

use crate::compile::{compile_rule, CompiledRule, Options};
use crate::decision::{
    CompileError, CompileErrors, Context, Decision, Explanation, Incoming, IncomingKind, Matched,
    PlannedReply, Problem, Verdict,
};
use crate::index::{fold, normalized, LiteralIndex};
use crate::model::{Flow, MatchKind, On, ReplyMode, Rule, RuleKind};
use crate::render::{self, CompiledReply, Templates};

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
    uses_state: bool,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
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

    /// Whether any rule reads or changes the conversation state (a `when`
    /// on it, `set_state`/`clear_state`, a handler — which is sent it — or
    /// a template that reads it): when none does, the daemon does not load
    /// it.
    pub fn uses_state(&self) -> bool {
        self.uses_state
    }

    fn index(rules: Vec<CompiledRule>, templates: Templates) -> Result<Self, String> {
        let uses_state = templates.uses_state
            || rules.iter().any(|r| {
                r.rule.when.as_ref().is_some_and(|w| !w.state.is_empty())
                    || !r.rule.set_state.is_empty()
                    || !r.rule.clear_state.is_empty()
                    || r.rule.handler.is_some()
            });
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
            uses_state,
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
