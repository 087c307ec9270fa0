//! The webhook's listener: who may hold a connection, and for how long.
//!
//! The webhook port faces the open internet, and every connection holds a
//! slot (a task, a descriptor, buffers), so:
//!
//! - **A cap on open connections.** Past `http.max_connections`, new
//!   connections are not accepted: they wait in the kernel's listen
//!   backlog, and a platform that waits too long sees no answer and
//!   retries — never a status it might take as final (R15). Memory is
//!   bounded by the cap, not by the burst.
//! - **Idle connections make way.** A kept-alive connection between two
//!   requests holds a slot too. When every slot is taken and a connection
//!   is waiting, those idle for [`IDLE_AT_CAP`] or more are closed (as
//!   nginx reuses its idle keep-alive connections), so that the waiting
//!   one is taken in at once rather than after a header timeout: a
//!   platform whose pool holds more connections than the cap (idle ones
//!   it is not using, new ones for a burst) had pushes wait in the
//!   backlog until a timed-out try (BENCHMARKS.md, "Where a message
//!   waits"). A connection with a request in hand is never closed for it.
//! - **Time limits.** Complete request headers within
//!   `http.header_timeout_ms`, counted from the accept or, on a kept-alive
//!   connection, from the previous answer (so an idle kept-alive
//!   connection is closed after it too); the body within
//!   `http.body_timeout_ms` once the headers are in (the webhook answers a
//!   slower one `408` and closes it). The platform sends a push at once; a
//!   client that trickles bytes to keep a slot loses it.
//! - **Fairness** (when `http.max_connections_per_peer` is set; off by
//!   default, as the platform may push from one address): at most that
//!   many connections from one address, so one source cannot take every
//!   slot; a connection over it is closed at once. Proxies in
//!   `http.trusted_proxies` are not capped (they carry many clients).
//! - **An allow-list** (`http.allow_from`, off when empty): connections from
//!   elsewhere are closed at once; a trusted proxy's requests are checked
//!   by the client address in `http.client_ip_header` (answered `403`).
//!
//! Every connection closed for one of these reasons is counted in
//! `pubbot_webhook_connections_closed_total{reason}` and summed up in the
//! log once per `http.rejection_log_secs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use pubbot_webhook::LogSummary;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpSettings;

/// Binds the webhook's listening socket with a listen queue of `backlog`
/// connections (see `http.listen_backlog`; tokio's own `bind` asks for
/// 1,024), `SO_REUSEADDR` set as `bind` does.
///
/// # Errors
/// The address cannot be bound.
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The listener's limits (from `[http]`).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// Connections one address may hold (0: no cap).
    pub(crate) per_peer: usize,
    /// Complete headers within this.
    pub(crate) header_timeout: Duration,
    /// Who may connect (empty: everyone).
    pub(crate) allow_from: Vec<IpNet>,
    /// Proxies whose requests name their client in `client_ip_header`.
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// Where a trusted proxy names the client.
    pub(crate) client_ip_header: String,
}

impl Limits {
    pub(crate) fn from_settings(http: &HttpSettings) -> Self {
        Self {
            max_connections: http.max_connections,
            per_peer: http.max_connections_per_peer,
            header_timeout: Duration::from_millis(http.header_timeout_ms),
            allow_from: http.allow_from.clone(),
            trusted_proxies: http.trusted_proxies.clone(),
            client_ip_header: http.client_ip_header.to_ascii_lowercase(),
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(&ip))
    }

