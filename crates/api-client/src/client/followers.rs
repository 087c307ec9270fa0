//! Followers: the subscribe API.

use serde_json::json;

use super::{ChunkOutcome, Client, Idempotent, Payload, SignIn};
use crate::error::{Error, Invalid};
use crate::types::{McId, UserId};
use crate::validate;

impl Client {
    /// `/mc/subscribe.json` (`follow`) or `/mc/unsubscribe.json`: at most 50
    /// users; no event is pushed.
    ///
    /// # Errors
    /// [`Invalid::Recipients`] before sending; see [`Error`].
    pub async fn subscribe(
        &self,
        mcid: &McId,
        users: &[UserId],
        follow: bool,
    ) -> Result<(), Error> {
        validate::recipients(users.len(), validate::SUBSCRIBE_MAX_USERS)?;
        let path = if follow {
            "/mc/subscribe.json"
        } else {
            "/mc/unsubscribe.json"
        };
        let body = json!({"mcId": mcid, "userId": users});
        self.call(path, SignIn::Headers, Payload::Json(body), Idempotent::Yes)
            .await
            .map(drop)
    }

    /// [`Self::subscribe`] for any number of users, in calls of 50.
    ///
    /// # Errors
    /// Only when `users` is empty; each chunk reports its own result.
    pub async fn subscribe_many(
        &self,
        mcid: &McId,
        users: &[UserId],
        follow: bool,
    ) -> Result<Vec<ChunkOutcome>, Error> {
        if users.is_empty() {
            return Err(Invalid::Recipients {
                count: 0,
                max: validate::SUBSCRIBE_MAX_USERS,
            }
            .into());
        }
        let mut out = Vec::new();
        for chunk in users.chunks(validate::SUBSCRIBE_MAX_USERS) {
            let result = self.subscribe(mcid, chunk, follow).await;
            out.push(ChunkOutcome {
                users: chunk.to_vec(),
                result,
            });
        }
        Ok(out)
    }
}
