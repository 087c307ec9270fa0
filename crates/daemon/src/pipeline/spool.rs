//! The local spool: pushes the database could not take in time, kept on
//! disk so they can be answered (R15: an answer ends the platform's tries,
//! so a push is answered only once it is durable somewhere) and drained
//! into PostgreSQL when it answers again.
//!
//! - **Format.** Segment files `spool-{seq}.jsonl` in `ingest.spool_dir`,
//!   one JSON object per line (the raw body hex-encoded). A writer thread
//!   appends what arrived together and `fsync`s once for the group before
//!   any of its pushes is answered. A line torn by a crash was never
//!   answered; the drain skips it.
//! - **Drain.** Every second (and at start), when the spool holds
//!   anything, the writer closes its segment; each closed segment is
//!   inserted with the same `ON CONFLICT DO NOTHING` as the group commit
//!   (the R6 key: a push both spooled and stored, or held by another
//!   replica too, is stored once) and deleted after the commit. A crash
//!   between the two inserts it again, which changes nothing.
//! - **Order.** While the spool holds a push of a user, that user's later
//!   pushes go to the spool too ([`Spool::holds`]; users are counted from
//!   the segments on disk at start), so the drain stores them in the order
//!   they came and none is stored directly before an earlier one. Such a
//!   push is written at once when nothing of its user is on its way here
//!   and the user has been held long enough that no earlier push of theirs
//!   can still be in a database commit (see `ingest`); otherwise it waits
//!   its turn.
//! - **Limits.** The spool is capped at `ingest.spool_max_bytes`; past it,
//!   or when a write fails, the push gets no answer (the platform retries).
//! - **One owner.** The directory is locked (`LOCK`): two processes on one
//!   spool would drain each other's segments.
//!
//! **What is lost if the directory is lost:** the pushes in it, which the
//! platform was told were received. Keep it on a disk that outlives the
//! process (systemd `StateDirectory=`, a Kubernetes volume).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Why the spool could not take a push or start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpoolError {
    /// Writing or syncing failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// `ingest.spool_max_bytes` reached.
    #[error("spool is full ({bytes} of {max} bytes)")]
    Full {
        /// Bytes on disk.
        bytes: u64,
        /// The cap.
        max: u64,
    },
    /// Another process holds the directory.
    #[error("spool {0} is locked by another process (each process needs its own spool_dir)")]
    Locked(String),
    /// The writer has stopped.
    #[error("spool writer stopped")]
    Stopped,
}

fn io(path: &Path, source: std::io::Error) -> SpoolError {
    SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One spooled push: the columns of `inbound_messages` it becomes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct SpooledPush {
    /// App key.
    pub app_key: String,
    /// Account.
    pub mcid: String,
    /// User.
    pub user_id: String,
    /// `MsgType`.
    pub msg_type: String,
    /// R6 key.
    pub dedup_key: String,
    /// `MsgId`.
    pub msg_id: Option<String>,
    /// `CreateTime`.
    pub create_time: Option<i64>,
    /// The parsed message, JSON.
    pub message: String,
    /// The body as received, hex.
    pub raw_hex: String,
    /// Trace id.
    pub trace_id: String,
}

enum Command {
    Append(Vec<u8>, oneshot::Sender<Result<(), SpoolError>>),
    /// Close the open segment; answers the segments now closed.
    Rotate(oneshot::Sender<Vec<PathBuf>>),
}

/// A user of an account: whose pushes the spool holds.
type User = (String, String, String);

/// What holds a user in the spool.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// Pushes in the spool (or being written there), not yet drained.
    spooled: u32,
    /// Pushes waiting for their turn to be written ([`Spool::reserve`]).
    reserved: u32,
    /// Held without a break since.
    since: std::time::Instant,
}

/// A held user, as [`Spool::holds`] sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holding {
    /// A push of the user is waiting for its turn to be written: a later
    /// one must wait for a later turn.
    pub on_its_way: bool,
    /// Held without a break since (pushes found on disk at start: held
    /// since long before).
    pub since: std::time::Instant,
}

#[derive(Clone, Copy)]
enum Count {
    Spooled,
    Reserved,
}

/// A user held for a push on its way to the spool ([`Spool::reserve`]).
pub(crate) struct Reserved {
    spool: Spool,
    user: User,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.spool.release(&self.user, Count::Reserved, 1);
    }
}

/// A handle on the spool. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Spool {
    tx: mpsc::Sender<Command>,
    bytes: Arc<AtomicU64>,
    dir: PathBuf,
    /// Pushes in the spool by user, not yet drained: a user's later push
    /// goes to the spool too while any is there (see [`Spool::holds`]).
    users: Arc<std::sync::Mutex<HashMap<User, Hold>>>,
}

