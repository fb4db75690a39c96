//! The engine: users, sessions, contacts and mailboxes in memory, sharded, knowing nothing of HTTP.
//!
//! # Shape
//!
//! Users are hashed across [`Shard`]s by id, sessions by uuid. Every user owns a
//! [`Mailbox`](crate::mailbox::Mailbox); a session holds an `Arc` of its user, so a poll is one
//! shard lookup (a read lock on that shard's session map) followed by a lock-free mailbox read.
//! Mutations are handed to the [`Writer`](crate::writer) as [`Op`]s, in the order they happen.
//!
//! # Durability is the engine's
//!
//! Every mutation is an `async fn` that returns only when its change may be acknowledged: users,
//! sessions and contacts once the store committed them; messages once they are in memory (or, with
//! `--durable-acks`, committed). It makes its change under its locks, queues the op, drops the
//! locks, and only then awaits the commit — so no lock is ever held across an await, and a caller
//! never sees an ack or a writer. While the store is known to be unreachable, a change that must be
//! durable is refused at once ([`EngineError::StoreUnreachable`]) rather than left waiting for the
//! outage; [`Engine::readiness`] says the same to `/readyz`.
//!
//! # The ordering invariant
//!
//! **Every mailbox holds its messages in strictly increasing `created` order, and `created` is
//! strictly increasing across the server.** A send locks the writer side of the sender's and the
//! receiver's mailboxes (in user-id order, so two sends cannot deadlock), and only *then* takes its
//! timestamp from the [`Clock`] and pushes into both. So for any one mailbox, the order in which
//! timestamps are taken is the order of pushes: a later push always has a later timestamp, even
//! when sender and receiver live in different shards and many senders write at once. Had the
//! timestamp been taken before the locks, two senders could push into a shared receiver in the
//! opposite order of their timestamps.
//!
//! # Why that gives exactly-once delivery with the cursor
//!
//! A poll returns the messages of its mailbox created strictly after the client's cursor, and the
//! next cursor is the `created` of the newest one returned. A message pushed after a poll read the
//! head has a timestamp greater than everything that poll returned (it was pushed later, so it was
//! stamped later), hence greater than the next cursor: the next poll returns it, and no later poll
//! returns anything twice because every later cutoff is at least its `created`. The only way a
//! message can be missed is by leaving the mailbox first (capacity or TTL), and then the answer
//! says `gap: true` (see [`crate::mailbox`]).
//!
//! # Rare mutations
//!
//! Creating and deleting users, sessions and contacts is serialised by one `admin` mutex: these are
//! rare, acknowledged only once durable (so they wait on the store anyway), and serialising them
//! keeps their op order consistent with foreign keys (a session op never reaches the store before
//! its user's). Sends and polls never take it.
//!
//! # Files
//!
//! This file holds the shape, the errors and the hot path (poll and send); `users`, `sessions`
//! and `contacts` hold the rare mutations; `types` the records and ids; `wait` held polls and
//! streams; `restore` the start-up load; `cull` the expiry of idle sessions and old messages; `apply`
//! the cluster log's commands applied deterministically (cluster mode).

mod apply;
mod cluster;
mod contacts;
mod cull;
mod restore;
mod sessions;
mod types;
mod users;
mod wait;

pub use apply::Effect;
pub use cluster::ClusterLink;
pub use wait::{Hold, Woken};

pub use types::{ContactView, Session, SessionId, SessionView, User, UserView};

use crate::clock::{Clock, Cursor};
use crate::mailbox::Append;
use crate::metrics::Metrics;
use crate::render::{self, Sent};
use crate::store::ErrorKind;
use crate::store::{MessageRow, Op};
use crate::writer::{Commit, Outcome, Refusal, WriterHandle};
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

/// The engine's settings (from the command line).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of shards (at least 1).
    pub shards: usize,
    /// Messages a mailbox holds.
    pub mailbox_capacity: usize,
    /// Idle time after which a session is closed.
    pub session_ttl: Duration,
    /// Age after which a message leaves mailboxes and the store.
    pub message_ttl: Duration,
    /// Answer a send only after the store committed it.
    pub durable_acks: bool,
    /// Most users held (`--max-users`).
    pub max_users: usize,
    /// Most live sessions per user (`--max-sessions-per-user`).
    pub max_sessions_per_user: usize,
    /// Most contacts per user (`--max-contacts-per-user`).
    pub max_contacts_per_user: usize,
    /// Sends per second per session, 0 for no limit (`--send-rate`).
    pub send_rate: u32,
    /// Cluster mode (`--nats-url`): changes go through the cluster's log (see `cluster.rs`), a
    /// session's activity follows the log's clock, and the writes of an applied entry reach the
    /// store together with the log position after it.
    pub cluster: bool,
}

