//! The typed push: what a user sent an account, or a follow event.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use pubbot_protocol::{McId, MsgId, UserId};

/// `CreateTime`, kept exactly as given (R5): an integer of unknown unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CreateTime(pub i64);

impl CreateTime {
    /// Read as milliseconds above 10^11, else as seconds (R5; the rule's
    /// one home is [`pubbot_protocol::unix_millis`]).
    pub fn unix_millis(self) -> i64 {
        pubbot_protocol::unix_millis(self.0)
    }
}

/// A follow event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The user followed the account.
    Subscribe,
    /// The user unfollowed it.
    Unsubscribe,
    /// Another event, kept as given.
    Other(String),
}

impl Event {
    /// The `Event` value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Other(s) => s,
        }
    }
}

/// What was pushed, by `MsgType`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageBody {
    /// `text`.
    Text {
        /// `Content`.
        content: String,
    },
    /// `image`.
    Image {
        /// `PicUrl`.
        pic_url: String,
    },
    /// `voice`.
    Voice {
        /// `VoiceUrl`.
        voice_url: String,
        /// `Format` (AMR).
        format: String,
    },
    /// `location`; coordinates kept as given.
    Location {
        /// `Location_X`, latitude.
        latitude: String,
        /// `Location_Y`, longitude.
        longitude: String,
        /// `Label`.
        label: String,
    },
    /// `imgtxt`.
    ImgTxt {
        /// `Title`.
        title: String,
        /// `Description`.
        description: String,
        /// `PicUrl`.
        pic_url: String,
        /// `Url`.
        url: String,
    },
    /// `event`.
    Event {
        /// `Event`.
        event: Event,
    },
    /// A `MsgType` this version does not know: kept, never an error (R4).
    Unknown {
        /// `MsgType` as given.
        msg_type: String,
        /// Every other top-level element, by name.
        fields: BTreeMap<String, String>,
    },
}

/// One push, parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// `ToUserName`: the account.
    pub to: McId,
    /// `FromUserName`: the user.
    pub from: UserId,
    /// `CreateTime`, when given.
    pub create_time: Option<CreateTime>,
    /// `MsgId` (messages only).
    pub msg_id: Option<MsgId>,
    /// The rest, by type.
    pub body: MessageBody,
}

/// The key that makes a retried push a duplicate (R6), within one app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DedupKey {
    /// A message: (mcid, MsgId).
    Message {
        /// Account.
        mcid: String,
        /// `MsgId`.
        msg_id: String,
    },
    /// An event (or a message without `MsgId`): (mcid, FromUserName,
    /// CreateTime, Event or MsgType).
    Event {
        /// Account.
        mcid: String,
        /// User.
        from: String,
        /// `CreateTime` as given (0 when missing).
        create_time: i64,
        /// `Event`, or `MsgType` for a message without `MsgId`.
        event: String,
    },
}

impl fmt::Display for DedupKey {
    /// A stable text form, for a unique column.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Message { mcid, msg_id } => write!(f, "m:{}:{mcid}:{msg_id}", mcid.len()),
            Self::Event {
                mcid,
                from,
                create_time,
                event,
            } => {
                write!(
                    f,
                    "e:{}:{mcid}:{}:{from}:{create_time}:{event}",
                    mcid.len(),
                    from.len()
                )
            }
        }
    }
}

impl InboundMessage {
    /// The `MsgType` value.
    pub fn msg_type(&self) -> &str {
        match &self.body {
            MessageBody::Text { .. } => "text",
            MessageBody::Image { .. } => "image",
            MessageBody::Voice { .. } => "voice",
            MessageBody::Location { .. } => "location",
            MessageBody::ImgTxt { .. } => "imgtxt",
            MessageBody::Event { .. } => "event",
            MessageBody::Unknown { msg_type, .. } => msg_type,
        }
    }

    /// The dedup key of R6.
    pub fn dedup_key(&self) -> DedupKey {
        match (&self.msg_id, &self.body) {
            (Some(id), _) => DedupKey::Message {
                mcid: self.to.as_str().to_owned(),
                msg_id: id.as_str().to_owned(),
            },
            (None, body) => DedupKey::Event {
                mcid: self.to.as_str().to_owned(),
                from: self.from.as_str().to_owned(),
                create_time: self.create_time.map_or(0, |c| c.0),
                event: match body {
                    MessageBody::Event { event } => event.as_str().to_owned(),
                    _ => self.msg_type().to_owned(),
                },
            },
        }
    }

    /// Writes the push back as the platform's XML (well-formed: `</MsgId>`).
    pub fn to_xml(&self) -> String {
        let mut x = String::from("<xml>");
        let mut el = |name: &str, value: &str| {
            x.push('<');
            x.push_str(name);
            x.push_str("><![CDATA[");
            x.push_str(&value.replace("]]>", "]]]]><![CDATA[>"));
            x.push_str("]]></");
            x.push_str(name);
            x.push('>');
        };
        el("ToUserName", self.to.as_str());
        el("FromUserName", self.from.as_str());
        if let Some(t) = self.create_time {
            el("CreateTime", &t.0.to_string());
        }
        el("MsgType", self.msg_type());
        match &self.body {
            MessageBody::Text { content } => el("Content", content),
            MessageBody::Image { pic_url } => el("PicUrl", pic_url),
            MessageBody::Voice { voice_url, format } => {
                el("VoiceUrl", voice_url);
                el("Format", format);
            }
            MessageBody::Location {
                latitude,
                longitude,
                label,
            } => {
                el("Location_X", latitude);
                el("Location_Y", longitude);
                el("Label", label);
            }
            MessageBody::ImgTxt {
                title,
                description,
                pic_url,
                url,
            } => {
                el("Title", title);
                el("Description", description);
                el("PicUrl", pic_url);
                el("Url", url);
            }
            MessageBody::Event { event } => el("Event", event.as_str()),
            MessageBody::Unknown { fields, .. } => {
                for (k, v) in fields {
                    el(k, v);
                }
            }
        }
        if let Some(id) = &self.msg_id {
            el("MsgId", id.as_str());
        }
        x.push_str("</xml>");
        x
    }
}
