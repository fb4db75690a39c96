//! The listener: accepts connections and serves each with hyper's HTTP/1.1 (keep-alive,
//! `TCP_NODELAY`) on the tokio runtime, until told to stop; then lets requests in flight finish
//! (at most [`GRACE`]) and closes idle connections.
//!
//! Each connection is watched by a per-connection idle timer (`watch_idle`) instead of hyper's
//! per-request header timer: hyper drops and re-creates that timer for every request (two
//! timer-wheel operations and an allocation per request, ~7 % of an empty poll's CPU).

use crate::http::Api;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
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
}

/// Accepts and serves until `stop` resolves, then drains: returns once every connection is done
/// (or [`GRACE`] passed).
pub async fn serve(l: Listening) {
    let Listening { listener, api, mut stop, idle_timeout } = l;
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).max_header_size(crate::http::limits::HYPER_MAX_HEADER_BYTES);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        let progress = Arc::new(Progress::default());
        let svc = {
            let progress = progress.clone();
            service_fn(move |req| {
                let api = api.clone();
                let progress = progress.clone();
                progress.started.fetch_add(1, Ordering::Relaxed);
                async move {
                    let res = api.handle(req).await;
                    progress.finished.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(res)
                }
            })
        };
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(watch_idle(conn, progress, idle_timeout));
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after the grace period; stopping anyway");
    }
}

/// Requests a connection has handed to the API, and finished.
#[derive(Debug, Default)]
struct Progress {
    started: AtomicU64,
    finished: AtomicU64,
}

/// Serves a connection, closing it when a whole `idle_timeout` passes in which it started no
/// request and has none in flight: a slow client that never finishes its headers, or an idle
/// keep-alive connection, goes after between one and two periods. Costs two relaxed atomic adds
/// per request and one timer per period.
async fn watch_idle<C, E>(conn: C, progress: Arc<Progress>, idle_timeout: Duration)
where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut seen = 0;
    loop {
        tokio::select! {
            biased;
            done = &mut conn => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
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
