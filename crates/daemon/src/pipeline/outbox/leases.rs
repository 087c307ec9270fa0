//! The rows this process holds leases on, and the replies that follow one
//! of them ("Following a reply held here" in [`super`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Held, Path};

/// How long the outcome of a call is remembered for replies that follow
/// it. One that comes later (it waited that long in a hand-off) goes back
/// to the table: not knowing, it must not go.
const REMEMBERED: Duration = Duration::from_secs(10);

/// The rows this process holds leases on (id -> attempt), from the moment
/// they are leased until their outcome is recorded (invariant 3); with them
/// the outcomes of this process's recent calls and the replies waiting for
/// one.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    inner: std::sync::Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    held: HashMap<i64, i32>,
    /// Whether each call of the last [`REMEMBERED`] put its reply out, by
    /// row id; the generation before in `went_before`.
    went: HashMap<i64, bool>,
    went_before: HashMap<i64, bool>,
    went_since: Option<Instant>,
    /// Replies waiting for the call of a held row, by its id.
    waiting: HashMap<i64, Vec<Held>>,
    /// Replies whose row to follow has had its call (or left this process
    /// without one), to be sorted again by the next sender to look.
    ready: Vec<Held>,
}

/// What a unit's rows may do now ([`Leases::sort`]).
#[derive(Debug, Default)]
pub(crate) struct Sorted {
    /// Nothing of their user to wait for: sent now.
    pub go: Vec<Held>,
    /// An earlier reply of their user did not go out, or nothing is known
    /// of it: put back in the table untried.
    pub back: Vec<Held>,
}

#[derive(Clone, Copy)]
enum Fate {
    Go,
    Back,
    Wait(i64),
}

impl Inner {
    fn went(&self, id: i64) -> Option<bool> {
        self.went
            .get(&id)
            .or_else(|| self.went_before.get(&id))
            .copied()
    }

    /// What a row following row `id` may do.
    fn fate(&self, id: i64) -> Fate {
        match self.went(id) {
            Some(true) => Fate::Go,
            Some(false) => Fate::Back,
            None if self.held.contains_key(&id) => Fate::Wait(id),
            // Not held, no outcome: leased here a moment too late to be
            // seen yet, or lost to another process. Not knowing, the reply
            // does not go.
            None => Fate::Back,
        }
    }
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rows (id, attempts) just leased.
    pub(crate) fn hold(&self, rows: impl IntoIterator<Item = (i64, i32)>) {
        self.lock().held.extend(rows);
    }

    /// Rows no longer held (recorded, or lost to another process). Replies
    /// still waiting for one of them (it left without a call) are ready to
    /// be sorted again, and then go back to the table.
    pub(crate) fn release(&self, ids: impl IntoIterator<Item = i64>) {
        let mut inner = self.lock();
        for id in ids {
            inner.held.remove(&id);
            if let Some(rows) = inner.waiting.remove(&id) {
                inner.ready.extend(rows);
            }
        }
    }

    /// The rows held, sorted by id (invariant 6).
    pub(crate) fn snapshot(&self) -> (Vec<i64>, Vec<i32>) {
        let mut rows: Vec<(i64, i32)> = self.lock().held.iter().map(|(i, a)| (*i, *a)).collect();
        rows.sort_unstable();
        rows.into_iter().unzip()
    }

