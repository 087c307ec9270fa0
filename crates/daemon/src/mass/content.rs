//! What a broadcast or campaign sends, and the checks it passes before it
//! is accepted (R9's limits, templates that render).

use pubbot_api_client::validate;
use pubbot_api_client::{Article, MediaRef, Message};

use crate::mass::BroadcastError;
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

fn media(
    kind: &str,
    url: &Option<String>,
    media_id: &Option<String>,
) -> Result<MediaRef, BroadcastError> {
    match (
        url.as_deref().map(str::trim),
        media_id.as_deref().map(str::trim),
    ) {
        (Some(u), None) if !u.is_empty() => Ok(MediaRef::Url(u.to_owned())),
        (None, Some(m)) if !m.is_empty() => Ok(MediaRef::Uploaded(m.into())),
        _ => Err(BroadcastError::Invalid(format!(
            "{kind}: give exactly one of url and media_id, not empty"
        ))),
    }
}

fn invalid(e: impl std::fmt::Display) -> BroadcastError {
    BroadcastError::Invalid(e.to_string())
}

/// Whether a text is a template (checked for its limits once rendered).
fn templated(text: &str) -> bool {
    text.contains("{{")
}

impl BroadcastContent {
    /// Checks what can be checked before the day: the templates' variables,
    /// and the platform's limits (R9, [`pubbot_api_client::validate`], the
    /// checks every sent message passes) of what is not a template.
    ///
    /// # Errors
    /// [`BroadcastError::Invalid`], naming the field.
    pub fn validate(&self) -> Result<(), BroadcastError> {
        match self {
            Self::Text { text } => {
                if text.trim().is_empty() {
                    return Err(invalid("text is empty"));
                }
                check_broadcast_template(text).map_err(invalid)?;
                if !templated(text) {
                    validate::text(text).map_err(|e| invalid(format_args!("{e} (R9)")))?;
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
                    return Err(invalid("mpnews: media_id is empty"));
                }
            }
            Self::News { articles } => {
                for (i, a) in articles.iter().enumerate() {
                    check_broadcast_template(&a.title)
                        .map_err(|e| invalid(format_args!("article {i} title: {e}")))?;
                    if let Some(d) = &a.description {
                        check_broadcast_template(d)
                            .map_err(|e| invalid(format_args!("article {i} description: {e}")))?;
                    }
                }
                // A templated description is measured once rendered.
                let plain: Vec<Article> = articles
                    .iter()
                    .map(|a| Article {
                        title: a.title.clone(),
                        description: a.description.clone().filter(|d| !templated(d)),
                        url: a.url.clone(),
                        picurl: a.picurl.clone(),
                    })
                    .collect();
                validate::articles(&plain).map_err(|e| invalid(format_args!("news: {e} (R9)")))?;
            }
        }
        Ok(())
    }

    /// Renders the templates into the message to send.
    ///
    /// # Errors
    /// [`BroadcastError::Invalid`]: a render error, or an invalid result.
    pub fn render(&self, vars: &BroadcastVars) -> Result<Message, BroadcastError> {
        let render = |source: &str| render_broadcast(source, vars).map_err(invalid);
        Ok(match self {
            Self::Text { text } => Message::Text(render(text)?),
            Self::Image { url, media_id } => Message::Image(media("image", url, media_id)?),
            Self::Voice { url, media_id } => Message::Voice(media("voice", url, media_id)?),
            Self::Mpnews { media_id } => Message::MpNews(media_id.as_str().into()),
            Self::News { articles } => Message::News(
                articles
                    .iter()
                    .map(|a| {
                        Ok(Article {
                            title: render(&a.title)?,
                            description: a.description.as_deref().map(render).transpose()?,
                            url: a.url.clone(),
                            picurl: a.picurl.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, BroadcastError>>()?,
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
        assert!(long
            .validate()
            .unwrap_err()
            .to_string()
            .contains("2001 bytes"));
        let both = BroadcastContent::Image {
            url: Some("http://x/p.png".into()),
            media_id: Some("m".into()),
        };
        assert!(both
            .validate()
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
        let news = BroadcastContent::News { articles: vec![] };
        assert!(news
            .validate()
            .unwrap_err()
            .to_string()
            .contains("0 articles"));
        let unknown = BroadcastContent::Text {
            text: "hi {{ user }}".into(),
        };
        assert!(unknown.validate().unwrap_err().to_string().contains("user"));
        assert!(!BroadcastContent::Mpnews {
            media_id: "m".into()
        }
        .batchable());
    }
}
