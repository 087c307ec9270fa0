//! The account as code: profiles and routes, menus, and media, each
//! described in a file and made so on the platform with the fewest calls,
//! the plan shown first (`--dry-run` shows only the plan).
//!
//! - **Accounts** (`pubbot account apply`): `add` when `info` does not know
//!   the account, `refresh` when a profile field differs, `setUrl` /
//!   `setSwitch` when routing differs, nothing when all is equal.
//! - **Menus** (`pubbot menu apply`): the platform has add, delete and order
//!   but cannot list a menu, so pubbot keeps the ids it created
//!   (`menu_items`). An item is matched by its place (parent name, name):
//!   gone or changed items are deleted (a first-level item takes its
//!   children), new ones added (parents first, the returned `menuId` as
//!   `pid`), then one `order` call when the order changed (R13).
//! - **Media** (`pubbot media upload|news|list`): format and size are
//!   checked by content before uploading (R9), the file's SHA-256 is kept so
//!   the same file uploaded again reuses its `media_id`, and a local name
//!   lets rules and broadcasts say `media = "welcome-banner"`.

use std::collections::HashMap;

use anyhow::{bail, Context};
use pubbot_api_client::{
    AccountProfile, Client, ErrorCode, McId, MediaKind, MenuAction, MenuId, NewAccount,
    NewMenuItem, NewsMaterial,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

// ----- accounts ------------------------------------------------------------

/// `accounts.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsFile {
    /// The app (default: the only configured one).
    #[serde(default)]
    pub app: Option<String>,
    /// The accounts.
    #[serde(rename = "account", default)]
    pub accounts: Vec<DesiredAccount>,
}

/// One account as it should be.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredAccount {
    /// The account id.
    pub mcid: String,
    /// Display name.
    pub display_name: String,
    /// Portrait URL.
    pub portrait_url: String,
    /// Introduction (required by the platform).
    pub introduction: String,
    /// `uiType`.
    #[serde(default)]
    pub ui_type: i64,
    /// `isFollow` (only at add: refresh cannot change it).
    #[serde(default = "yes")]
    pub is_follow: bool,
    /// Route URL; default `{http.public_base_url}/webhook/{app}`.
    #[serde(default)]
    pub route_url: Option<String>,
    /// Route switch; default on.
    #[serde(default = "yes")]
    pub route_open: bool,
}

fn yes() -> bool {
    true
}

/// One step of an account plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AccountStep {
    /// `/mc/add.json` (then `setSwitch` if the route is to be closed).
    Add(String),
    /// `/mc/refresh.json`, with what differs.
    Refresh(String, Vec<String>),
    /// `/mc/route/setUrl.json`.
    SetUrl(String, String),
    /// `/mc/route/setSwitch.json`.
    SetSwitch(String, bool),
    /// Nothing to do.
    Same(String),
    /// A difference no call can fix (`isFollow` after add).
    Warn(String, String),
}

impl std::fmt::Display for AccountStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Add(m) => write!(f, "+ add {m}"),
            Self::Refresh(m, what) => write!(f, "~ refresh {m}: {}", what.join(", ")),
            Self::SetUrl(m, url) => write!(f, "~ route url of {m} -> {url}"),
            Self::SetSwitch(m, open) => {
                write!(f, "~ route of {m} {}", if *open { "on" } else { "off" })
            }
            Self::Same(m) => write!(f, "= {m} (no change)"),
            Self::Warn(m, w) => write!(f, "! {m}: {w}"),
        }
    }
}

fn not_found(e: &pubbot_api_client::Error) -> bool {
    matches!(e.code(), Some(ErrorCode::BadParameter))
}

