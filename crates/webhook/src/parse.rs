//! Lenient parsing of the push XML (R4, R5), strict where it matters.
//!
//! Lenient: `<MsgId>..</MsgID>` (every example in the document), CDATA or
//! plain text, any whitespace and indentation, any element order, unknown
//! extra elements, unknown `MsgType`s (kept as [`MessageBody::Unknown`]).
//! Strict: no DTD (so no entity expansion), one `<xml>` root, the three
//! fields every push has (`ToUserName`, `FromUserName`, `MsgType`).

use std::collections::BTreeMap;

use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;

use crate::message::{CreateTime, Event, InboundMessage, McId, MessageBody, MsgId, UserId};

/// Why a body is not a push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not XML the parser can read, even leniently.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// A `<!DOCTYPE>`: refused, so no entity can be expanded.
    #[error("a DTD is not allowed")]
    Dtd,
    /// The root is not `<xml>`.
    #[error("the root element must be <xml>, got <{0}>")]
    Root(String),
    /// A required field is missing or empty.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// `CreateTime` is not an integer.
    #[error("CreateTime {0:?} is not an integer")]
    CreateTime(String),
}

/// Parses one push body.
///
/// # Errors
/// See [`ParseError`].
pub fn parse(body: &[u8]) -> Result<InboundMessage, ParseError> {
    let fields = top_level_fields(body)?;
    // R4: field names are matched case-insensitively (MsgId / MsgID).
    let get = |name: &str| -> Option<String> {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let required = |name: &'static str| {
        get(name)
            .filter(|v| !v.is_empty())
            .ok_or(ParseError::Missing(name))
    };
    let to = McId::new(required("ToUserName")?);
    let from = UserId::new(required("FromUserName")?);
    let msg_type = required("MsgType")?;
    let create_time = match get("CreateTime").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(CreateTime(
            v.parse().map_err(|_| ParseError::CreateTime(v.clone()))?,
        )),
    };
    let msg_id = get("MsgId").filter(|v| !v.is_empty()).map(MsgId::new);
    let text = |name: &str| get(name).unwrap_or_default();
    let body = match msg_type.as_str() {
        "text" => MessageBody::Text {
            content: raw_text(&fields, "Content"),
        },
        "image" => MessageBody::Image {
            pic_url: text("PicUrl"),
        },
        "voice" => MessageBody::Voice {
            voice_url: text("VoiceUrl"),
            format: text("Format"),
        },
        "location" => MessageBody::Location {
            latitude: text("Location_X"),
            longitude: text("Location_Y"),
            label: text("Label"),
        },
        "imgtxt" => MessageBody::ImgTxt {
            title: text("Title"),
            description: raw_text(&fields, "Description"),
            pic_url: text("PicUrl"),
            url: text("Url"),
        },
        "event" => MessageBody::Event {
            event: match text("Event").as_str() {
                "subscribe" => Event::Subscribe,
                "unsubscribe" => Event::Unsubscribe,
                other => Event::Other(other.to_owned()),
            },
        },
        _ => {
            const HEADER: [&str; 5] = [
                "ToUserName",
                "FromUserName",
                "CreateTime",
                "MsgType",
                "MsgId",
            ];
            let rest: BTreeMap<String, String> = fields
                .into_iter()
                .filter(|(k, _)| !HEADER.iter().any(|h| h.eq_ignore_ascii_case(k)))
                .collect();
            MessageBody::Unknown {
                msg_type,
                fields: rest,
            }
        }
    };
    Ok(InboundMessage {
        to,
        from,
        create_time,
        msg_id,
        body,
    })
}

/// User text is kept as sent, whitespace included (no trim).
fn raw_text(fields: &[(String, String)], name: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The text of every direct child of `<xml>`, in document order. Deeper
/// elements are skipped; any end tag closes the open element (R4).
fn top_level_fields(body: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().check_end_names = false;
    reader.config_mut().trim_text(false);
    let mut buf = Vec::new();
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut current: Option<(String, String)> = None;
    let mut fields = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| ParseError::Malformed(e.to_string()))?;
        match event {
            XmlEvent::DocType(_) => return Err(ParseError::Dtd),
            XmlEvent::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                depth += 1;
                match depth {
                    1 if seen_root => {
                        return Err(ParseError::Malformed("more than one root element".into()))
                    }
                    1 if !name.eq_ignore_ascii_case("xml") => return Err(ParseError::Root(name)),
                    1 => seen_root = true,
                    2 => current = Some((name, String::new())),
                    _ => {}
                }
            }
            XmlEvent::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match depth {
                    0 => return Err(ParseError::Root(name)),
                    1 => fields.push((name, String::new())),
                    _ => {}
                }
            }
            XmlEvent::End(_) => {
                if depth == 0 {
                    return Err(ParseError::Malformed("unexpected end tag".into()));
                }
                if depth == 2 {
                    if let Some(f) = current.take() {
                        fields.push(f);
                    }
                }
                depth -= 1;
            }
            XmlEvent::Text(t) => {
                if depth == 2 {
                    let s = t
                        .unescape()
                        .map_err(|e| ParseError::Malformed(e.to_string()))?;
                    if let Some((_, v)) = current.as_mut() {
                        v.push_str(&s);
                    }
                } else if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) {
                    return Err(ParseError::Malformed(
                        "text outside the root element".into(),
                    ));
                }
            }
            XmlEvent::CData(t) if depth == 2 => {
                let s =
                    std::str::from_utf8(&t).map_err(|e| ParseError::Malformed(e.to_string()))?;
                if let Some((_, v)) = current.as_mut() {
                    v.push_str(s);
                }
            }
            XmlEvent::Eof => break,
            // Declarations, comments, processing instructions and CDATA
            // outside a field carry nothing a push needs.
            _ => {}
        }
        buf.clear();
    }
    if !seen_root {
        return Err(ParseError::Malformed("no <xml> element".into()));
    }
    if depth != 0 {
        return Err(ParseError::Malformed("unclosed element".into()));
    }
    Ok(fields)
}
