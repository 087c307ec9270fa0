//! The platform's limits (R9, row 17), checked before anything is sent: a
//! clear error beats a round trip.

use crate::error::Invalid;
use crate::types::{Article, MediaKind, MenuAction, Message, NewMenuItem, NewsMaterial};

/// Text content, UTF-8 bytes.
pub const TEXT_MAX_BYTES: usize = 2000;
/// Articles per news message or material.
pub const ARTICLES_MAX: usize = 10;
/// Article description width (CJK 2, other 1).
pub const DESCRIPTION_MAX_WIDTH: usize = 2000;
/// Menu name characters.
pub const MENU_NAME_MAX_CHARS: usize = 10;
/// Recipients of one batch send.
pub const BATCH_MAX_USERS: usize = 100;
/// Users of one subscribe / unsubscribe call.
pub const SUBSCRIBE_MAX_USERS: usize = 50;

/// Width as the document counts it: a CJK character is two ("1 个汉字等于
/// 2 个字符"); East Asian wide and full-width forms count as CJK.
pub fn width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let wide = matches!(u32::from(c),
                0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF
                | 0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
                | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x20000..=0x3FFFD);
            if wide {
                2
            } else {
                1
            }
        })
        .sum()
}

pub(crate) fn text(content: &str) -> Result<(), Invalid> {
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

pub(crate) fn articles(articles: &[Article]) -> Result<(), Invalid> {
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

pub(crate) fn news_material(articles: &[NewsMaterial]) -> Result<(), Invalid> {
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

pub(crate) fn message(msg: &Message) -> Result<(), Invalid> {
    match msg {
        Message::Text(t) => text(t),
        Message::News(a) => articles(a),
        Message::Image(_) | Message::Voice(_) | Message::MpNews(_) => Ok(()),
    }
}

pub(crate) fn menu_item(item: &NewMenuItem) -> Result<(), Invalid> {
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

pub(crate) fn recipients(count: usize, max: usize) -> Result<(), Invalid> {
    if count == 0 || count > max {
        return Err(Invalid::Recipients { count, max });
    }
    Ok(())
}

/// Size, format (by magic bytes) and, for voice, duration (row 17).
pub(crate) fn upload(kind: MediaKind, bytes: &[u8]) -> Result<(), Invalid> {
    let (max, expected, ok) = match kind {
        MediaKind::Image => (2 * 1024 * 1024, "JPG or PNG", is_jpeg_or_png(bytes)),
        MediaKind::Thumb => (20 * 1024, "JPG or PNG", is_jpeg_or_png(bytes)),
        MediaKind::Voice => (60 * 1024, "AMR", bytes.starts_with(b"#!AMR\n")),
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
        match amr_millis(bytes) {
            Some(millis) if millis > 60_000 => return Err(Invalid::VoiceTooLong { millis }),
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
    b.starts_with(&[0xFF, 0xD8, 0xFF]) || b.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// AMR-NB: 20 ms a frame; the frame type in each header byte gives the
/// frame's size (3GPP TS 26.101, table 1a).
fn amr_millis(bytes: &[u8]) -> Option<u64> {
    const FRAME_BYTES: [u16; 16] = [13, 14, 16, 18, 20, 21, 27, 32, 6, 1, 1, 1, 1, 1, 1, 1];
    let body = bytes.get(6..)?;
    let mut at = 0usize;
    let mut frames = 0u64;
    while at < body.len() {
        let frame_type = (body[at] >> 3) & 0x0F;
        if (9..15).contains(&frame_type) {
            return None;
        }
        at += usize::from(FRAME_BYTES[usize::from(frame_type)]);
        frames += 1;
    }
    (at == body.len()).then_some(frames * 20)
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
    fn amr_frames() {
        let mut v = b"#!AMR\n".to_vec();
        for _ in 0..3001 {
            v.push(0);
            v.extend_from_slice(&[0; 12]);
        }
        assert_eq!(amr_millis(&v), Some(60_020));
        assert_eq!(
            upload(MediaKind::Voice, &v),
            Err(Invalid::VoiceTooLong { millis: 60_020 })
        );
        v.push(0x7 << 3);
        assert_eq!(amr_millis(&v), None);
    }
}
