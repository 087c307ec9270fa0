//! Rules in PostgreSQL: loading, live reload, and the `pubbot rules` CLI
//! operations (import, export, list, enable/disable, test).

use std::sync::{Arc, RwLock};

use pubbot_rules::{CompileErrors, Options, Rule, RuleFile, RuleSet};
use sqlx::PgPool;

/// Why rules could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The database failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// A stored rule is not valid JSON for the model.
    #[error("rule {name:?} in the database does not parse: {error}")]
    Stored {
        /// Rule name.
        name: String,
        /// The serde error.
        error: String,
    },
    /// The rules do not compile; nothing was changed.
    #[error("{0}")]
    Compile(#[from] CompileErrors),
    /// No rule has that name.
    #[error("no rule named {0:?}")]
    NotFound(String),
    /// The rule changed since the edit began (another person saved it):
    /// nothing was written.
    #[error("rule {name:?} was changed by someone else (now version {current}); reload it and edit again")]
    Conflict {
        /// Rule name.
        name: String,
        /// Its version now.
        current: i32,
    },
    /// Another rule has that name.
    #[error("a rule named {0:?} exists")]
    NameTaken(String),
}

/// Reads every stored rule, ids and enabled flags from their columns.
///
/// # Errors
/// [`RulesError::Db`] or [`RulesError::Stored`].
pub async fn load(pool: &PgPool) -> Result<Vec<Rule>, RulesError> {
    let rows = sqlx::query!("SELECT id, name, enabled, body FROM rules ORDER BY id")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            let mut rule: Rule =
                serde_json::from_value(r.body).map_err(|e| RulesError::Stored {
                    name: r.name.clone(),
                    error: e.to_string(),
                })?;
            rule.id = r.id;
            rule.name = r.name;
            rule.enabled = r.enabled;
            Ok(rule)
        })
        .collect()
}

/// Uploaded media by local name (name -> every (app, `media_id`)), for
/// rules that say `media = "name"`.
///
/// # Errors
/// Database errors.
pub(crate) async fn media_names(
    pool: &PgPool,
) -> Result<std::collections::HashMap<String, Vec<(String, String)>>, sqlx::Error> {
    let rows = sqlx::query!("SELECT app_key, name, media_id FROM media ORDER BY app_key")
        .fetch_all(pool)
        .await?;
    let mut out: std::collections::HashMap<String, Vec<(String, String)>> =
        std::collections::HashMap::new();
    for r in rows {
        out.entry(r.name).or_default().push((r.app_key, r.media_id));
    }
    Ok(out)
}

/// `options` with the stored media names.
///
/// # Errors
/// Database errors.
pub async fn with_media(pool: &PgPool, options: &Options) -> Result<Options, sqlx::Error> {
    Ok(options.clone().with_media(media_names(pool).await?))
}

/// The rule set in force, swapped atomically on reload.
pub(crate) struct RuleStore {
    current: RwLock<Arc<RuleSet>>,
    options: Options,
    fingerprint: RwLock<Option<(i64, Option<chrono::DateTime<chrono::Utc>>)>>,
    /// The database the rules are read from (the gauge's label).
    database: &'static str,
}

impl RuleStore {
    /// An empty store (no rules until the first reload).
    pub(crate) fn new(options: Options) -> Self {
        let empty = RuleSet::compile(Vec::new(), &options)
            .unwrap_or_else(|_| unreachable!("an empty rule set compiles"));
        Self {
            current: RwLock::new(Arc::new(empty)),
            options,
            fingerprint: RwLock::new(None),
            database: crate::config::DEFAULT_DATABASE,
        }
    }

    /// The same, for the rules of another database than `[database]`.
    pub(crate) fn of_database(self, database: &'static str) -> Self {
        Self { database, ..self }
    }