/// Plans what `apply` would do for `accounts`.
///
/// # Errors
/// Platform errors other than "no such account".
pub async fn plan_accounts(
    client: &Client,
    accounts: &[DesiredAccount],
    default_route: &str,
) -> anyhow::Result<Vec<AccountStep>> {
    let mut plan = Vec::new();
    for a in accounts {
        let route = a
            .route_url
            .clone()
            .unwrap_or_else(|| default_route.to_owned());
        match client.account_info(&McId::from(a.mcid.as_str())).await {
            Ok(info) => {
                let mut diff = Vec::new();
                if info.display_name != a.display_name {
                    diff.push(format!(
                        "display_name {:?} -> {:?}",
                        info.display_name, a.display_name
                    ));
                }
                if info.portrait_url != a.portrait_url {
                    diff.push(format!(
                        "portrait_url {:?} -> {:?}",
                        info.portrait_url, a.portrait_url
                    ));
                }
                if info.introduction != a.introduction {
                    diff.push(format!(
                        "introduction {:?} -> {:?}",
                        info.introduction, a.introduction
                    ));
                }
                if info.ui_type != a.ui_type {
                    diff.push(format!("ui_type {} -> {}", info.ui_type, a.ui_type));
                }
                let before = plan.len();
                if !diff.is_empty() {
                    plan.push(AccountStep::Refresh(a.mcid.clone(), diff));
                }
                if info.route_url != route {
                    plan.push(AccountStep::SetUrl(a.mcid.clone(), route.clone()));
                }
                if info.route_open != a.route_open {
                    plan.push(AccountStep::SetSwitch(a.mcid.clone(), a.route_open));
                }
                if info.is_follow != a.is_follow {
                    plan.push(AccountStep::Warn(
                        a.mcid.clone(),
                        "is_follow differs, and the platform changes it only at add".into(),
                    ));
                }
                if plan.len() == before {
                    plan.push(AccountStep::Same(a.mcid.clone()));
                }
            }
            Err(e) if not_found(&e) => {
                plan.push(AccountStep::Add(a.mcid.clone()));
                if !a.route_open {
                    plan.push(AccountStep::SetSwitch(a.mcid.clone(), false));
                }
            }
            Err(e) => return Err(e).with_context(|| format!("reading account {}", a.mcid)),
        }
    }
    Ok(plan)
}

/// Carries out a plan.
///
/// # Errors
/// The first platform error, naming the step.
pub async fn apply_accounts(
    client: &Client,
    accounts: &[DesiredAccount],
    default_route: &str,
    plan: &[AccountStep],
) -> anyhow::Result<()> {
    let by_id: HashMap<&str, &DesiredAccount> =
        accounts.iter().map(|a| (a.mcid.as_str(), a)).collect();
    let profile = |a: &DesiredAccount| AccountProfile {
        display_name: a.display_name.clone(),
        portrait_url: a.portrait_url.clone(),
        ui_type: a.ui_type,
        introduction: a.introduction.clone(),
    };
    for step in plan {
        let r = match step {
            AccountStep::Add(m) => {
                let a = by_id[m.as_str()];
                client
                    .add_account(&NewAccount {
                        mcid: m.as_str().into(),
                        profile: profile(a),
                        is_follow: a.is_follow,
                        route_url: a
                            .route_url
                            .clone()
                            .unwrap_or_else(|| default_route.to_owned()),
                    })
                    .await
                    .map(drop)
            }
            AccountStep::Refresh(m, _) => client
                .refresh_account(&m.as_str().into(), &profile(by_id[m.as_str()]))
                .await
                .map(drop),
            AccountStep::SetUrl(m, url) => client
                .set_route_url(&m.as_str().into(), url)
                .await
                .map(drop),
            AccountStep::SetSwitch(m, open) => client
                .set_route_switch(&m.as_str().into(), *open)
                .await
                .map(drop),
            AccountStep::Same(_) | AccountStep::Warn(..) => Ok(()),
        };
        r.with_context(|| format!("{step}"))?;
    }
    Ok(())
}

