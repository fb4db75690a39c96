//! Starting and stopping a server: store → restore → writer → listener, and back down.
//!
//! [`Server::start`] opens the store, restores the engine from it and culls what expired while
//! the server was down — all before it binds the listener, so the first client already sees the
//! restored state. Each accepted connection is served by hyper's HTTP/1.1 connection (keep-alive,
//! `TCP_NODELAY`) on the tokio runtime, watched by a per-connection idle timer (`watch_idle`).
//!
//! [`Server::shutdown`] (what SIGINT/SIGTERM trigger in the binary) stops accepting, lets hyper
//! finish requests in flight and close idle connections, stops the culler, queues the sessions'
//! last activity, and stops the writer, which commits everything queued before it exits.

use crate::clock::Clock;
use crate::config::Config;
use crate::cull::Culler;
use crate::engine::{Engine, EngineConfig};
use crate::http::{router::ROUTE_NAMES, Api};
use crate::metrics::Metrics;
use crate::store::{self, StoreOptions};
use crate::writer::Writer;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a graceful stop waits for requests in flight.
pub const GRACE: Duration = Duration::from_secs(10);

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened, migrated or read.
    #[error("cannot open store {url}: {source}")]
    Store {
        /// The `--database-url`.
        url: String,
        /// What the store said.
        source: store::StoreError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

fn hide_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

impl Server {
    /// Opens the store, restores state, and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        // Bind first: a bad address fails before any work, and clients that connect while the
        // store is restored wait in the backlog (nothing is accepted until the state is whole).
        let addr = config.listen_addr();
        let listener =
            TcpListener::bind(&addr).await.map_err(|source| StartError::Listen { addr: addr.clone(), source })?;
        let local = listener.local_addr().map_err(|source| StartError::Listen { addr, source })?;
        let url = config.database_url.clone();
        let options = StoreOptions { durable: config.durable_acks, connect_timeout: config.connect_timeout };
        let opened = tokio::task::spawn_blocking(move || {
            let mut store = store::open(&url, &options)?;
            let snapshot = store.load()?;
            Ok::<_, store::StoreError>((store, snapshot))
        })
        .await
        .map_err(|e| StartError::Thread(std::io::Error::other(e.to_string())))?;
        let (store, snapshot) =
            opened.map_err(|source| StartError::Store { url: hide_password(&config.database_url), source })?;
        let kind = store.kind();

        let metrics = Arc::new(Metrics::new(ROUTE_NAMES));
        let writer = Writer::start(store, config.max_pending, metrics.clone()).map_err(StartError::Thread)?;
        let engine = Arc::new(Engine::new(
            EngineConfig {
                shards: config.shard_count(),
                mailbox_capacity: config.mailbox_capacity as usize,
                session_ttl: config.session_ttl,
                message_ttl: config.message_ttl,
                durable_acks: config.durable_acks,
            },
            writer.handle(),
            metrics.clone(),
        ));
        let restored = (snapshot.users.len(), snapshot.sessions.len(), snapshot.messages.len());
        engine.restore(snapshot);
        engine.cull_all(Clock::wall_ns(), false);
        tracing::info!(store = kind, users = restored.0, sessions = restored.1, messages = restored.2, "restored");

        let culler = Culler::start(engine.clone()).map_err(StartError::Thread)?;
        let api = Arc::new(Api::new(engine.clone(), metrics));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, api, stopped, engine.clone(), culler, writer, config.idle_timeout));
        Ok(Self { addr: local, engine, stop: Some(stop), task })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine (for tests and tools in the same process).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops gracefully: see the module doc. Returns once everything is in the store.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "server task failed");
        }
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

async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    mut stopped: oneshot::Receiver<()>,
    engine: Arc<Engine>,
    culler: Culler,
    writer: Writer,
    idle_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    // No hyper header-read timer: hyper drops and re-creates it for every request (two timer-wheel
    // operations and an allocation per request, ~7 % of an empty poll's CPU). `watch_idle` below
    // bounds slow and idle clients with one timer per connection per period instead.
    builder.keep_alive(true);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => break,
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
    let done = tokio::task::spawn_blocking(move || {
        culler.stop();
        engine.flush_activity();
        writer.stop();
    })
    .await;
    if done.is_err() {
        tracing::error!("stopping the writer failed");
    }
    tracing::info!("stopped; everything acknowledged is in the store");
}