impl EngineConfig {
    /// The defaults of the command line, with `shards` and `mailbox_capacity` given (for
    /// benchmarks and tests).
    pub fn new(shards: usize, mailbox_capacity: usize) -> Self {
        use crate::config as c;
        Self {
            shards,
            mailbox_capacity,
            session_ttl: Duration::from_secs(300),
            message_ttl: Duration::from_secs(300),
            durable_acks: false,
            max_users: c::DEFAULT_MAX_USERS,
            max_sessions_per_user: c::DEFAULT_MAX_SESSIONS_PER_USER,
            max_contacts_per_user: c::DEFAULT_MAX_CONTACTS_PER_USER,
            send_rate: 0,
            cluster: false,
        }
    }
}

/// What went wrong, in the engine's terms; [`crate::http`] maps these to the envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The session does not exist (never did, was closed, or expired).
    #[error("session_id: no such session")]
    NoSuchSession,
    /// The user in the path does not exist; names the path's field.
    #[error("{0}: no such user")]
    NoSuchUser(&'static str),
    /// The message's receiver does not exist.
    #[error("receiver_id: no such user")]
    NoSuchReceiver,
    /// A user cannot be their own contact.
    #[error("user_id: a user cannot be their own contact")]
    SelfContact,
    /// The server holds `--max-users` users.
    #[error("uuid: the server holds its most users (--max-users); no more can be created")]
    TooManyUsers,
    /// The user holds `--max-sessions-per-user` sessions.
    #[error("user_id: the user holds its most sessions (--max-sessions-per-user); close one first")]
    TooManySessions,
    /// The user has `--max-contacts-per-user` contacts.
    #[error("user_id: the user has its most contacts (--max-contacts-per-user); remove one first")]
    TooManyContacts,
    /// The session's sends are over `--send-rate`; the next is allowed after the given time.
    #[error("the session sends faster than --send-rate; retry after the time in Retry-After")]
    SendRate(Duration),
    /// The write queue is at `--max-pending`.
    #[error("the write queue is full (--max-pending); retry shortly")]
    QueueFull,
    /// The store has not taken a write for longer than `--max-write-lag`: nothing more is
    /// acknowledged from memory until it does.
    #[error("the store has not taken writes for longer than --max-write-lag; nothing was changed, retry shortly")]
    StoreStalled,
    /// The store is known to be unreachable, so a change that must be durable was refused before
    /// anything changed.
    #[error("the store is unreachable; nothing was changed, try again shortly")]
    StoreUnreachable,
    /// The writer stopped (the server is shutting down) before confirming the write.
    #[error("the store is unavailable; the write was not confirmed")]
    WriteUnconfirmed,
    /// The store refused the write for good; it was set aside in the dead-letter file.
    #[error("the store refused this write; it was set aside for an operator (dead-letter file)")]
    StoreRefused,
    /// A cluster log entry holds what no publisher writes (a session or message id that is not 32
    /// lowercase hex digits, a new session's id that another user's session has): every node
    /// refuses it alike. Names the field.
    #[error("{0}: malformed in the cluster log entry")]
    MalformedCommand(&'static str),
    /// Cluster mode: NATS is unreachable (or this node cannot apply the log), so nothing was
    /// published and nothing changed.
    #[error("the cluster log (NATS) is unreachable; nothing was changed, retry shortly")]
    ClusterUnavailable,
    /// Cluster mode: the change was published but not acknowledged in time, or this node stopped
    /// applying the log before it: it may or may not have been made.
    #[error("the cluster log did not confirm the write in time; it may or may not have been made")]
    ClusterUnconfirmed,
}

/// Why the server is not ready for traffic (`/readyz`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The last store call failed: what kind of failure, and what the store said.
    #[error("not ready: the store is {}: {cause}", describe_kind(*.kind))]
    StoreFailing {
        /// What kind of failure.
        kind: ErrorKind,
        /// The store's own words.
        cause: String,
    },
    /// The write queue is at `--max-pending`.
    #[error("not ready: the write queue is at --max-pending")]
    QueueFull,
    /// Cluster mode: still catching up with the cluster's log.
    #[error("not ready: catching up with the cluster log")]
    ClusterCatchingUp,
    /// Cluster mode: NATS is unreachable; writes are refused, polls answer from memory.
    #[error("not ready: the cluster log (NATS) is unreachable; writes are refused, polls answer from memory")]
    ClusterUnreachable,
    /// Cluster mode: connected, but JetStream did not take this node's last periodic publish
    /// (a NATS cluster electing its leaders after a restart, say): writes are refused meanwhile.
    #[error("not ready: the cluster log (JetStream) is not taking writes; polls answer from memory")]
    ClusterNotWritable,
    /// Cluster mode: this node stopped applying the log (see the log); it must be restarted.
    #[error("not ready: this node stopped applying the cluster log and must be restarted")]
    ClusterStopped,
}

