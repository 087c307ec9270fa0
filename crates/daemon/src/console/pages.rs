//! The overview page: every account with what happened today.

use axum::extract::State;
use axum::response::Html;
use axum::Extension;

use super::auth::Staff;
use super::{PageError, Shared};

/// `GET /`.
pub(crate) async fn home(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
) -> Result<Html<String>, PageError> {
    let mut accounts = Vec::new();
    for (app, mcid) in c.accounts().await? {
        let r = sqlx::query!(
            r#"SELECT
                 (SELECT count(*) FROM inbound_messages WHERE app_key = $1 AND mcid = $2 AND received_at > now() - interval '1 day') AS "pushes!",
                 (SELECT count(*) FROM outbound_messages WHERE app_key = $1 AND mcid = $2 AND status = 'failed' AND created_at > now() - interval '1 day') AS "failed!",
                 (SELECT count(*) FROM outbound_messages WHERE app_key = $1 AND mcid = $2 AND status IN ('pending', 'sending')) AS "open!",
                 (SELECT count(*) FROM followers WHERE app_key = $1 AND mcid = $2) AS "followers!""#,
            app,
            mcid
        )
        .fetch_one(&c.pool)
        .await?;
        accounts.push(minijinja::context! {
            app, mcid, pushes => r.pushes, failed => r.failed, open => r.open, followers => r.followers,
        });
    }
    let rules = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM rules WHERE enabled"#)
        .fetch_one(&c.pool)
        .await?;
    c.render(
        "home.html",
        minijinja::context! { base => c.base, staff => staff.value(), page => "home", accounts, rules },
    )
}
