//! Media: uploads.

use bytes::Bytes;
use serde_json::json;

use super::{decode, Client, Idempotent, Payload, SignIn};
use crate::error::Error;
use crate::types::{MediaKind, NewsMaterial, UploadedMedia};
use crate::validate;

impl Client {
    /// `/media/upload?type=T`: uploads a file (multipart field `file`,
    /// signature in the query string).
    ///
    /// # Errors
    /// [`Invalid::UploadTooLarge`], [`Invalid::UploadFormat`],
    /// [`Invalid::VoiceTooLong`] before sending; see [`Error`].
    pub async fn upload_media(
        &self,
        kind: MediaKind,
        file_name: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<UploadedMedia, Error> {
        let bytes: Bytes = bytes.into();
        validate::upload(kind, &bytes)?;
        let path = match kind {
            MediaKind::Image => "/media/upload?type=image",
            MediaKind::Thumb => "/media/upload?type=thumb",
            MediaKind::Voice => "/media/upload?type=voice",
        };
        let payload = Payload::File {
            name: file_name.to_owned(),
            bytes,
        };
        decode(
            self.call(path, SignIn::Query, payload, Idempotent::No)
                .await?,
            None,
        )
    }

    /// `/media/uploadnews`: uploads news material (1 to 10 articles) for
    /// `mpnews` mass sends.
    ///
    /// # Errors
    /// [`Invalid`] before sending; see [`Error`].
    pub async fn upload_news(&self, articles: &[NewsMaterial]) -> Result<UploadedMedia, Error> {
        validate::news_material(articles)?;
        let body = json!({"articles": articles});
        decode(
            self.call(
                "/media/uploadnews",
                SignIn::Query,
                Payload::Json(body),
                Idempotent::No,
            )
            .await?,
            None,
        )
    }
}
