//! The engine's records ([`User`], [`Session`]), their ids, and the views the API renders from them.

use super::EngineError;
use crate::mailbox::Mailbox;
use crate::render;
use crate::writer::{Commit, Outcome};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use smallvec::SmallVec;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// A session's id: 128 bits from a cryptographically secure source, written as 32 lowercase hex
/// digits. Holding it is what authorises a client to act as the session's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u128);

impl SessionId {
    /// A fresh random id (`rand`'s thread-local generator is a CSPRNG).
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // ASCII hex digits: always UTF-8.
        f.write_str(std::str::from_utf8(&render::hex128(self.0)).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for SessionId {
    type Err = EngineError;

    /// Exactly 32 lowercase hex digits; anything else names no session. Every session route
    /// parses one, so it is hand-written, eight digits at a time in a `u64` (SWAR): each byte
    /// tested against the two ranges with carry-free additions, the nibbles then packed
    /// together (callgrind: ~255 instructions with a table look-up per digit, ~158 so;
    /// `u128::from_str_radix` cost about seven times the table's).
    fn from_str(s: &str) -> Result<Self, EngineError> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return Err(EngineError::NoSuchSession);
        }
        let mut value = 0u128;
        for chunk in b.chunks_exact(8) {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(chunk);
            value = value << 32 | u128::from(hex8(u64::from_be_bytes(eight)).ok_or(EngineError::NoSuchSession)?);
        }
        Ok(Self(value))
    }
}

/// The value of eight lowercase hex digits, the first in the top byte of `x`; `None` when any
/// byte is no such digit.
#[inline]
fn hex8(x: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of 0x80 or more (part of a longer UTF-8 character) is no digit; without any, the
    // additions below cannot carry out of a byte or overflow.
    if x & HIGH != 0 {
        return None;
    }
    // For bytes below 0x80, adding 0x80 - lo sets a byte's high bit exactly when it is >= lo.
    let at_least = |lo: u8| (x + u64::from(0x80 - lo) * ONES) & HIGH;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if (digit | letter) != HIGH {
        return None;
    }
    // '0'..'9' -> 0..9 by their low nibble; 'a'..'f' have low nibbles 1..6: add 9.
    let mut n = (x & 0x0f0f_0f0f_0f0f_0f0f) + (letter >> 7) * 9;
    n = (n | n >> 4) & 0x00ff_00ff_00ff_00ff;
    n = (n | n >> 8) & 0x0000_ffff_0000_ffff;
    n = (n | n >> 16) & 0xffff_ffff;
    Some(n as u32)
}

/// A user and their mailbox.
#[derive(Debug)]
pub struct User {
    /// Server-chosen id.
    pub id: i64,
    /// External id; never changes. Shared with the engine's index by uuid (one allocation).
    pub uuid: Arc<str>,
    display_name: RwLock<Arc<str>>,
    /// The user's messages (sent and received).
    pub mailbox: Mailbox,
    contacts: Mutex<BTreeSet<i64>>,
    /// Live sessions; most users have at most one, which is kept inline (no allocation).
    sessions: Mutex<SmallVec<[SessionId; 1]>>,
    /// The write that creates the user in the store; `None` when it came from the store.
    created: Option<Arc<Commit>>,
    /// Wakes the user's waiters (held polls, streams): after a push into the mailbox that found
    /// someone waiting, and when one of the user's sessions closes.
    pub(crate) wake: Notify,
}

impl User {
    /// A user with an empty mailbox of `capacity`; `created` is the commit of the write that
    /// creates it, `None` for a user restored from the store.
    pub fn new(id: i64, uuid: Arc<str>, display_name: Arc<str>, capacity: usize, created: Option<Arc<Commit>>) -> Self {
        Self {
            id,
            uuid,
            display_name: RwLock::new(display_name),
            mailbox: Mailbox::new(capacity),
            contacts: Mutex::new(BTreeSet::new()),
            sessions: Mutex::new(SmallVec::new()),
            created,
            wake: Notify::new(),
        }
    }