    /// Sorts rows about to be sent by what their user's earlier replies
    /// (`Held::follows`) allow: it went out, or there is none: they go; it
    /// is still held here without an outcome: they wait for its call (then
    /// [`Leases::ready`] gives them back); it did not go out, or nothing is
    /// known of it: back to the table. A user's rows in `rows`
    /// are taken in their order: one that waits makes the next wait for it,
    /// one that goes back takes the later ones with it, and the rows before
    /// one that go with it need no waiting (the rounds keep their order).
    pub(crate) fn sort(&self, mut rows: Vec<Held>) -> Sorted {
        // Mostly nothing to follow: all go, as they came.
        if rows.iter().all(|h| h.follows.is_none()) {
            return Sorted {
                go: rows,
                back: Vec::new(),
            };
        }
        rows.sort_by(|a, b| {
            a.row
                .conversation()
                .cmp(&b.row.conversation())
                .then(a.row.id.cmp(&b.row.id))
        });
        let mut inner = self.lock();
        let mut sorted = Sorted::default();
        // The fate of the previous row of the same user, if any.
        let mut prev: Option<((String, String, String), Fate, i64)> = None;
        let mut going: Vec<i64> = Vec::new();
        for mut h in rows {
            let user = (
                h.row.app_key.clone(),
                h.row.mcid.as_str().to_owned(),
                h.row.user_id.as_str().to_owned(),
            );
            let before = prev.take().filter(|(u, _, _)| *u == user);
            if before.is_none() {
                going.clear();
            }
            let fate = match before {
                Some((_, Fate::Back, _)) => Fate::Back,
                Some((_, Fate::Wait(_), id)) => Fate::Wait(id),
                // Never planned so (a user's pushes are stored one
                // statement at a time): waiting for a later row could wait
                // for ever.
                _ if h.follows.is_some_and(|id| id > h.row.id) => Fate::Back,
                // A row going before it in this sort needs no waiting for
                // (the rounds keep their order).
                _ => match h.follows.filter(|id| !going.contains(id)) {
                    Some(id) => inner.fate(id),
                    None => Fate::Go,
                },
            };
            let id = h.row.id;
            match fate {
                Fate::Go => {
                    going.push(id);
                    sorted.go.push(h);
                }
                Fate::Back => sorted.back.push(h),
                Fate::Wait(on) => {
                    h.path = Path::Followed;
                    inner.waiting.entry(on).or_default().push(h);
                }
            }
            prev = Some((user, fate, id));
        }
        sorted
    }

    /// The call of row `id` ended, its reply out or not (`sent`): the
    /// replies that waited for it are ready to be sorted again.
    pub(crate) fn went(&self, id: i64, sent: bool) {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner
            .went_since
            .is_none_or(|t| now.duration_since(t) > REMEMBERED)
        {
            inner.went_before = std::mem::take(&mut inner.went);
            inner.went_since = Some(now);
        }
        inner.went.insert(id, sent);
        if let Some(rows) = inner.waiting.remove(&id) {
            inner.ready.extend(rows);
        }
    }

