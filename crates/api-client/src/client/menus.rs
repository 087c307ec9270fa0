//! Menus: add, delete and order items.

use super::{decode, Client, Idempotent, Payload, SignIn};
use crate::error::{Error, Invalid};
use crate::types::{McId, MenuAction, MenuId, MenuItem, NewMenuItem};
use crate::validate;

impl Client {
    /// `/mc/menu/refresh.json`: adds a first- or second-level item.
    ///
    /// # Errors
    /// [`Invalid::MenuName`] / [`Invalid::MenuUrlMissing`] before sending;
    /// see [`Error`].
    pub async fn add_menu_item(&self, mcid: &McId, item: &NewMenuItem) -> Result<MenuItem, Error> {
        validate::menu_item(item)?;
        let (kind, url) = match &item.action {
            MenuAction::None => ("0", ""),
            MenuAction::OpenUrl(u) => ("1", u.as_str()),
        };
        let mut pairs = vec![
            ("mcid", mcid.as_str()),
            ("name", item.name.as_str()),
            ("type", kind),
        ];
        if !url.is_empty() {
            pairs.push(("url", url));
        }
        match &item.parent {
            None => pairs.push(("level", "1")),
            Some(pid) => {
                pairs.push(("level", "2"));
                pairs.push(("pid", pid.as_str()));
            }
        }
        let form = self.form(&pairs, false);
        decode(
            self.call(
                "/mc/menu/refresh.json",
                SignIn::Headers,
                form,
                Idempotent::No,
            )
            .await?,
            Some("info"),
        )
    }

    /// `/mc/menu/delete.json`.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn delete_menu_item(&self, mcid: &McId, menu_id: &MenuId) -> Result<(), Error> {
        let form = self.form(
            &[("mcid", mcid.as_str()), ("menuId", menu_id.as_str())],
            false,
        );
        self.call(
            "/mc/menu/delete.json",
            SignIn::Headers,
            form,
            Idempotent::Yes,
        )
        .await
        .map(drop)
    }

    /// `/mc/menu/order.json`: each pair ranks an item among its siblings
    /// (R13).
    ///
    /// # Errors
    /// [`Invalid::EmptyOrder`] before sending; see [`Error`].
    pub async fn order_menu(&self, order: &[(MenuId, i64)]) -> Result<(), Error> {
        if order.is_empty() {
            return Err(Invalid::EmptyOrder.into());
        }
        let mut f = Vec::with_capacity(order.len() * 2);
        for (id, rank) in order {
            f.push(("menuIds", id.as_str().to_owned()));
            f.push(("orders", rank.to_string()));
        }
        self.call(
            "/mc/menu/order.json",
            SignIn::Headers,
            Payload::Form(f),
            Idempotent::Yes,
        )
        .await
        .map(drop)
    }
}
