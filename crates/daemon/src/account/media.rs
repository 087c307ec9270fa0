//! Media (`pubbot media upload|news|list`): format and size are checked by
//! content before uploading (R9), the file's SHA-256 is kept so the same
//! file uploaded again reuses its `media_id`, and a local name lets rules
//! and broadcasts say `media = "welcome-banner"`.

use pubbot_api_client::{Client, MediaKind, NewsMaterial};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::AccountError;

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
) -> Result<Uploaded, AccountError> {
    let bytes = std::fs::read(path).map_err(AccountError::read(path))?;
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
        return Err(AccountError::Invalid(format!(
            "the name {name:?} is taken by other content ({}); choose another --name",
            existing.file_name
        )));
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
                .map_err(AccountError::platform(format!(
                    "uploading {}",
                    path.display()
                )))?
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
) -> Result<Uploaded, AccountError> {
    let text = std::fs::read_to_string(path).map_err(AccountError::read(path))?;
    let file: NewsFile = toml::from_str(&text).map_err(|source| AccountError::Parse {
        path: path.to_owned(),
        what: "news",
        source: Box::new(source),
    })?;
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
        .map_err(AccountError::platform("uploading news material"))?;
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