fn user_of(p: &SpooledPush) -> User {
    (p.app_key.clone(), p.mcid.clone(), p.user_id.clone())
}

fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("spool-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

struct Writer {
    dir: PathBuf,
    max: u64,
    bytes: Arc<AtomicU64>,
    next_seq: u64,
    open: Option<(PathBuf, File)>,
    _lock: File,
}

impl Writer {
    fn append_group(&mut self, lines: &[Vec<u8>]) -> Result<(), SpoolError> {
        let size: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        let have = self.bytes.load(Ordering::Relaxed);
        if have + size > self.max {
            return Err(SpoolError::Full {
                bytes: have,
                max: self.max,
            });
        }
        if self.open.is_none() {
            let path = self.dir.join(format!("spool-{:020}.jsonl", self.next_seq));
            self.next_seq += 1;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            // The new file's name must be durable too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(&self.dir, e))?;
            self.open = Some((path, file));
        }
        let Some((path, file)) = self.open.as_mut() else {
            return Err(SpoolError::Stopped);
        };
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        for l in lines {
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        file.write_all(&buf).map_err(|e| io(path, e))?;
        file.sync_data().map_err(|e| io(path, e))?;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    fn rotate(&mut self) -> Vec<PathBuf> {
        self.open = None;
        segments(&self.dir)
            .map(|s| s.into_iter().map(|(_, p)| p).collect())
            .unwrap_or_default()
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = Vec::new();
            let mut rotations = Vec::new();
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append(line, done) => group.push((line, done)),
                    Command::Rotate(done) => rotations.push(done),
                }
                if group.len() < 1024 {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                let lines: Vec<Vec<u8>> = group.iter().map(|(l, _)| l.clone()).collect();
                let result = self.append_group(&lines);
                if let Err(e) = &result {
                    tracing::error!(error = %e, pushes = lines.len(), "spool write failed; those pushes get no answer");
                    // Whatever was written of a failed group is never
                    // answered; start a fresh segment.
                    self.open = None;
                }
                for (_, done) in group {
                    let _ = done.send(match &result {
                        Ok(()) => Ok(()),
                        Err(SpoolError::Full { bytes, max }) => Err(SpoolError::Full {
                            bytes: *bytes,
                            max: *max,
                        }),
                        Err(e) => Err(SpoolError::Io {
                            path: self.dir.display().to_string(),
                            source: std::io::Error::other(e.to_string()),
                        }),
                    });
                }
            }
            for done in rotations {
                let _ = done.send(self.rotate());
            }
        }
    }
}

impl Spool {
    /// Opens (creating) and locks `dir`, and starts the writer thread.
    ///
    /// # Errors
    /// The directory cannot be created, read or locked.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(dir.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path, e)),
        }
        let existing = segments(dir).map_err(|e| io(dir, e))?;
        let mut bytes = 0;
        let mut users: HashMap<User, Hold> = HashMap::new();
        // No push of this process is in a commit yet: held since long ago.
        let long_ago = std::time::Instant::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or_else(std::time::Instant::now);
        for (_, p) in &existing {
            bytes += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            // Pushes left by an earlier run hold their users too.
            for push in Self::read_segment(p).unwrap_or_default() {
                users
                    .entry(user_of(&push))
                    .or_insert(Hold {
                        spooled: 0,
                        reserved: 0,
                        since: long_ago,
                    })
                    .spooled += 1;
            }
        }
        let bytes = Arc::new(AtomicU64::new(bytes));
        let writer = Writer {
            dir: dir.to_owned(),
            max: max_bytes,
            bytes: Arc::clone(&bytes),
            next_seq: existing.last().map_or(1, |(s, _)| s + 1),
            open: None,
            _lock: lock,
        };
        let (tx, rx) = mpsc::channel(8192);
        std::thread::Builder::new()
            .name("pubbot-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io(dir, e))?;
        Ok(Self {
            tx,
            bytes,
            dir: dir.to_owned(),
            users: Arc::new(std::sync::Mutex::new(users)),
        })
    }

    /// Appends one push and returns once it is on disk (fsync'd).
    ///
    /// # Errors
    /// [`SpoolError`]: full, an I/O error, or the writer stopped.
    pub(crate) async fn append(&self, push: &SpooledPush) -> Result<(), SpoolError> {
        let line = serde_json::to_vec(push).map_err(|e| io(&self.dir, e.into()))?;
        let (done, wait) = oneshot::channel();
        // Held from before the write: a later push of the user that comes
        // while this one is being written goes to the spool behind it.
        self.hold(&user_of(push), Count::Spooled);
        let sent = self
            .tx
            .send(Command::Append(line, done))
            .await
            .map_err(|_| SpoolError::Stopped);
        let written = match sent {
            Ok(()) => wait.await.map_err(|_| SpoolError::Stopped).and_then(|r| r),
            Err(e) => Err(e),
        };
        if written.is_err() {
            self.release(&user_of(push), Count::Spooled, 1);
        }
        written
    }

    /// Whether the spool holds a push of this user not yet drained into
    /// the database, or one on its way here. Their next push then goes to
    /// the spool too, so that the drain stores a user's pushes in the order
    /// they came, before any later one is stored directly (replies follow
    /// the order stored).
    pub(crate) fn holds(&self, app_key: &str, mcid: &str, user_id: &str) -> Option<Holding> {
        let users = self
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Empty but for an outage: no key is built for every push.
        if users.is_empty() {
            return None;
        }
        users
            .get(&(app_key.to_owned(), mcid.to_owned(), user_id.to_owned()))
            .map(|h| Holding {
                on_its_way: h.reserved > 0,
                since: h.since,
            })
    }

    /// Holds the user as if a push of theirs were in the spool, until the
    /// guard is dropped: for a push on its way here (it waits for its
    /// turn, see `ingest`), so that the user's next push does not go to
    /// the database, or to the spool, before it.
    pub(crate) fn reserve(&self, app_key: &str, mcid: &str, user_id: &str) -> Reserved {
        let user = (app_key.to_owned(), mcid.to_owned(), user_id.to_owned());
        self.hold(&user, Count::Reserved);
        Reserved {
            spool: self.clone(),
            user,
        }
    }

    fn hold(&self, user: &User, count: Count) {
        let mut users = self
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let hold = users.entry(user.clone()).or_insert_with(|| Hold {
            spooled: 0,
            reserved: 0,
            since: std::time::Instant::now(),
        });
        match count {
            Count::Spooled => hold.spooled += 1,
            Count::Reserved => hold.reserved += 1,
        }
    }

    fn release(&self, user: &User, count: Count, n: u32) {
        let mut users = self
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(hold) = users.get_mut(user) {
            match count {
                Count::Spooled => hold.spooled = hold.spooled.saturating_sub(n),
                Count::Reserved => hold.reserved = hold.reserved.saturating_sub(n),
            }
            if hold.spooled == 0 && hold.reserved == 0 {
                users.remove(user);
            }
        }
    }

    /// Bytes on disk.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    async fn rotate(&self) -> Vec<PathBuf> {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Rotate(done)).await.is_err() {
            return Vec::new();
        }
        wait.await.unwrap_or_default()
    }

    /// Reads a closed segment; torn or unreadable lines are skipped (never
    /// answered) and counted.
    ///
    /// # Errors
    /// The file cannot be read.
    pub(crate) fn read_segment(path: &Path) -> Result<Vec<SpooledPush>, SpoolError> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        let mut pushes = Vec::new();
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|e| io(path, e))?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<SpooledPush>(&line) {
                Ok(p) => pushes.push(p),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a torn spool line (never answered)");
                    metrics::counter!("pubbot_spool_pushes_total", "outcome" => "torn")
                        .increment(1);
                }
            }
        }
        Ok(pushes)
    }

    /// Drains every closed segment into PostgreSQL with `store` (which
    /// inserts a batch, deduplicated); stops at the first failure. Returns
    /// the pushes drained.
    pub(crate) async fn drain_once<F, Fut, E>(&self, mut store: F) -> usize
    where
        F: FnMut(Vec<SpooledPush>) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        if self.bytes() == 0 {
            return 0;
        }
        let mut drained = 0;
        for path in self.rotate().await {
            // Off the runtime's threads: a segment written through a long
            // outage holds thousands of pushes.
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Self::read_segment(&path))
                    .await
                    .unwrap_or_else(|e| Err(io(&self.dir, std::io::Error::other(e))))
            };
            let pushes = match read {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "reading a spool segment failed; left in place");
                    return drained;
                }
            };
            let n = pushes.len();
            let mut ok = true;
            for chunk in pushes.chunks(256) {
                if let Err(e) = store(chunk.to_vec()).await {
                    tracing::warn!(error = %e, "draining the spool failed; trying again later");
                    ok = false;
                    break;
                }
            }
            if !ok {
                return drained;
            }
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(path = %path.display(), error = %e, "removing a drained spool segment failed");
                return drained;
            }
            self.bytes
                .fetch_sub(size.min(self.bytes()), Ordering::Relaxed);
            // Released once the segment is gone (a failed drain retries the
            // whole segment, so a user is never released twice).
            for push in &pushes {
                self.release(&user_of(push), Count::Spooled, 1);
            }
            metrics::counter!("pubbot_spool_pushes_total", "outcome" => "drained")
                .increment(n as u64);
            drained += n;
        }
        if drained > 0 {
            tracing::info!(pushes = drained, "spooled pushes stored");
        }
        drained
    }

    /// Drains every `every` (at once at start) until `token` is cancelled.
    pub(crate) async fn drain<F, Fut, E>(
        self,
        database: &'static str,
        every: Duration,
        token: CancellationToken,
        mut store: F,
    ) where
        F: FnMut(Vec<SpooledPush>) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        loop {
            self.drain_once(&mut store).await;
            metrics::gauge!("pubbot_spool_bytes", "database" => database).set(self.bytes() as f64);
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(n: usize) -> SpooledPush {
        SpooledPush {
            app_key: "a".into(),
            mcid: "m".into(),
            user_id: format!("u{n}"),
            msg_type: "text".into(),
            dedup_key: format!("k{n}"),
            msg_id: Some(n.to_string()),
            create_time: None,
            message: "{}".into(),
            raw_hex: hex::encode([0u8, 0xFF, b'<']),
            trace_id: "t".into(),
        }
    }

    #[tokio::test]
    async fn spooled_pushes_survive_a_reopen_torn_lines_are_skipped_and_the_cap_holds() {
        let dir = std::env::temp_dir().join(format!("pubbot-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let spool = Spool::open(&dir, 10_000).unwrap();
            // One owner only.
            assert!(matches!(
                Spool::open(&dir, 10_000),
                Err(SpoolError::Locked(_))
            ));
            for n in 0..3 {
                spool.append(&push(n)).await.unwrap();
            }
            // Their users' later pushes follow them into the spool.
            let held = spool.holds("a", "m", "u1").expect("held");
            assert!(!held.on_its_way);
            assert!(spool.holds("a", "m", "u7").is_none());
            // A push on its way makes the next one wait its turn; the hold
            // keeps its start.
            {
                let _on_its_way = spool.reserve("a", "m", "u1");
                let now = spool.holds("a", "m", "u1").expect("held");
                assert!(now.on_its_way);
                assert_eq!(now.since, held.since);
                let _alone = spool.reserve("a", "m", "u8");
                assert!(spool.holds("a", "m", "u8").expect("reserved").on_its_way);
            }
            assert!(!spool.holds("a", "m", "u1").expect("held").on_its_way);
            assert!(
                spool.holds("a", "m", "u8").is_none(),
                "a reservation alone ends with it"
            );
            // Over the cap: refused, nothing half-written is answered, and
            // its user is not held.
            let mut big = push(9);
            big.message = "x".repeat(20_000);
            assert!(matches!(
                spool.append(&big).await,
                Err(SpoolError::Full { .. })
            ));
            assert!(spool.holds("a", "m", "u9").is_none());
            drop(spool);
        }
        // The writer thread ends when its handles are gone; the lock goes
        // with it.
        let mut reopened = None;
        for _ in 0..100 {
            match Spool::open(&dir, 10_000) {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let spool = reopened.expect("reopened");
        // What an earlier run left holds its users until drained.
        assert!(spool.holds("a", "m", "u0").is_some() && spool.holds("a", "m", "u2").is_some());
        // Held since before this process: nothing of theirs can be in a
        // commit of it.
        assert!(spool.holds("a", "m", "u0").unwrap().since.elapsed() > Duration::from_secs(60));
        // A crash mid-line leaves a torn tail.
        let (_, last) = segments(&dir).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(b"{\"app_key\":\"a\",\"mc").unwrap();
        drop(f);
        assert!(spool.bytes() > 0);
        let stored = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = Arc::clone(&stored);
        let n = spool
            .drain_once(move |chunk| {
                let s2 = Arc::clone(&s2);
                async move {
                    s2.lock().unwrap().extend(chunk);
                    Ok::<(), std::convert::Infallible>(())
                }
            })
            .await;
        assert_eq!(n, 3);
        assert_eq!(*stored.lock().unwrap(), vec![push(0), push(1), push(2)]);
        assert!(segments(&dir).unwrap().is_empty());
        assert_eq!(spool.bytes(), 0);
        assert!(
            spool.holds("a", "m", "u0").is_none(),
            "drained: stored directly again"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