// ----- menus -----------------------------------------------------------------

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
pub fn validate_menu(file: &MenuFile) -> Result<(), String> {
    let check = |e: &MenuEntry, path: &str| -> Result<(), String> {
        let n = e.name.chars().count();
        if n == 0 || n > pubbot_protocol::limits::MENU_NAME_MAX_CHARS {
            return Err(format!(
                "menu item {path:?}: name has {n} characters, 1 to {} are allowed (R9)",
                pubbot_protocol::limits::MENU_NAME_MAX_CHARS
            ));
        }
        if e.url.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return Err(format!(
                "menu item {path:?}: url is empty (leave it out for an item that opens nothing)"
            ));
        }
        Ok(())
    };
    let mut seen = std::collections::HashSet::new();
    for top in &file.items {
        check(top, &top.name)?;
        if !seen.insert(top.name.clone()) {
            return Err(format!("menu item {:?} is listed twice", top.name));
        }
        let mut kids = std::collections::HashSet::new();
        for c in &top.children {
            let path = format!("{}/{}", top.name, c.name);
            check(c, &path)?;
            if !c.children.is_empty() {
                return Err(format!(
                    "menu item {path:?}: a second-level item has no children (level 1 or 2)"
                ));
            }
            if !kids.insert(c.name.clone()) {
                return Err(format!("menu item {path:?} is listed twice"));
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
) -> anyhow::Result<MenuPlan> {
    validate_menu(file).map_err(anyhow::Error::msg)?;
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
    for s in &delete_calls {
        client
            .delete_menu_item(&mcid_id, &MenuId::from(s.menu_id.as_str()))
            .await
            .with_context(|| format!("deleting menu item {:?}", path_of(s)))?;
    }
    if !deleted.is_empty() {
        let ids: Vec<String> = deleted.iter().map(|s| s.menu_id.clone()).collect();
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
            .with_context(|| format!("adding menu item {:?}", d.0))?;
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
            .context("ordering the menu")?;
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

// ----- media -------------------------------------------------------------------

/// A stored medium.
#[derive(Debug, Clone, Serialize)]
pub struct StoredMedia {
    /// App.
    pub app_key: String,
    /// Local name.
    pub name: String,
    /// `image`, `voice`, `thumb` or `news`.
    pub kind: String,
    /// The platform's id.
    pub media_id: String,
    /// The file it came from.
    pub file_name: String,
    /// Its size.
    pub bytes: i64,
}

/// What an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    /// The medium.
    pub media: StoredMedia,
    /// Whether an earlier upload of the same bytes was reused (no call).
    pub reused: bool,
}

fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Image => "image",
        MediaKind::Thumb => "thumb",
        MediaKind::Voice => "voice",
    }
}

/// Uploads a file (checked by content and size first, R9), or reuses the
/// `media_id` of the same bytes uploaded before, and names it.
///
/// # Errors
/// The file over a limit or of the wrong format (nothing called), a name
/// taken by other content, platform or database errors.
pub async fn upload(
    pool: &PgPool,
    client: &Client,
    app_key: &str,
    kind: MediaKind,
    path: &std::path::Path,
    name: Option<&str>,
) -> anyhow::Result<Uploaded> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file_name = path
        .file_name()
        .map_or_else(|| "upload".to_owned(), |n| n.to_string_lossy().into_owned());
    let name = name.map_or_else(
        || {
            path.file_stem()
                .map_or_else(|| file_name.clone(), |s| s.to_string_lossy().into_owned())
        },
        str::to_owned,
    );
    let sha = hex::encode(Sha256::digest(&bytes));
    let kind_s = kind_name(kind);
    if let Some(existing) = sqlx::query_as!(
        StoredMedia,
        "SELECT app_key, name, kind, media_id, file_name, bytes FROM media WHERE app_key = $1 AND name = $2",
        app_key,
        name
    )
    .fetch_optional(pool)
    .await?
    {
        let same = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM media WHERE app_key = $1 AND name = $2 AND sha256 = $3 AND kind = $4) AS "same!""#,
            app_key,
            name,
            sha,
            kind_s
        )
        .fetch_one(pool)
        .await?;
        if same {
            return Ok(Uploaded {
                media: existing,
                reused: true,
            });
        }
        bail!("the name {name:?} is taken by other content ({}); choose another --name", existing.file_name);
    }
    let earlier = sqlx::query_scalar!(
        "SELECT media_id FROM media WHERE app_key = $1 AND kind = $2 AND sha256 = $3 LIMIT 1",
        app_key,
        kind_s,
        sha
    )
    .fetch_optional(pool)
    .await?;
    let (media_id, reused) = match earlier {
        Some(id) => (id, true),
        None => (
            client
                .upload_media(kind, &file_name, bytes.clone())
                .await
                .with_context(|| format!("uploading {}", path.display()))?
                .media_id
                .as_str()
                .to_owned(),
            false,
        ),
    };
    let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
    sqlx::query!(
        "INSERT INTO media (app_key, name, kind, sha256, media_id, file_name, bytes) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        app_key,
        name,
        kind_s,
        sha,
        media_id,
        file_name,
        size
    )
    .execute(pool)
    .await?;
    Ok(Uploaded {
        media: StoredMedia {
            app_key: app_key.to_owned(),
            name,
            kind: kind_s.to_owned(),
            media_id,
            file_name,
            bytes: size,
        },
        reused,
    })
}

