//! The engine: users, sessions, contacts and mailboxes in memory, sharded, knowing nothing of HTTP.
//!
//! # Shape
//!
//! Users are hashed across [`Shard`]s by id, sessions by uuid. Every user owns a
//! [`Mailbox`](crate::mailbox::Mailbox); a session holds an `Arc` of its user, so a poll is one
//! shard lookup (a read lock on that shard's session map) followed by a lock-free mailbox read.
//! Mutations are handed to the [`Writer`](crate::writer) as [`Op`]s, in the order they happen.
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

mod restore;
mod types;

pub use types::{ContactView, Session, SessionView, User, UserView};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::render::{self, Cursor};
use crate::store::{MessageRow, Op, SessionRow, UserRow};
use crate::writer::{Ack, WriterHandle};
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicI64, Ordering};
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
}

/// What went wrong, in the engine's terms; [`crate::http`] maps these to the envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The session in the path does not exist (or has expired).
    #[error("session_id: no such session")]
    NoSuchSession,
    /// The user in the path does not exist.
    #[error("{0}: no such user")]
    NoSuchUser(&'static str),
    /// The message's receiver does not exist.
    #[error("receiver_id: no such user")]
    NoSuchReceiver,
    /// A user cannot be their own contact.
    #[error("user_id: a user cannot be their own contact")]
    SelfContact,
    /// The write queue is at `--max-pending`.
    #[error("the write queue is full (--max-pending); retry shortly")]
    QueueFull,
    /// The store is unreachable, so a write that must be durable cannot be acknowledged.
    #[error("the store is unreachable; nothing was changed, try again shortly")]
    StoreDown,
    /// The writer stopped before confirming the write.
    #[error("the store is unavailable; the write was not confirmed")]
    StoreUnavailable,
}

/// The answer to a poll, besides the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// Where to poll from next.
    pub cursor: Cursor,
    /// Messages after the cutoff have left the mailbox.
    pub gap: bool,
}

/// A sent message: its JSON, and the ack to await under `--durable-acks`.
#[derive(Debug)]
pub struct Sent {
    /// The message as rendered into the mailboxes.
    pub json: Bytes,
    /// The message's server timestamp.
    pub created: i64,
    /// `Some` under `--durable-acks`.
    pub ack: Option<Ack>,
}

/// One shard: the users and sessions that hash to it.
#[derive(Debug, Default)]
pub struct Shard {
    users: RwLock<FxHashMap<i64, Arc<User>>>,
    sessions: RwLock<FxHashMap<u128, Arc<Session>>>,
}

/// The whole in-memory state. See the module doc.
pub struct Engine {
    config: EngineConfig,
    clock: Clock,
    shards: Box<[Shard]>,
    by_uuid: DashMap<String, Arc<User>>,
    next_user_id: AtomicI64,
    admin: Mutex<()>,
    writer: WriterHandle,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).finish_non_exhaustive()
    }
}

