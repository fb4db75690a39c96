//! Starting and stopping a server: store → restore → writer → culler → listener, and back down.
//!
//! [`Server::start`] binds the listener first (a bad address fails before any work; clients that
//! connect meanwhile wait in the backlog), opens the store, restores the engine from it and culls
//! what expired while the server was down — all before the first connection is accepted, so the
//! first client already sees the restored state. It then starts the writer thread, the culler
//! thread and the [`listener`] task.
//!
//! [`Server::shutdown`] (what SIGINT/SIGTERM trigger in the binary) goes back down in order:
//! 1. the listener stops accepting and lets requests in flight finish;
//! 2. the culler stops, so nothing new is expired;
//! 3. the sessions' last activity is queued;
//! 4. the writer commits everything queued, then stops — giving the store at most
//!    `--stop-timeout`, after which what is unwritten goes to a spill file (see [`writer`]).
//!
//! Before the store is loaded at start, it is proven writable (`Store::probe`) and any spill
//! file an earlier stop left in `--spill-dir` is replayed into it.

use crate::clock::Clock;
use crate::cluster;
use crate::config::Config;
use crate::cull::Culler;
use crate::engine::{Engine, EngineConfig};
use crate::http::{router, Api, ApiConfig};
use crate::listener::{self, Listening};
use crate::metrics::Metrics;
use crate::store::{self, StoreOptions};
use crate::writer::{self, StopReport, Writer, WriterConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened, migrated or read.
    #[error("cannot open store {url}: {source}")]
    Store {
        /// The `--database-url`, password hidden.
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
    /// A non-loopback listener without an admin token, and no `--open-admin`.
    #[error(
        "refusing to listen on {0} without --admin-token: anyone who can reach it could read and change every \
         user (set --admin-token, listen on a loopback address, or pass --open-admin if that is intended)"
    )]
    OpenAdmin(SocketAddr),
    /// `--nats-url` with a store the nodes cannot share.
    #[error("--nats-url needs a postgres:// --database-url shared by every node (got {0})")]
    ClusterStore(String),
    /// This node's settings differ from those the cluster's first node recorded.
    #[error(
        "this node's settings differ from those of the cluster on stream {stream}: it has {mine}, the cluster \
         {recorded} (every node must apply the log alike; to change them, stop every node and delete the row of \
         table cluster_settings)"
    )]
    ClusterSettings {
        /// The `--nats-stream`.
        stream: String,
        /// This node's.
        mine: String,
        /// The cluster's.
        recorded: String,
    },
    /// The cluster's log could not be joined.
    #[error("cannot join the cluster log {stream} at {url}: {reason}")]
    Cluster {
        /// The `--nats-url`.
        url: String,
        /// The `--nats-stream`.
        stream: String,
        /// Why, in one line.
        reason: String,
    },
}

