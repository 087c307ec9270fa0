//! # pubbot-sim: the Public Service platform, simulated
//!
//! The real platform is not reachable from where pubbot is built and tested,
//! so this crate is the world pubbot talks to: a faithful server side of the
//! platform's API document (`shared/spec/public_service.md`, as read in
//! `READING.md`) and the user side that pushes signed XML to an account's
//! `routeUrl`.
//!
//! **What it is for:** end-to-end tests, the demo, benchmarks, and bot
//! authors who want to try their rules locally. It is strict where the
//! platform is strict: every call is signed (R1/R2, HTTP 401 otherwise),
//! bodies must have the right content type (R12), every limit of R9 is
//! checked with the platform's codes (R10), `sendall` works once per natural
//! day in UTC+8 (R11), and pushes are retried as the document says.
//!
//! **What it is not for:** production traffic, persistence (state lives in
//! memory and dies with the process), or deciding what the protocol means:
//! where the document is unclear, `READING.md` decides and this crate follows.
//!
//! **Its own implementation, on purpose.** The limits, the width count, the
//! signature, the timestamp units and the AMR walker here are written
//! independently of `pubbot-protocol`, the home of those facts for pubbot's
//! own crates: the simulator plays the other side, and a bug shared by
//! both would make them agree on something the document does not say.
//! `tests/agrees_with_protocol.rs` runs both over one table of cases.
//!
//! ## Decisions this crate makes visible
//! - Business errors answer HTTP 200 with `{"errcode":N,"errmsg":".."}`, the
//!   `errmsg` naming the field; a signature failure answers HTTP 401 with
//!   code `1004` in the body (R1).
//! - An oversized upload is `1002` (the limit is a parameter error); a file
//!   that is not JPG/PNG/AMR, or an unknown `type`, is `1003`.
//! - A push is done when the receiver answers at all (R15): any answer,
//!   an empty `200` or an error status, ends it; only no answer within the
//!   timeout (5 s) or a refused connection brings a retry, three retries
//!   after the first try. Retrying on a `5xx` too is an option
//!   (`PushConfig::retry_on_5xx`, `--push-retry-on-5xx`), for receivers
//!   written for other platforms.
//!
//! ## Use from a test
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use pubbot_sim::{AppCredentials, RunningSim, SimConfig};
//! let sim = RunningSim::start(SimConfig {
//!     apps: vec![AppCredentials { key: "appkey".into(), secret: "secret".into() }],
//!     ..SimConfig::default()
//! })
//! .await?;
//! println!("platform API at {}", sim.base_url());
//! # Ok(()) }
//! ```

mod api;
pub mod cli;
mod config;
mod control;
mod error;
pub mod limits;
pub mod load;
mod push;
pub mod signature;
mod world;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{AcceptedUnit, AppCredentials, Faults, PushConfig, SimConfig};
pub use control::{FollowRequest, MessageRequest, PushOptions};
pub use error::ApiError;
pub use push::{render_xml, Attempt, PushContent, PushRecord, PushState, UserMessage};
pub use world::{Account, CallRecord, Delivery, Media, Menu};

use world::World;

/// Shared state behind every handler.
pub(crate) struct Inner {
    pub(crate) config: SimConfig,
    world: Mutex<World>,
    pushes: Mutex<Vec<PushRecord>>,
    pub(crate) http: reqwest::Client,
    /// One permit per push try in flight (`push.connections`).
    pub(crate) push_slots: tokio::sync::Semaphore,
    msg_seq: std::sync::atomic::AtomicU64,
    /// routeUrls parsed (a parse a push showed in the load generator's
    /// profile); cleared when it holds more than a few hundred.
    route_urls: Mutex<std::collections::HashMap<String, reqwest::Url>>,
}

