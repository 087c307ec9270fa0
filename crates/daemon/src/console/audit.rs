//! The audit log: who changed what, when. Every change made through the
//! console is recorded after it is made; the Audit page lists them.

use axum::extract::{Query, State};
use axum::response::Html;
use axum::Extension;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::auth::Staff;
use super::{PageError, Shared};

/// Records one change.
///
/// # Errors
/// The database.
pub(crate) async fn record(
    pool: &PgPool,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    record_in(&mut conn, actor, action, target, detail).await
}

/// Records one change on `conn` (inside the change's own transaction).
///
/// # Errors
/// The database.
pub(crate) async fn record_in(
    conn: &mut sqlx::PgConnection,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO console_audit (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        target,
        detail
    )
    .execute(conn)
    .await?;
    tracing::info!(actor, action, target, "console change");
    Ok(())
}

#[derive(Debug, serde::Serialize)]
struct Line {
    at: DateTime<Utc>,
    actor: String,
    action: String,
    target: String,
    detail: Option<serde_json::Value>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct AuditQuery {
    q: Option<String>,
}

/// `GET /audit`.
pub(crate) async fn page(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Query(q): Query<AuditQuery>,
) -> Result<Html<String>, PageError> {
    let search = q.q.unwrap_or_default();
    let lines = sqlx::query_as!(
        Line,
        "SELECT at, actor, action, target, detail FROM console_audit
          WHERE $1 = '' OR actor ILIKE '%' || $1 || '%' OR action ILIKE '%' || $1 || '%' OR target ILIKE '%' || $1 || '%'
          ORDER BY id DESC LIMIT 200",
        search
    )
    .fetch_all(&c.pool)
    .await?;
    let lines: Vec<_> = lines
        .into_iter()
        .map(|l| {
            minijinja::context! {
                at => l.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                actor => l.actor, action => l.action, target => l.target,
                detail => l.detail.map(|d| d.to_string()).unwrap_or_default(),
            }
        })
        .collect();
    c.render(
        "audit.html",
        minijinja::context! { base => c.base, staff => staff.value(), page => "audit", lines, q => search },
    )
}
