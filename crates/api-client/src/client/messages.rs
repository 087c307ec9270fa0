//! Messages: send, batchsend and the day's mass send.

use serde_json::{json, Value};

use super::{decode, message_body, ChunkOutcome, Client, Idempotent, Payload, SignIn};
use crate::error::{Error, Invalid};
use crate::types::{MassMsgId, McId, MediaRef, Message, UserId};
use crate::validate;

impl Client {
    async fn send_json(&self, path: &'static str, body: Value) -> Result<Value, Error> {
        self.call(path, SignIn::Headers, Payload::Json(body), Idempotent::No)
            .await
    }

    fn one(&self, from: &McId, to: &UserId, msg: &Message) -> Value {
        let (msgtype, inner) = message_body(msg);
        json!({"fromuser": self.address(from.as_str()), "touser": self.address(to.as_str()), "msgtype": msgtype, msgtype: inner})
    }

    fn many(&self, from: &McId, to: &[UserId], msg: &Message) -> Value {
        let (msgtype, inner) = message_body(msg);
        let to: Vec<String> = to.iter().map(|u| self.address(u.as_str())).collect();
        json!({"fromuser": self.address(from.as_str()), "touser": to, "msgtype": msgtype, msgtype: inner})
    }

    fn all(&self, from: &McId, msg: &Message, filter: bool) -> Value {
        let (msgtype, inner) = message_body(msg);
        let mut v =
            json!({"fromuser": self.address(from.as_str()), "msgtype": msgtype, msgtype: inner});
        if filter {
            v["filter"] = json!({"is_to_all": true});
        }
        v
    }

    /// `/message/send.json`: to one user; text, news, or image / voice by
    /// uploaded `media_id`.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or a URL media (use
    /// [`Self::operation_send`]); see [`Error`].
    pub async fn send(&self, from: &McId, to: &UserId, msg: &Message) -> Result<(), Error> {
        validate::message(msg)?;
        match msg {
            Message::Image(MediaRef::Url(_)) | Message::Voice(MediaRef::Url(_)) => {
                return Err(Invalid::Unsupported(
                    "send.json takes uploaded media; send URLs with operation_send",
                )
                .into())
            }
            Message::MpNews(_) => {
                return Err(Invalid::Unsupported("mpnews is for mass sends only").into())
            }
            _ => {}
        }
        self.send_json("/message/send.json", self.one(from, to, msg))
            .await
            .map(drop)
    }

    /// `/message/operation/send.json`: to one user; text, news, or image /
    /// voice by URL.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or uploaded media; see [`Error`].
    pub async fn operation_send(
        &self,
        from: &McId,
        to: &UserId,
        msg: &Message,
    ) -> Result<(), Error> {
        validate::message(msg)?;
        match msg {
            Message::Image(MediaRef::Uploaded(_)) | Message::Voice(MediaRef::Uploaded(_)) => {
                return Err(Invalid::Unsupported(
                    "operation/send.json takes URLs; send uploaded media with send",
                )
                .into())
            }
            Message::MpNews(_) => {
                return Err(Invalid::Unsupported("mpnews is for mass sends only").into())
            }
            _ => {}
        }
        self.send_json("/message/operation/send.json", self.one(from, to, msg))
            .await
            .map(drop)
    }

    /// Sends to one user by the right endpoint: image / voice by URL go to
    /// `operation/send.json`, everything else to `send.json`.
    ///
    /// # Errors
    /// As [`Self::send`] and [`Self::operation_send`].
    pub async fn send_to(&self, from: &McId, to: &UserId, msg: &Message) -> Result<(), Error> {
        match msg {
            Message::Image(MediaRef::Url(_)) | Message::Voice(MediaRef::Url(_)) => {
                self.operation_send(from, to, msg).await
            }
            _ => self.send(from, to, msg).await,
        }
    }

    /// `/message/batchsend.json`: text or news to at most 100 users.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or another message kind; see [`Error`].
    pub async fn batch_send(&self, from: &McId, to: &[UserId], msg: &Message) -> Result<(), Error> {
        validate::recipients(to.len(), validate::BATCH_MAX_USERS)?;
        validate::message(msg)?;
        if !matches!(msg, Message::Text(_) | Message::News(_)) {
            return Err(Invalid::Unsupported("batchsend.json takes text and news; images and voices by URL go to operation_batch_send").into());
        }
        self.send_json("/message/batchsend.json", self.many(from, to, msg))
            .await
            .map(drop)
    }

