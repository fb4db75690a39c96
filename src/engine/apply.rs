//! Cluster mode: the log's [`Command`]s applied to the engine as a deterministic state machine.
//!
//! [`Engine::apply`] is a pure function of the engine's state, the command and what the
//! [`Sequencer`](crate::cluster::Sequencer) decided for its entry ([`Applied`]): it reads no
//! clock, draws nothing at random and asks nothing of the store. So every node that applies the
//! same log in the same order holds the same users, sessions, contacts and mailboxes, with the
//! same timestamps, and refuses the same commands the same way. Its validation and errors are the
//! live paths', decided from that shared state at apply time:
//!
//! - **Ids and times come from the log.** A new user's id is [`Applied::user_id`]; a session's
//!   `created` and `last_active`, and a message's `created_utc`, are [`Applied::created_ns`]. The
//!   sequencer makes that strictly increasing over the log, so a send keeps the ordering invariant
//!   (see the [engine](super)) with the same lock-both-mailboxes-then-push as the live path, only
//!   with the log's timestamp instead of the clock's. The engine's own [`Clock`](crate::clock::Clock)
//!   is moved past every applied timestamp, so nothing local is ever stamped at or before one.
//! - **Caps count the shared state**: `--max-users` the users held, `--max-sessions-per-user` and
//!   `--max-contacts-per-user` the user's — all equal on every node at the same entry. A refused
//!   `CreateUser` still used up its id (the sequencer counts every one): ids stay unique, with gaps.
//!   So every node must run with the same caps, TTLs and mailbox capacity (the engine's config but
//!   `shards`, `durable_acks` and `send_rate`): a node configured otherwise would diverge.
//! - **What is local is not consulted**: not `--send-rate`, the write queue or the store's health
//!   (the publishing node checks those before it publishes), and not held polls or streams when
//!   culling (they are one node's; their activity reaches the log as `Touch`).
//! - **Activity and expiry follow the log's clock.** `Touch` sets its sessions' `last_active` to
//!   the entry's time (never backwards), a send its session's, and both write it with the entry,
//!   so the store holds every session's activity exactly as of its log position (a node restarted
//!   from it culls as the others do); `Tick` culls idle sessions and old messages as of the
//!   entry's time.
//! - **Writes are write-behind**: each change goes to the writer as the live path's [`Op`] (all
//!   idempotent, so every node writing the same rows is harmless), and nothing awaits the commit.
//!   In cluster mode a change is durable once JetStream stored its entry.

use super::cull::Holds;
use super::{deliver, Engine, EngineError, Session, SessionId, SessionView, UserView};
use crate::cluster::{Applied, Command};
use crate::render::Sent;
use crate::store::{LogPosition, MessageRow, Op, SessionRow, UserRow};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What applying one command produced: what the publishing node answers its client with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The user created (or the existing one with that uuid), or renamed.
    User(UserView),
    /// The session opened.
    Session(SessionView),
    /// The message sent, as its JSON.
    Message(Sent),
    /// Done; nothing to show (a delete, a close, a contact change, `Touch`, `Tick`).
    Done,
}

impl Engine {
    /// Queues, behind everything queued so far, that the store now holds `stream`'s log up to
    /// `position` (see `crate::cluster::applier`).
    pub fn record_log_position(&self, stream: &str, position: LogPosition) {
        let ops = std::mem::take(&mut *self.entry_ops.lock());
        self.writer.submit(Op::Logged { stream: stream.to_owned(), position, ops });
    }