    /// The rule set in force.
    pub(crate) fn current(&self) -> Arc<RuleSet> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Loads and compiles the stored rules and puts them in force. When they
    /// do not compile, the previous set stays in force and the errors are
    /// returned.
    ///
    /// # Errors
    /// [`RulesError`].
    pub(crate) async fn reload(&self, pool: &PgPool) -> Result<usize, RulesError> {
        let fp = fingerprint(pool).await?;
        let rules = load(pool).await?;
        for r in &rules {
            crate::admin::catalog::rule_loaded(&r.name);
        }
        let options = with_media(pool, &self.options).await?;
        let set = RuleSet::compile(rules, &options)?;
        let n = set.len();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
        *self
            .fingerprint
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fp);
        metrics::counter!("pubbot_rules_reloads_total", "outcome" => "ok").increment(1);
        metrics::gauge!("pubbot_rules_loaded", "database" => self.database).set(n as f64);
        Ok(n)
    }

    /// Reloads when the stored rules changed since the last load (the
    /// fallback for a lost NOTIFY).
    ///
    /// # Errors
    /// [`RulesError`].
    pub(crate) async fn reload_if_changed(&self, pool: &PgPool) -> Result<bool, RulesError> {
        let fp = fingerprint(pool).await?;
        let known = *self
            .fingerprint
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known == Some(fp) {
            return Ok(false);
        }
        self.reload(pool).await.map(|_| true)
    }
}

