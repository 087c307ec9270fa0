//! The document's limits (R9, and the upload sizes of row 17 of
//! `READING.md`'s table).

/// Text content, UTF-8 bytes.
pub const TEXT_MAX_BYTES: usize = 2000;
/// Articles per news message or news material.
pub const ARTICLES_MAX: usize = 10;
/// Article description width ([`crate::width`]: CJK 2, other 1), i.e.
/// 1000 CJK characters.
pub const DESCRIPTION_MAX_WIDTH: usize = 2000;
/// Menu name, characters.
pub const MENU_NAME_MAX_CHARS: usize = 10;
/// Recipients of one `batchsend`.
pub const BATCH_MAX_USERS: usize = 100;
/// Users of one subscribe / unsubscribe call.
pub const SUBSCRIBE_MAX_USERS: usize = 50;
/// Image upload, bytes (2 MB).
pub const IMAGE_MAX_BYTES: usize = 2 * 1024 * 1024;
/// Thumb upload, bytes (20 KB).
pub const THUMB_MAX_BYTES: usize = 20 * 1024;
/// Voice upload, bytes (60 KB).
pub const VOICE_MAX_BYTES: usize = 60 * 1024;
/// Voice duration, milliseconds (60 s).
pub const VOICE_MAX_MILLIS: u64 = 60_000;
