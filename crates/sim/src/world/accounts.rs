//! Accounts (rows 1..5): add, refresh, info, route url and switch.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Account, Form, World};
use crate::error::ApiError;

impl World {
    /// `/mc/add.json`
    pub fn add_account(&mut self, app_key: &str, form: &Form) -> Result<Value, ApiError> {
        form.app_key_field(app_key)?;
        let mcid = form.required("mcid")?.to_owned();
        let account = Account {
            id: 0,
            display_name: form.required("displayName")?.to_owned(),
            portrait_url: form.required("portraitUrl")?.to_owned(),
            ui_type: form.integer("uiType")?,
            introduction: form.required("introduction")?.to_owned(),
            is_follow: form.boolean("isFollow")?,
            route_url: form.required("routeUrl")?.to_owned(),
            route_open: true,
            followers: BTreeSet::new(),
            last_sendall_day: None,
            mcid: mcid.clone(),
        };
        let id = self.next_id();
        let app = self.app_mut(app_key)?;
        if app.accounts.contains_key(&mcid) {
            return Err(ApiError::bad(format!(
                "mcid {mcid:?} already exists for this app key"
            )));
        }
        let account = app
            .accounts
            .entry(mcid)
            .or_insert(Account { id, ..account });
        Ok(account.info())
    }

    pub(super) fn account_mut(
        &mut self,
        app_key: &str,
        mcid: &str,
    ) -> Result<&mut Account, ApiError> {
        self.app_mut(app_key)?
            .accounts
            .get_mut(mcid)
            .ok_or_else(|| ApiError::bad(format!("mcid {mcid:?} does not exist")))
    }

    /// `/mc/refresh.json`
    pub fn refresh_account(&mut self, app_key: &str, form: &Form) -> Result<Value, ApiError> {
        form.app_key_field(app_key)?;
        let display_name = form.required("displayName")?.to_owned();
        let portrait_url = form.required("portraitUrl")?.to_owned();
        let ui_type = form.integer("uiType")?;
        let introduction = form.required("introduction")?.to_owned();
        let account = self.account_mut(app_key, form.required("mcid")?)?;
        account.display_name = display_name;
        account.portrait_url = portrait_url;
        account.ui_type = ui_type;
        account.introduction = introduction;
        Ok(account.info())
    }

    /// `/mc/info.json`
    pub fn account_info(&mut self, app_key: &str, form: &Form) -> Result<Value, ApiError> {
        form.app_key_field(app_key)?;
        Ok(self.account_mut(app_key, form.required("mcid")?)?.info())
    }

    /// `/mc/route/setUrl.json`
    pub fn set_route_url(&mut self, app_key: &str, form: &Form) -> Result<Value, ApiError> {
        form.app_key_field(app_key)?;
        let url = form.required("routeUrl")?.to_owned();
        let account = self.account_mut(app_key, form.required("mcid")?)?;
        account.route_url = url;
        Ok(account.info())
    }

    /// `/mc/route/setSwitch.json`
    pub fn set_route_switch(&mut self, app_key: &str, form: &Form) -> Result<Value, ApiError> {
        form.app_key_field(app_key)?;
        let open = form.boolean("isOpen")?;
        let account = self.account_mut(app_key, form.required("mcid")?)?;
        account.route_open = open;
        Ok(account.info())
    }
}
