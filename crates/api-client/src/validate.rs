//! The platform's limits (R9, row 17), checked before anything is sent: a
//! clear error beats a round trip.

use crate::error::Invalid;
use crate::types::{Article, MediaKind, MediaRef, MenuAction, Message, NewMenuItem, NewsMaterial};

pub use pubbot_protocol::limits::{
    ARTICLES_MAX, BATCH_MAX_USERS, DESCRIPTION_MAX_WIDTH, MENU_NAME_MAX_CHARS, SUBSCRIBE_MAX_USERS,
    TEXT_MAX_BYTES,
};
use pubbot_protocol::limits::{
    IMAGE_MAX_BYTES, THUMB_MAX_BYTES, VOICE_MAX_BYTES, VOICE_MAX_MILLIS,
};
pub use pubbot_protocol::width;
use pubbot_protocol::{amr_duration_millis, sniff, FileFormat};

/// A text message: not empty, at most [`TEXT_MAX_BYTES`] bytes of UTF-8.
///
/// # Errors
/// [`Invalid::EmptyText`], [`Invalid::TextTooLong`].
pub fn text(content: &str) -> Result<(), Invalid> {
    if content.is_empty() {
        return Err(Invalid::EmptyText);
    }
    if content.len() > TEXT_MAX_BYTES {
        return Err(Invalid::TextTooLong {
            bytes: content.len(),
            max: TEXT_MAX_BYTES,
        });
    }
    Ok(())
}

fn article_count(count: usize) -> Result<(), Invalid> {
    if count == 0 || count > ARTICLES_MAX {
        return Err(Invalid::ArticleCount {
            count,
            max: ARTICLES_MAX,
        });
    }
    Ok(())
}

/// News articles: 1 to [`ARTICLES_MAX`], each with a title and a picture,
/// descriptions at most [`DESCRIPTION_MAX_WIDTH`] wide.
///
/// # Errors
/// The first article at fault, named.
pub fn articles(articles: &[Article]) -> Result<(), Invalid> {
    article_count(articles.len())?;
    for (index, a) in articles.iter().enumerate() {
        if a.title.trim().is_empty() {
            return Err(Invalid::ArticleField {
                index,
                field: "title",
            });
        }
        if a.picurl.trim().is_empty() {
            return Err(Invalid::ArticleField {
                index,
                field: "picurl",
            });
        }
        if let Some(d) = &a.description {
            let w = width(d);
            if w > DESCRIPTION_MAX_WIDTH {
                return Err(Invalid::DescriptionTooWide {
                    index,
                    width: w,
                    max: DESCRIPTION_MAX_WIDTH,
                });
            }
        }
    }
    Ok(())
}

/// News material for upload: 1 to [`ARTICLES_MAX`] articles, each with a
/// thumbnail and a source URL.
///
/// # Errors
/// The first article at fault, named.
pub fn news_material(articles: &[NewsMaterial]) -> Result<(), Invalid> {
    article_count(articles.len())?;
    for (index, a) in articles.iter().enumerate() {
        if a.thumb_media_id.as_str().trim().is_empty() {
            return Err(Invalid::ArticleField {
                index,
                field: "thumb_media_id",
            });
        }
        if a.content_source_url.trim().is_empty() {
            return Err(Invalid::ArticleField {
                index,
                field: "content_source_url",
            });
        }
    }
    Ok(())
}

/// Any message the platform is sent (`send`, `batchsend`, `sendall`): the
/// one check every caller makes, so a limit lives only here (R9).
///
/// # Errors
/// The limit broken.
pub fn message(msg: &Message) -> Result<(), Invalid> {
    match msg {
        Message::Text(t) => text(t),
        Message::News(a) => articles(a),
        Message::Image(m) | Message::Voice(m) => media(m),
        Message::MpNews(id) => media(&MediaRef::Uploaded(id.clone())),
    }
}

/// An image or voice needs a non-empty url or `media_id` (the platform
/// answers `1002` otherwise; a clear error beats a round trip).
fn media(m: &MediaRef) -> Result<(), Invalid> {
    match m {
        MediaRef::Url(u) if u.trim().is_empty() => Err(Invalid::EmptyMedia("url")),
        MediaRef::Uploaded(id) if id.as_str().trim().is_empty() => {
            Err(Invalid::EmptyMedia("media_id"))
        }
        _ => Ok(()),
    }
}

