//! Menus as code (`pubbot menu apply`): the platform has add, delete and
//! order but cannot list a menu, so pubbot keeps the ids it created
//! (`menu_items`). An item is matched by its place (parent name, name):
//! gone or changed items are deleted (a first-level item takes its
//! children), new ones added (parents first, the returned `menuId` as
//! `pid`), then one `order` call when the order changed (R13).

use std::collections::HashMap;

use pubbot_api_client::{Client, McId, MenuAction, MenuId, NewMenuItem};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::AccountError;

/// `menu.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MenuFile {
    /// First-level items, in order.
    #[serde(rename = "item", default)]
    pub items: Vec<MenuEntry>,
}

/// A menu item as it should be.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MenuEntry {
    /// Name, 1 to 10 characters (R9).
    pub name: String,
    /// Opens this URL (type 1); none: does nothing (type 0).
    #[serde(default)]
    pub url: Option<String>,
    /// Second-level items, in order (first level only).
    #[serde(default)]
    pub children: Vec<MenuEntry>,
}

/// Checks a menu file, naming the first item at fault; nothing is called.
///
/// # Errors
/// What is wrong with which item.
pub fn validate_menu(file: &MenuFile) -> Result<(), AccountError> {
    let check = |e: &MenuEntry, path: &str| -> Result<(), AccountError> {
        // The platform's own limits, as the client checks every call (R9).
        let item = NewMenuItem {
            name: e.name.clone(),
            action: match &e.url {
                Some(u) => MenuAction::OpenUrl(u.clone()),
                None => MenuAction::None,
            },
            parent: None,
        };
        pubbot_api_client::validate::menu_item(&item).map_err(|why| match why {
            pubbot_api_client::Invalid::MenuUrlMissing => AccountError::Invalid(format!(
                "menu item {path:?}: url is empty (leave it out for an item that opens nothing)"
            )),
            other => AccountError::Invalid(format!("menu item {path:?}: {other} (R9)")),
        })
    };
    let mut seen = std::collections::HashSet::new();
    for top in &file.items {
        check(top, &top.name)?;
        if !seen.insert(top.name.clone()) {
            return Err(AccountError::Invalid(format!(
                "menu item {:?} is listed twice",
                top.name
            )));
        }
        let mut kids = std::collections::HashSet::new();
        for c in &top.children {
            let path = format!("{}/{}", top.name, c.name);
            check(c, &path)?;
            if !c.children.is_empty() {
                return Err(AccountError::Invalid(format!(
                    "menu item {path:?}: a second-level item has no children (level 1 or 2)"
                )));
            }
            if !kids.insert(c.name.clone()) {
                return Err(AccountError::Invalid(format!(
                    "menu item {path:?} is listed twice"
                )));
            }
        }
    }
    Ok(())
}

/// A stored menu item.
#[derive(Debug, Clone, Serialize)]
pub struct StoredMenuItem {
    /// The platform's id.
    pub menu_id: String,
    /// The parent's id (level 2).
    pub parent_id: Option<String>,
    /// 1 or 2.
    pub level: i32,
    /// Name.
    pub name: String,
    /// 0 none, 1 open url.
    pub kind: i32,
    /// URL of kind 1.
    pub url: String,
    /// Its place among its siblings.
    pub position: i32,
}

/// The stored menu of an account.
///
/// # Errors
/// Database errors.
pub async fn stored_menu(
    pool: &PgPool,
    app_key: &str,
    mcid: &str,
) -> Result<Vec<StoredMenuItem>, sqlx::Error> {
    sqlx::query_as!(
        StoredMenuItem,
        "SELECT menu_id, parent_id, level, name, kind, url, position FROM menu_items
          WHERE app_key = $1 AND mcid = $2 ORDER BY level, position",
        app_key,
        mcid
    )
    .fetch_all(pool)
    .await
}

/// What a menu apply does.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MenuPlan {
    /// Items deleted (paths).
    pub delete: Vec<String>,
    /// Items added (paths).
    pub add: Vec<String>,
    /// Whether the order call is made.
    pub order: bool,
}

impl MenuPlan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty() && !self.order
    }
}

/// Whether the platform says the item is not there (`1002`, "menuId does
/// not exist").
fn gone(e: &pubbot_api_client::Error) -> bool {
    matches!(e.code(), Some(pubbot_api_client::ErrorCode::BadParameter))
        && e.to_string().to_lowercase().contains("menuid")
        && e.to_string().to_lowercase().contains("not exist")
}

