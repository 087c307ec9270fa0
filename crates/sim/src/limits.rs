//! The platform's limits (R9) and the media format checks of row 17.

/// Text content, in UTF-8 bytes.
pub const TEXT_MAX_BYTES: usize = 2000;
/// Articles in one news message or news material.
pub const ARTICLES_MAX: usize = 10;
/// Article description width (CJK counts 2, anything else 1).
pub const DESCRIPTION_MAX_WIDTH: usize = 2000;
/// Menu name, in characters.
pub const MENU_NAME_MAX_CHARS: usize = 10;
/// Recipients of one batch send.
pub const BATCH_MAX_USERS: usize = 100;
/// Users of one subscribe / unsubscribe call.
pub const SUBSCRIBE_MAX_USERS: usize = 50;
/// Image upload size.
pub const IMAGE_MAX_BYTES: usize = 2 * 1024 * 1024;
/// Thumb upload size.
pub const THUMB_MAX_BYTES: usize = 20 * 1024;
/// Voice upload size.
pub const VOICE_MAX_BYTES: usize = 60 * 1024;
/// Voice duration, in milliseconds.
pub const VOICE_MAX_MILLIS: u64 = 60_000;

/// Display width as the document counts it: one CJK character is two.
pub fn width(s: &str) -> usize {
    s.chars().map(|c| if is_wide(c) { 2 } else { 1 }).sum()
}

fn is_wide(c: char) -> bool {
    matches!(u32::from(c),
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x20000..=0x3FFFD)
}

/// What an uploaded file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JPEG, by its magic bytes.
    Jpeg,
    /// PNG, by its magic bytes.
    Png,
    /// AMR narrow band, by its `#!AMR\n` header.
    Amr,
    /// Anything else.
    Other,
}

/// Sniffs the format from the first bytes, as a platform must (a file name
/// proves nothing).
pub fn sniff(bytes: &[u8]) -> FileFormat {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        FileFormat::Jpeg
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        FileFormat::Png
    } else if bytes.starts_with(b"#!AMR\n") {
        FileFormat::Amr
    } else {
        FileFormat::Other
    }
}

/// Duration of an AMR-NB file in milliseconds (20 ms a frame), or `None`
/// when the frames do not parse.
pub fn amr_duration_millis(bytes: &[u8]) -> Option<u64> {
    // Payload bytes per frame type (3GPP TS 26.101), header byte excluded.
    // Types 9-14 are not AMR-NB frames (RFC 4867 5.3: other codecs' SID,
    // reserved): a file holding them is not the AMR the document asks for.
    const SIZES: [usize; 16] = [12, 13, 15, 17, 19, 20, 26, 31, 5, 0, 0, 0, 0, 0, 0, 0];
    let mut rest = bytes.strip_prefix(b"#!AMR\n")?;
    let mut frames = 0u64;
    while let Some((&header, tail)) = rest.split_first() {
        let frame_type = (header >> 3) & 0x0F;
        if (9..=14).contains(&frame_type) {
            return None;
        }
        let size = SIZES[usize::from(frame_type)];
        rest = tail.get(size..)?;
        frames += 1;
    }
    Some(frames * 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_counts_double() {
        assert_eq!(width("ab"), 2);
        assert_eq!(width("汉字"), 4);
        assert_eq!(width("a汉，"), 5);
    }

    #[test]
    fn amr_duration_counts_frames() {
        let mut f = b"#!AMR\n".to_vec();
        for _ in 0..50 {
            f.push(7 << 3);
            f.extend_from_slice(&[0u8; 31]);
        }
        assert_eq!(amr_duration_millis(&f), Some(1000));
        f.pop();
        assert_eq!(amr_duration_millis(&f), None);
    }
}
