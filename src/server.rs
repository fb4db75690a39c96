//! Starting and stopping a server: store → restore → writer → listener, and back down.
//!
//! [`Server::start`] opens the store, restores the engine from it and culls what expired while
//! the server was down — all before it binds the listener, so the first client already sees the
//! restored state. Each accepted connection is served by hyper's HTTP/1.1 connection (keep-alive,
//! `TCP_NODELAY`, a header-read timeout) on the tokio runtime.
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
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
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
        let task =
            tokio::spawn(serve(listener, api, stopped, engine.clone(), culler, writer, config.header_read_timeout));
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

async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    mut stopped: oneshot::Receiver<()>,
    engine: Arc<Engine>,
    culler: Culler,
    writer: Writer,
    header_read_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout).keep_alive(true);
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
        let svc = service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
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