    /// Replies whose wait has ended ([`Leases::went`], [`Leases::release`]),
    /// taken. Every sender looks before it sorts rows of its own, and the
    /// one whose call ended them looks before it is done.
    pub(crate) fn ready(&self) -> Vec<Held> {
        std::mem::take(&mut self.lock().ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::outbox::Claimed;

    fn row(id: i64, user: &str, follows: Option<i64>) -> Held {
        Held {
            row: Claimed {
                id,
                app_key: "app".into(),
                mcid: "shop".into(),
                user_id: user.into(),
                payload: sqlx::types::Json(pubbot_rules::PlannedReply::Text {
                    content: format!("r{id}"),
                }),
                attempts: 1,
                trace_id: String::new(),
                inbound_id: Some(id),
                reply_index: 0,
                sub_index: 0,
                created_at: chrono::Utc::now(),
            },
            since: Instant::now(),
            path: Path::HandedOver,
            follows,
        }
    }

    fn ids(rows: &[Held]) -> Vec<i64> {
        rows.iter().map(|h| h.row.id).collect()
    }

    #[test]
    fn a_reply_waits_for_the_call_of_the_one_before_it_and_goes_once_that_went_out() {
        let l = Leases::default();
        l.hold([(1, 1), (2, 1), (3, 1)]);
        // 2 follows 1 (still held, no call yet); 3 has nothing to follow.
        let s = l.sort(vec![row(2, "ann", Some(1)), row(3, "bob", None)]);
        assert_eq!(ids(&s.go), [3]);
        assert!(s.back.is_empty());
        // 1 went out: 2 comes back, and now goes.
        l.went(1, true);
        let back = l.ready();
        assert_eq!(ids(&back), [2]);
        assert_eq!(back[0].path, Path::Followed);
        assert_eq!(ids(&l.sort(back).go), [2]);
        // Once taken, nothing waits any more.
        l.went(1, true);
        assert!(l.ready().is_empty());
    }

    #[test]
    fn a_reply_behind_one_that_did_not_go_out_or_is_unknown_goes_back() {
        let l = Leases::default();
        l.hold([(1, 1), (2, 1), (5, 1), (6, 1)]);
        l.went(1, false);
        assert!(l.ready().is_empty());
        let s = l.sort(vec![row(2, "ann", Some(1))]);
        assert_eq!(ids(&s.back), [2], "its earlier reply did not go out");
        // 4 was never held here (or no longer): not knowing, 5 goes back.
        let s = l.sort(vec![row(5, "cat", Some(4))]);
        assert_eq!(ids(&s.back), [5]);
        // Waiting for 6's call, 7 is ready again when 6 is lost without one.
        l.hold([(7, 1)]);
        assert!(l.sort(vec![row(7, "dan", Some(6))]).go.is_empty());
        assert!(l.ready().is_empty());
        l.release([6]);
        assert_eq!(ids(&l.ready()), [7]);
        assert!(l.ready().is_empty());
        // An orphan sorted again goes back: 6 has no outcome and is not held.
        assert_eq!(ids(&l.sort(vec![row(7, "dan", Some(6))]).back), [7]);
    }

    #[test]
    fn a_users_rows_in_one_sort_go_in_order_each_waiting_for_the_one_before() {
        let l = Leases::default();
        l.hold([(1, 1), (2, 1), (3, 1), (4, 1)]);
        // 2 and 3 (two replies of one push, or two pushes of one batch)
        // follow 1; 4 is another user's.
        let s = l.sort(vec![
            row(3, "ann", Some(1)),
            row(4, "bob", None),
            row(2, "ann", Some(1)),
        ]);
        assert_eq!(ids(&s.go), [4]);
        // 3 waits for 2, which waits for 1.
        l.went(1, true);
        assert_eq!(ids(&l.ready()), [2]);
        l.went(2, true);
        assert_eq!(ids(&l.ready()), [3]);
        // Units taken together: a row followed by another in the same
        // sort does not make it wait (the rounds keep their order).
        l.hold([(20, 1), (21, 1)]);
        let s = l.sort(vec![row(21, "fay", Some(20)), row(20, "fay", None)]);
        assert_eq!(ids(&s.go), [20, 21]);
        // A row given back with a later one of its user that was planned
        // behind it: the later one waits for it, never the other way round
        // (seen: each waiting for the other, for ever).
        l.hold([(40, 1), (41, 1), (42, 1), (43, 1)]);
        assert!(l.sort(vec![row(41, "hal", Some(40))]).go.is_empty());
        l.went(40, true);
        let mut again = l.ready();
        // 43 came in a new unit, planned behind 41 and 42 (both held).
        again.push(row(43, "hal", Some(42)));
        assert!(l.sort(vec![row(42, "hal", Some(41))]).go.is_empty());
        let s = l.sort(again);
        assert_eq!(ids(&s.go), [41]);
        l.went(41, true);
        assert_eq!(ids(&l.ready()), [42]);
        // A row to follow planned after this one: not waited for.
        l.hold([(30, 1), (31, 1)]);
        assert_eq!(ids(&l.sort(vec![row(30, "gus", Some(31))]).back), [30]);
        // A row that went out before the one followed was sorted: goes.
        l.hold([(10, 1), (11, 1)]);
        l.went(10, true);
        assert_eq!(ids(&l.sort(vec![row(11, "eve", Some(10))]).go), [11]);
    }
}