/// A failure kind in the words of `/readyz`.
fn describe_kind(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unreachable => "unreachable",
        ErrorKind::Full => "full (no space left)",
        ErrorKind::Busy => "busy (locked or out of resources)",
        ErrorKind::ReadOnly => "read-only",
        ErrorKind::Rejected => "refusing writes",
        ErrorKind::Other => "failing",
    }
}

/// The answer to a poll, besides the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// Where to poll from next.
    pub cursor: Cursor,
    /// Messages after the cutoff have left the mailbox.
    pub gap: bool,
}

/// One shard: the users and sessions that hash to it.
#[derive(Debug, Default)]
pub struct Shard {
    users: RwLock<FxHashMap<i64, Arc<User>>>,
    sessions: RwLock<FxHashMap<SessionId, Arc<Session>>>,
}

/// The whole in-memory state. See the module doc.
pub struct Engine {
    config: EngineConfig,
    clock: Clock,
    shards: Box<[Shard]>,
    by_uuid: DashMap<Arc<str>, Arc<User>>,
    /// Users held (for `--max-users`).
    user_count: AtomicUsize,
    /// Live session ids in order, for `GET /api/sessions?after=` (changed under `admin`).
    session_index: RwLock<BTreeSet<SessionId>>,
    next_user_id: AtomicI64,
    admin: Mutex<()>,
    writer: WriterHandle,
    metrics: Arc<Metrics>,
    /// Set at graceful stop: every waiter ends at once.
    stopping: std::sync::atomic::AtomicBool,
    /// Wakes every waiter when `stopping` is set.
    stop_waiters: tokio::sync::Notify,
    /// Cluster mode: the writes of the log entry being applied, queued with its position.
    entry_ops: Mutex<Vec<Op>>,
    /// Cluster mode: the log this node publishes its changes to, once it caught up with it.
    cluster: std::sync::OnceLock<cluster::ClusterLink>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Waits for the commit of a durable op.
async fn committed(commit: &Commit) -> Result<(), EngineError> {
    match commit.wait().await {
        Outcome::Committed => Ok(()),
        Outcome::Refused => Err(EngineError::StoreRefused),
        Outcome::Unconfirmed => Err(EngineError::WriteUnconfirmed),
    }
}

impl Engine {
    /// An empty engine writing through `writer`.
    pub fn new(config: EngineConfig, writer: WriterHandle, metrics: Arc<Metrics>) -> Self {
        let shards = (0..config.shards.max(1)).map(|_| Shard::default()).collect();
        Self {
            config,
            clock: Clock::new(),
            shards,
            by_uuid: DashMap::new(),
            user_count: AtomicUsize::new(0),
            session_index: RwLock::new(BTreeSet::new()),
            next_user_id: AtomicI64::new(1),
            admin: Mutex::new(()),
            writer,
            metrics,
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop_waiters: tokio::sync::Notify::new(),
            entry_ops: Mutex::new(Vec::new()),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether the server can take traffic: the store answers and the write queue has room.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if let Some(e) = self.writer.failure() {
            Err(NotReady::StoreFailing { kind: e.kind(), cause: e.to_string() })
        } else if self.writer.is_full() {
            Err(NotReady::QueueFull)
        } else if self.config.cluster {
            self.cluster_readiness()
        } else {
            Ok(())
        }
    }

    fn user_shard(&self, id: i64) -> &Shard {
        &self.shards[(id.unsigned_abs() % self.shards.len() as u64) as usize]
    }

    fn session_shard(&self, uuid: SessionId) -> &Shard {
        // Session uuids are random: any 64 bits of them spread evenly.
        &self.shards[((uuid.0 as u64) % self.shards.len() as u64) as usize]
    }

    fn user_arc(&self, id: i64) -> Option<Arc<User>> {
        self.user_shard(id).users.read().get(&id).cloned()
    }

    /// A user as the API may see it: one whose creation is in the store.
    fn stored_user(&self, id: i64) -> Option<Arc<User>> {
        self.user_arc(id).filter(|u| u.is_stored())
    }

    /// A live session.
    pub fn session(&self, uuid: SessionId) -> Result<Arc<Session>, EngineError> {
        self.session_shard(uuid).sessions.read().get(&uuid).cloned().ok_or(EngineError::NoSuchSession)
    }

    fn is_live(&self, session: &Session) -> bool {
        self.session_shard(session.uuid).sessions.read().contains_key(&session.uuid)
    }

    /// Queues a write of the culling and cluster paths: to the writer, or in cluster mode with the
    /// entry being applied (see [`Engine::record_log_position`]).
    fn queue(&self, op: Op) {
        if self.config.cluster {
            self.entry_ops.lock().push(op);
        } else {
            self.writer.submit(op);
        }
    }

    /// Refuses a change that must be durable before it is answered while the store is known to
    /// be unreachable: it could not be acknowledged, and the client would wait for the outage.
    fn require_store(&self) -> Result<(), EngineError> {
        if self.writer.is_healthy() {
            Ok(())
        } else {
            Err(EngineError::StoreUnreachable)
        }
    }

    // ---- messages: the hot path ----------------------------------------------------------------

    /// Appends the session user's messages created after `cutoff` to `out` (oldest first,
    /// comma-separated JSON; see [`crate::mailbox::Mailbox::read_into`]) and marks the session
    /// active. Takes no lock: the session was looked up already.
    pub fn poll(&self, session: &Session, cutoff: Option<Cursor>, out: &mut impl Append) -> Polled {
        // (In cluster mode `touch` only marks the session served; see `cluster.rs`.)
        session.touch(Clock::wall_ns());
        let read = session.user.mailbox.read_into(cutoff.map(Cursor::as_ns), out);
        let cursor = read.newest.map(Cursor::from_ns).or(cutoff).unwrap_or(Cursor { unix: 0, nano: 0 });
        Polled { cursor, gap: read.gap }
    }

    /// What a send must pass before anything changes, on one server and in cluster mode alike:
    /// `--send-rate` for the session, and room in the write queue.
    #[inline]
    fn admit_send(&self, session: &Session) -> Result<(), EngineError> {
        if self.config.send_rate > 0 {
            session.take_send_token(self.config.send_rate, Clock::wall_ns()).map_err(EngineError::SendRate)?;
        }
        self.writer.admit_send().map_err(|r| match r {
            Refusal::QueueFull => EngineError::QueueFull,
            Refusal::StoreStalled => EngineError::StoreStalled,
        })
    }

    /// Sends a message from the session's user and returns its JSON, once it may be acknowledged.
    /// `body` and `attachments` must already be valid (see [`crate::http`]); `attachments` is
    /// compact JSON text of an object, or `None`.
    pub async fn send(
        &self,
        session: &Session,
        receiver_id: i64,
        body: &str,
        attachments: Option<String>,
    ) -> Result<Sent, EngineError> {
        if self.config.cluster {
            return self.clustered_send(session, receiver_id, body, attachments).await;
        }
        let receiver = self.stored_user(receiver_id).ok_or(EngineError::NoSuchReceiver)?;
        self.admit_send(session)?;
        let sender = &session.user;
        let uuid: u128 = rand::random();
        let (created, json) = deliver(sender, &receiver, uuid, body, attachments.as_deref(), || self.clock.next());
        // The message's timestamp is this instant's wall clock (or just past it): no second read.
        session.touch(created);
        let op = Op::Message(MessageRow {
            uuid,
            created_ns: created,
            sender_id: sender.id,
            receiver_id,
            body: body.to_owned(),
            attachments,
        });
        self.metrics.messages_sent.inc();
        if self.config.durable_acks {
            committed(&self.writer.submit_durable(op)).await?;
        } else {
            self.writer.submit(op);
        }
        Ok(json)
    }
}

/// Pushes a message into the sender's and the receiver's mailboxes and wakes their waiters;
/// returns its `created` and the rendered message. `stamp` gives the timestamp: the live path's clock, or the
/// log's (cluster mode, see [`Engine::apply`]).
///
/// The ordering invariant (module doc): both mailboxes are locked — in user-id order, so two
/// sends cannot deadlock — and only then is `stamp` called, so for any one mailbox the order of
/// timestamps is the order of pushes.
#[inline(always)]
fn deliver(
    sender: &Arc<User>,
    receiver: &Arc<User>,
    uuid: u128,
    body: &str,
    attachments: Option<&str>,
    stamp: impl FnOnce() -> i64,
) -> (i64, Sent) {
    let (first, second) = if sender.id <= receiver.id { (sender, receiver) } else { (receiver, sender) };
    let (created, sent, wake_first, wake_second) = {
        let mut first_w = first.mailbox.lock();
        let mut second_w = (first.id != second.id).then(|| second.mailbox.lock());
        let created = stamp();
        let sent = render::message(uuid, created, sender.id, receiver.id, body, attachments);
        let wake_first = first_w.push(created, sent.json());
        let wake_second = second_w.as_mut().is_some_and(|w| w.push(created, sent.json()));
        (created, sent, wake_first, wake_second)
    };
    // Waiters are woken once the mailboxes are unlocked: they re-read them at once.
    if wake_first {
        first.wake.notify_waiters();
    }
    if wake_second {
        second.wake.notify_waiters();
    }
    (created, sent)
}

#[cfg(test)]
mod tests;