/// A running server: its listener task and the threads behind the engine.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    listening: JoinHandle<()>,
    engine: Arc<Engine>,
    /// Single-server mode: the culler thread (in cluster mode the log's ticks cull).
    culler: Option<Culler>,
    /// Cluster mode: the applier and activity tasks.
    cluster: Option<cluster::Node>,
    writer: Writer,
    stop_timeout: Duration,
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
        if config.nats_url.is_some()
            && !(config.database_url.starts_with("postgres://") || config.database_url.starts_with("postgresql://"))
        {
            return Err(StartError::ClusterStore(hide_password(&config.database_url)));
        }
        let addr = config.listen_addr();
        let listener =
            listener::bind(&addr).await.map_err(|source| StartError::Listen { addr: addr.clone(), source })?;
        let local = listener.local_addr().map_err(|source| StartError::Listen { addr, source })?;
        if config.admin_token.is_none() && !config.open_admin && !local.ip().is_loopback() {
            return Err(StartError::OpenAdmin(local));
        }
        let url = config.database_url.clone();
        let options = StoreOptions { durable: config.durable_acks, connect_timeout: config.connect_timeout };
        let metrics = Arc::new(Metrics::new(&router::metric_labels()));
        let spill_dir = config.spill_dir();
        // Cluster mode: the settings applying the log depends on, which every node must share.
        let settings = config.nats_url.as_ref().map(|_| (config.nats_stream.clone(), cluster::node::settings(config)));
        let opened = tokio::task::spawn_blocking({
            let (metrics, spill_dir, settings) = (metrics.clone(), spill_dir.clone(), settings.clone());
            move || {
                let mut store = store::open(&url, &options)?;
                store.probe().map_err(|e| {
                    store::StoreError::new(e.kind(), format!("the store opened but cannot be written: {e}"))
                })?;
                let recorded = match &settings {
                    Some((stream, mine)) => Some(store.agree_settings(stream, mine)?),
                    None => None,
                };
                writer::replay_spills(&spill_dir, &mut *store, metrics)?;
                let snapshot = store.load()?;
                Ok::<_, store::StoreError>((store, snapshot, recorded))
            }
        })
        .await
        .map_err(|e| StartError::Thread(std::io::Error::other(e.to_string())))?;
        let (store, snapshot, recorded) =
            opened.map_err(|source| StartError::Store { url: hide_password(&config.database_url), source })?;
        if let (Some((stream, mine)), Some(recorded)) = (&settings, recorded) {
            if *mine != recorded {
                return Err(StartError::ClusterSettings { stream: stream.clone(), mine: mine.clone(), recorded });
            }
        }
        let kind = store.kind();

        let writer_config =
            WriterConfig { max_pending: config.max_pending, max_write_lag: config.max_write_lag, spill_dir };
        let writer = Writer::start(store, writer_config, metrics.clone()).map_err(StartError::Thread)?;
        let engine = Arc::new(Engine::new(
            EngineConfig {
                shards: config.shard_count(),
                mailbox_capacity: config.mailbox_capacity as usize,
                session_ttl: config.session_ttl,
                message_ttl: config.message_ttl,
                durable_acks: config.durable_acks,
                max_users: config.max_users,
                max_sessions_per_user: config.max_sessions_per_user,
                max_contacts_per_user: config.max_contacts_per_user,
                send_rate: config.send_rate,
                cluster: config.nats_url.is_some(),
            },
            writer.handle(),
            metrics.clone(),
        ));
        let restored = (snapshot.users.len(), snapshot.sessions.len(), snapshot.messages.len());
        let positions = snapshot.log_positions.clone();
        engine.restore(snapshot);
        tracing::info!(store = kind, users = restored.0, sessions = restored.1, messages = restored.2, "restored");
        let (culler, cluster) = match &config.nats_url {
            None => {
                engine.cull_all(Clock::wall_ns(), false);
                (Some(Culler::start(engine.clone()).map_err(StartError::Thread)?), None)
            }
            // The store holds the state at its log position: the log goes on from there.
            Some(url) => (None, Some(cluster::Node::join(url, config, &engine, &positions).await?)),
        };
        let (stop, stopped) = oneshot::channel();
        let listening = tokio::spawn(listener::serve(Listening {
            listener,
            api: Arc::new(Api::new(
                engine.clone(),
                metrics,
                &ApiConfig {
                    admin_token: config.admin_token.clone(),
                    max_wait: config.max_wait,
                    heartbeat: config.heartbeat,
                },
            )),
            stop: stopped,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
        }));
        Ok(Self { addr: local, stop, listening, engine, culler, cluster, writer, stop_timeout: config.stop_timeout })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops gracefully, in the order of the module doc. Returns once everything acknowledged is
    /// in the store, or — when the store did not take it all within `--stop-timeout` — in a
    /// spill file, which the report names.
    pub async fn shutdown(self) -> StopReport {
        let Self { stop, listening, engine, culler, cluster, writer, stop_timeout, .. } = self;
        // Held polls answer and streams end at once, so that the connections can drain.
        engine.stop_waiting();
        let _ = stop.send(());
        if let Err(e) = listening.await {
            tracing::error!(error = %e, "the listener task failed");
        }
        if let Some(node) = cluster {
            // Nothing more is applied: what was is queued, and goes to the store below.
            node.stop().await;
        }
        let stopped = tokio::task::spawn_blocking(move || {
            if let Some(culler) = culler {
                culler.stop();
                engine.flush_activity();
            }
            writer.stop(stop_timeout)
        })
        .await;
        match stopped {
            Ok(report) => {
                if report.spilled == 0 && report.lost.is_none() {
                    tracing::info!("stopped; everything acknowledged is in the store");
                }
                report
            }
            Err(e) => {
                tracing::error!(error = %e, "stopping the writer failed");
                StopReport { lost: Some(format!("stopping the writer failed: {e}")), ..StopReport::default() }
            }
        }
    }
}
