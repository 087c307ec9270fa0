//! Media (rows 17, 18): uploads and news material.

use serde_json::{json, Value};

use super::{articles_of, at_article, random_hex, str_field, Media, World};
use crate::error::ApiError;
use crate::limits::{self, FileFormat};

impl World {
    /// `/media/upload?type=T`
    pub fn upload(
        &mut self,
        app_key: &str,
        kind: Option<&str>,
        file: Option<&[u8]>,
    ) -> Result<Value, ApiError> {
        let kind = kind.ok_or_else(|| ApiError::bad("type is required"))?;
        let (max, formats): (usize, &[FileFormat]) = match kind {
            "image" => (
                limits::IMAGE_MAX_BYTES,
                &[FileFormat::Jpeg, FileFormat::Png],
            ),
            "thumb" => (
                limits::THUMB_MAX_BYTES,
                &[FileFormat::Jpeg, FileFormat::Png],
            ),
            "voice" => (limits::VOICE_MAX_BYTES, &[FileFormat::Amr]),
            other => {
                return Err(ApiError::InvalidMediaType(format!(
                    "invalid type {other:?}: image, thumb or voice"
                )))
            }
        };
        let file =
            file.ok_or_else(|| ApiError::bad("file is required (multipart field \"file\")"))?;
        if file.is_empty() {
            return Err(ApiError::bad("file is empty"));
        }
        if file.len() > max {
            return Err(ApiError::bad(format!(
                "file is {} bytes, the {kind} limit is {max} bytes",
                file.len()
            )));
        }
        if !formats.contains(&limits::sniff(file)) {
            let want = if kind == "voice" { "AMR" } else { "JPG or PNG" };
            return Err(ApiError::InvalidMediaType(format!(
                "invalid media type: {kind} must be {want}"
            )));
        }
        if kind == "voice" {
            match limits::amr_duration_millis(file) {
                Some(ms) if ms <= limits::VOICE_MAX_MILLIS => {}
                Some(ms) => {
                    return Err(ApiError::bad(format!(
                        "voice is {ms} ms long, at most 60 s"
                    )))
                }
                None => {
                    return Err(ApiError::InvalidMediaType(
                        "invalid media type: AMR frames do not parse".into(),
                    ))
                }
            }
        }
        self.store_media(app_key, kind, file.len(), Vec::new())
    }

    /// `/media/uploadnews`
    pub fn upload_news(&mut self, app_key: &str, body: &Value) -> Result<Value, ApiError> {
        let articles = articles_of(body)?;
        let app = self.app_mut(app_key)?;
        for (i, a) in articles.iter().enumerate() {
            let thumb = str_field(a, "thumb_media_id").map_err(|e| at_article(i, &e))?;
            match app.media.get(thumb.trim()) {
                Some(m) if m.kind == "thumb" || m.kind == "image" => {}
                _ => {
                    return Err(ApiError::bad(format!(
                        "articles[{i}].thumb_media_id: invalid media_id"
                    )))
                }
            }
            str_field(a, "content_source_url").map_err(|e| at_article(i, &e))?;
        }
        let articles = articles.to_vec();
        self.store_media(app_key, "news", 0, articles)
    }

    fn store_media(
        &mut self,
        app_key: &str,
        kind: &str,
        bytes: usize,
        articles: Vec<Value>,
    ) -> Result<Value, ApiError> {
        let created_at = self.now_ms() / 1000;
        let media = Media {
            media_id: random_hex(24),
            kind: kind.to_owned(),
            created_at,
            bytes,
            articles,
        };
        let answer = json!({"type": kind, "media_id": media.media_id, "created_at": created_at});
        self.app_mut(app_key)?
            .media
            .insert(media.media_id.clone(), media);
        Ok(answer)
    }
}
