//! What a handler bot answers, and the checks its answer passes before any
//! of it is sent: the shape, media names, and the platform's limits (R9, as
//! every sent message is checked).

use std::collections::HashMap;

use pubbot_rules::{Article, Media, PlannedReply, Reply};
use serde::{Deserialize, Serialize};

/// What a handler answers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// Replies, in order: `{type = "text", text}`, `{type = "image", url |
    /// media_id | media}`, `{type = "voice", ...}`, `{type = "news",
    /// articles}`.
    #[serde(default)]
    pub replies: Vec<Reply>,
    /// State changes.
    #[serde(default)]
    pub state: Option<StateChange>,
}

/// State changes a handler asks for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    /// Keys to set.
    #[serde(default)]
    pub set: serde_json::Map<String, serde_json::Value>,
    /// Keys to clear (`"*"`: all), before `set`.
    #[serde(default)]
    pub clear: Vec<String>,
}

/// Why a handler's answer is not sent: its replies break a rule. (An
/// answer that does not arrive, or is not JSON, is retried instead.)
#[derive(Debug, thiserror::Error)]
pub enum InvalidAnswer {
    /// The answer is JSON of another shape (an unknown reply type).
    #[error("answer is not of the expected shape: {0}")]
    Shape(#[source] serde_json::Error),
    /// A reply names its media wrongly, or is empty.
    #[error("reply {index}: {reason}")]
    Reply {
        /// The reply's place in the answer.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A reply breaks the platform's limits (R9), as `api-client` checks
    /// every message it sends.
    #[error("reply {index}: {source} (R9)")]
    Limit {
        /// The reply's place in the answer.
        index: usize,
        /// The limit broken.
        #[source]
        source: pubbot_api_client::Invalid,
    },
}

/// Turns an answer's replies into planned replies, validated like every
/// reply (R9, by [`pubbot_api_client::validate`]); local media names are
/// resolved with `media`.
///
/// # Errors
/// The first reply that breaks a rule, named.
pub fn validate_answer(
    answer: &Answer,
    media: &HashMap<String, String>,
) -> Result<Vec<PlannedReply>, InvalidAnswer> {
    let mut out = Vec::new();
    let pick =
        |url: &Option<String>, id: &Option<String>, name: &Option<String>, index: usize| match (
            url, id, name,
        ) {
            (Some(u), None, None) if !u.trim().is_empty() => Ok(Media::Url(u.clone())),
            (None, Some(m), None) if !m.trim().is_empty() => Ok(Media::MediaId(m.clone())),
            (None, None, Some(n)) => {
                media
                    .get(n)
                    .map(|m| Media::MediaId(m.clone()))
                    .ok_or_else(|| InvalidAnswer::Reply {
                        index,
                        reason: format!("no uploaded medium is named {n:?}"),
                    })
            }
            _ => Err(InvalidAnswer::Reply {
                index,
                reason: "give exactly one of url, media_id, media".into(),
            }),
        };
    for (index, r) in answer.replies.iter().enumerate() {
        let planned = match r {
            Reply::Text { text } => {
                if text.trim().is_empty() {
                    return Err(InvalidAnswer::Reply {
                        index,
                        reason: "text is empty".into(),
                    });
                }
                PlannedReply::Text {
                    content: text.clone(),
                }
            }
            Reply::Image {
                url,
                media_id,
                media: name,
            } => PlannedReply::Image {
                media: pick(url, media_id, name, index)?,
            },
            Reply::Voice {
                url,
                media_id,
                media: name,
            } => PlannedReply::Voice {
                media: pick(url, media_id, name, index)?,
            },
            Reply::News { articles } => PlannedReply::News {
                articles: articles
                    .iter()
                    .map(|a| Article {
                        title: a.title.clone(),
                        description: a.description.clone(),
                        url: a.url.clone(),
                        picurl: a.picurl.clone(),
                    })
                    .collect(),
            },
        };
        if let Some(message) = crate::pipeline::outbox::to_message(&planned) {
            pubbot_api_client::validate::message(&message)
                .map_err(|source| InvalidAnswer::Limit { index, source })?;
        }
        out.push(planned);
    }
    Ok(out)
}
