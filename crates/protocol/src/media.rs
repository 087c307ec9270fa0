//! What an uploaded file is, by its bytes (a name proves nothing).

/// A file's format, sniffed from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (its eight-byte signature).
    Png,
    /// AMR narrow band (`#!AMR\n`).
    Amr,
    /// Anything else.
    Other,
}

/// Sniffs the format from the first bytes.
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
/// when it is not one: no `#!AMR\n` header, a frame cut short, or a frame
/// type AMR-NB does not define. RFC 4867 (section 5.3) gives frame types
/// 0–7 (speech), 8 (SID) and 15 (no data); 9–11 belong to other codecs'
/// comfort noise and 12–14 are reserved, so a file holding them is not
/// the AMR the document asks for.
///
/// ```
/// let mut f = b"#!AMR\n".to_vec();
/// f.push(7 << 3);
/// f.extend_from_slice(&[0u8; 31]);
/// assert_eq!(pubbot_protocol::amr_duration_millis(&f), Some(20));
/// ```
pub fn amr_duration_millis(bytes: &[u8]) -> Option<u64> {
    // Payload bytes after the one header byte, by frame type (3GPP TS
    // 26.101 table 1a); None: not an AMR-NB frame type.
    const PAYLOAD: [Option<usize>; 16] = [
        Some(12),
        Some(13),
        Some(15),
        Some(17),
        Some(19),
        Some(20),
        Some(26),
        Some(31),
        Some(5),
        None,
        None,
        None,
        None,
        None,
        None,
        Some(0),
    ];
    let mut rest = bytes.strip_prefix(b"#!AMR\n")?;
    let mut frames = 0u64;
    while let Some((&header, tail)) = rest.split_first() {
        let size = PAYLOAD[usize::from((header >> 3) & 0x0F)]?;
        rest = tail.get(size..)?;
        frames += 1;
    }
    Some(frames * 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amr(frame_type: u8, frames: usize) -> Vec<u8> {
        let size =
            [12, 13, 15, 17, 19, 20, 26, 31, 5, 0, 0, 0, 0, 0, 0, 0][usize::from(frame_type)];
        let mut f = b"#!AMR\n".to_vec();
        for _ in 0..frames {
            f.push(frame_type << 3);
            f.extend(std::iter::repeat_n(0u8, size));
        }
        f
    }

    #[test]
    fn frames_are_counted_and_unknown_types_refused() {
        assert_eq!(amr_duration_millis(&amr(7, 50)), Some(1000));
        assert_eq!(amr_duration_millis(&amr(15, 3)), Some(60));
        assert_eq!(amr_duration_millis(&amr(8, 1)), Some(20));
        for t in 9..15 {
            assert_eq!(amr_duration_millis(&amr(t, 1)), None, "frame type {t}");
        }
        let mut cut = amr(7, 2);
        cut.pop();
        assert_eq!(amr_duration_millis(&cut), None);
        assert_eq!(amr_duration_millis(b"RIFF"), None);
        assert_eq!(sniff(b"#!AMR\n"), FileFormat::Amr);
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0]), FileFormat::Jpeg);
        assert_eq!(sniff(b"GIF89a"), FileFormat::Other);
    }
}
