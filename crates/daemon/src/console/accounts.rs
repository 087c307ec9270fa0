//! The Followers and Menus pages of an account.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::auth::{Role, Staff};
use super::{audit, PageError, ScopeQuery, Shared};
use crate::account;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FollowersQuery {
    app: Option<String>,
    mcid: Option<String>,
    q: Option<String>,
}

/// `GET /followers`: the count (from subscribe/unsubscribe events and
/// `pubbot followers subscribe`) and a search by user id. The platform's
/// API has no follower tags (READING's 18 endpoints), so there are none
/// to show.
pub(crate) async fn followers(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Query(q): Query<FollowersQuery>,
) -> Result<Html<String>, PageError> {
    let scope = c
        .scope(&ScopeQuery {
            app: q.app.clone(),
            mcid: q.mcid.clone(),
        })
        .await?;
    let search = q.q.clone().unwrap_or_default();
    let (count, rows) = match &scope.picked {
        None => (0, Vec::new()),
        Some((app, mcid)) => {
            let n = account::followers::count(&c.pool, app, mcid).await?;
            let rows = sqlx::query!(
                "SELECT user_id, followed_at FROM followers
                  WHERE app_key = $1 AND mcid = $2 AND ($3 = '' OR user_id ILIKE '%' || $3 || '%')
                  ORDER BY followed_at DESC, user_id LIMIT 200",
                app,
                mcid,
                search
            )
            .fetch_all(&c.pool)
            .await?
            .into_iter()
            .map(|r| minijinja::context! { user => r.user_id, since => r.followed_at.format("%Y-%m-%d %H:%M").to_string() })
            .collect();
            (n, rows)
        }
    };
    c.render(
        "followers.html",
        minijinja::context! { base => c.base, staff => staff.value(), page => "followers", scope => scope.value(), count, rows, q => search },
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct MenuForm {
    app: String,
    mcid: String,
    text: String,
    /// `plan` or `apply`.
    action: String,
}

async fn menu_page(
    c: &super::Console,
    staff: &Staff,
    scope: &super::Scope,
    text: &str,
    plan: Option<(account::MenuPlan, bool)>,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let items = match &scope.picked {
        Some((app, mcid)) => account::stored_menu(&c.pool, app, mcid).await?,
        None => Vec::new(),
    };
    let tree: Vec<_> = items
        .iter()
        .filter(|i| i.level == 1)
        .map(|top| {
            let children: Vec<_> = items
                .iter()
                .filter(|i| i.parent_id.as_deref() == Some(top.menu_id.as_str()))
                .map(|x| minijinja::context! { name => x.name, url => x.url })
                .collect();
            minijinja::context! { name => top.name, url => top.url, children }
        })
        .collect();
    let plan = plan.map(|(p, applied)| {
        minijinja::context! { delete => p.delete, add => p.add, order => p.order, empty => p.is_empty(), applied }
    });
    let page = c.render(
        "menus.html",
        minijinja::context! { base => c.base, staff => staff.value(), page => "menus", scope => scope.value(), tree, text, plan, error },
    )?;
    Ok((status, page).into_response())
}

/// `GET /menus`: the applied menu, and a form to plan or apply a menu file
/// (the TOML `pubbot account menu apply` reads).
pub(crate) async fn menus(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Query(q): Query<ScopeQuery>,
) -> Result<Response, PageError> {
    let scope = c.scope(&q).await?;
    menu_page(&c, &staff, &scope, "", None, None, StatusCode::OK).await
}

/// `POST /menus`: plan (no call) or apply a menu file.
pub(crate) async fn menu_apply(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Form(f): Form<MenuForm>,
) -> Result<Response, PageError> {
    let apply = f.action == "apply";
    if apply {
        staff.require(Role::Editor)?;
    }
    let scope = c
        .scope(&ScopeQuery {
            app: Some(f.app.clone()),
            mcid: Some(f.mcid.clone()),
        })
        .await?;
    let menu: account::MenuFile = match toml::from_str(&f.text) {
        Ok(m) => m,
        Err(e) => {
            return menu_page(
                &c,
                &staff,
                &scope,
                &f.text,
                None,
                Some(format!("not a menu file: {e}")),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    };
    let client = c
        .settings
        .operator_client(&f.app)
        .map_err(|e| PageError::BadRequest(e.to_string()))?;
    match account::apply_menu(&c.pool, &client, &f.app, &f.mcid, &menu, !apply).await {
        Ok(plan) => {
            if apply {
                audit::record(&c.pool, &staff.name, "menu.apply", &format!("{}/{}", f.app, f.mcid),
                    serde_json::json!({ "delete": plan.delete, "add": plan.add, "order": plan.order })).await?;
            }
            menu_page(
                &c,
                &staff,
                &scope,
                &f.text,
                Some((plan, apply)),
                None,
                StatusCode::OK,
            )
            .await
        }
        Err(e) => {
            menu_page(
                &c,
                &staff,
                &scope,
                &f.text,
                None,
                Some(e.to_string()),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    }
}