impl Inner {
    /// `url` parsed, from the cache when it was seen before.
    pub(crate) fn route_url(&self, url: &str) -> Result<reqwest::Url, String> {
        let mut known = self
            .route_urls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(u) = known.get(url) {
            return Ok(u.clone());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        if known.len() >= 256 {
            known.clear();
        }
        known.insert(url.to_owned(), parsed.clone());
        Ok(parsed)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_pushes(&self) -> MutexGuard<'_, Vec<PushRecord>> {
        self.pushes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn next_msg_id(&self) -> String {
        let n = self
            .msg_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Unique across restarts: start time in ms, then a sequence.
        format!("{}{:06}", chrono::Utc::now().timestamp_millis() / 1000, n)
    }

    pub(crate) fn push_records(&self, ids: &[usize]) -> Vec<PushRecord> {
        let log = self.lock_pushes();
        ids.iter().filter_map(|&i| log.get(i).cloned()).collect()
    }

    /// Logs the push (one record a copy) and delivers it, waiting or not.
    pub(crate) async fn start_push(
        inner: &Arc<Self>,
        app_key: &str,
        mcid: &str,
        user: &str,
        content: PushContent,
        options: &PushOptions,
    ) -> Result<Vec<usize>, String> {
        let (route_url, open, secret) = {
            let w = inner.lock();
            let app = w
                .apps
                .get(app_key)
                .ok_or_else(|| format!("no app {app_key:?}"))?;
            let acc = app
                .accounts
                .get(mcid)
                .ok_or_else(|| format!("mcid {mcid:?} does not exist"))?;
            (acc.route_url.clone(), acc.route_open, app.secret.clone())
        };
        let create_time = chrono::Utc::now().timestamp_millis();
        let xml = render_xml(
            mcid,
            user,
            create_time,
            &content,
            inner.config.push.document_style,
        );
        let (msg_id, event) = match &content {
            PushContent::Message(_, id) => (Some(id.clone()), None),
            PushContent::Event(e) => (None, Some((*e).to_owned())),
        };
        let copies = 1 + options.duplicates as usize;
        let mut ids = Vec::with_capacity(copies);
        {
            let mut log = inner.lock_pushes();
            for i in 0..copies {
                let url = match &options.route_urls {
                    Some(urls) if !urls.is_empty() => urls[i % urls.len()].clone(),
                    _ => route_url.clone(),
                };
                let skipped = !open || url.trim().is_empty();
                let id = log.len();
                ids.push(id);
                log.push(PushRecord {
                    id,
                    app_key: app_key.to_owned(),
                    mcid: mcid.to_owned(),
                    user_id: user.to_owned(),
                    msg_type: content.msg_type().to_owned(),
                    event: event.clone(),
                    msg_id: msg_id.clone(),
                    create_time,
                    url,
                    bad_signature: options.bad_signature,
                    xml: xml.clone(),
                    attempts: Vec::new(),
                    state: if skipped {
                        push::PushState::Skipped
                    } else {
                        push::PushState::Pending
                    },
                });
            }
        }
        let live: Vec<usize> = {
            let log = inner.lock_pushes();
            ids.iter()
                .copied()
                .filter(|&i| log[i].state == PushState::Pending)
                .collect()
        };
        let work = {
            let inner = Arc::clone(inner);
            let concurrent = options.concurrent;
            async move {
                if concurrent {
                    let all = live
                        .iter()
                        .map(|&id| push::deliver(Arc::clone(&inner), id, secret.clone()));
                    futures_util::future::join_all(all).await;
                } else {
                    for id in live {
                        push::deliver(Arc::clone(&inner), id, secret.clone()).await;
                    }
                }
            }
        };
        if options.wait {
            work.await;
        } else {
            tokio::spawn(work);
        }
        Ok(ids)
    }
}

/// The simulator: build it from a [`SimConfig`], then serve its router.
#[derive(Clone)]
pub struct Simulator {
    pub(crate) inner: Arc<Inner>,
}

impl Simulator {
    /// A simulator with the configured apps and an empty world.
    ///
    /// # Errors
    /// When the fault settings are out of range or the HTTP client for
    /// pushes cannot be built.
    pub fn new(config: SimConfig) -> Result<Self, String> {
        config.faults.validate()?;
        // A redirect is an answer like any other (R15: it ends the push),
        // not a hop to follow.
        let http = reqwest::Client::builder()
            .user_agent("pubbot-sim")
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            inner: Arc::new(Inner {
                world: Mutex::new(World::new(&config)),
                pushes: Mutex::new(Vec::new()),
                push_slots: tokio::sync::Semaphore::new(config.push.connections.max(1)),
                config,
                http,
                msg_seq: std::sync::atomic::AtomicU64::new(1),
                route_urls: Mutex::new(std::collections::HashMap::new()),
            }),
        })
    }

    /// The platform API (every path) plus the control API under `/_sim`.
    pub fn router(&self) -> Router {
        control::router()
            .fallback(api::platform)
            // Uploads may be 2 MiB plus multipart framing; larger bodies get
            // the platform's 1002 rather than a bare 413.
            .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
            .with_state(Arc::clone(&self.inner))
    }

    /// Serves on `listener` until `shutdown` completes.
    ///
    /// # Errors
    /// When the listener fails.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// A simulator serving on a loopback port, stopped when dropped. Made for
/// tests: `RunningSim::start(config).await?.base_url()`.
pub struct RunningSim {
    addr: SocketAddr,
    token: CancellationToken,
    /// The simulator itself.
    pub sim: Simulator,
}

impl RunningSim {
    /// Binds `127.0.0.1:0` and serves in the background.
    ///
    /// # Errors
    /// When the config is invalid or the port cannot be bound.
    pub async fn start(config: SimConfig) -> anyhow::Result<Self> {
        let sim = Simulator::new(config).map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token = CancellationToken::new();
        let stop = token.clone();
        let server = sim.clone();
        tokio::spawn(async move {
            if let Err(e) = server
                .serve(listener, async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        Ok(Self { addr, token, sim })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the platform's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