    /// Whether the user is in the store: only such a user is shown or used by the API, so that
    /// nothing answered depends on a write that may yet fail.
    pub fn is_stored(&self) -> bool {
        self.created.as_ref().is_none_or(|c| c.outcome() == Some(Outcome::Committed))
    }

    /// The commit that creates the user, while it may still be pending.
    pub(crate) fn creation(&self) -> Option<&Arc<Commit>> {
        self.created.as_ref()
    }

    /// The user as the API shows it.
    pub fn view(&self) -> UserView {
        UserView { id: self.id, uuid: self.uuid.to_string(), display_name: self.display_name.read().to_string() }
    }

    pub(crate) fn set_display_name(&self, name: Arc<str>) {
        *self.display_name.write() = name;
    }

    /// Whether the user has a live session.
    pub fn is_online(&self) -> bool {
        !self.sessions.lock().is_empty()
    }

    pub(crate) fn add_session(&self, uuid: SessionId) {
        self.sessions.lock().push(uuid);
    }

    pub(crate) fn remove_session(&self, uuid: SessionId) {
        self.sessions.lock().retain(|s| *s != uuid);
    }

    pub(crate) fn take_sessions(&self) -> SmallVec<[SessionId; 1]> {
        std::mem::take(&mut *self.sessions.lock())
    }

    /// How many live sessions the user has.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Contact ids, ascending.
    pub fn contact_ids(&self) -> Vec<i64> {
        self.contacts.lock().iter().copied().collect()
    }

    /// How many contacts the user has.
    pub fn contact_count(&self) -> usize {
        self.contacts.lock().len()
    }

    /// Whether `id` is a contact.
    pub fn has_contact(&self, id: i64) -> bool {
        self.contacts.lock().contains(&id)
    }

    /// Returns whether the contact is new.
    pub(crate) fn add_contact(&self, id: i64) -> bool {
        self.contacts.lock().insert(id)
    }

    /// Returns whether the contact existed.
    pub(crate) fn remove_contact(&self, id: i64) -> bool {
        self.contacts.lock().remove(&id)
    }

    pub(crate) fn take_contacts(&self) -> BTreeSet<i64> {
        std::mem::take(&mut *self.contacts.lock())
    }
}

/// A live session.
#[derive(Debug)]
pub struct Session {
    /// Its id.
    pub uuid: SessionId,
    /// Its user.
    pub user: Arc<User>,
    /// Server timestamp, ns.
    pub created: i64,
    last_active: AtomicI64,
    /// The `last_active` the store has (or has been sent).
    persisted_active: AtomicI64,
    /// The write that creates the session in the store; `None` when it came from the store.
    created_in_store: Option<Arc<Commit>>,
    /// `--send-rate`'s token bucket, as GCRA keeps it: the theoretical arrival time (ns) of the
    /// next send. One atomic, no lock.
    send_tat: AtomicI64,
    /// Held polls and open streams: while any is held the session does not expire.
    holds: AtomicU32,
    /// Set once the session is closed (by a client, by expiry, with its user), so its waiters end.
    closed: AtomicBool,
    /// Cluster mode: `last_active` follows the log's clock alone, and [`Session::touch`] only
    /// notes that the session was served here, for this node's next `Touch` entry.
    log_clock: bool,
    /// Cluster mode: served on this node since the last [`Session::take_served`].
    served: AtomicBool,
}

/// `last_active` is only stored when it moved by at least this much, so a hot session's
/// polls do not all write the same cache line.
const TOUCH_GRANULARITY_NS: i64 = 1_000_000;

impl Session {
    /// A session as restored (`stored: None`) or created (`stored`: the commit that creates it).
    /// `log_clock`: cluster mode (see [`Session::touch`]).
    pub fn new(
        uuid: SessionId,
        user: Arc<User>,
        created: i64,
        last_active: i64,
        stored: Option<Arc<Commit>>,
        log_clock: bool,
    ) -> Self {
        Self {
            uuid,
            user,
            created,
            last_active: AtomicI64::new(last_active),
            persisted_active: AtomicI64::new(last_active),
            created_in_store: stored,
            send_tat: AtomicI64::new(i64::MIN),
            holds: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            log_clock,
            served: AtomicBool::new(false),
        }
    }

