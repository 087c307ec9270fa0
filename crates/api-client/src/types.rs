//! Request and response types. The document's mixed-case JSON keys are
//! handled here by serde attributes and never reach callers.

use serde::{Deserialize, Serialize};

pub use pubbot_protocol::{MassMsgId, McId, MediaId, MenuId, UserId};

/// An account as the platform describes it (`{"info":{...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountInfo {
    /// Sequence id.
    #[serde(default)]
    pub id: i64,
    /// The account id.
    pub mcid: McId,
    /// The platform's hash of the mcid.
    #[serde(rename = "mcidHash", default)]
    pub mcid_hash: i64,
    /// Undocumented; kept.
    #[serde(default)]
    pub fcid: i64,
    /// Display name.
    #[serde(rename = "DisplayName", default)]
    pub display_name: String,
    /// Whether it is a global account.
    #[serde(rename = "IsFollow", default)]
    pub is_follow: bool,
    /// Avatar URL.
    #[serde(rename = "PortraitUrl", default)]
    pub portrait_url: String,
    /// Where pushes go.
    #[serde(rename = "RouteUrl", default)]
    pub route_url: String,
    /// Undocumented; kept.
    #[serde(rename = "FuncRouteUrl", default)]
    pub func_route_url: String,
    /// Display type.
    #[serde(rename = "uiType", default)]
    pub ui_type: i64,
    /// Whether pushes are on.
    #[serde(rename = "isRouteOpen", default)]
    pub route_open: bool,
    /// Undocumented; kept.
    #[serde(rename = "IsAuthorization", default)]
    pub is_authorization: bool,
    /// Undocumented; kept.
    #[serde(rename = "IsGetUserInfo", default)]
    pub is_get_user_info: bool,
    /// Description.
    #[serde(rename = "Introduction", default)]
    pub introduction: String,
    /// Undocumented; kept.
    #[serde(rename = "isCustom", default)]
    pub is_custom: bool,
}

/// The editable profile of an account (`/mc/refresh.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountProfile {
    /// Display name.
    pub display_name: String,
    /// Avatar URL.
    pub portrait_url: String,
    /// Display type: 0 shows it in the conversation list.
    pub ui_type: i64,
    /// Description.
    pub introduction: String,
}

/// A new account (`/mc/add.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAccount {
    /// The account id, unique per app key.
    pub mcid: McId,
    /// Profile.
    pub profile: AccountProfile,
    /// Whether it is a global account.
    pub is_follow: bool,
    /// Where pushes go.
    pub route_url: String,
}

/// What a menu item does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MenuAction {
    /// Nothing (`type=0`).
    None,
    /// Open a web page (`type=1`).
    OpenUrl(String),
}

/// A menu item to add (`/mc/menu/refresh.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMenuItem {
    /// Name, 1 to 10 characters.
    pub name: String,
    /// What it does.
    pub action: MenuAction,
    /// `None` for a first-level item; the parent for a second-level one.
    pub parent: Option<MenuId>,
}

/// A menu item as the platform returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuItem {
    /// Sequence id.
    #[serde(default)]
    pub id: i64,
    /// Its id.
    #[serde(rename = "menuId")]
    pub menu_id: MenuId,
    /// 0 none, 1 open url.
    #[serde(rename = "Type", default)]
    pub kind: i64,
    /// Name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// URL of type 1.
    #[serde(rename = "Url", default)]
    pub url: String,
    /// 1 or 2.
    #[serde(rename = "Level", default)]
    pub level: i64,
    /// Parent id, empty on level 1.
    #[serde(rename = "Pid", default)]
    pub pid: String,
    /// Owning account.
    #[serde(default)]
    pub mcid: String,
    /// As given (the document shows null).
    #[serde(rename = "UpdateTime", default)]
    pub update_time: Option<String>,
    /// As given (the document shows null).
    #[serde(rename = "CreateTime", default)]
    pub create_time: Option<String>,
    /// Rank among siblings.
    #[serde(default)]
    pub order: i64,
}

/// An article of a news message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Article {
    /// Required.
    pub title: String,
    /// Optional; at most 2000 wide (CJK counts 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Optional link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Required picture URL.
    pub picurl: String,
}

/// An article of uploaded news material (`/media/uploadnews`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewsMaterial {
    /// Required: an uploaded thumb.
    pub thumb_media_id: MediaId,
    /// Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Required: the "read more" link.
    pub content_source_url: String,
    /// Optional HTML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Optional summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Optional: "1" shows the cover, "0" hides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_cover_pic: Option<String>,
}

/// Where an image or voice comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaRef {
    /// Uploaded material.
    Uploaded(MediaId),
    /// A URL sent directly.
    Url(String),
}

/// A message an account sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Text, at most 2000 bytes.
    Text(String),
    /// An image.
    Image(MediaRef),
    /// A voice.
    Voice(MediaRef),
    /// News with 1 to 10 articles inline.
    News(Vec<Article>),
    /// Uploaded news material (mass send only).
    MpNews(MediaId),
}

impl Message {
    /// The `msgtype` value.
    pub fn msgtype(&self) -> &'static str {
        match self {
            Self::Text(_) => "text",
            Self::Image(_) => "image",
            Self::Voice(_) => "voice",
            Self::News(_) => "news",
            Self::MpNews(_) => "mpnews",
        }
    }
}

/// Kinds of uploadable media (row 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// JPG or PNG, at most 2 MiB.
    Image,
    /// JPG or PNG, at most 20 KiB.
    Thumb,
    /// AMR, at most 60 KiB and 60 s.
    Voice,
}

impl MediaKind {
    /// The `type` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Thumb => "thumb",
            Self::Voice => "voice",
        }
    }
}

/// The answer to an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedMedia {
    /// `image`, `thumb`, `voice` or `news`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The id to send it by.
    pub media_id: MediaId,
    /// Upload time, Unix seconds.
    pub created_at: i64,
}