async fn fingerprint(
    pool: &PgPool,
) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), sqlx::Error> {
    let r = sqlx::query!(r#"SELECT count(*) AS "n!", max(updated_at) AS last FROM rules"#)
        .fetch_one(pool)
        .await?;
    Ok((r.n, r.last))
}

/// Imports a rule file: every rule is validated (compiled together with the
/// stored rules it does not replace) before anything is written; then, in
/// one transaction, rules are inserted or updated by name. With `replace`,
/// stored rules missing from the file are deleted.
///
/// # Errors
/// [`RulesError::Compile`] listing every invalid rule (nothing written).
pub async fn import(
    pool: &PgPool,
    file: RuleFile,
    options: &Options,
    replace: bool,
) -> Result<Imported, RulesError> {
    let mut candidate = if replace {
        Vec::new()
    } else {
        load(pool).await?
    };
    candidate.retain(|stored| !file.rules.iter().any(|r| r.name == stored.name));
    candidate.extend(file.rules.iter().cloned());
    RuleSet::compile(candidate, &with_media(pool, options).await?)?;
    let mut tx = pool.begin().await?;
    let mut removed = Vec::new();
    if replace {
        let names: Vec<String> = file.rules.iter().map(|r| r.name.clone()).collect();
        removed = sqlx::query_scalar!(
            "DELETE FROM rules WHERE NOT (name = ANY($1)) RETURNING name",
            &names
        )
        .fetch_all(&mut *tx)
        .await?;
        removed.sort();
    }
    for rule in &file.rules {
        let mut body = rule.clone();
        body.id = 0;
        let body = serde_json::to_value(&body).map_err(|e| RulesError::Stored {
            name: rule.name.clone(),
            error: e.to_string(),
        })?;
        sqlx::query!(
            "INSERT INTO rules (name, enabled, body) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, body = EXCLUDED.body,
                 version = rules.version + 1, updated_at = now()",
            rule.name,
            rule.enabled,
            body
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Imported {
        written: file.rules.len(),
        removed,
    })
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Rules inserted or updated.
    pub written: usize,
    /// Rules deleted because the file did not name them (`--replace`).
    pub removed: Vec<String>,
}

/// Deletes a rule by name.
///
/// # Errors
/// [`RulesError::NotFound`].
pub async fn delete(pool: &PgPool, name: &str) -> Result<(), RulesError> {
    let done = sqlx::query!("DELETE FROM rules WHERE name = $1", name)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(RulesError::NotFound(name.to_owned()));
    }
    Ok(())
}

/// Rules whose scope names an app or account this configuration does not
/// serve: they would never match (a warning at import, not an error: the
/// file may be meant for another deployment too).
pub(crate) fn scope_warnings(file: &RuleFile, settings: &crate::config::Settings) -> Vec<String> {
    let mut out = Vec::new();
    for r in &file.rules {
        if let Some(app) = &r.app_key {
            match settings.apps.iter().find(|a| &a.key == app) {
                None => out.push(format!(
                    "rule {:?}: app {app:?} is not configured (apps.key); it will never match",
                    r.name
                )),
                Some(a) => {
                    if let Some(mcid) = &r.mcid {
                        if !a.accounts.hosts(mcid) {
                            out.push(format!(
                                "rule {:?}: account {mcid:?} is not hosted by app {app:?} (apps.accounts); it will never match",
                                r.name
                            ));
                        }
                    }
                }
            }
        } else if let Some(mcid) = &r.mcid {
            if !settings.apps.iter().any(|a| a.accounts.hosts(mcid)) {
                out.push(format!(
                    "rule {:?}: account {mcid:?} is not hosted by any configured app; it will never match",
                    r.name
                ));
            }
        }
    }
    out
}

/// Every stored rule as a file (ids left out, so it can be imported
/// elsewhere).
///
/// # Errors
/// As [`load`].
pub async fn export(pool: &PgPool) -> Result<RuleFile, RulesError> {
    let mut rules = load(pool).await?;
    for r in &mut rules {
        r.id = 0;
    }
    Ok(RuleFile { rules })
}

/// Turns a rule on or off.
///
/// # Errors
/// [`RulesError::NotFound`].
pub async fn set_enabled(pool: &PgPool, name: &str, enabled: bool) -> Result<(), RulesError> {
    let done = sqlx::query!(
        "UPDATE rules SET enabled = $2, version = version + 1, updated_at = now() WHERE name = $1",
        name,
        enabled
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(RulesError::NotFound(name.to_owned()));
    }
    Ok(())
}

/// A stored rule with the version an edit must name.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The rule (id, name and enabled from their columns).
    pub rule: Rule,
    /// Increases with every write of the rule.
    pub version: i32,
    /// When it was last written.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Every stored rule with its version, in id order.
///
/// # Errors
/// As [`load`].
pub async fn load_versioned(pool: &PgPool) -> Result<Vec<Versioned>, RulesError> {
    let rows = sqlx::query!("SELECT id, version, updated_at FROM rules ORDER BY id")
        .fetch_all(pool)
        .await?;
    let rules = load(pool).await?;
    Ok(rules
        .into_iter()
        .filter_map(|rule| {
            let row = rows.iter().find(|r| r.id == rule.id)?;
            Some(Versioned {
                version: row.version,
                updated_at: row.updated_at,
                rule,
            })
        })
        .collect())
}

/// Stores one rule edited as a whole (the console's form): compiled
/// together with every other stored rule first, exactly as [`import`]
/// does, then inserted (`edit` is `None`) or updated only if it is still
/// at the version the edit began from (`edit = Some((id, version))`).
/// Returns the rule's id and new version.
///
/// # Errors
/// [`RulesError::Compile`] (nothing written), [`RulesError::Conflict`]
/// when someone else saved it meanwhile, [`RulesError::NameTaken`],
/// [`RulesError::NotFound`] for a deleted rule.
pub async fn save(
    pool: &PgPool,
    rule: Rule,
    edit: Option<(i64, i32)>,
    options: &Options,
) -> Result<(i64, i32), RulesError> {
    let mut candidate = load(pool).await?;
    if let Some(taken) = candidate
        .iter()
        .find(|r| r.name == rule.name && Some(r.id) != edit.map(|e| e.0))
    {
        return Err(RulesError::NameTaken(taken.name.clone()));
    }
    candidate.retain(|r| Some(r.id) != edit.map(|e| e.0));
    let mut mine = rule.clone();
    mine.id = 0;
    candidate.push(mine.clone());
    RuleSet::compile(candidate, &with_media(pool, options).await?)?;
    let body = serde_json::to_value(&mine).map_err(|e| RulesError::Stored {
        name: rule.name.clone(),
        error: e.to_string(),
    })?;
    match edit {
        None => {
            let row = sqlx::query!(
                "INSERT INTO rules (name, enabled, body) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING RETURNING id, version",
                rule.name,
                rule.enabled,
                body
            )
            .fetch_optional(pool)
            .await?;
            row.map(|r| (r.id, r.version))
                .ok_or(RulesError::NameTaken(rule.name))
        }
        Some((id, version)) => {
            let row = sqlx::query!(
                "UPDATE rules SET name = $3, enabled = $4, body = $5, version = version + 1, updated_at = now()
                  WHERE id = $1 AND version = $2 RETURNING version",
                id,
                version,
                rule.name,
                rule.enabled,
                body
            )
            .fetch_optional(pool)
            .await;
            match row {
                Ok(Some(r)) => Ok((id, r.version)),
                Ok(None) => {
                    let now = sqlx::query_scalar!("SELECT version FROM rules WHERE id = $1", id)
                        .fetch_optional(pool)
                        .await?;
                    Err(match now {
                        Some(current) => RulesError::Conflict {
                            name: rule.name,
                            current,
                        },
                        None => RulesError::NotFound(rule.name),
                    })
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    Err(RulesError::NameTaken(rule.name))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Sets a rule's priority (higher goes first), if it is still at
/// `version`. Returns the new version.
///
/// # Errors
/// [`RulesError::Conflict`], [`RulesError::NotFound`].
pub async fn set_priority(
    pool: &PgPool,
    id: i64,
    version: i32,
    priority: i32,
) -> Result<i32, RulesError> {
    let row = sqlx::query!(
        "UPDATE rules SET body = jsonb_set(body, '{priority}', to_jsonb($3::int4)),
                version = version + 1, updated_at = now()
          WHERE id = $1 AND version = $2 RETURNING version",
        id,
        version,
        priority
    )
    .fetch_optional(pool)
    .await?;
    if let Some(r) = row {
        return Ok(r.version);
    }
    let now = sqlx::query!("SELECT name, version FROM rules WHERE id = $1", id)
        .fetch_optional(pool)
        .await?;
    Err(match now {
        Some(r) => RulesError::Conflict {
            name: r.name,
            current: r.version,
        },
        None => RulesError::NotFound(format!("#{id}")),
    })
}

/// A message to try against the stored rules (`pubbot rules test`, the
/// console's "try a message").
#[derive(Debug, Clone, Default)]
pub struct Trial {
    /// App key.
    pub app: String,
    /// Account.
    pub account: String,
    /// User id.
    pub user: String,
    /// Message kind.
    pub kind: Option<pubbot_rules::IncomingKind>,
    /// The text.
    pub text: String,
    /// An unlisted event's name (R14).
    pub event: String,
    /// The user's conversation state.
    pub state: Option<serde_json::Value>,
}

/// What the stored rules answer to `trial`, and why: one line a rule
/// (matched or not, and the reason), then the replies, the state it
/// leaves and any problems. The same lines for the CLI and the console.
///
/// # Errors
/// As [`load`], or the stored rules do not compile.
pub async fn explain(
    pool: &PgPool,
    options: &Options,
    trial: &Trial,
) -> Result<Explained, RulesError> {
    let options = with_media(pool, options).await?;
    let set = RuleSet::compile(load(pool).await?, &options)?;
    let msg = pubbot_rules::Incoming {
        app_key: &trial.app,
        mcid: &trial.account,
        user: &trial.user,
        kind: trial.kind.unwrap_or(pubbot_rules::IncomingKind::Text),
        text: &trial.text,
        event: &trial.event,
        state: trial.state.as_ref(),
    };
    let e = set.explain(
        &msg,
        &pubbot_rules::Context {
            now: chrono::Utc::now(),
            random: rand::random(),
        },
    );
    let mut out = Explained {
        rules: e
            .rules
            .iter()
            .map(|v| (v.matched, v.rule.clone(), v.reason.clone()))
            .collect(),
        ..Explained::default()
    };
    for r in &e.decision.replies {
        out.replies.push(match r {
            pubbot_rules::PlannedReply::Handler {
                handler, fallback, ..
            } => format!(
                "handler: {handler} (its answer becomes the replies; fallback: {})",
                serde_json::to_string(fallback).unwrap_or_default()
            ),
            other => format!(
                "reply: {}",
                serde_json::to_string(other).unwrap_or_default()
            ),
        });
    }
    if !e.decision.state_set.is_empty() || !e.decision.state_clear.is_empty() {
        out.state = Some(pubbot_rules::next_state(trial.state.as_ref(), &e.decision).to_string());
    }
    out.problems = e
        .decision
        .problems
        .iter()
        .map(|p| format!("problem in {}: {}", p.rule, p.message))
        .collect();
    Ok(out)
}

/// [`explain`]'s answer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Explained {
    /// Each rule looked at: matched, name, why.
    pub rules: Vec<(bool, String, String)>,
    /// The planned replies, one line each (empty: no reply).
    pub replies: Vec<String>,
    /// The state after the message, when it changes.
    pub state: Option<String>,
    /// Problems met while rendering.
    pub problems: Vec<String>,
}