fn kind_url(e: &MenuEntry) -> (i32, String) {
    match &e.url {
        Some(u) => (1, u.clone()),
        None => (0, String::new()),
    }
}

/// Plans and (unless `dry_run`) applies `file` to the account's menu.
///
/// # Errors
/// An invalid file (nothing called), platform or database errors.
pub async fn apply_menu(
    pool: &PgPool,
    client: &Client,
    app_key: &str,
    mcid: &str,
    file: &MenuFile,
    dry_run: bool,
) -> Result<MenuPlan, AccountError> {
    validate_menu(file)?;
    let stored = stored_menu(pool, app_key, mcid).await?;
    let by_id: HashMap<&str, &StoredMenuItem> =
        stored.iter().map(|s| (s.menu_id.as_str(), s)).collect();
    let path_of = |s: &StoredMenuItem| match &s.parent_id {
        Some(p) => format!(
            "{}/{}",
            by_id.get(p.as_str()).map_or("?", |x| x.name.as_str()),
            s.name
        ),
        None => s.name.clone(),
    };
    // Desired items by path: (kind, url, position, level).
    let mut desired: Vec<(String, Option<String>, i32, String, i32)> = Vec::new();
    for (i, top) in file.items.iter().enumerate() {
        let (k, u) = kind_url(top);
        desired.push((top.name.clone(), None, k, u, i32::try_from(i).unwrap_or(0)));
        for (j, c) in top.children.iter().enumerate() {
            let (k, u) = kind_url(c);
            desired.push((
                format!("{}/{}", top.name, c.name),
                Some(top.name.clone()),
                k,
                u,
                i32::try_from(j).unwrap_or(0),
            ));
        }
    }
    let want: HashMap<&str, (i32, &str)> = desired
        .iter()
        .map(|d| (d.0.as_str(), (d.2, d.3.as_str())))
        .collect();
    // Keep a stored item when its path is wanted with the same kind and url,
    // and (for a child) its parent is kept.
    let mut keep: HashMap<String, &StoredMenuItem> = HashMap::new();
    for s in stored.iter().filter(|s| s.level == 1) {
        let p = path_of(s);
        if want.get(p.as_str()) == Some(&(s.kind, s.url.as_str())) {
            keep.insert(p, s);
        }
    }
    for s in stored.iter().filter(|s| s.level == 2) {
        let p = path_of(s);
        let parent_kept = s
            .parent_id
            .as_deref()
            .and_then(|pid| by_id.get(pid))
            .is_some_and(|parent| keep.contains_key(&parent.name));
        if parent_kept && want.get(p.as_str()) == Some(&(s.kind, s.url.as_str())) {
            keep.insert(p, s);
        }
    }
    let mut plan = MenuPlan::default();
    // Deleted: not kept. A first-level item takes its children along on the
    // platform, so only children of kept parents are deleted one by one.
    let deleted: Vec<&StoredMenuItem> = stored
        .iter()
        .filter(|s| !keep.contains_key(&path_of(s)))
        .collect();
    let deleted_parents: std::collections::HashSet<&str> = deleted
        .iter()
        .filter(|s| s.level == 1)
        .map(|s| s.menu_id.as_str())
        .collect();
    let delete_calls: Vec<&StoredMenuItem> = deleted
        .iter()
        .copied()
        .filter(|s| {
            s.parent_id
                .as_deref()
                .is_none_or(|p| !deleted_parents.contains(p))
        })
        .collect();
    plan.delete = deleted.iter().map(|s| path_of(s)).collect();
    plan.add = desired
        .iter()
        .filter(|d| !keep.contains_key(&d.0))
        .map(|d| d.0.clone())
        .collect();
    let order_changed = desired
        .iter()
        .any(|d| keep.get(&d.0).is_some_and(|s| s.position != d.4));
    plan.order = !plan.add.is_empty() || order_changed;
    if dry_run || plan.is_empty() {
        return Ok(plan);
    }
    let mcid_id = McId::from(mcid);
    // Each call's success is recorded as it happens, so that an apply
    // stopped part-way by a platform error leaves the stored menu as the
    // platform has it, and the next apply goes on from there.
    for s in &delete_calls {
        match client
            .delete_menu_item(&mcid_id, &MenuId::from(s.menu_id.as_str()))
            .await
        {
            Ok(()) => {}
            // Gone already (an earlier apply's delete whose answer was
            // lost, or an edit on the platform): what we wanted.
            Err(e) if gone(&e) => {
                tracing::info!(item = %path_of(s), "menu item already gone from the platform");
            }
            Err(e) => {
                return Err(AccountError::platform(format!(
                    "deleting menu item {:?} (the items before it are deleted and recorded; apply again to go on)",
                    path_of(s)
                ))(e))
            }
        }
        // The item, and its children (the platform deletes them with it).
        let ids: Vec<String> = std::iter::once(s.menu_id.clone())
            .chain(
                stored
                    .iter()
                    .filter(|c| c.parent_id.as_deref() == Some(s.menu_id.as_str()))
                    .map(|c| c.menu_id.clone()),
            )
            .collect();
        sqlx::query!(
            "DELETE FROM menu_items WHERE app_key = $1 AND mcid = $2 AND menu_id = ANY($3)",
            app_key,
            mcid,
            &ids
        )
        .execute(pool)
        .await?;
    }
    // Parents first: the returned menuId is the children's pid.
    let mut ids: HashMap<String, String> = keep
        .iter()
        .map(|(p, s)| (p.clone(), s.menu_id.clone()))
        .collect();
    for d in desired
        .iter()
        .filter(|d| d.1.is_none())
        .chain(desired.iter().filter(|d| d.1.is_some()))
    {
        if keep.contains_key(&d.0) {
            continue;
        }
        let parent = d.1.as_ref().and_then(|p| ids.get(p)).cloned();
        let name = d.0.rsplit('/').next().unwrap_or(&d.0).to_owned();
        let item = NewMenuItem {
            name: name.clone(),
            action: if d.2 == 1 {
                MenuAction::OpenUrl(d.3.clone())
            } else {
                MenuAction::None
            },
            parent: parent.clone().map(MenuId::from),
        };
        let added = client
            .add_menu_item(&mcid_id, &item)
            .await
            .map_err(AccountError::platform(format!(
                "adding menu item {:?} (the items before it are added and recorded; apply again to go on)",
                d.0
            )))?;
        sqlx::query!(
            "INSERT INTO menu_items (app_key, mcid, menu_id, parent_id, level, name, kind, url, position)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            app_key,
            mcid,
            added.menu_id.as_str(),
            parent,
            if d.1.is_some() { 2 } else { 1 },
            name,
            d.2,
            d.3,
            d.4
        )
        .execute(pool)
        .await?;
        ids.insert(d.0.clone(), added.menu_id.as_str().to_owned());
    }
    if plan.order {
        let order: Vec<(MenuId, i64)> = desired
            .iter()
            .filter_map(|d| {
                ids.get(&d.0)
                    .map(|id| (MenuId::from(id.as_str()), i64::from(d.4)))
            })
            .collect();
        client
            .order_menu(&order)
            .await
            .map_err(AccountError::platform("ordering the menu"))?;
        for d in &desired {
            if let Some(id) = ids.get(&d.0) {
                sqlx::query!(
                    "UPDATE menu_items SET position = $4 WHERE app_key = $1 AND mcid = $2 AND menu_id = $3",
                    app_key,
                    mcid,
                    id,
                    d.4
                )
                .execute(pool)
                .await?;
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_menus_name_the_item() {
        let f: MenuFile = toml::from_str("[[item]]\nname = \"A very long name\"\n").unwrap();
        assert!(validate_menu(&f)
            .unwrap_err()
            .to_string()
            .contains("\"A very long name\""));
        let f: MenuFile = toml::from_str(
            "[[item]]\nname = \"Top\"\n[[item.children]]\nname = \"Kid\"\nurl = \" \"\n",
        )
        .unwrap();
        assert!(validate_menu(&f)
            .unwrap_err()
            .to_string()
            .contains("Top/Kid"));
        let f: MenuFile = toml::from_str(
            "[[item]]\nname = \"Top\"\n[[item.children]]\nname = \"Kid\"\n[[item.children.children]]\nname = \"Deep\"\n",
        )
        .unwrap();
        assert!(validate_menu(&f)
            .unwrap_err()
            .to_string()
            .contains("level 1 or 2"));
    }
}