/// A menu item: a name of 1 to [`MENU_NAME_MAX_CHARS`] characters, a URL
/// when it opens one.
///
/// # Errors
/// [`Invalid::MenuName`], [`Invalid::MenuUrlMissing`].
pub fn menu_item(item: &NewMenuItem) -> Result<(), Invalid> {
    let chars = item.name.chars().count();
    if chars == 0 || chars > MENU_NAME_MAX_CHARS {
        return Err(Invalid::MenuName {
            chars,
            max: MENU_NAME_MAX_CHARS,
        });
    }
    if let MenuAction::OpenUrl(url) = &item.action {
        if url.trim().is_empty() {
            return Err(Invalid::MenuUrlMissing);
        }
    }
    Ok(())
}

/// A recipient list of 1 to `max` users ([`BATCH_MAX_USERS`] for
/// `batchsend`, [`SUBSCRIBE_MAX_USERS`] for the subscribe calls).
///
/// # Errors
/// [`Invalid::Recipients`].
pub fn recipients(count: usize, max: usize) -> Result<(), Invalid> {
    if count == 0 || count > max {
        return Err(Invalid::Recipients { count, max });
    }
    Ok(())
}

/// Size, format (by magic bytes) and, for voice, duration (row 17).
pub fn upload(kind: MediaKind, bytes: &[u8]) -> Result<(), Invalid> {
    let (max, expected, ok) = match kind {
        MediaKind::Image => (IMAGE_MAX_BYTES, "JPG or PNG", is_jpeg_or_png(bytes)),
        MediaKind::Thumb => (THUMB_MAX_BYTES, "JPG or PNG", is_jpeg_or_png(bytes)),
        MediaKind::Voice => (VOICE_MAX_BYTES, "AMR", sniff(bytes) == FileFormat::Amr),
    };
    if bytes.len() > max {
        return Err(Invalid::UploadTooLarge {
            kind: kind.as_str(),
            bytes: bytes.len(),
            max,
        });
    }
    if !ok {
        return Err(Invalid::UploadFormat {
            kind: kind.as_str(),
            expected,
        });
    }
    if kind == MediaKind::Voice {
        match amr_duration_millis(bytes) {
            Some(millis) if millis > VOICE_MAX_MILLIS => {
                return Err(Invalid::VoiceTooLong { millis })
            }
            Some(_) => {}
            None => {
                return Err(Invalid::UploadFormat {
                    kind: "voice",
                    expected: "AMR (its frames do not parse)",
                })
            }
        }
    }
    Ok(())
}

fn is_jpeg_or_png(b: &[u8]) -> bool {
    matches!(sniff(b), FileFormat::Jpeg | FileFormat::Png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths() {
        assert_eq!(width("hello"), 5);
        assert_eq!(width("你好"), 4);
        assert_eq!(width("ＡＢ"), 4);
    }

    #[test]
    fn text_limits_on_bytes() {
        assert!(text(&"a".repeat(2000)).is_ok());
        assert_eq!(
            text(&"汉".repeat(667)),
            Err(Invalid::TextTooLong {
                bytes: 2001,
                max: 2000
            })
        );
        assert_eq!(text(""), Err(Invalid::EmptyText));
    }

    #[test]
    fn empty_media_references_are_refused() {
        assert_eq!(
            message(&Message::Image(MediaRef::Url(" ".into()))),
            Err(Invalid::EmptyMedia("url"))
        );
        assert_eq!(
            message(&Message::Voice(MediaRef::Uploaded("".into()))),
            Err(Invalid::EmptyMedia("media_id"))
        );
        assert!(message(&Message::Image(MediaRef::Url("http://x/p.png".into()))).is_ok());
    }

    #[test]
    fn amr_frames() {
        let mut v = b"#!AMR\n".to_vec();
        for _ in 0..3001 {
            v.push(0);
            v.extend_from_slice(&[0; 12]);
        }
        assert_eq!(amr_duration_millis(&v), Some(60_020));
        assert_eq!(
            upload(MediaKind::Voice, &v),
            Err(Invalid::VoiceTooLong { millis: 60_020 })
        );
        v.push(0x7 << 3);
        assert_eq!(amr_duration_millis(&v), None);
    }
}
