//! Cluster mode: the engine's changes go through the cluster's log instead of straight into
//! memory (see [`crate::cluster`] for the design).
//!
//! Every mutation of the public API checks what only this node can know — the session it was
//! asked through, `--send-rate`, room in the write queue — then publishes its [`Command`] through
//! the [`Publisher`] and answers with what applying the entry gave on this node
//! ([`Engine::apply`]). So the answer carries the log's ids and times, and a client's next request
//! to this node sees its own change. Everything that depends on the shared state (does the
//! receiver exist, is the session still open, the caps) is decided when the entry is applied,
//! alike on every node, so a change made through a node that has not yet applied a user created
//! elsewhere a moment ago still succeeds: the log orders the two.
//!
//! - While NATS is unreachable a change is refused at once with
//!   [`EngineError::ClusterUnavailable`] (nothing was published); a publish that was tried and
//!   not acknowledged in time is [`EngineError::ClusterUnconfirmed`] (it may or may not be in the
//!   log). Both answer 503.
//! - Activity: a poll, send or held request marks its session served ([`Session::touch`]); once
//!   per interval the node publishes the sessions it served as `Touch` entries, then a `Tick`
//!   ([`Engine::publish_activity`]), and every node sets activity and culls by those entries.
//! - A session looked up for a request that this node does not know yet may have been opened
//!   through another node an instant ago: [`Engine::expect_session`] then catches up with the
//!   log's end once before answering 404.

use super::{Effect, Engine, EngineError, NotReady, Session, SessionId, SessionView, UserView};
use crate::clock::Clock;
use crate::cluster::{ApplierHandle, Command, Log, PublishError, Publisher};
use crate::render::Sent;
use std::sync::Arc;
use std::time::Duration;

/// How long a write keeps retrying its publish before it answers 503.
pub const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);
/// Most sessions in one `Touch` entry (~35 bytes each: well inside NATS's 1 MB payload).
pub const TOUCH_CHUNK: usize = 10_000;
/// Longest a lookup waits for this node to catch up with the log's end.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// What a node in cluster mode publishes through: its log, the applier applying it here, and
/// the publisher. Set once the node has caught up ([`Engine::join_cluster`]).
#[derive(Debug, Clone)]
pub struct ClusterLink {
    log: Log,
    applier: ApplierHandle,
    publisher: Publisher,
    /// Whether this node's last periodic publish (its `Tick`) was stored: JetStream takes writes.
    /// A connection can be back while JetStream still refuses writes (a NATS cluster electing
    /// its leaders for seconds after a restart): readiness follows this too.
    writable: Arc<std::sync::atomic::AtomicBool>,
}

impl ClusterLink {
    /// A link publishing into `log`, whose entries `applier` applies on this node.
    pub fn new(log: Log, applier: ApplierHandle) -> Self {
        let publisher = Publisher::new(log.clone(), applier.clone(), PUBLISH_DEADLINE);
        Self { log, applier, publisher, writable: Arc::new(std::sync::atomic::AtomicBool::new(true)) }
    }

    /// The applier applying the log on this node.
    pub fn applier(&self) -> &ApplierHandle {
        &self.applier
    }
}

/// A fresh message id for a publish: 128 random bits in hex.
fn fresh_id() -> String {
    SessionId::random().to_string()
}

impl Engine {
    /// Starts publishing this node's changes through `link` (once: a second call is ignored).
    pub fn join_cluster(&self, link: ClusterLink) {
        if self.cluster.set(link).is_err() {
            tracing::warn!("join_cluster called twice; the first link stays");
        }
    }

    /// Cluster mode: why the node cannot take traffic, if it cannot.
    pub(super) fn cluster_readiness(&self) -> Result<(), NotReady> {
        let Some(link) = self.cluster.get() else { return Err(NotReady::ClusterCatchingUp) };
        if link.applier.is_stopped() {
            Err(NotReady::ClusterStopped)
        } else if !link.log.is_connected() {
            Err(NotReady::ClusterUnreachable)
        } else if !link.writable.load(std::sync::atomic::Ordering::Relaxed) {
            Err(NotReady::ClusterNotWritable)
        } else {
            Ok(())
        }
    }

    /// Publishes `command` under `msg_id` and returns the effect of applying it here.
    async fn publish(&self, msg_id: &str, command: &Command) -> Result<Effect, EngineError> {
        let link = self.cluster.get().ok_or(EngineError::ClusterUnavailable)?;
        if !link.log.is_connected() || link.applier.is_stopped() {
            return Err(EngineError::ClusterUnavailable);
        }
        // Boxed: a publish's state (NATS client futures) is large, and every request's future
        // (single-server ones too, held long-polls above all) would otherwise carry room for it.
        match Box::pin(link.publisher.write(msg_id, command)).await {
            Ok((_, outcome)) => outcome,
            Err(PublishError::NotStored { waited, last }) => {
                tracing::warn!(msg_id, ?waited, "a write was not acknowledged by the cluster log: {last}");
                Err(EngineError::ClusterUnconfirmed)
            }
            Err(
                e @ (PublishError::ApplierStopped(_) | PublishError::AlreadyApplied(_) | PublishError::NotApplied(_)),
            ) => {
                tracing::warn!(msg_id, "a write's outcome is unknown: {e}");
                Err(EngineError::ClusterUnconfirmed)
            }
        }
    }