fn ttl_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
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
            next_user_id: AtomicI64::new(1),
            admin: Mutex::new(()),
            writer,
            metrics,
        }
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The writer this engine queues its ops on.
    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    fn user_shard(&self, id: i64) -> &Shard {
        &self.shards[(id.unsigned_abs() % self.shards.len() as u64) as usize]
    }

    fn session_shard(&self, uuid: u128) -> &Shard {
        // Session uuids are random: any 64 bits of them spread evenly.
        &self.shards[((uuid as u64) % self.shards.len() as u64) as usize]
    }

    fn user_arc(&self, id: i64) -> Option<Arc<User>> {
        self.user_shard(id).users.read().get(&id).cloned()
    }

    fn session_arc(&self, uuid: u128) -> Option<Arc<Session>> {
        self.session_shard(uuid).sessions.read().get(&uuid).cloned()
    }

    /// A live session.
    pub fn session(&self, uuid: u128) -> Result<Arc<Session>, EngineError> {
        self.session_arc(uuid).ok_or(EngineError::NoSuchSession)
    }

    fn is_live(&self, session: &Session) -> bool {
        self.session_shard(session.uuid).sessions.read().contains_key(&session.uuid)
    }

    fn durable(&self, op: Op) -> Ack {
        self.writer.submit_durable(op)
    }

    /// Refuses a change that must be durable before it is answered while the store is known to
    /// be unreachable: it could not be acknowledged, and the client would wait for the outage.
    fn require_store(&self) -> Result<(), EngineError> {
        if self.writer.is_healthy() {
            Ok(())
        } else {
            Err(EngineError::StoreDown)
        }
    }

    // ---- users -------------------------------------------------------------------------------

    /// Creates a user, or returns the existing one with that `uuid` unchanged (and no ack).
    pub fn create_user(&self, uuid: &str, display_name: &str) -> Result<(UserView, Option<Ack>), EngineError> {
        let _admin = self.admin.lock();
        if let Some(u) = self.by_uuid.get(uuid) {
            return Ok((u.view(), None));
        }
        self.require_store()?;
        let id = self.next_user_id.fetch_add(1, Ordering::Relaxed);
        let user = Arc::new(User::new(id, uuid.to_owned(), display_name.into(), self.config.mailbox_capacity));
        let ack = self.durable(Op::UpsertUser(UserRow {
            id,
            uuid: uuid.to_owned(),
            display_name: display_name.to_owned(),
            left_ns: None,
        }));
        self.user_shard(id).users.write().insert(id, user.clone());
        self.by_uuid.insert(uuid.to_owned(), user.clone());
        Ok((user.view(), Some(ack)))
    }

    /// One user by id.
    pub fn user(&self, id: i64) -> Option<UserView> {
        self.user_arc(id).map(|u| u.view())
    }

    /// One user by external id.
    pub fn user_by_uuid(&self, uuid: &str) -> Option<UserView> {
        self.by_uuid.get(uuid).map(|u| u.view())
    }

    /// All users, by id.
    pub fn users(&self) -> Vec<UserView> {
        let mut all: Vec<UserView> =
            self.shards.iter().flat_map(|s| s.users.read().values().map(|u| u.view()).collect::<Vec<_>>()).collect();
        all.sort_unstable_by_key(|u| u.id);
        all
    }

    /// Sets a user's display name.
    pub fn update_user(&self, id: i64, display_name: &str) -> Result<(UserView, Ack), EngineError> {
        let _admin = self.admin.lock();
        let user = self.user_arc(id).ok_or(EngineError::NoSuchUser("user_id"))?;
        self.require_store()?;
        user.set_display_name(display_name.into());
        let ack = self.durable(Op::UpsertUser(UserRow {
            id,
            uuid: user.uuid.clone(),
            display_name: display_name.to_owned(),
            left_ns: user.mailbox.watermark(),
        }));
        Ok((user.view(), ack))
    }

    /// Deletes a user with their sessions, contacts and mailbox.
    pub fn delete_user(&self, id: i64) -> Result<Ack, EngineError> {
        let _admin = self.admin.lock();
        self.user_arc(id).ok_or(EngineError::NoSuchUser("user_id"))?;
        self.require_store()?;
        let user = self.user_shard(id).users.write().remove(&id).ok_or(EngineError::NoSuchUser("user_id"))?;
        self.by_uuid.remove(&user.uuid);
        for uuid in user.take_sessions() {
            self.session_shard(uuid).sessions.write().remove(&uuid);
        }
        for other in user.take_contacts() {
            if let Some(o) = self.user_arc(other) {
                o.remove_contact(id);
            }
        }
        Ok(self.durable(Op::DeleteUser { id }))
    }

    // ---- sessions ----------------------------------------------------------------------------

    /// Opens a session for a user.
    pub fn open_session(&self, user_id: i64) -> Result<(SessionView, Ack), EngineError> {
        let _admin = self.admin.lock();
        let user = self.user_arc(user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
        self.require_store()?;
        let uuid: u128 = rand::random();
        let now = self.clock.next();
        let session = Arc::new(Session::new(uuid, user.clone(), now, now));
        let ack = self.durable(Op::InsertSession(SessionRow { uuid, user_id, created_ns: now, last_active_ns: now }));
        user.add_session(uuid);
        self.session_shard(uuid).sessions.write().insert(uuid, session.clone());
        Ok((session.view(), ack))
    }

    /// All live sessions, oldest first.
    pub fn sessions(&self) -> Vec<SessionView> {
        let mut all: Vec<Arc<Session>> =
            self.shards.iter().flat_map(|s| s.sessions.read().values().cloned().collect::<Vec<_>>()).collect();
        all.sort_unstable_by_key(|s| (s.created, s.uuid));
        all.iter().map(|s| s.view()).collect()
    }

    /// Closes a session.
    pub fn close_session(&self, uuid: u128) -> Result<Ack, EngineError> {
        let _admin = self.admin.lock();
        self.session_arc(uuid).ok_or(EngineError::NoSuchSession)?;
        self.require_store()?;
        let session = self.session_shard(uuid).sessions.write().remove(&uuid).ok_or(EngineError::NoSuchSession)?;
        session.user.remove_session(uuid);
        Ok(self.durable(Op::DeleteSession { uuid }))
    }

    // ---- contacts ----------------------------------------------------------------------------

    /// The contacts of a session's user, by id.
    pub fn contacts(&self, session: &Session) -> Vec<ContactView> {
        session
            .user
            .contact_ids()
            .into_iter()
            .filter_map(|id| self.user_arc(id))
            .map(|u| ContactView { is_online: u.is_online(), user: u.view(), is_typing: false })
            .collect()
    }

    /// Makes the session's user and `user_id` contacts of each other (idempotent).
    pub fn add_contact(&self, session: &Session, user_id: i64) -> Result<Option<Ack>, EngineError> {
        let _admin = self.admin.lock();
        if !self.is_live(session) {
            return Err(EngineError::NoSuchSession);
        }
        let other = self.user_arc(user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
        let me = &session.user;
        if me.id == other.id {
            return Err(EngineError::SelfContact);
        }
        if me.has_contact(other.id) {
            return Ok(None);
        }
        self.require_store()?;
        me.add_contact(other.id);
        other.add_contact(me.id);
        Ok(Some(self.durable(Op::AddContact { a: me.id.min(other.id), b: me.id.max(other.id) })))
    }

    /// Removes the contact pair both ways (idempotent).
    pub fn remove_contact(&self, session: &Session, user_id: i64) -> Result<Option<Ack>, EngineError> {
        let _admin = self.admin.lock();
        if !self.is_live(session) {
            return Err(EngineError::NoSuchSession);
        }
        let other = self.user_arc(user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
        let me = &session.user;
        if !me.has_contact(other.id) {
            return Ok(None);
        }
        self.require_store()?;
        me.remove_contact(other.id);
        other.remove_contact(me.id);
        Ok(Some(self.durable(Op::RemoveContact { a: me.id.min(other.id), b: me.id.max(other.id) })))
    }

    // ---- messages: the hot path ----------------------------------------------------------------

    /// Appends the session user's messages created after `cutoff` to `out` (oldest first,
    /// comma-separated JSON; see [`crate::mailbox::Mailbox::write_after`]) and marks the session
    /// active. Takes no lock: the session was looked up already.
    pub fn poll(&self, session: &Session, cutoff: Option<Cursor>, out: &mut BytesMut) -> Polled {
        session.touch(Clock::wall_ns());
        let read = session.user.mailbox.write_after(cutoff.map(Cursor::as_ns), out);
        let cursor = read.newest.map(Cursor::from_ns).or(cutoff).unwrap_or(Cursor { unix: 0, nano: 0 });
        Polled { cursor, gap: read.gap }
    }

    /// Sends a message from the session's user. `body` and `attachments` must already be valid
    /// (see [`crate::http`]); `attachments` is compact JSON text of an object, or `None`.
    pub fn send(
        &self,
        session: &Session,
        receiver_id: i64,
        body: &str,
        attachments: Option<String>,
    ) -> Result<Sent, EngineError> {
        let receiver = self.user_arc(receiver_id).ok_or(EngineError::NoSuchReceiver)?;
        if self.writer.is_full() {
            return Err(EngineError::QueueFull);
        }
        let sender = &session.user;
        let uuid: u128 = rand::random();
        let (created, json) = {
            // The ordering invariant (module doc): lock both mailboxes, then take the timestamp.
            let (first, second) = if sender.id <= receiver.id { (sender, &receiver) } else { (&receiver, sender) };
            let mut first_w = first.mailbox.lock();
            let mut second_w = (first.id != second.id).then(|| second.mailbox.lock());
            let created = self.clock.next();
            let json = render::message(uuid, created, sender.id, receiver.id, body, attachments.as_deref());
            first_w.push(created, json.clone());
            if let Some(w) = second_w.as_mut() {
                w.push(created, json.clone());
            }
            (created, json)
        };
        session.touch(Clock::wall_ns());
        let op = Op::Message(MessageRow {
            uuid,
            created_ns: created,
            sender_id: sender.id,
            receiver_id,
            body: body.to_owned(),
            attachments,
        });
        let ack = if self.config.durable_acks {
            Some(self.writer.submit_durable(op))
        } else {
            self.writer.submit(op);
            None
        };
        self.metrics.messages_sent.inc();
        Ok(Sent { json, created, ack })
    }

    // ---- culling and batched activity ----------------------------------------------------------

    /// One culling pass over shard `index` at wall time `now`: closes idle sessions, removes
    /// expired messages from mailboxes, and (when `flush_activity`) queues the `last_active`
    /// changes since the last flush as one batched op. Takes each shard's map lock only long
    /// enough to copy its entries; each mailbox's writer lock only for its own cull.
    pub fn cull_shard(&self, index: usize, now: i64, flush_activity: bool) {
        let Some(shard) = self.shards.get(index) else { return };
        let idle_before = now.saturating_sub(ttl_ns(self.config.session_ttl));
        let sessions: Vec<Arc<Session>> = shard.sessions.read().values().cloned().collect();
        let mut touches = Vec::new();
        for s in sessions {
            if s.last_active() < idle_before {
                self.expire_session(&s, idle_before);
            } else if flush_activity {
                if let Some(ns) = s.take_unpersisted_activity() {
                    touches.push((s.uuid, ns));
                }
            }
        }
        if !touches.is_empty() {
            self.writer.submit(Op::TouchSessions(touches));
        }
        let expire_before = now.saturating_sub(ttl_ns(self.config.message_ttl));
        let users: Vec<Arc<User>> = shard.users.read().values().cloned().collect();
        for u in users {
            if let Some(left_ns) = u.mailbox.lock().cull_before(expire_before) {
                self.writer.submit(Op::Watermark { user_id: u.id, left_ns });
            }
        }
    }

    fn expire_session(&self, s: &Arc<Session>, idle_before: i64) {
        let _admin = self.admin.lock();
        // A poll may have touched it since we looked.
        if s.last_active() >= idle_before {
            return;
        }
        if self.session_shard(s.uuid).sessions.write().remove(&s.uuid).is_some() {
            s.user.remove_session(s.uuid);
            self.writer.submit(Op::DeleteSession { uuid: s.uuid });
            self.metrics.sessions_culled.inc();
        }
    }

    /// Queues every `last_active` change not yet written (at graceful stop).
    pub fn flush_activity(&self) {
        for shard in self.shards.iter() {
            let touches: Vec<(u128, i64)> = shard
                .sessions
                .read()
                .values()
                .filter_map(|s| s.take_unpersisted_activity().map(|ns| (s.uuid, ns)))
                .collect();
            if !touches.is_empty() {
                self.writer.submit(Op::TouchSessions(touches));
            }
        }
    }

    /// One culling pass over every shard, then the store's share of message culling.
    pub fn cull_all(&self, now: i64, flush_activity: bool) {
        for i in 0..self.shards.len() {
            self.cull_shard(i, now, flush_activity);
        }
        self.writer.cull(now.saturating_sub(ttl_ns(self.config.message_ttl)));
    }
}

#[cfg(test)]
mod tests;
