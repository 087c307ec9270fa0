//! The Rules pages: list with search, a form to create and edit a rule
//! (validated live by the compiler the importer uses, errors at the field,
//! concurrent edits refused by version), enable/disable, priority,
//! import/export as the TOML `pubbot rules` reads, and "try a message".

mod form;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use pubbot_rules::{IncomingKind, Reply, Rule, RuleFile};
use serde::{Deserialize, Serialize};

use form::{compile_errors, enum_name, has_other_replies, FieldErrors, RuleForm};

use super::auth::{Role, Staff};
use super::{audit, Console, PageError, Shared};
use crate::pipeline::rules::{self as store, RulesError};

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
    let form = RuleForm::blank();
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