    /// `/message/operation/batchsend.json`: image or voice by URL to at most
    /// 100 users.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or another message kind; see [`Error`].
    pub async fn operation_batch_send(
        &self,
        from: &McId,
        to: &[UserId],
        msg: &Message,
    ) -> Result<(), Error> {
        validate::recipients(to.len(), validate::BATCH_MAX_USERS)?;
        if !matches!(
            msg,
            Message::Image(MediaRef::Url(_)) | Message::Voice(MediaRef::Url(_))
        ) {
            return Err(Invalid::Unsupported(
                "operation/batchsend.json takes images and voices by URL",
            )
            .into());
        }
        self.send_json(
            "/message/operation/batchsend.json",
            self.many(from, to, msg),
        )
        .await
        .map(drop)
    }

    /// Sends one message to any number of users, in calls of at most 100 by
    /// the right endpoint (text and news: `batchsend`; image / voice by URL:
    /// `operation/batchsend`). Each chunk reports its own result, so a
    /// caller knows exactly which users failed.
    ///
    /// # Errors
    /// Up front, before anything is sent: no users, a broken limit, or a
    /// message no batch endpoint takes (uploaded media, mpnews).
    pub async fn send_to_many(
        &self,
        from: &McId,
        to: &[UserId],
        msg: &Message,
    ) -> Result<Vec<ChunkOutcome>, Error> {
        if to.is_empty() {
            return Err(Invalid::Recipients {
                count: 0,
                max: validate::BATCH_MAX_USERS,
            }
            .into());
        }
        validate::message(msg)?;
        let by_url = match msg {
            Message::Text(_) | Message::News(_) => false,
            Message::Image(MediaRef::Url(_)) | Message::Voice(MediaRef::Url(_)) => true,
            _ => {
                return Err(Invalid::Unsupported(
                    "no batch endpoint takes uploaded media or mpnews",
                )
                .into())
            }
        };
        let mut out = Vec::new();
        for chunk in to.chunks(validate::BATCH_MAX_USERS) {
            let result = if by_url {
                self.operation_batch_send(from, chunk, msg).await
            } else {
                self.batch_send(from, chunk, msg).await
            };
            out.push(ChunkOutcome {
                users: chunk.to_vec(),
                result,
            });
        }
        Ok(out)
    }

    /// `/message/sendall.json`: to every follower, uploaded material (text,
    /// mpnews, image / voice by `media_id`), `filter.is_to_all = true`.
    /// Once per natural day, UTC+8 (R11): a second one is `1007`.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or another kind; see [`Error`].
    pub async fn send_all(&self, from: &McId, msg: &Message) -> Result<MassMsgId, Error> {
        validate::message(msg)?;
        if !matches!(
            msg,
            Message::Text(_)
                | Message::MpNews(_)
                | Message::Image(MediaRef::Uploaded(_))
                | Message::Voice(MediaRef::Uploaded(_))
        ) {
            return Err(Invalid::Unsupported("sendall.json takes text and uploaded material; news inline and URLs go to operation_send_all").into());
        }
        decode(
            self.send_json("/message/sendall.json", self.all(from, msg, true))
                .await?,
            Some("msg_id"),
        )
    }

    /// `/message/operation/sendall.json`: to every follower, direct (text,
    /// news inline as `news` per R8, image / voice by URL). Once per
    /// natural day (R11).
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or another kind; see [`Error`].
    pub async fn operation_send_all(&self, from: &McId, msg: &Message) -> Result<MassMsgId, Error> {
        validate::message(msg)?;
        if !matches!(
            msg,
            Message::Text(_)
                | Message::News(_)
                | Message::Image(MediaRef::Url(_))
                | Message::Voice(MediaRef::Url(_))
        ) {
            return Err(Invalid::Unsupported("operation/sendall.json takes text, news and URLs; uploaded material goes to send_all").into());
        }
        decode(
            self.send_json(
                "/message/operation/sendall.json",
                self.all(from, msg, false),
            )
            .await?,
            Some("msg_id"),
        )
    }

    /// The day's mass send by the right endpoint: news inline and URLs go to
    /// `operation/sendall.json`, the rest to `sendall.json`.
    ///
    /// # Errors
    /// As [`Self::send_all`] and [`Self::operation_send_all`].
    pub async fn broadcast(&self, from: &McId, msg: &Message) -> Result<MassMsgId, Error> {
        match msg {
            Message::News(_)
            | Message::Image(MediaRef::Url(_))
            | Message::Voice(MediaRef::Url(_)) => self.operation_send_all(from, msg).await,
            _ => self.send_all(from, msg).await,
        }
    }

    /// The raw JSON body a send of `msg` from `from` to `to` would carry; for
    /// logs and for checking against the document.
    pub fn send_body(&self, from: &McId, to: &UserId, msg: &Message) -> Value {
        self.one(from, to, msg)
    }
}