    /// The client behind a request from `peer`: `peer` itself, or, from a
    /// trusted proxy, the last address in the client header that is not a
    /// trusted proxy (the ones before it are the client's own word).
    fn client(&self, peer: IpAddr, header: Option<&str>) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        header
            .into_iter()
            .flat_map(|h| h.rsplit(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .find(|ip| !self.trusted(*ip))
            .unwrap_or(peer)
    }
}

/// An IPv4 address as itself, not mapped into IPv6 (a dual-stack socket
/// reports `::ffff:a.b.c.d`).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Connections held by address.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

/// One connection of an address, given back when dropped.
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<PeerSlot> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_default();
        if cap > 0 && *n >= cap {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .peers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// How long a kept-alive connection must have been idle to be closed when
/// every slot is taken and another connection waits: long enough that a
/// client between two requests of a burst keeps its connection.
pub(crate) const IDLE_AT_CAP: Duration = Duration::from_secs(1);

/// What a connection is doing: requests in hand, and since when it has
/// had none (milliseconds from the listener's start).
#[derive(Debug, Default)]
struct Activity {
    in_hand: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn idle_for(&self, now_ms: u64) -> Option<Duration> {
        (self.in_hand.load(Ordering::Acquire) == 0).then(|| {
            Duration::from_millis(now_ms.saturating_sub(self.idle_since_ms.load(Ordering::Acquire)))
        })
    }
}

/// Why a connection was closed by the listener.
fn closed(log: &LogSummary, reason: &'static str, ip: IpAddr) {
    metrics::counter!("pubbot_webhook_connections_closed_total", "reason" => reason).increment(1);
    if log.note(|| format!("{reason} peer={ip}")) {
        tracing::warn!(reason, peer = %ip, "webhook connection closed");
    }
}

/// The address a request came from, put in its extensions by [`serve`].
#[derive(Debug, Clone, Copy)]
struct Peer(IpAddr);

/// Serves `router` on `listener` under `limits` until `token` is
/// cancelled; then stops accepting, lets every connection finish the
/// request it is on, and returns once all are closed. `log` sums up the
/// connections it closes.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    log: Arc<LogSummary>,
    token: CancellationToken,
) {
    let limits = Arc::new(limits);
    let router = if limits.allow_from.is_empty() || limits.trusted_proxies.is_empty() {
        router
    } else {
        let limits = Arc::clone(&limits);
        let log = Arc::clone(&log);
        router.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let limits = Arc::clone(&limits);
                let log = Arc::clone(&log);
                async move { allow_client(&limits, &log, req, next).await }
            },
        ))
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = Arc::new(Peers::default());
    let connections = TaskTracker::new();
    // Connections idle between requests wait on this; it is notified while
    // every slot is taken and a new connection waits for one.
    let at_cap = Arc::new(Notify::new());
    let started = Instant::now();
    let now_ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    'accept: loop {
        // One connection is taken from the backlog, then waits here for a
        // slot: so the listener knows somebody is waiting.
        let (stream, addr): (_, SocketAddr) = tokio::select! {
            () = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a webhook connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = canonical(addr.ip());
        let trusted = limits.trusted(ip);
        if !trusted && !limits.allowed(ip) {
            closed(&log, "not_allowed", ip);
            continue;
        }
        let cap = if trusted { 0 } else { limits.per_peer };
        let Some(slot) = peers.take(ip, cap) else {
            closed(&log, "peer_cap", ip);
            continue;
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => loop {
                // Every slot taken: the connections idle longest make way.
                at_cap.notify_waiters();
                tokio::select! {
                    () = token.cancelled() => break 'accept,
                    p = Arc::clone(&permits).acquire_owned() => match p {
                        Ok(p) => break p,
                        Err(_) => break 'accept,
                    },
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let token = token.clone();
        let log = Arc::clone(&log);
        let at_cap = Arc::clone(&at_cap);
        let header_timeout = limits.header_timeout;
        let activity = Arc::new(Activity::default());
        activity.idle_since_ms.store(now_ms(), Ordering::Release);
        connections.spawn(async move {
            let _held = (permit, slot);
            let busy = Arc::clone(&activity);
            let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Peer(ip));
                let mut router = router.clone();
                let busy = Arc::clone(&busy);
                busy.in_hand.fetch_add(1, Ordering::AcqRel);
                // A Router is always ready.
                let answer = tower_service::Service::call(&mut router, req.map(axum::body::Body::new));
                async move {
                    let r = answer.await;
                    busy.idle_since_ms.store(now_ms(), Ordering::Release);
                    busy.in_hand.fetch_sub(1, Ordering::AcqRel);
                    r
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    () = token.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                    () = at_cap.notified() => {
                        if activity.idle_for(now_ms()).is_some_and(|d| d >= IDLE_AT_CAP) {
                            // Idle: hyper closes it at once.
                            metrics::counter!("pubbot_webhook_connections_closed_total", "reason" => "idle_at_cap").increment(1);
                            conn.as_mut().graceful_shutdown();
                            break conn.await;
                        }
                    }
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    closed(&log, "header_timeout", ip);
                } else {
                    tracing::debug!(error = %e, peer = %ip, "webhook connection ended with an error");
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Behind a trusted proxy: refuses a request whose client is not in
/// `http.allow_from`.
async fn allow_client(limits: &Limits, log: &LogSummary, req: Request, next: Next) -> Response {
    let Some(Peer(peer)) = req.extensions().get::<Peer>().copied() else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(limits.client_ip_header.as_str())
        .and_then(|v| v.to_str().ok());
    let client = limits.client(peer, header);
    if limits.allowed(client) {
        return next.run(req).await;
    }
    metrics::counter!("pubbot_webhook_connections_closed_total", "reason" => "not_allowed")
        .increment(1);
    if log.note(|| format!("not_allowed client={client}")) {
        tracing::warn!(peer = %peer, client = %client, "webhook request from outside http.allow_from refused");
    }
    StatusCode::FORBIDDEN.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_webhook_socket_takes_its_backlog_and_a_taken_address_is_an_error() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
        let addr = listener.local_addr().unwrap();
        // Connections complete in the kernel's queue before any accept.
        let mut queued = Vec::new();
        for _ in 0..64 {
            queued.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let (_, peer) = listener.accept().await.unwrap();
        assert!(peer.ip().is_loopback());
        let e = bind(addr, 4096).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    }

    fn limits(allow: &[&str], trusted: &[&str]) -> Limits {
        Limits {
            max_connections: 10,
            per_peer: 2,
            header_timeout: Duration::from_secs(1),
            allow_from: allow.iter().map(|n| n.parse().unwrap()).collect(),
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            client_ip_header: "x-forwarded-for".into(),
        }
    }

    #[test]
    fn the_client_behind_a_trusted_proxy_is_the_last_untrusted_address() {
        let l = limits(&["203.0.113.0/24"], &["10.0.0.0/8"]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let outsider: IpAddr = "198.51.100.7".parse().unwrap();
        // The client may put anything first; the proxies append.
        let client = l.client(proxy, Some("203.0.113.9, 198.51.100.7, 10.9.9.9"));
        assert_eq!(client, outsider);
        assert!(!l.allowed(client));
        assert_eq!(
            l.client(proxy, Some("203.0.113.9")),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer's header is ignored.
        assert_eq!(l.client(outsider, Some("203.0.113.9")), outsider);
        // No header: the proxy itself.
        assert_eq!(l.client(proxy, None), proxy);
        assert_eq!(
            canonical("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_peer_holds_at_most_its_cap_and_gets_slots_back() {
        let peers = Arc::new(Peers::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = peers.take(ip, 2).unwrap();
        let _b = peers.take(ip, 2).unwrap();
        assert!(peers.take(ip, 2).is_none());
        assert!(peers.take("192.0.2.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(peers.take(ip, 2).is_some());
        // 0: no cap.
        assert!((0..100).all(|_| peers.take(ip, 0).map(std::mem::forget).is_some()));
    }
}
