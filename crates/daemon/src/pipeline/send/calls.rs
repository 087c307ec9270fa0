//! How a sender's rows become platform calls: rounds that keep each
//! user's order, and `batchsend` merging within a round.

use std::collections::HashMap;

use pubbot_api_client::McId;
use pubbot_protocol::limits::BATCH_MAX_USERS;
use pubbot_rules::{Media, PlannedReply};

use crate::pipeline::outbox::Held;

/// One platform call: a reply to one user, or the same reply to several
/// (distinct) users of one account through `batchsend`.
pub(super) struct Call {
    pub(super) app_key: String,
    pub(super) mcid: McId,
    pub(super) reply: PlannedReply,
    pub(super) rows: Vec<Held>,
}

/// Splits rows into rounds: round k holds the k-th row (in conversation
/// order) of every user, so sending round after round keeps each user's
/// order while different users go out together.
pub(super) fn rounds(mut rows: Vec<Held>) -> Vec<Vec<Held>> {
    rows.sort_by(|a, b| {
        a.row
            .conversation()
            .cmp(&b.row.conversation())
            .then(a.row.order().cmp(&b.row.order()))
            .then(a.row.id.cmp(&b.row.id))
    });
    let mut out: Vec<Vec<Held>> = Vec::new();
    let mut k = 0;
    let mut prev: Option<crate::pipeline::wakeups::Conversation> = None;
    for held in rows {
        let conv = (
            held.row.app_key.clone(),
            held.row.mcid.clone(),
            held.row.user_id.clone(),
        );
        k = if prev.as_ref() == Some(&conv) {
            k + 1
        } else {
            0
        };
        prev = Some(conv);
        if out.len() <= k {
            out.push(Vec::new());
        }
        out[k].push(held);
    }
    // Oldest rows first within a round.
    for r in &mut out {
        r.sort_by_key(|h| h.row.id);
    }
    out
}

/// Whether a reply can go through a batch endpoint: text and news by
/// `batchsend`, images and voices by URL by `operation/batchsend`; uploaded
/// media have none.
pub(super) fn batchable(reply: &PlannedReply) -> bool {
    match reply {
        PlannedReply::Text { .. } | PlannedReply::News { .. } => true,
        PlannedReply::Image { media } | PlannedReply::Voice { media } => {
            matches!(media, Media::Url(_))
        }
        PlannedReply::Handler { .. } => false,
    }
}

/// Groups one round's rows into calls. With `merge`, rows of one app and
/// account with the same payload share `batchsend` calls of at most 100
/// users (a round holds one row per user); otherwise, and for payloads no
/// batch endpoint takes, one call per row.
pub(super) fn plan_calls(rows: Vec<Held>, merge: bool) -> Vec<Call> {
    let single = |held: Held| Call {
        app_key: held.row.app_key.clone(),
        mcid: held.row.mcid.clone(),
        reply: held.row.payload.0.clone(),
        rows: vec![held],
    };
    if !merge || rows.len() < 2 {
        return rows.into_iter().map(single).collect();
    }
    let mut calls: Vec<Call> = Vec::new();
    // (app, account, payload) -> index of its open call in `calls`.
    let mut open: HashMap<(String, McId, String), usize> = HashMap::new();
    for held in rows {
        if !batchable(&held.row.payload.0) {
            calls.push(single(held));
            continue;
        }
        let key = (
            held.row.app_key.clone(),
            held.row.mcid.clone(),
            serde_json::to_string(&held.row.payload.0).unwrap_or_default(),
        );
        match open.get(&key) {
            Some(&i) if calls[i].rows.len() < BATCH_MAX_USERS => calls[i].rows.push(held),
            _ => {
                open.insert(key, calls.len());
                calls.push(single(held));
            }
        }
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::outbox::{self, Claimed};
    use sqlx::types::Json;

    fn row(id: i64, app: &str, mcid: &str, user: &str, payload: PlannedReply) -> Held {
        Held {
            row: Claimed {
                id,
                app_key: app.into(),
                mcid: mcid.into(),
                user_id: user.into(),
                payload: Json(payload),
                attempts: 1,
                trace_id: format!("t{id}"),
                inbound_id: Some(id),
                reply_index: 0,
                sub_index: 0,
                created_at: chrono::Utc::now(),
            },
            since: std::time::Instant::now(),
            path: outbox::Path::Claimed,
            follows: None,
        }
    }

    fn text(t: &str) -> PlannedReply {
        PlannedReply::Text {
            content: t.to_owned(),
        }
    }

    fn shape(calls: &[Call]) -> Vec<Vec<i64>> {
        calls
            .iter()
            .map(|c| c.rows.iter().map(|r| r.row.id).collect())
            .collect()
    }

    fn ids(rounds: &[Vec<Held>]) -> Vec<Vec<i64>> {
        rounds
            .iter()
            .map(|r| r.iter().map(|h| h.row.id).collect())
            .collect()
    }

    #[test]
    fn one_users_rows_go_in_successive_rounds_in_conversation_order() {
        let mut late = row(1, "a", "shop", "u1", text("second"));
        late.row.inbound_id = Some(20);
        let mut early = row(2, "a", "shop", "u1", text("first"));
        early.row.inbound_id = Some(10);
        let rows = vec![
            late,
            early,
            row(3, "a", "shop", "u2", text("x")),
            row(4, "a", "other", "u1", text("y")), // another account: another conversation
        ];
        assert_eq!(ids(&rounds(rows)), vec![vec![2, 3, 4], vec![1]]);
    }

    #[test]
    fn same_payload_same_account_merges_within_a_round() {
        let rows = vec![
            row(1, "a", "shop", "u1", text("hi")),
            row(2, "a", "shop", "u2", text("hi")),
            row(4, "a", "shop", "u3", text("bye")), // other payload
            row(5, "a", "other", "u4", text("hi")), // other account
            row(6, "b", "shop", "u5", text("hi")),  // other app
            row(7, "a", "shop", "u6", text("hi")),
        ];
        let calls = plan_calls(rows, true);
        assert_eq!(
            shape(&calls),
            vec![vec![1, 2, 7], vec![4], vec![5], vec![6]]
        );
    }

    #[test]
    fn no_merge_means_one_call_per_row() {
        let rows = (0..3)
            .map(|i| row(i, "a", "shop", &format!("u{i}"), text("hi")))
            .collect();
        assert_eq!(
            shape(&plan_calls(rows, false)),
            vec![vec![0], vec![1], vec![2]]
        );
    }

    #[test]
    fn a_batch_holds_at_most_100_users() {
        let rows = (0..250)
            .map(|i| row(i, "a", "shop", &format!("u{i}"), text("hi")))
            .collect();
        let sizes: Vec<usize> = plan_calls(rows, true)
            .iter()
            .map(|c| c.rows.len())
            .collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }

    #[test]
    fn uploaded_media_are_sent_one_by_one_and_urls_merge() {
        let uploaded = PlannedReply::Image {
            media: Media::MediaId("m1".into()),
        };
        let by_url = PlannedReply::Image {
            media: Media::Url("http://x/p.png".into()),
        };
        assert!(!batchable(&uploaded));
        assert!(batchable(&by_url));
        let rows = vec![
            row(1, "a", "shop", "u1", uploaded.clone()),
            row(2, "a", "shop", "u2", uploaded),
            row(3, "a", "shop", "u3", by_url.clone()),
            row(4, "a", "shop", "u4", by_url),
        ];
        assert_eq!(
            shape(&plan_calls(rows, true)),
            vec![vec![1], vec![2], vec![3, 4]]
        );
    }
}