    /// Applies one entry of the cluster's log: `command`, with what the sequencer decided for it.
    /// See the module doc; an `Err` is a refusal every node makes alike, and changes nothing.
    pub fn apply(&self, applied: &Applied, command: &Command) -> Result<Effect, EngineError> {
        self.clock.advance_past(applied.created_ns);
        let now = applied.created_ns;
        match command {
            Command::CreateUser { uuid, display_name } => {
                let id = applied.user_id.ok_or(EngineError::MalformedCommand("user_id"))?;
                self.apply_create_user(id, uuid, display_name).map(Effect::User)
            }
            Command::UpdateUser { user_id, display_name } => {
                let _admin = self.admin.lock();
                let user = self.stored_user(*user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
                user.set_display_name(display_name.as_str().into());
                self.queue(Op::UpsertUser(UserRow {
                    id: *user_id,
                    uuid: user.uuid.to_string(),
                    display_name: display_name.clone(),
                    left_ns: user.mailbox.watermark(),
                }));
                Ok(Effect::User(user.view()))
            }
            Command::DeleteUser { user_id } => {
                let _admin = self.admin.lock();
                self.remove_user(*user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
                self.queue(Op::DeleteUser { id: *user_id });
                Ok(Effect::Done)
            }
            Command::OpenSession { user_id, session } => {
                let uuid: SessionId = session.parse().map_err(|_| EngineError::MalformedCommand("session"))?;
                self.apply_open_session(*user_id, uuid, now).map(Effect::Session)
            }
            Command::CloseSession { session } => {
                let uuid: SessionId = session.parse()?;
                let _admin = self.admin.lock();
                let session = self.unlink_session(uuid).ok_or(EngineError::NoSuchSession)?;
                session.user.remove_session(uuid);
                self.queue(Op::DeleteSession { uuid: uuid.0 });
                Ok(Effect::Done)
            }
            Command::AddContact { user_id, contact_id } => {
                let _admin = self.admin.lock();
                let (me, other) = self.applied_contact_pair(*user_id, *contact_id)?;
                if me.id == other.id {
                    return Err(EngineError::SelfContact);
                }
                if me.has_contact(other.id) {
                    return Ok(Effect::Done);
                }
                let cap = self.config.max_contacts_per_user;
                if me.contact_count() >= cap || other.contact_count() >= cap {
                    return Err(EngineError::TooManyContacts);
                }
                me.add_contact(other.id);
                other.add_contact(me.id);
                self.queue(Op::AddContact { a: me.id.min(other.id), b: me.id.max(other.id) });
                Ok(Effect::Done)
            }
            Command::RemoveContact { user_id, contact_id } => {
                let _admin = self.admin.lock();
                let (me, other) = self.applied_contact_pair(*user_id, *contact_id)?;
                if me.remove_contact(other.id) {
                    other.remove_contact(me.id);
                    self.queue(Op::RemoveContact { a: me.id.min(other.id), b: me.id.max(other.id) });
                }
                Ok(Effect::Done)
            }
            Command::Send { session, receiver_id, body, attachments, message } => {
                let session = self.session(session.parse()?)?;
                let uuid = message.parse::<SessionId>().map_err(|_| EngineError::MalformedCommand("message"))?.0;
                let attachments = match attachments.as_str() {
                    "" | "null" => None,
                    json => Some(json),
                };
                self.apply_send(&session, *receiver_id, body, attachments, uuid, now).map(Effect::Message)
            }
            Command::Touch { sessions } => {
                let mut touched = Vec::with_capacity(sessions.len());
                for session in sessions {
                    // A session closed since (or never valid) has no activity to keep.
                    if let Some(s) = session.parse().ok().and_then(|uuid| self.session(uuid).ok()) {
                        s.mark_active(now);
                        touched.push((s.uuid.0, now));
                    }
                }
                // Written with the entry, so the store holds every session's activity as of its
                // log position exactly: a node restarted from it culls as the others do.
                if !touched.is_empty() {
                    self.queue(Op::TouchSessions(touched));
                }
                Ok(Effect::Done)
            }
            Command::Tick => {
                // Activity is written as it is applied (`Touch`, `Send`): nothing to flush.
                self.cull_all_as(now, false, Holds::Ignore);
                Ok(Effect::Done)
            }
        }
    }

    /// `CreateUser` with the log's id: the existing user with that uuid unchanged, else a new one
    /// unless `--max-users` are held.
    fn apply_create_user(&self, id: i64, uuid: &str, display_name: &str) -> Result<UserView, EngineError> {
        let _admin = self.admin.lock();
        if let Some(existing) = self.by_uuid.get(uuid).map(|u| u.clone()) {
            return Ok(existing.view());
        }
        if self.user_count.load(Ordering::Relaxed) >= self.config.max_users {
            return Err(EngineError::TooManyUsers);
        }
        // Ids are the log's; `users_after` probes up to the next one.
        self.next_user_id.fetch_max(id + 1, Ordering::Relaxed);
        self.queue(Op::UpsertUser(UserRow {
            id,
            uuid: uuid.to_owned(),
            display_name: display_name.to_owned(),
            left_ns: None,
        }));
        Ok(self.insert_user(id, uuid, display_name, None).view())
    }

    /// `OpenSession` with the publisher's uuid and the log's time. The same uuid applied again
    /// for the same user (a publish repeated after the duplicate window) is that session.
    fn apply_open_session(&self, user_id: i64, uuid: SessionId, now: i64) -> Result<SessionView, EngineError> {
        let _admin = self.admin.lock();
        let user = self.stored_user(user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
        if let Ok(existing) = self.session(uuid) {
            return if existing.user.id == user_id {
                Ok(existing.view())
            } else {
                Err(EngineError::MalformedCommand("session"))
            };
        }
        if user.session_count() >= self.config.max_sessions_per_user {
            return Err(EngineError::TooManySessions);
        }
        self.queue(Op::InsertSession(SessionRow { uuid: uuid.0, user_id, created_ns: now, last_active_ns: now }));
        let session = Arc::new(Session::new(uuid, user, now, now, None, self.config.cluster));
        self.link_session(session.clone());
        Ok(session.view())
    }

    /// The users of an applied contact change: the acting user stands for the publisher's
    /// session, so its absence answers as the live path's closed session does.
    fn applied_contact_pair(
        &self,
        user_id: i64,
        contact_id: i64,
    ) -> Result<(Arc<super::User>, Arc<super::User>), EngineError> {
        let me = self.stored_user(user_id).ok_or(EngineError::NoSuchSession)?;
        let other = self.stored_user(contact_id).ok_or(EngineError::NoSuchUser("user_id"))?;
        Ok((me, other))
    }

    /// `Send` with the publisher's uuid and the log's timestamp, through the live path's
    /// [`deliver`]; the session is active as of the message.
    fn apply_send(
        &self,
        session: &Session,
        receiver_id: i64,
        body: &str,
        attachments: Option<&str>,
        uuid: u128,
        created: i64,
    ) -> Result<Sent, EngineError> {
        let receiver = self.stored_user(receiver_id).ok_or(EngineError::NoSuchReceiver)?;
        let sender = &session.user;
        let (created, json) = deliver(sender, &receiver, uuid, body, attachments, || created);
        session.mark_active(created);
        // See `Touch`: the store holds activity as of each entry (one statement per batch).
        self.queue(Op::TouchSessions(vec![(session.uuid.0, created)]));
        self.metrics.messages_sent.inc();
        self.queue(Op::Message(MessageRow {
            uuid,
            created_ns: created,
            sender_id: sender.id,
            receiver_id,
            body: body.to_owned(),
            attachments: attachments.map(str::to_owned),
        }));
        Ok(json)
    }
}

#[cfg(test)]
mod tests;
