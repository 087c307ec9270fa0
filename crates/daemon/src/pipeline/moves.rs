//! Apps moving between databases, as the pipelines see them (the move
//! itself: `crate::admin::moves`).
//!
//! An app configured with `move_to = "NAME"` is served by the pipelines of
//! both its database and `NAME`. Each database's `app_moves` rows, read
//! every [`EVERY`] by [`watch`], say where its pushes go and whether they
//! may be decided:
//!
//! - `leaving` in the app's database: every pubbot routes its pushes to the
//!   destination's ingest ([`Moves::leaving`]);
//! - `arriving`, not `done`, in the destination: its pushes are stored
//!   there but not decided ([`Moves::parked`]) until the source has sent
//!   every reply it planned and the move copied the app's rows, so that
//!   each user's replies keep the order they wrote.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often each pipeline reads its database's `app_moves`. A move waits
/// longer than this before it counts on every process routing the app's
/// pushes to the destination.
pub(crate) const EVERY: Duration = Duration::from_millis(500);

/// What every pipeline of this process knows of moves, by database.
#[derive(Debug, Default)]
pub(crate) struct Moves {
    /// Per database: apps leaving it, and the database they go to.
    leaving: RwLock<HashMap<String, HashMap<String, String>>>,
    /// Per database: apps arriving there whose move is not done.
    parked: RwLock<HashMap<String, HashSet<String>>>,
}

impl Moves {
    /// Where a push of `app`, placed on `database`, goes instead: the
    /// destination of its move, once the move has begun.
    pub(crate) fn leaving(&self, database: &str, app: &str) -> Option<String> {
        self.leaving
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(database)
            .and_then(|apps| apps.get(app).cloned())
    }

    /// Whether `app`'s pushes on `database` wait undecided for its move.
    pub(crate) fn parked(&self, database: &str, app: &str) -> bool {
        self.parked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(database)
            .is_some_and(|apps| apps.contains(app))
    }

    /// Whether any app waits on `database` (so that claims filter only
    /// then).
    pub(crate) fn any_parked(&self, database: &str) -> bool {
        self.parked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(database)
            .is_some_and(|apps| !apps.is_empty())
    }
}

/// Reads `database`'s `app_moves` every [`EVERY`] into `moves` until
/// `token` is cancelled. A failed read keeps what was known.
pub(crate) async fn watch(
    database: &'static str,
    pool: PgPool,
    moves: std::sync::Arc<Moves>,
    token: CancellationToken,
) {
    loop {
        let rows = sqlx::query!("SELECT app_key, direction, other_database, state FROM app_moves")
            .fetch_all(&pool)
            .await;
        match rows {
            Ok(rows) => {
                let mut leaving = HashMap::new();
                let mut parked = HashSet::new();
                for r in rows {
                    match (r.direction.as_str(), r.state.as_str()) {
                        ("leaving", _) => {
                            leaving.insert(r.app_key, r.other_database);
                        }
                        ("arriving", "moving") => {
                            parked.insert(r.app_key);
                        }
                        _ => {}
                    }
                }
                moves
                    .leaving
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(database.to_owned(), leaving);
                moves
                    .parked
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(database.to_owned(), parked);
            }
            Err(e) => tracing::debug!(database, error = %e, "reading app moves failed"),
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}
