//! Menus (rows 6..8): add, delete, order.

use serde_json::{json, Value};

use super::{ok, random_hex, Form, Menu, World};
use crate::error::ApiError;
use crate::limits;

impl World {
    /// `/mc/menu/refresh.json`: adds one item.
    pub fn add_menu(&mut self, app_key: &str, form: &Form) -> Result<Value, ApiError> {
        let mcid = form.required("mcid")?.to_owned();
        let level = form.integer("level")?;
        let name = form.required("name")?.to_owned();
        let kind = form.integer("type")?;
        let url = form.get("url").unwrap_or_default().to_owned();
        if name.chars().count() > limits::MENU_NAME_MAX_CHARS {
            return Err(ApiError::bad(format!(
                "name is longer than {} characters",
                limits::MENU_NAME_MAX_CHARS
            )));
        }
        let kind = match kind {
            0 | 1 => kind as u8,
            _ => return Err(ApiError::bad(format!("type must be 0 or 1, got {kind}"))),
        };
        if kind == 1 && url.trim().is_empty() {
            return Err(ApiError::bad("url is required when type is 1"));
        }
        let id = self.next_id();
        self.account_mut(app_key, &mcid)?;
        let app = self.app_mut(app_key)?;
        let (level, pid) = match level {
            1 => (1, String::new()),
            2 => {
                let pid = form.required("pid")?.to_owned();
                match app.menus.get(&pid) {
                    Some(parent) if parent.level == 1 && parent.mcid == mcid => {}
                    Some(_) => {
                        return Err(ApiError::bad(
                            "pid must name a first-level menu of this account",
                        ))
                    }
                    None => return Err(ApiError::bad(format!("pid {pid:?} does not exist"))),
                }
                (2, pid)
            }
            _ => return Err(ApiError::bad(format!("level must be 1 or 2, got {level}"))),
        };
        let menu = Menu {
            id,
            menu_id: random_hex(32),
            mcid,
            level,
            name,
            kind,
            url,
            pid,
            order: 0,
        };
        let info = menu.info();
        app.menus.insert(menu.menu_id.clone(), menu);
        Ok(info)
    }

    /// `/mc/menu/delete.json`: a first-level item takes its children along.
    pub fn delete_menu(&mut self, app_key: &str, form: &Form) -> Result<Value, ApiError> {
        let mcid = form.required("mcid")?.to_owned();
        let menu_id = form.required("menuId")?.to_owned();
        self.account_mut(app_key, &mcid)?;
        let app = self.app_mut(app_key)?;
        match app.menus.get(&menu_id) {
            Some(m) if m.mcid == mcid => {}
            _ => return Err(ApiError::bad(format!("menuId {menu_id:?} does not exist"))),
        }
        app.menus.retain(|id, m| *id != menu_id && m.pid != menu_id);
        Ok(ok())
    }

    /// `/mc/menu/order.json`: repeated `menuIds` / `orders` pairs (R13).
    pub fn order_menus(&mut self, app_key: &str, form: &Form) -> Result<Value, ApiError> {
        let ids = form.all("menuIds");
        let orders = form.all("orders");
        if ids.is_empty() {
            return Err(ApiError::bad("menuIds is required"));
        }
        if ids.len() != orders.len() {
            return Err(ApiError::bad(format!(
                "menuIds and orders must pair up: {} menuIds, {} orders",
                ids.len(),
                orders.len()
            )));
        }
        let mut pairs = Vec::with_capacity(ids.len());
        for (id, order) in ids.iter().zip(&orders) {
            let order: i64 = order
                .trim()
                .parse()
                .map_err(|_| ApiError::bad(format!("orders must be integers, got {order:?}")))?;
            pairs.push(((*id).to_owned(), order));
        }
        let app = self.app_mut(app_key)?;
        if let Some((id, _)) = pairs.iter().find(|(id, _)| !app.menus.contains_key(id)) {
            return Err(ApiError::bad(format!("menuIds {id:?} does not exist")));
        }
        for (id, order) in pairs {
            if let Some(m) = app.menus.get_mut(&id) {
                m.order = order;
            }
        }
        Ok(ok())
    }

    /// The menu of one account as a client shows it: first level by order,
    /// each with its children by order (R13).
    pub fn menu_tree(&self, app_key: &str, mcid: &str) -> Value {
        let Some(app) = self.apps.get(app_key) else {
            return json!([]);
        };
        let mut items: Vec<&Menu> = app.menus.values().filter(|m| m.mcid == mcid).collect();
        items.sort_by_key(|m| (m.order, m.id));
        let tree: Vec<Value> = items
            .iter()
            .filter(|m| m.level == 1)
            .map(|top| {
                let children: Vec<&Menu> = items
                    .iter()
                    .copied()
                    .filter(|m| m.pid == top.menu_id)
                    .collect();
                json!({"item": top, "children": children})
            })
            .collect();
        Value::Array(tree)
    }
}
