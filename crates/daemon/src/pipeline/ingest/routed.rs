//! Routing a push to the ingest of the database its app lives on.

use std::sync::Arc;

use pubbot_webhook::{Accepted, Inbox, InboxError, Push};

use super::PgInbox;

/// The inboxes of every database's pipeline, by app: a push goes to the
/// ingest of the database its app lives on (`[[apps]] database`), so one
/// database's outage spools only its own apps' pushes. An app no database
/// holds (none passes the signature check) goes to the default one.
///
/// An app moving to another database (`move_to`) has its destination's
/// inbox beside: its pushes go there once the move has begun
/// (`pipeline::moves`).
#[derive(Clone)]
pub(crate) struct Routed {
    by_app: Arc<std::collections::HashMap<String, PgInbox>>,
    /// Apps moving: their database, and the destination's inbox.
    moving: Arc<std::collections::HashMap<String, (String, PgInbox)>>,
    moves: Arc<crate::pipeline::moves::Moves>,
    default: PgInbox,
}

impl Routed {
    pub(crate) fn new(
        by_app: std::collections::HashMap<String, PgInbox>,
        moving: std::collections::HashMap<String, (String, PgInbox)>,
        moves: Arc<crate::pipeline::moves::Moves>,
        default: PgInbox,
    ) -> Self {
        Self {
            by_app: Arc::new(by_app),
            moving: Arc::new(moving),
            moves,
            default,
        }
    }
}

impl Inbox for Routed {
    async fn accept(&self, push: Push) -> Result<Accepted, InboxError> {
        if let Some((home, there)) = self.moving.get(&push.app_key) {
            if self.moves.leaving(home, &push.app_key).is_some() {
                return there.accept(push).await;
            }
        }
        self.by_app
            .get(&push.app_key)
            .unwrap_or(&self.default)
            .accept(push)
            .await
    }
}