    /// `create_user` in cluster mode.
    pub(super) async fn clustered_create_user(&self, uuid: &str, display_name: &str) -> Result<UserView, EngineError> {
        if let Some(existing) = self.by_uuid.get(uuid).map(|u| u.view()) {
            return Ok(existing);
        }
        let command = Command::CreateUser { uuid: uuid.to_owned(), display_name: display_name.to_owned() };
        match self.publish(&fresh_id(), &command).await? {
            Effect::User(view) => Ok(view),
            other => Err(unexpected(&other)),
        }
    }

    /// `update_user` in cluster mode.
    pub(super) async fn clustered_update_user(&self, id: i64, display_name: &str) -> Result<UserView, EngineError> {
        let command = Command::UpdateUser { user_id: id, display_name: display_name.to_owned() };
        match self.publish(&fresh_id(), &command).await? {
            Effect::User(view) => Ok(view),
            other => Err(unexpected(&other)),
        }
    }

    /// `delete_user` in cluster mode.
    pub(super) async fn clustered_delete_user(&self, id: i64) -> Result<(), EngineError> {
        self.publish(&fresh_id(), &Command::DeleteUser { user_id: id }).await.map(drop)
    }

    /// `open_session` in cluster mode: the session's id is drawn here, the rest decided by the log.
    pub(super) async fn clustered_open_session(&self, user_id: i64) -> Result<SessionView, EngineError> {
        let command = Command::OpenSession { user_id, session: SessionId::random().to_string() };
        match self.publish(&fresh_id(), &command).await? {
            Effect::Session(view) => Ok(view),
            other => Err(unexpected(&other)),
        }
    }

    /// `close_session` in cluster mode.
    pub(super) async fn clustered_close_session(&self, uuid: SessionId) -> Result<(), EngineError> {
        self.publish(&fresh_id(), &Command::CloseSession { session: uuid.to_string() }).await.map(drop)
    }

    /// `add_contact` / `remove_contact` in cluster mode.
    pub(super) async fn clustered_contact(
        &self,
        session: &Session,
        user_id: i64,
        add: bool,
    ) -> Result<(), EngineError> {
        if !self.is_live(session) {
            return Err(EngineError::NoSuchSession);
        }
        let (me, other) = (session.user.id, user_id);
        let command = if add {
            Command::AddContact { user_id: me, contact_id: other }
        } else {
            Command::RemoveContact { user_id: me, contact_id: other }
        };
        self.publish(&fresh_id(), &command).await.map(drop)
    }

    /// `send` in cluster mode: `--send-rate` and the write queue's room are checked here; the
    /// message's uuid, drawn here, is also the publish's message id.
    pub(super) async fn clustered_send(
        &self,
        session: &Session,
        receiver_id: i64,
        body: &str,
        attachments: Option<String>,
    ) -> Result<Sent, EngineError> {
        self.admit_send(session)?;
        session.touch(Clock::wall_ns());
        let message = SessionId::random().to_string();
        let command = Command::Send {
            session: session.uuid.to_string(),
            receiver_id,
            body: body.to_owned(),
            attachments: attachments.unwrap_or_default(),
            message: message.clone(),
        };
        match self.publish(&message, &command).await? {
            Effect::Message(json) => Ok(json),
            other => Err(unexpected(&other)),
        }
    }

    /// Before a request that names `uuid`: in cluster mode, a session this node does not know
    /// may have been opened through another node an instant ago, so the node first catches up
    /// with the log's end (at most `SYNC_WAIT`, 2 s). Otherwise (and on one server) at once.
    pub async fn expect_session(&self, uuid: SessionId) {
        if self.config.cluster && self.session(uuid).is_err() {
            // Boxed, like a publish: only this rare path pays for its size.
            Box::pin(self.sync()).await;
        }
    }

    /// Cluster mode: waits (at most `SYNC_WAIT`, 2 s) until this node has applied every entry the
    /// log holds now. Without a link, or when NATS does not answer, it returns at once.
    pub async fn sync(&self) {
        let Some(link) = self.cluster.get() else { return };
        let caught_up = async {
            if let Ok(extent) = link.log.extent().await {
                let _ = link.applier.wait_applied(extent.last_seq).await;
            }
        };
        let _ = tokio::time::timeout(SYNC_WAIT, caught_up).await;
    }

    /// Cluster mode, once per interval: publishes the sessions served on this node since the
    /// last call as `Touch` entries, then a `Tick`, so that every node sets activity and culls by
    /// the same entries. A publish that fails is logged; the next interval tries again (a
    /// session served meanwhile is marked again).
    pub async fn publish_activity(&self) {
        let mut served: Vec<String> = Vec::new();
        for shard in self.shards.iter() {
            let sessions: Vec<Arc<Session>> = shard.sessions.read().values().cloned().collect();
            served.extend(sessions.iter().filter(|s| s.take_served()).map(|s| s.uuid.to_string()));
        }
        let Some(link) = self.cluster.get() else { return };
        let published = async {
            for chunk in served.chunks(TOUCH_CHUNK) {
                self.publish(&fresh_id(), &Command::Touch { sessions: chunk.to_vec() }).await?;
            }
            self.publish(&fresh_id(), &Command::Tick).await
        };
        let stored = match published.await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("cannot publish this node's session activity and tick: {e}");
                false
            }
        };
        // What `/readyz` reports besides the connection: whether JetStream took the last one.
        link.writable.store(stored, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An effect of the wrong kind for its command: a bug, answered as a refusal.
fn unexpected(effect: &Effect) -> EngineError {
    tracing::error!(?effect, "applying a command gave an effect of another kind");
    EngineError::MalformedCommand("effect")
}
