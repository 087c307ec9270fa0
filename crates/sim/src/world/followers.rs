//! Followers (rows 9, 10): subscribe one and many.

use serde_json::Value;

use super::{ok, str_field, user_list, World};
use crate::error::ApiError;
use crate::limits;

impl World {
    /// `/mc/subscribe.json` and `/mc/unsubscribe.json`; no event is pushed.
    pub fn subscribe(
        &mut self,
        app_key: &str,
        body: &Value,
        follow: bool,
    ) -> Result<Value, ApiError> {
        let mcid = str_field(body, "mcId")?.to_owned();
        let users = user_list(body, "userId", limits::SUBSCRIBE_MAX_USERS)?;
        let users: Vec<String> = users
            .iter()
            .map(|u| match u {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(ApiError::bad("userId entries must be non-empty strings")),
            })
            .collect::<Result<_, _>>()?;
        let account = self.account_mut(app_key, &mcid)?;
        for u in users {
            if follow {
                account.followers.insert(u);
            } else {
                account.followers.remove(&u);
            }
        }
        Ok(ok())
    }

    /// A user follows or unfollows through the app (control API).
    pub fn set_follower(
        &mut self,
        app_key: &str,
        mcid: &str,
        user: &str,
        follow: bool,
    ) -> Result<(), ApiError> {
        let account = self.account_mut(app_key, mcid)?;
        if follow {
            account.followers.insert(user.to_owned());
        } else {
            account.followers.remove(user);
        }
        Ok(())
    }
}
