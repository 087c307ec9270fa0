//! Accounts (rows 1-5 of READING.md's table): create, refresh, read, route url and switch.

use super::{decode, Client, Idempotent, SignIn};
use crate::error::Error;
use crate::types::{AccountInfo, AccountProfile, McId, NewAccount};

impl Client {
    /// `/mc/add.json`: creates an account.
    ///
    /// # Errors
    /// `1002` when the mcid exists already; see [`Error`].
    pub async fn add_account(&self, account: &NewAccount) -> Result<AccountInfo, Error> {
        let ui = account.profile.ui_type.to_string();
        let p = &account.profile;
        let form = self.form(
            &[
                ("mcid", account.mcid.as_str()),
                ("displayName", &p.display_name),
                ("portraitUrl", &p.portrait_url),
                ("uiType", &ui),
                ("introduction", &p.introduction),
                ("isFollow", if account.is_follow { "true" } else { "false" }),
                ("routeUrl", &account.route_url),
            ],
            true,
        );
        decode(
            self.call("/mc/add.json", SignIn::Headers, form, Idempotent::No)
                .await?,
            Some("info"),
        )
    }

    /// `/mc/refresh.json`: updates the profile.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn refresh_account(
        &self,
        mcid: &McId,
        profile: &AccountProfile,
    ) -> Result<AccountInfo, Error> {
        let ui = profile.ui_type.to_string();
        let form = self.form(
            &[
                ("mcid", mcid.as_str()),
                ("displayName", &profile.display_name),
                ("portraitUrl", &profile.portrait_url),
                ("uiType", &ui),
                ("introduction", &profile.introduction),
            ],
            true,
        );
        decode(
            self.call("/mc/refresh.json", SignIn::Headers, form, Idempotent::Yes)
                .await?,
            Some("info"),
        )
    }

    /// `/mc/info.json`: reads an account.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn account_info(&self, mcid: &McId) -> Result<AccountInfo, Error> {
        let form = self.form(&[("mcid", mcid.as_str())], true);
        decode(
            self.call("/mc/info.json", SignIn::Headers, form, Idempotent::Yes)
                .await?,
            Some("info"),
        )
    }

    /// `/mc/route/setUrl.json`: where pushes go.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn set_route_url(&self, mcid: &McId, route_url: &str) -> Result<AccountInfo, Error> {
        let form = self.form(&[("mcid", mcid.as_str()), ("routeUrl", route_url)], true);
        decode(
            self.call(
                "/mc/route/setUrl.json",
                SignIn::Headers,
                form,
                Idempotent::Yes,
            )
            .await?,
            Some("info"),
        )
    }

    /// `/mc/route/setSwitch.json`: turns pushes on or off.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn set_route_switch(&self, mcid: &McId, open: bool) -> Result<AccountInfo, Error> {
        let form = self.form(
            &[
                ("mcid", mcid.as_str()),
                ("isOpen", if open { "true" } else { "false" }),
            ],
            true,
        );
        decode(
            self.call(
                "/mc/route/setSwitch.json",
                SignIn::Headers,
                form,
                Idempotent::Yes,
            )
            .await?,
            Some("info"),
        )
    }
}
