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
//! [`types`](self) holds the records and ids, `restore` the start-up load, `cull` the expiry of
//! idle sessions and old messages.

mod cull;
mod restore;
mod types;
mod wait;

pub use wait::{Hold, Woken};

pub use types::{ContactView, Session, SessionId, SessionView, User, UserView};

use crate::clock::{Clock, Cursor};
use crate::metrics::Metrics;
use crate::render;
use crate::store::ErrorKind;
use crate::store::{MessageRow, Op, SessionRow, UserRow};
use crate::writer::{Commit, Outcome, Refusal, WriterHandle};
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
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

    /// Refuses a change that must be durable before it is answered while the store is known to
    /// be unreachable: it could not be acknowledged, and the client would wait for the outage.
    fn require_store(&self) -> Result<(), EngineError> {
        if self.writer.is_healthy() {
            Ok(())
        } else {
            Err(EngineError::StoreUnreachable)
        }
    }

    // ---- users -------------------------------------------------------------------------------

    /// Creates a user, or returns the existing one with that `uuid` unchanged. Either way it
    /// answers only once the user is in the store: a second create of a uuid whose first create
    /// is still being written waits for that write, and fails with it.
    pub async fn create_user(&self, uuid: &str, display_name: &str) -> Result<UserView, EngineError> {
        let (user, new) = {
            let _admin = self.admin.lock();
            match self.by_uuid.get(uuid).map(|u| u.clone()) {
                Some(existing) => (existing, false),
                None => {
                    if self.user_count.load(Ordering::Relaxed) >= self.config.max_users {
                        return Err(EngineError::TooManyUsers);
                    }
                    self.require_store()?;
                    let id = self.next_user_id.fetch_add(1, Ordering::Relaxed);
                    let created = self.writer.submit_durable(Op::UpsertUser(UserRow {
                        id,
                        uuid: uuid.to_owned(),
                        display_name: display_name.to_owned(),
                        left_ns: None,
                    }));
                    let capacity = self.config.mailbox_capacity;
                    let key: Arc<str> = uuid.into();
                    let user = Arc::new(User::new(id, key.clone(), display_name.into(), capacity, Some(created)));
                    self.user_shard(id).users.write().insert(id, user.clone());
                    self.by_uuid.insert(key, user.clone());
                    self.user_count.fetch_add(1, Ordering::Relaxed);
                    (user, true)
                }
            }
        };
        if let Some(created) = user.creation() {
            let outcome = committed(created).await;
            if new && outcome == Err(EngineError::StoreRefused) {
                self.forget_user(&user);
            }
            outcome?;
        }
        Ok(user.view())
    }

    /// Takes a user whose creation the store refused back out of memory.
    fn forget_user(&self, user: &Arc<User>) {
        let _admin = self.admin.lock();
        let mut users = self.user_shard(user.id).users.write();
        if users.get(&user.id).is_some_and(|u| Arc::ptr_eq(u, user)) {
            users.remove(&user.id);
            self.by_uuid.remove_if(&user.uuid, |_, u| Arc::ptr_eq(u, user));
            self.user_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// One user by id.
    pub fn user(&self, id: i64) -> Result<UserView, EngineError> {
        self.stored_user(id).map(|u| u.view()).ok_or(EngineError::NoSuchUser("user_id"))
    }

    /// One user by external id.
    pub fn user_by_uuid(&self, uuid: &str) -> Result<UserView, EngineError> {
        self.by_uuid.get(uuid).filter(|u| u.is_stored()).map(|u| u.view()).ok_or(EngineError::NoSuchUser("uuid"))
    }

    /// All users, by id.
    pub fn users(&self) -> Vec<UserView> {
        let mut all: Vec<UserView> = self
            .shards
            .iter()
            .flat_map(|s| s.users.read().values().filter(|u| u.is_stored()).map(|u| u.view()).collect::<Vec<_>>())
            .collect();
        all.sort_unstable_by_key(|u| u.id);
        all
    }

    /// At most `limit` users with ids greater than `after_id`, by id. Ids are handed out in
    /// order and never reused, so this probes ids upwards: its cost follows the users returned
    /// plus the ids deleted in between.
    pub fn users_after(&self, after_id: i64, limit: usize) -> Vec<UserView> {
        let end = self.next_user_id.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut id = after_id.max(0).saturating_add(1);
        while id < end && out.len() < limit {
            if let Some(u) = self.stored_user(id) {
                out.push(u.view());
            }
            id += 1;
        }
        out
    }

    /// How many users there are.
    pub fn user_count(&self) -> usize {
        self.user_count.load(Ordering::Relaxed)
    }

    /// Sets a user's display name.
    pub async fn update_user(&self, id: i64, display_name: &str) -> Result<UserView, EngineError> {
        let (view, commit) = {
            let _admin = self.admin.lock();
            let user = self.stored_user(id).ok_or(EngineError::NoSuchUser("user_id"))?;
            self.require_store()?;
            user.set_display_name(display_name.into());
            let commit = self.writer.submit_durable(Op::UpsertUser(UserRow {
                id,
                uuid: user.uuid.to_string(),
                display_name: display_name.to_owned(),
                left_ns: user.mailbox.watermark(),
            }));
            (user.view(), commit)
        };
        committed(&commit).await?;
        Ok(view)
    }

    /// Deletes a user with their sessions, contacts and mailbox.
    pub async fn delete_user(&self, id: i64) -> Result<(), EngineError> {
        let commit = {
            let _admin = self.admin.lock();
            self.stored_user(id).ok_or(EngineError::NoSuchUser("user_id"))?;
            self.require_store()?;
            let user = self.user_shard(id).users.write().remove(&id).ok_or(EngineError::NoSuchUser("user_id"))?;
            self.by_uuid.remove(&user.uuid);
            self.user_count.fetch_sub(1, Ordering::Relaxed);
            for uuid in user.take_sessions() {
                self.unlink_session(uuid);
            }
            for other in user.take_contacts() {
                if let Some(o) = self.user_arc(other) {
                    o.remove_contact(id);
                }
            }
            self.writer.submit_durable(Op::DeleteUser { id })
        };
        committed(&commit).await
    }

    // ---- sessions ----------------------------------------------------------------------------

    /// Opens a session for a user.
    pub async fn open_session(&self, user_id: i64) -> Result<SessionView, EngineError> {
        let session = {
            let _admin = self.admin.lock();
            let user = self.stored_user(user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
            if user.session_count() >= self.config.max_sessions_per_user {
                return Err(EngineError::TooManySessions);
            }
            self.require_store()?;
            let uuid = SessionId::random();
            let now = self.clock.next();
            let created = self.writer.submit_durable(Op::InsertSession(SessionRow {
                uuid: uuid.0,
                user_id,
                created_ns: now,
                last_active_ns: now,
            }));
            let session = Arc::new(Session::new(uuid, user.clone(), now, now, Some(created.clone())));
            self.link_session(session.clone());
            (session, created)
        };
        let (session, created) = session;
        let outcome = committed(&created).await;
        if outcome == Err(EngineError::StoreRefused) {
            let _admin = self.admin.lock();
            if let Some(s) = self.unlink_session(session.uuid) {
                s.user.remove_session(s.uuid);
            }
        }
        outcome?;
        Ok(session.view())
    }

    /// All live sessions, oldest first.
    pub fn sessions(&self) -> Vec<SessionView> {
        let mut all: Vec<Arc<Session>> = self
            .shards
            .iter()
            .flat_map(|s| s.sessions.read().values().filter(|s| s.is_stored()).cloned().collect::<Vec<_>>())
            .collect();
        all.sort_unstable_by_key(|s| (s.created, s.uuid));
        all.iter().map(|s| s.view()).collect()
    }

    /// At most `limit` live sessions with ids after `after`, in id order.
    pub fn sessions_after(&self, after: Option<SessionId>, limit: usize) -> Vec<SessionView> {
        use std::ops::Bound;
        // The index, then a shard: the order writers take them in too.
        let index = self.session_index.read();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        index
            .range((from, Bound::Unbounded))
            .filter_map(|id| self.session(*id).ok())
            .filter(|s| s.is_stored())
            .take(limit)
            .map(|s| s.view())
            .collect()
    }

    /// How many live sessions there are.
    pub fn session_count(&self) -> usize {
        self.session_index.read().len()
    }

    /// Puts a session into its shard, its user's list and the index (under `admin`, or alone at
    /// restore).
    fn link_session(&self, session: Arc<Session>) {
        session.user.add_session(session.uuid);
        self.session_index.write().insert(session.uuid);
        self.session_shard(session.uuid).sessions.write().insert(session.uuid, session);
    }

    /// Takes a session out of its shard and the index (under `admin`); its user's list is the
    /// caller's.
    fn unlink_session(&self, uuid: SessionId) -> Option<Arc<Session>> {
        self.session_index.write().remove(&uuid);
        let session = self.session_shard(uuid).sessions.write().remove(&uuid)?;
        session.mark_closed();
        Some(session)
    }

    /// Closes a session.
    pub async fn close_session(&self, uuid: SessionId) -> Result<(), EngineError> {
        let commit = {
            let _admin = self.admin.lock();
            self.session(uuid)?;
            self.require_store()?;
            let session = self.unlink_session(uuid).ok_or(EngineError::NoSuchSession)?;
            session.user.remove_session(uuid);
            self.writer.submit_durable(Op::DeleteSession { uuid: uuid.0 })
        };
        committed(&commit).await
    }

    // ---- contacts ----------------------------------------------------------------------------

    /// The contacts of a session's user, by id.
    pub fn contacts(&self, session: &Session) -> Vec<ContactView> {
        session
            .user
            .contact_ids()
            .into_iter()
            .filter_map(|id| self.stored_user(id))
            .map(|u| ContactView { is_online: u.is_online(), user: u.view(), is_typing: false })
            .collect()
    }

    /// Makes the session's user and `user_id` contacts of each other (idempotent).
    pub async fn add_contact(&self, session: &Session, user_id: i64) -> Result<(), EngineError> {
        let commit = {
            let _admin = self.admin.lock();
            let (me, other) = self.contact_pair(session, user_id)?;
            if me.id == other.id {
                return Err(EngineError::SelfContact);
            }
            if me.has_contact(other.id) {
                return Ok(());
            }
            if me.contact_count() >= self.config.max_contacts_per_user
                || other.contact_count() >= self.config.max_contacts_per_user
            {
                return Err(EngineError::TooManyContacts);
            }
            self.require_store()?;
            me.add_contact(other.id);
            other.add_contact(me.id);
            self.writer.submit_durable(Op::AddContact { a: me.id.min(other.id), b: me.id.max(other.id) })
        };
        committed(&commit).await
    }

    /// Removes the contact pair both ways (idempotent).
    pub async fn remove_contact(&self, session: &Session, user_id: i64) -> Result<(), EngineError> {
        let commit = {
            let _admin = self.admin.lock();
            let (me, other) = self.contact_pair(session, user_id)?;
            if !me.has_contact(other.id) {
                return Ok(());
            }
            self.require_store()?;
            me.remove_contact(other.id);
            other.remove_contact(me.id);
            self.writer.submit_durable(Op::RemoveContact { a: me.id.min(other.id), b: me.id.max(other.id) })
        };
        committed(&commit).await
    }

    /// The session's user and the user `user_id`, both still there (under the admin lock).
    fn contact_pair<'s>(&self, session: &'s Session, user_id: i64) -> Result<(&'s Arc<User>, Arc<User>), EngineError> {
        if !self.is_live(session) {
            return Err(EngineError::NoSuchSession);
        }
        let other = self.stored_user(user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
        Ok((&session.user, other))
    }

    // ---- messages: the hot path ----------------------------------------------------------------

    /// Appends the session user's messages created after `cutoff` to `out` (oldest first,
    /// comma-separated JSON; see [`crate::mailbox::Mailbox::read_into`]) and marks the session
    /// active. Takes no lock: the session was looked up already.
    pub fn poll(&self, session: &Session, cutoff: Option<Cursor>, out: &mut BytesMut) -> Polled {
        session.touch(Clock::wall_ns());
        let read = session.user.mailbox.read_into(cutoff.map(Cursor::as_ns), out);
        let cursor = read.newest.map(Cursor::from_ns).or(cutoff).unwrap_or(Cursor { unix: 0, nano: 0 });
        Polled { cursor, gap: read.gap }
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
    ) -> Result<Bytes, EngineError> {
        let receiver = self.stored_user(receiver_id).ok_or(EngineError::NoSuchReceiver)?;
        if self.config.send_rate > 0 {
            session.take_send_token(self.config.send_rate, Clock::wall_ns()).map_err(EngineError::SendRate)?;
        }
        self.writer.admit_send().map_err(|r| match r {
            Refusal::QueueFull => EngineError::QueueFull,
            Refusal::StoreStalled => EngineError::StoreStalled,
        })?;
        let sender = &session.user;
        let uuid: u128 = rand::random();
        let (first, second) = if sender.id <= receiver.id { (sender, &receiver) } else { (&receiver, sender) };
        let (created, json, wake_first, wake_second) = {
            // The ordering invariant (module doc): lock both mailboxes, then take the timestamp.
            let mut first_w = first.mailbox.lock();
            let mut second_w = (first.id != second.id).then(|| second.mailbox.lock());
            let created = self.clock.next();
            let json = render::message(uuid, created, sender.id, receiver.id, body, attachments.as_deref());
            let wake_first = first_w.push(created, json.clone());
            let wake_second = second_w.as_mut().is_some_and(|w| w.push(created, json.clone()));
            (created, json, wake_first, wake_second)
        };
        // Waiters are woken once the mailboxes are unlocked: they re-read them at once.
        if wake_first {
            first.wake.notify_waiters();
        }
        if wake_second {
            second.wake.notify_waiters();
        }
        session.touch(Clock::wall_ns());
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

#[cfg(test)]
mod tests;
