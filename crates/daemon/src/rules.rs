//! Rules in PostgreSQL: loading, live reload, and the `pubbot rules` CLI
//! operations (import, export, list, enable/disable, test).

use std::sync::{Arc, RwLock};

use pubbot_rules::{CompileErrors, Options, Rule, RuleFile, RuleSet};
use sqlx::PgPool;

/// Why rules could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The database failed.
    #[error("database: {0}")]
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

/// The rule set in force, swapped atomically on reload.
pub struct RuleStore {
    current: RwLock<Arc<RuleSet>>,
    options: Options,
    fingerprint: RwLock<Option<(i64, Option<chrono::DateTime<chrono::Utc>>)>>,
}

impl RuleStore {
    /// An empty store (no rules until the first reload).
    pub fn new(options: Options) -> Self {
        let empty = RuleSet::compile(Vec::new(), &options)
            .unwrap_or_else(|_| unreachable!("an empty rule set compiles"));
        Self {
            current: RwLock::new(Arc::new(empty)),
            options,
            fingerprint: RwLock::new(None),
        }
    }

    /// The rule set in force.
    pub fn current(&self) -> Arc<RuleSet> {
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
    pub async fn reload(&self, pool: &PgPool) -> Result<usize, RulesError> {
        let fp = fingerprint(pool).await?;
        let rules = load(pool).await?;
        let set = RuleSet::compile(rules, &self.options)?;
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
        metrics::gauge!("pubbot_rules_loaded").set(n as f64);
        Ok(n)
    }

    /// Reloads when the stored rules changed since the last load (the
    /// fallback for a lost NOTIFY).
    ///
    /// # Errors
    /// [`RulesError`].
    pub async fn reload_if_changed(&self, pool: &PgPool) -> Result<bool, RulesError> {
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
) -> Result<usize, RulesError> {
    let mut candidate = if replace {
        Vec::new()
    } else {
        load(pool).await?
    };
    candidate.retain(|stored| !file.rules.iter().any(|r| r.name == stored.name));
    candidate.extend(file.rules.iter().cloned());
    RuleSet::compile(candidate, options)?;
    let mut tx = pool.begin().await?;
    if replace {
        let names: Vec<String> = file.rules.iter().map(|r| r.name.clone()).collect();
        sqlx::query!("DELETE FROM rules WHERE NOT (name = ANY($1))", &names)
            .execute(&mut *tx)
            .await?;
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
             ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, body = EXCLUDED.body, updated_at = now()",
            rule.name,
            rule.enabled,
            body
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(file.rules.len())
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
        "UPDATE rules SET enabled = $2, updated_at = now() WHERE name = $1",
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