/// `articles.toml` for `pubbot media news`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewsFile {
    /// The articles (1 to 10).
    #[serde(rename = "article")]
    pub articles: Vec<NewsMaterial>,
}

/// Uploads news material and names it.
///
/// # Errors
/// An invalid file (nothing called), platform or database errors.
pub async fn upload_news(
    pool: &PgPool,
    client: &Client,
    app_key: &str,
    path: &std::path::Path,
    name: Option<&str>,
) -> anyhow::Result<Uploaded> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: NewsFile =
        toml::from_str(&text).with_context(|| format!("{} is not a news file", path.display()))?;
    let name = name.map_or_else(
        || {
            path.file_stem()
                .map_or_else(|| "news".to_owned(), |s| s.to_string_lossy().into_owned())
        },
        str::to_owned,
    );
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    let uploaded = client
        .upload_news(&file.articles)
        .await
        .context("uploading news material")?;
    let file_name = path.display().to_string();
    let size = i64::try_from(text.len()).unwrap_or(i64::MAX);
    sqlx::query!(
        "INSERT INTO media (app_key, name, kind, sha256, media_id, file_name, bytes) VALUES ($1, $2, 'news', $3, $4, $5, $6)
         ON CONFLICT (app_key, name) DO UPDATE SET sha256 = EXCLUDED.sha256, media_id = EXCLUDED.media_id, file_name = EXCLUDED.file_name, bytes = EXCLUDED.bytes",
        app_key,
        name,
        sha,
        uploaded.media_id.as_str(),
        file_name,
        size
    )
    .execute(pool)
    .await?;
    Ok(Uploaded {
        media: StoredMedia {
            app_key: app_key.to_owned(),
            name,
            kind: "news".into(),
            media_id: uploaded.media_id.as_str().to_owned(),
            file_name,
            bytes: size,
        },
        reused: false,
    })
}

/// Every stored medium.
///
/// # Errors
/// Database errors.
pub async fn list_media(pool: &PgPool) -> Result<Vec<StoredMedia>, sqlx::Error> {
    sqlx::query_as!(
        StoredMedia,
        "SELECT app_key, name, kind, media_id, file_name, bytes FROM media ORDER BY app_key, name"
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_menus_name_the_item() {
        let f: MenuFile = toml::from_str("[[item]]\nname = \"A very long name\"\n").unwrap();
        assert!(validate_menu(&f)
            .unwrap_err()
            .contains("\"A very long name\""));
        let f: MenuFile = toml::from_str(
            "[[item]]\nname = \"Top\"\n[[item.children]]\nname = \"Kid\"\nurl = \" \"\n",
        )
        .unwrap();
        assert!(validate_menu(&f).unwrap_err().contains("Top/Kid"));
        let f: MenuFile = toml::from_str(
            "[[item]]\nname = \"Top\"\n[[item.children]]\nname = \"Kid\"\n[[item.children.children]]\nname = \"Deep\"\n",
        )
        .unwrap();
        assert!(validate_menu(&f).unwrap_err().contains("level 1 or 2"));
    }
}
