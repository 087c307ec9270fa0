//! The Rules pages: list with search, a form to create and edit a rule
//! (validated live by the compiler the importer uses, errors at the field,
//! concurrent edits refused by version), enable/disable, priority,
//! import/export as the TOML `pubbot rules` reads, and "try a message".

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use pubbot_rules::{
    ActiveHours, IncomingKind, Keyword, MatchKind, On, Reply, ReplyMode, Rule, RuleFile, RuleKind,
    Trigger,
};
use serde::{Deserialize, Serialize};

use super::auth::{Role, Staff};
use super::{audit, Console, PageError, Shared};
use crate::pipeline::rules::{self as store, RulesError};

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
    version: String,
}

/// Problems by form field (`general` for the rest).
type FieldErrors = BTreeMap<&'static str, Vec<String>>;

fn enum_name<T: Serialize>(v: &T) -> String {
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
    /// The form for a stored rule.
    fn from_rule(r: &Rule, version: i32) -> Self {
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
    fn to_rule(&self, base: Option<&Rule>) -> Result<Rule, FieldErrors> {
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

fn split_replies(text: &str) -> Vec<String> {
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
fn has_other_replies(rule: Option<&Rule>) -> bool {
    rule.is_some_and(|r| r.replies.iter().any(|x| !matches!(x, Reply::Text { .. })))
}

/// The form field a compiler problem is about (the compiler's messages
/// name what they are about first; `general` for the rest).
fn field_of(problem: &str) -> &'static str {
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

fn compile_errors(name: &str, e: &RulesError) -> FieldErrors {
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

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    q: Option<String>,
    app: Option<String>,
    mcid: Option<String>,
    done: Option<String>,
}

fn summary(r: &Rule) -> minijinja::Value {
    let keywords = r
        .trigger
        .keywords
        .as_ref()
        .map(|k| {
            k.iter()
                .map(|k| k.pattern.clone())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let replies = r
        .replies
        .iter()
        .map(|x| match x {
            Reply::Text { text } => text.chars().take(60).collect(),
            Reply::Image { .. } => "[image]".into(),
            Reply::Voice { .. } => "[voice]".into(),
            Reply::News { articles } => format!("[news: {} article(s)]", articles.len()),
        })
        .collect::<Vec<String>>();
    let active = r.trigger.active.as_ref().map(|a| {
        format!(
            "{}–{}{}",
            a.from,
            a.to,
            a.days
                .as_ref()
                .map(|d| format!(" ({})", d.join(" ")))
                .unwrap_or_default()
        )
    });
    minijinja::context! {
        id => r.id, name => r.name, enabled => r.enabled, priority => r.priority,
        kind => enum_name(&r.kind), on => enum_name(&r.trigger.on),
        scope => format!("{}/{}", r.app_key.as_deref().unwrap_or("*"), r.mcid.as_deref().unwrap_or("*")),
        keywords, replies, active, mode => enum_name(&r.mode),
        handler => r.handler, state => !r.set_state.is_empty() || !r.clear_state.is_empty() || r.when.is_some(),
    }
}

/// `GET /rules`.
pub(crate) async fn list(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, PageError> {
    let search = q.q.clone().unwrap_or_default();
    let needle = pubbot_rules::normalize(&search).to_lowercase();
    let rules = store::load_versioned(&c.pool)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut shown: Vec<_> = rules
        .iter()
        .filter(|v| {
            let r = &v.rule;
            let scoped = q
                .app
                .as_deref()
                .is_none_or(|a| a.is_empty() || r.app_key.as_deref().is_none_or(|x| x == a))
                && q.mcid
                    .as_deref()
                    .is_none_or(|m| m.is_empty() || r.mcid.as_deref().is_none_or(|x| x == m));
            let found = needle.is_empty()
                || r.name.to_lowercase().contains(&needle)
                || r.trigger.keywords.iter().flatten().any(|k| {
                    pubbot_rules::normalize(&k.pattern)
                        .to_lowercase()
                        .contains(&needle)
                })
                || r.replies.iter().any(
                    |x| matches!(x, Reply::Text { text } if text.to_lowercase().contains(&needle)),
                );
            scoped && found
        })
        .collect();
    shown.sort_by(|a, b| {
        b.rule
            .priority
            .cmp(&a.rule.priority)
            .then(a.rule.id.cmp(&b.rule.id))
    });
    let rows: Vec<_> = shown
        .iter()
        .map(|v| minijinja::context! { rule => summary(&v.rule), version => v.version })
        .collect();
    let scope = c
        .scope(&super::ScopeQuery {
            app: q.app.clone(),
            mcid: q.mcid.clone(),
        })
        .await?;
    c.render(
        "rules.html",
        minijinja::context! {
            base => c.base, staff => staff.value(), page => "rules", rows, q => search,
            total => rules.len(), scope => scope.value(),
            filter_app => q.app.unwrap_or_default(), filter_mcid => q.mcid.unwrap_or_default(),
            done => q.done,
        },
    )
}

fn edit_page(
    c: &Console,
    staff: &Staff,
    id: Option<i64>,
    form: &RuleForm,
    errors: &FieldErrors,
    locked: Option<&Rule>,
    status: axum::http::StatusCode,
) -> Result<Response, PageError> {
    // What the form does not show, as the TOML the importer reads, so an
    // editor sees all of the rule.
    let extra = locked.and_then(|r| {
        let mut rest = r.clone();
        rest.id = 0;
        let shown = has_other_replies(Some(r))
            || r.handler.is_some()
            || r.when.is_some()
            || !r.set_state.is_empty()
            || !r.clear_state.is_empty()
            || !r.fallback.is_empty()
            || r.flow != pubbot_rules::Flow::default();
        shown
            .then(|| RuleFile { rules: vec![rest] }.to_toml().ok())
            .flatten()
    });
    let apps: Vec<String> = c.settings.apps.iter().map(|a| a.key.clone()).collect();
    let page = c.render(
        "rule_edit.html",
        minijinja::context! {
            base => c.base, staff => staff.value(), page => "rules", id, form, errors,
            replies_locked => has_other_replies(locked), extra, apps,
        },
    )?;
    Ok((status, page).into_response())
}

/// `GET /rules/new`.
pub(crate) async fn new_form(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
) -> Result<Response, PageError> {
    let form = RuleForm {
        enabled: Some("on".into()),
        kind: "keyword".into(),
        on: "any".into(),
        match_kind: "contains".into(),
        mode: "all".into(),
        ..RuleForm::default()
    };
    edit_page(
        &c,
        &staff,
        None,
        &form,
        &FieldErrors::new(),
        None,
        axum::http::StatusCode::OK,
    )
}

async fn stored(c: &Console, id: i64) -> Result<store::Versioned, PageError> {
    store::load_versioned(&c.pool)
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .find(|v| v.rule.id == id)
        .ok_or_else(|| PageError::NotFound(format!("no rule #{id} (deleted?)")))
}

/// `GET /rules/{id}`.
pub(crate) async fn edit_form(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let v = stored(&c, id).await?;
    let form = RuleForm::from_rule(&v.rule, v.version);
    edit_page(
        &c,
        &staff,
        Some(id),
        &form,
        &FieldErrors::new(),
        Some(&v.rule),
        axum::http::StatusCode::OK,
    )
}

/// `POST /rules/new`.
pub(crate) async fn create(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Form(form): Form<RuleForm>,
) -> Result<Response, PageError> {
    staff.require(Role::Editor)?;
    save(&c, &staff, None, form).await
}

/// `POST /rules/{id}`.
pub(crate) async fn update(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(id): Path<i64>,
    Form(form): Form<RuleForm>,
) -> Result<Response, PageError> {
    staff.require(Role::Editor)?;
    save(&c, &staff, Some(id), form).await
}

async fn save(
    c: &Console,
    staff: &Staff,
    id: Option<i64>,
    form: RuleForm,
) -> Result<Response, PageError> {
    let base = match id {
        Some(id) => Some(stored(c, id).await?.rule),
        None => None,
    };
    let refused = |errors: FieldErrors| {
        edit_page(
            c,
            staff,
            id,
            &form,
            &errors,
            base.as_ref(),
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        )
    };
    let rule = match form.to_rule(base.as_ref()) {
        Ok(r) => r,
        Err(errors) => return refused(errors),
    };
    let edit = match id {
        Some(id) => match form.version.parse::<i32>() {
            Ok(v) => Some((id, v)),
            Err(_) => return Err(PageError::BadRequest("the form has no rule version".into())),
        },
        None => None,
    };
    match store::save(&c.pool, rule.clone(), edit, &c.options).await {
        Ok((saved, version)) => {
            audit::record(
                &c.pool,
                &staff.name,
                if id.is_some() {
                    "rule.update"
                } else {
                    "rule.create"
                },
                &rule.name,
                serde_json::json!({ "id": saved, "version": version }),
            )
            .await?;
            Ok(Redirect::to(&format!(
                "{}/rules?done={}",
                c.base,
                super::auth::urlencode(&format!("Saved rule {}.", rule.name))
            ))
            .into_response())
        }
        Err(RulesError::Conflict { name, current }) => {
            let mut errors = FieldErrors::new();
            errors.entry("general").or_default().push(format!(
                "{name:?} was saved by someone else while you edited it (it is at version {current}, you began from {}). Your changes are below and were not saved: open the rule again in a new tab, compare, and make them there.",
                form.version
            ));
            edit_page(
                c,
                staff,
                id,
                &form,
                &errors,
                base.as_ref(),
                axum::http::StatusCode::CONFLICT,
            )
        }
        Err(RulesError::Db(e)) => Err(e.into()),
        Err(e) => refused(compile_errors(&rule.name, &e)),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CheckQuery {
    id: Option<i64>,
}

/// `POST /rules/check?id=N`: the live validation behind the form's script.
/// Compiles the rule as typed with every other stored rule, writes nothing,
/// answers `{"errors": {field: [problem, ...]}}`.
pub(crate) async fn check(
    State(c): Shared,
    Query(q): Query<CheckQuery>,
    Form(form): Form<RuleForm>,
) -> Result<Json<serde_json::Value>, PageError> {
    let base = match q.id {
        Some(id) => Some(stored(&c, id).await?.rule),
        None => None,
    };
    let errors = match form.to_rule(base.as_ref()) {
        Err(e) => e,
        Ok(rule) => {
            let mut others = store::load(&c.pool).await.map_err(|e| anyhow::anyhow!(e))?;
            let mut errors = FieldErrors::new();
            if others
                .iter()
                .any(|r| r.name == rule.name && Some(r.id) != q.id)
            {
                errors
                    .entry("name")
                    .or_default()
                    .push(format!("a rule named {:?} exists", rule.name));
            }
            others.retain(|r| Some(r.id) != q.id && r.name != rule.name);
            others.push(rule.clone());
            let options = store::with_media(&c.pool, &c.options).await?;
            if let Err(e) = pubbot_rules::RuleSet::compile(others, &options) {
                for (k, v) in compile_errors(&rule.name, &RulesError::Compile(e)) {
                    errors.entry(k).or_default().extend(v);
                }
            }
            errors
        }
    };
    Ok(Json(serde_json::json!({ "errors": errors })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct EnabledForm {
    enabled: String,
}

/// `POST /rules/{id}/enabled`.
pub(crate) async fn set_enabled(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(id): Path<i64>,
    Form(f): Form<EnabledForm>,
) -> Result<Redirect, PageError> {
    staff.require(Role::Editor)?;
    let v = stored(&c, id).await?;
    let on = f.enabled == "true";
    store::set_enabled(&c.pool, &v.rule.name, on)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    audit::record(
        &c.pool,
        &staff.name,
        if on { "rule.enable" } else { "rule.disable" },
        &v.rule.name,
        serde_json::json!({ "id": id }),
    )
    .await?;
    Ok(Redirect::to(&format!(
        "{}/rules?done={}",
        c.base,
        super::auth::urlencode(&format!(
            "{} {}.",
            if on { "Enabled" } else { "Disabled" },
            v.rule.name
        ))
    )))
}

#[derive(Debug, Deserialize)]
pub(crate) struct PriorityForm {
    version: i32,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    delta: Option<i32>,
}

/// `POST /rules/{id}/priority`: a new priority, or one step up or down.
pub(crate) async fn set_priority(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(id): Path<i64>,
    Form(f): Form<PriorityForm>,
) -> Result<Redirect, PageError> {
    staff.require(Role::Editor)?;
    let v = stored(&c, id).await?;
    let to = match (f.delta, f.priority.as_deref().map(str::trim)) {
        (Some(d), _) => v.rule.priority.saturating_add(d),
        (None, Some(p)) => p
            .parse()
            .map_err(|_| PageError::BadRequest(format!("priority {p:?} is not a whole number")))?,
        (None, None) => v.rule.priority,
    };
    match store::set_priority(&c.pool, id, f.version, to).await {
        Ok(_) => {}
        Err(e @ RulesError::Conflict { .. }) => return Err(PageError::BadRequest(e.to_string())),
        Err(e) => return Err(PageError::Internal(anyhow::anyhow!(e))),
    }
    audit::record(
        &c.pool,
        &staff.name,
        "rule.priority",
        &v.rule.name,
        serde_json::json!({ "from": v.rule.priority, "to": to }),
    )
    .await?;
    Ok(Redirect::to(&format!("{}/rules", c.base)))
}

/// `POST /rules/{id}/delete`.
pub(crate) async fn delete(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(id): Path<i64>,
) -> Result<Redirect, PageError> {
    staff.require(Role::Editor)?;
    let v = stored(&c, id).await?;
    store::delete(&c.pool, &v.rule.name)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    audit::record(
        &c.pool,
        &staff.name,
        "rule.delete",
        &v.rule.name,
        serde_json::to_value(RuleFile {
            rules: vec![v.rule.clone()],
        })
        .unwrap_or_default(),
    )
    .await?;
    Ok(Redirect::to(&format!(
        "{}/rules?done={}",
        c.base,
        super::auth::urlencode(&format!("Deleted {}.", v.rule.name))
    )))
}

/// `GET /rules/export`: every rule as the TOML `pubbot rules import` reads
/// (the same text as `pubbot rules export`).
pub(crate) async fn export(State(c): Shared) -> Result<Response, PageError> {
    let file = store::export(&c.pool)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let text = file.to_toml().map_err(|e| anyhow::anyhow!(e))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/toml; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"rules.toml\"",
            ),
        ],
        text,
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ImportForm {
    text: String,
    replace: Option<String>,
}

/// `GET /rules/import`.
pub(crate) async fn import_form(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
) -> Result<Html<String>, PageError> {
    c.render(
        "rules_import.html",
        minijinja::context! { base => c.base, staff => staff.value(), page => "rules", text => "", replace => false, errors => Vec::<String>::new() },
    )
}

/// `POST /rules/import`: as `pubbot rules import` (nothing written when a
/// rule is invalid).
pub(crate) async fn import(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Form(f): Form<ImportForm>,
) -> Result<Response, PageError> {
    staff.require(Role::Editor)?;
    let replace = f.replace.is_some();
    let refused = |errors: Vec<String>| -> Result<Response, PageError> {
        let page = c.render(
            "rules_import.html",
            minijinja::context! { base => c.base, staff => staff.value(), page => "rules", text => f.text, replace, errors },
        )?;
        Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
    };
    let file = match RuleFile::from_toml(&f.text) {
        Ok(file) => file,
        Err(e) => return refused(vec![format!("not a valid rule file: {e}")]),
    };
    let n = file.rules.len();
    match store::import(&c.pool, file, &c.options, replace).await {
        Ok(done) => {
            audit::record(
                &c.pool,
                &staff.name,
                "rule.import",
                &format!("{n} rule(s)"),
                serde_json::json!({ "written": done.written, "removed": done.removed, "replace": replace }),
            )
            .await?;
            Ok(Redirect::to(&format!(
                "{}/rules?done={}",
                c.base,
                super::auth::urlencode(&format!(
                    "Imported {} rule(s){}.",
                    done.written,
                    if done.removed.is_empty() {
                        String::new()
                    } else {
                        format!("; removed {}", done.removed.join(", "))
                    }
                ))
            ))
            .into_response())
        }
        Err(RulesError::Compile(e)) => refused(
            e.0.iter()
                .map(|x| format!("rule {:?}: {}", x.rule, x.problem))
                .collect(),
        ),
        Err(e) => Err(PageError::Internal(anyhow::anyhow!(e))),
    }
}

/// The "try a message" form.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct TryForm {
    app: String,
    mcid: String,
    user: String,
    kind: String,
    text: String,
    event: String,
    state: String,
}

/// `GET /rules/try`.
pub(crate) async fn try_form(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Query(q): Query<super::ScopeQuery>,
) -> Result<Html<String>, PageError> {
    let scope = c.scope(&q).await?;
    let (app, mcid) = scope.picked.clone().unwrap_or_default();
    let form = TryForm {
        app,
        mcid,
        user: "someone".into(),
        kind: "text".into(),
        ..TryForm::default()
    };
    c.render(
        "rules_try.html",
        minijinja::context! { base => c.base, staff => staff.value(), page => "rules", form, result => minijinja::Value::from(()), error => minijinja::Value::from(()) },
    )
}

/// `POST /rules/try`: what `pubbot rules test` prints, as a page.
pub(crate) async fn try_message(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Form(form): Form<TryForm>,
) -> Result<Html<String>, PageError> {
    let kind = match form.kind.as_str() {
        "" | "text" => Ok(IncomingKind::Text),
        "image" => Ok(IncomingKind::Image),
        "voice" => Ok(IncomingKind::Voice),
        "location" => Ok(IncomingKind::Location),
        "imgtxt" => Ok(IncomingKind::Imgtxt),
        "subscribe" => Ok(IncomingKind::Subscribe),
        "unsubscribe" => Ok(IncomingKind::Unsubscribe),
        "event" => Ok(IncomingKind::Event),
        other => Err(format!("unknown kind {other:?}")),
    };
    let state = match form.state.trim() {
        "" => Ok(None),
        s => serde_json::from_str::<serde_json::Value>(s)
            .map(Some)
            .map_err(|e| {
                format!("the state is a JSON object, like {{\"step\": \"ask_size\"}}: {e}")
            }),
    };
    let (result, error) = match (kind, state) {
        (Ok(kind), Ok(state)) => {
            let trial = store::Trial {
                app: form.app.clone(),
                account: form.mcid.clone(),
                user: form.user.clone(),
                kind: Some(kind),
                text: form.text.clone(),
                event: form.event.clone(),
                state,
            };
            match store::explain(&c.pool, &c.options, &trial).await {
                Ok(e) => (Some(e), None),
                Err(RulesError::Db(e)) => return Err(e.into()),
                Err(e) => (None, Some(e.to_string())),
            }
        }
        (Err(e), _) | (_, Err(e)) => (None, Some(e)),
    };
    c.render(
        "rules_try.html",
        minijinja::context! { base => c.base, staff => staff.value(), page => "rules", form, result, error },
    )
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