    /// How many held polls and streams keep the session alive now.
    pub fn holds(&self) -> u32 {
        self.holds.load(Ordering::Acquire)
    }

    pub(crate) fn hold(&self) {
        self.holds.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn release(&self, now: i64) {
        // Active until the last hold ends: the session TTL counts from now.
        self.touch(now);
        self.holds.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the session was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the session closed and wakes its user's waiters, so that held polls and streams of
    /// this session end.
    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.user.wake.notify_waiters();
    }

    /// Takes one send from the session's token bucket — refilled at `rate` per second, holding
    /// at most `rate` — at wall time `now`; or says how long until one is there. The generic cell
    /// rate algorithm: a send at `now` is allowed when the next theoretical arrival time is at
    /// most a bucket's worth ahead of `now`.
    pub fn take_send_token(&self, rate: u32, now: i64) -> Result<(), std::time::Duration> {
        let interval = 1_000_000_000 / i64::from(rate.max(1));
        let burst = interval.saturating_mul(i64::from(rate.max(1)) - 1);
        let mut tat = self.send_tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > burst {
                let wait = start - burst - now;
                return Err(std::time::Duration::from_nanos(wait.max(0) as u64));
            }
            match self.send_tat.compare_exchange_weak(tat, start + interval, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Whether the session is in the store (see [`User::is_stored`]).
    pub fn is_stored(&self) -> bool {
        self.created_in_store.as_ref().is_none_or(|c| c.outcome() == Some(Outcome::Committed))
    }

    /// When the session last polled or sent (ns).
    pub fn last_active(&self) -> i64 {
        self.last_active.load(Ordering::Relaxed)
    }

    /// Marks the session active at `now` (ns). In cluster mode it only notes that the session was
    /// served here: its activity reaches every node through this node's next `Touch` entry.
    pub fn touch(&self, now: i64) {
        if self.log_clock {
            if !self.served.load(Ordering::Relaxed) {
                self.served.store(true, Ordering::Relaxed);
            }
            return;
        }
        if now - self.last_active.load(Ordering::Relaxed) >= TOUCH_GRANULARITY_NS {
            self.last_active.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Marks the session active at `ns` exactly, never moving it back (cluster mode: `ns` comes
    /// from the log, so every node keeps the same value; no granularity, unlike
    /// [`Session::touch`]).
    pub(crate) fn mark_active(&self, ns: i64) {
        self.last_active.fetch_max(ns, Ordering::Relaxed);
    }

    /// Cluster mode: whether the session was served here (or is held open here) since the last
    /// call; clears the mark.
    pub(crate) fn take_served(&self) -> bool {
        let served = self.served.load(Ordering::Relaxed) && self.served.swap(false, Ordering::Relaxed);
        served || self.holds() > 0
    }

    /// The `last_active` to write, if it changed since the last call.
    pub(crate) fn take_unpersisted_activity(&self) -> Option<i64> {
        let now = self.last_active();
        let before = self.persisted_active.swap(now, Ordering::Relaxed);
        (before != now).then_some(now)
    }

    /// The session as the API shows it.
    pub fn view(&self) -> SessionView {
        SessionView {
            uuid: self.uuid.to_string(),
            created_utc: render::timestamp(self.created),
            last_active_utc: render::timestamp(self.last_active()),
            user_id: self.user.id,
            user: self.user.view(),
        }
    }
}

/// `User` in the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    /// Server-chosen id.
    pub id: i64,
    /// External id.
    pub uuid: String,
    /// Display name.
    pub display_name: String,
}

/// `Session` in the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    /// 32 lowercase hex digits.
    pub uuid: String,
    /// RFC 3339 with nanoseconds.
    pub created_utc: String,
    /// RFC 3339 with nanoseconds.
    pub last_active_utc: String,
    /// The session's user id.
    pub user_id: i64,
    /// The session's user.
    pub user: UserView,
}

/// `Contact` in the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContactView {
    /// The contact.
    pub user: UserView,
    /// The contact has a live session.
    pub is_online: bool,
    /// Always `false`: nothing in the API sets it (kept for the original's shape).
    pub is_typing: bool,
}
