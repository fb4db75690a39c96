//! The listener: accepts connections and serves each with hyper's HTTP/1.1 (keep-alive,
//! `TCP_NODELAY`) on the tokio runtime, until told to stop; then lets requests in flight finish
//! (at most [`GRACE`]) and closes idle connections.
//!
//! Each connection is watched by a per-connection idle timer (`watch_idle`) instead of hyper's
//! per-request header timer: hyper drops and re-creates that timer for every request (two
//! timer-wheel operations and an allocation per request, ~7 % of an empty poll's CPU).
//!
//! # Bounds
//!
//! - At most `--max-connections` connections are served at once. One more is accepted, answered
//!   with an enveloped 503 naming the flag, and closed — at once, so a client is told instead of
//!   left waiting, and the connections already open are not disturbed.
//! - When accepting fails (out of file descriptors: the soft limit is raised to the hard one at
//!   start, see [`raise_open_files_limit`]), the loop backs off and retries, so a client waiting
//!   in the backlog is served as soon as a descriptor frees; the failure is logged at most once
//!   a second, with how many were not logged.

use crate::http::Api;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How long a graceful stop waits for requests in flight.
pub const GRACE: Duration = Duration::from_secs(10);

/// What the accept loop needs.
#[derive(Debug)]
pub struct Listening {
    /// The bound socket.
    pub listener: TcpListener,
    /// The routes.
    pub api: Arc<Api>,
    /// Resolves when the server is to stop accepting.
    pub stop: oneshot::Receiver<()>,
    /// A connection that starts no request for a whole period of this length is closed.
    pub idle_timeout: Duration,
    /// `--max-connections`.
    pub max_connections: usize,
}

/// How many connections may wait to be accepted. The standard library's 128 overflows when
/// thousands of clients connect at once (a mass reconnect after a restart): the kernel then
/// answers with SYN cookies and clients retry after a second or more. The kernel caps it at
/// `net.core.somaxconn`.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`) with a backlog of [`BACKLOG`].
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolves to nothing")))
}

/// Raises the soft limit on open files to the hard limit, so the connection cap, not the
/// default of 1024 descriptors, bounds the connections; returns the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The answer to a connection past `--max-connections`: the envelope, with the CORS header.
static TOO_MANY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = crate::render::error(503, "connections: the server holds --max-connections; try again shortly");
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\n\
         access-control-allow-origin: *\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
});

/// Accepts and serves until `stop` resolves, then drains: returns once every connection is done
/// (or [`GRACE`] passed).
pub async fn serve(l: Listening) {
    let Listening { listener, api, mut stop, idle_timeout, max_connections } = l;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut accept_errors = RateLimitedLog::default();
    // Told to every connection when the server stops: each finishes what it is doing and closes.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).max_header_size(crate::http::limits::HYPER_MAX_HEADER_BYTES);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                accept_errors.warn(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&TOO_MANY)).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        let progress = Arc::new(Progress::default());
        let slot = Arc::new(slot);
        let svc = {
            let (progress, slot) = (progress.clone(), slot.clone());
            service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let api = api.clone();
                let progress = progress.clone();
                progress.started.fetch_add(1, Ordering::Relaxed);
                if req.uri().path().starts_with("/api/ws/") {
                    // A WebSocket outlives this connection's task: it keeps the slot.
                    req.extensions_mut().insert(crate::http::ConnectionSlot::new(slot.clone()));
                }
                async move {
                    let mut res = api.handle(req).await;
                    if res.body().is_stream() {
                        // An event stream is in flight until its body ends, not when its handler
                        // returns: else the idle watch would close it.
                        res.body_mut().keep_until_end(Finished(progress));
                    } else {
                        progress.finished.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, Infallible>(res)
                }
            })
        };
        // With upgrades: a WebSocket takes the connection over after its 101.
        let conn = builder.serve_connection(TokioIo::new(stream), svc).with_upgrades();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            watch_idle(conn, progress, idle_timeout, stopped).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    // Every connection holds a slot: all slots back means all connections done.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(GRACE, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("requests still in flight after the grace period; stopping anyway");
    }
}

/// A WARN line at most once a second, saying how many were held back.
#[derive(Debug, Default)]
struct RateLimitedLog {
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl RateLimitedLog {
    fn warn(&mut self, e: &std::io::Error) {
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            self.held_back += 1;
            return;
        }
        tracing::warn!(error = %e, not_logged = self.held_back, "accept failed; backing off");
        self.last = Some(std::time::Instant::now());
        self.held_back = 0;
    }
}

/// Counts a streamed request finished when dropped (with its body).
struct Finished(Arc<Progress>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// Requests a connection has handed to the API, and finished.
#[derive(Debug, Default)]
struct Progress {
    started: AtomicU64,
    finished: AtomicU64,
}

/// A connection that can be told to finish gracefully (hyper's, with or without upgrades).
trait Graceful: std::future::Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Serves a connection, closing it when a whole `idle_timeout` passes in which it started no
/// request and has none in flight: a slow client that never finishes its headers, or an idle
/// keep-alive connection, goes after between one and two periods. Costs two relaxed atomic adds
/// per request and one timer per period. When the server stops, the connection finishes the
/// request in flight and closes.
async fn watch_idle<C: Graceful>(
    conn: C,
    progress: Arc<Progress>,
    idle_timeout: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    tokio::pin!(conn);
    let mut seen = 0;
    let mut told = false;
    loop {
        tokio::select! {
            biased;
            done = &mut conn => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopped.wait_for(|s| *s), if !told => {
                told = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(idle_timeout) => {
                let started = progress.started.load(Ordering::Relaxed);
                let in_flight = started != progress.finished.load(Ordering::Relaxed);
                if started == seen && !in_flight {
                    tracing::debug!(?idle_timeout, "closing a connection that started no request");
                    return; // dropping the connection closes it
                }
                seen = started;
            }
        }
    }
}
