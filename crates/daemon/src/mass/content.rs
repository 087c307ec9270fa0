//! What a broadcast or campaign sends, and the checks it passes before it
//! is accepted (R9's limits, templates that render).

use pubbot_api_client::{Article, MediaRef, Message};
use pubbot_protocol::limits;
use pubbot_rules::broadcast::{check_broadcast_template, render_broadcast, BroadcastVars};
use serde::{Deserialize, Serialize};

/// What a broadcast or campaign sends. Text and news titles/descriptions
/// are templates ([`pubbot_rules::broadcast`]) rendered at send time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BroadcastContent {
    /// Text (`sendall.json`, `msgtype = text`).
    Text {
        /// Template.
        text: String,
    },
    /// An image, by URL (`operation/sendall.json`) or uploaded `media_id`
    /// (`sendall.json`).
    Image {
        /// Direct URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Uploaded material.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_id: Option<String>,
    },
    /// A voice, by URL or uploaded `media_id`.
    Voice {
        /// Direct URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Uploaded material.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_id: Option<String>,
    },
    /// Uploaded news material (`sendall.json`, `mpnews`, R8).
    Mpnews {
        /// The material.
        media_id: String,
    },
    /// Inline news (`operation/sendall.json`, sent as `news`, R8).
    News {
        /// 1 to 10 articles.
        articles: Vec<NewsArticle>,
    },
}

/// An inline article; `title` and `description` are templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewsArticle {
    /// Title (template).
    pub title: String,
    /// Description (template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Picture.
    pub picurl: String,
}

fn media(kind: &str, url: &Option<String>, media_id: &Option<String>) -> Result<MediaRef, String> {
    match (
        url.as_deref().map(str::trim),
        media_id.as_deref().map(str::trim),
    ) {
        (Some(u), None) if !u.is_empty() => Ok(MediaRef::Url(u.to_owned())),
        (None, Some(m)) if !m.is_empty() => Ok(MediaRef::Uploaded(m.into())),
        _ => Err(format!(
            "{kind}: give exactly one of url and media_id, not empty"
        )),
    }
}

impl BroadcastContent {
    /// Checks what can be checked before the day (R9 limits of what is not
    /// a template, the templates' variables).
    ///
    /// # Errors
    /// What is wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Text { text } => {
                if text.trim().is_empty() {
                    return Err("text is empty".into());
                }
                check_broadcast_template(text)?;
                if !text.contains("{{") && text.len() > limits::TEXT_MAX_BYTES {
                    return Err(format!(
                        "text is {} bytes, at most {} (R9)",
                        text.len(),
                        limits::TEXT_MAX_BYTES
                    ));
                }
            }
            Self::Image { url, media_id } => {
                media("image", url, media_id)?;
            }
            Self::Voice { url, media_id } => {
                media("voice", url, media_id)?;
            }
            Self::Mpnews { media_id } => {
                if media_id.trim().is_empty() {
                    return Err("mpnews: media_id is empty".into());
                }
            }
            Self::News { articles } => {
                if articles.is_empty() || articles.len() > limits::ARTICLES_MAX {
                    return Err(format!(
                        "news has {} articles, 1 to {} (R9)",
                        articles.len(),
                        limits::ARTICLES_MAX
                    ));
                }
                for (i, a) in articles.iter().enumerate() {
                    if a.title.trim().is_empty() || a.picurl.trim().is_empty() {
                        return Err(format!("article {i}: title and picurl are required"));
                    }
                    check_broadcast_template(&a.title)
                        .map_err(|e| format!("article {i} title: {e}"))?;
                    if let Some(d) = &a.description {
                        check_broadcast_template(d)
                            .map_err(|e| format!("article {i} description: {e}"))?;
                        let w = pubbot_protocol::width(d);
                        if !d.contains("{{") && w > limits::DESCRIPTION_MAX_WIDTH {
                            return Err(format!(
                                "article {i}: description is {w} wide, at most {} (R9)",
                                limits::DESCRIPTION_MAX_WIDTH
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Renders the templates into the message to send.
    ///
    /// # Errors
    /// A render error, or an invalid result.
    pub fn render(&self, vars: &BroadcastVars) -> Result<Message, String> {
        Ok(match self {
            Self::Text { text } => Message::Text(render_broadcast(text, vars)?),
            Self::Image { url, media_id } => Message::Image(media("image", url, media_id)?),
            Self::Voice { url, media_id } => Message::Voice(media("voice", url, media_id)?),
            Self::Mpnews { media_id } => Message::MpNews(media_id.as_str().into()),
            Self::News { articles } => Message::News(
                articles
                    .iter()
                    .map(|a| {
                        Ok(Article {
                            title: render_broadcast(&a.title, vars)?,
                            description: a
                                .description
                                .as_deref()
                                .map(|d| render_broadcast(d, vars))
                                .transpose()?,
                            url: a.url.clone(),
                            picurl: a.picurl.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            ),
        })
    }

    /// Whether a `batchsend` endpoint takes it (campaigns): text, news, and
    /// images/voices by URL.
    pub fn batchable(&self) -> bool {
        match self {
            Self::Text { .. } | Self::News { .. } => true,
            Self::Image { url, .. } | Self::Voice { url, .. } => url.is_some(),
            Self::Mpnews { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_checked_before_the_day() {
        let ok = BroadcastContent::Text {
            text: "Good {{ weekday }}!".into(),
        };
        assert!(ok.validate().is_ok());
        let long = BroadcastContent::Text {
            text: "x".repeat(2001),
        };
        assert!(long.validate().unwrap_err().contains("2001 bytes"));
        let both = BroadcastContent::Image {
            url: Some("http://x/p.png".into()),
            media_id: Some("m".into()),
        };
        assert!(both.validate().unwrap_err().contains("exactly one"));
        let news = BroadcastContent::News { articles: vec![] };
        assert!(news.validate().unwrap_err().contains("0 articles"));
        let unknown = BroadcastContent::Text {
            text: "hi {{ user }}".into(),
        };
        assert!(unknown.validate().unwrap_err().contains("user"));
        assert!(!BroadcastContent::Mpnews {
            media_id: "m".into()
        }
        .batchable());
    }
}
