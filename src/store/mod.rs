//! Persistence: the [`Store`] abstraction and the stores behind it.
//!
//! A store knows nothing of the engine: it receives an ordered stream of [`Op`]s from the
//! [`crate::writer`] thread, in batches, and hands a [`Snapshot`] back at start. Both stores apply
//! a batch in one transaction, and every op is idempotent, so a batch whose commit outcome is
//! unknown can simply be applied again.
//!
//! - [`sqlite`]: the embedded default (`sqlite:PATH`), rusqlite with WAL.
//! - [`postgres`]: `postgres://…`, tokio-postgres with binary COPY.
//! - [`memory`]: `memory:`, keeps nothing; for benchmarks.
//!
//! Schemas are versioned SQL files under `migrations/<store>/`, embedded at build time and
//! applied at open by one runner ([`migrations`]).

pub mod memory;
pub mod migrations;
pub mod postgres;
pub mod sqlite;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    /// Server-chosen positive id.
    pub id: i64,
    /// The client's external id.
    pub uuid: String,
    /// Display name, `""` when not given.
    pub display_name: String,
    /// Newest message timestamp (ns) culled from this user's mailbox, if any: the part of the
    /// mailbox's gap watermark that the messages table can no longer tell.
    pub left_ns: Option<i64>,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    /// 128 random bits; rendered as 32 lowercase hex digits.
    pub uuid: u128,
    /// The session's user.
    pub user_id: i64,
    /// Server timestamp, ns.
    pub created_ns: i64,
    /// Server timestamp, ns; written in batches.
    pub last_active_ns: i64,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRow {
    /// 128 random bits.
    pub uuid: u128,
    /// Server timestamp, ns; unique across the server (the clock is strictly increasing).
    pub created_ns: i64,
    /// Sending user.
    pub sender_id: i64,
    /// Receiving user.
    pub receiver_id: i64,
    /// Message text.
    pub body: String,
    /// Attachments as compact JSON text, `None` for `null`.
    pub attachments: Option<String>,
}

/// How far a store holds a cluster's log (see `crate::cluster`): every entry up to `seq` is
/// written; `created_ns` and `user_id` are the sequencer's state after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    /// The last stream sequence written.
    pub seq: i64,
    /// The last `created_ns` handed out by then.
    pub created_ns: i64,
    /// The last user id handed out by then.
    pub user_id: i64,
}

/// What a store writes of a batch that holds [`Op::Logged`] entries (cluster mode): see
/// [`logged_writes`].
#[derive(Debug, Default)]
pub struct LoggedWrites<'a> {
    /// The ops to write, in order: every op outside an entry, and the ops of every entry past the
    /// position the store holds for its stream.
    pub ops: Vec<&'a Op>,
    /// The position to raise each stream's row to: its last entry in the batch, if past the held one.
    pub positions: Vec<(&'a str, LogPosition)>,
}

/// The streams whose entries `ops` holds, each once: what a store must look up (and lock) the
/// held position of before [`logged_writes`]. Empty for a batch without entries, the common case,
/// which costs one pass and no allocation.
pub fn logged_streams(ops: &[Op]) -> Vec<&str> {
    let mut streams: Vec<&str> = Vec::new();
    for op in ops {
        if let Op::Logged { stream, .. } = op {
            if !streams.contains(&stream.as_str()) {
                streams.push(stream);
            }
        }
    }
    streams
}

/// Cluster mode: what to write of `ops` when the store holds `held` (stream, position seq) — the
/// entries at or below a stream's held position were written already, by this node or another,
/// and are skipped whole; the others' ops are written in order, and the stream's position raised
/// to the last of them. So every entry's rows are written once, by whichever node's batch got to
/// it first, and the store always holds exactly the state after its position (see
/// `crate::cluster`).
pub fn logged_writes<'a>(ops: &'a [Op], held: &[(&str, i64)]) -> LoggedWrites<'a> {
    let mut out = LoggedWrites { ops: Vec::with_capacity(ops.len()), positions: Vec::new() };
    for op in ops {
        let Op::Logged { stream, position, ops: inner } = op else {
            out.ops.push(op);
            continue;
        };
        let held_seq = held.iter().find(|(s, _)| *s == stream.as_str()).map_or(0, |(_, seq)| *seq);
        let raised = out.positions.iter().find(|(s, _)| *s == stream.as_str()).map_or(held_seq, |(_, p)| p.seq);
        if position.seq <= raised {
            continue;
        }
        out.ops.extend(inner.iter());
        match out.positions.iter_mut().find(|(s, _)| *s == stream.as_str()) {
            Some((_, p)) => *p = *position,
            None => out.positions.push((stream, *position)),
        }
    }
    out
}

/// One mutation, in the order the engine made it. Every op is idempotent. Serialisable, for the
/// spill and dead-letter files (JSON lines, one op each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Insert the user, or update its display name.
    UpsertUser(UserRow),
    /// Delete the user with its sessions and contacts (its messages stay).
    DeleteUser {
        /// The user.
        id: i64,
    },
    /// Insert the session (nothing if it exists or its user is gone).
    InsertSession(SessionRow),
    /// Delete the session.
    DeleteSession {
        /// The session.
        uuid: u128,
    },
    /// Batched `last_active` updates: `(session uuid, last_active_ns)`; never moves one back.
    TouchSessions(Vec<(u128, i64)>),
    /// Make `a` and `b` contacts (`a < b`; nothing if either user is gone).
    AddContact {
        /// Lower user id.
        a: i64,
        /// Higher user id.
        b: i64,
    },
    /// Remove the contact pair (`a < b`).
    RemoveContact {
        /// Lower user id.
        a: i64,
        /// Higher user id.
        b: i64,
    },
    /// Insert the message (nothing if a row with its timestamp exists).
    Message(MessageRow),
    /// Cluster mode: the writes of one entry of `stream`'s log, as this node applied it, and the
    /// position after it. A store writes them, and raises its position for the stream to
    /// `position`, only if it holds the stream below `position.seq` ([`logged_writes`]).
    Logged {
        /// The log (JetStream stream name).
        stream: String,
        /// The position after the entry.
        position: LogPosition,
        /// The entry's writes, in order (never an `Op::Logged`).
        ops: Vec<Op>,
    },
    /// Raise the user's culled-message watermark (`users.left_ns`) to at least `left_ns`.
    Watermark {
        /// The user.
        user_id: i64,
        /// Newest culled message timestamp.
        left_ns: i64,
    },
}

/// Everything a store holds, for the engine to restore at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// All users.
    pub users: Vec<UserRow>,
    /// All sessions.
    pub sessions: Vec<SessionRow>,
    /// All contact pairs `(a, b)` with `a < b`.
    pub contacts: Vec<(i64, i64)>,
    /// All messages, oldest first.
    pub messages: Vec<MessageRow>,
    /// The highest user id ever stored, deleted users included: ids are never reused.
    pub max_user_id: i64,
    /// Cluster mode: how far the store holds each log (stream name, position).
    pub log_positions: Vec<(String, LogPosition)>,
}

/// How a store should behave, from the command line.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// `--durable-acks`: commit so that an acknowledged write survives a crash of the process
    /// *and* of the machine where the store allows (SQLite `synchronous=FULL`).
    pub durable: bool,
    /// How long to keep trying to reach a store that is down at start (`0`: fail at once).
    pub connect_timeout: Duration,
}

/// What kind of failure a store reported: it decides what the writer does next (see
/// [`crate::writer`]) and labels `store_errors_total` and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The store cannot be reached: connection refused or lost, server starting or stopping, no
    /// answer in time. Retried with backoff.
    Unreachable,
    /// No space left (disk or quota full). Retried with backoff, in smaller batches.
    Full,
    /// A lock is held elsewhere, or the server is short of resources. Retried with backoff.
    Busy,
    /// The store is read-only (file permissions, a read-only transaction or standby). Retried
    /// with backoff; at start, a one-line error.
    ReadOnly,
    /// The store refused the data itself (bad encoding, a violated constraint): retrying the same
    /// op can never succeed. The writer bisects the batch and sets the op aside.
    Rejected,
    /// Anything else (an I/O error, a corrupt file). Retried with backoff.
    Other,
}

impl ErrorKind {
    /// The label in metrics and the word in messages.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Full => "full",
            ErrorKind::Busy => "busy",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Other => "other",
        }
    }

    /// Every kind, for metrics resolved up front.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Unreachable,
        ErrorKind::Full,
        ErrorKind::Busy,
        ErrorKind::ReadOnly,
        ErrorKind::Rejected,
        ErrorKind::Other,
    ];
}

/// An error at the store boundary: its [`ErrorKind`] and one line saying what failed, doing what,
/// where (never a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: ErrorKind,
    message: String,
}

impl StoreError {
    /// An error of `kind` described by `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// An error no retry or operator action at the store explains (a bad URL, a corrupt row).
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, message)
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// A URL no store understands.
fn bad_url(url: &str) -> StoreError {
    StoreError::other(format!("unsupported database url {url:?} (expected sqlite:PATH, postgres://..., or memory:)"))
}

/// A place the engine's state lives between runs. Used from one thread, the writer's.
pub trait Store: Send {
    /// A short name for logs and metrics (`sqlite`, `postgres`, `memory`).
    fn kind(&self) -> &'static str;

    /// Reads everything back (see [`Snapshot`]).
    fn load(&mut self) -> Result<Snapshot, StoreError>;

    /// Applies `ops`, in order, in one transaction. On error nothing of the batch may be
    /// assumed written, and applying it again must be harmless.
    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError>;

    /// Deletes at most `limit` messages created before `before_ns`, in a transaction of its
    /// own; returns how many went. The writer calls it repeatedly between batches, so culling
    /// never holds the store for long.
    fn cull_messages(&mut self, before_ns: i64, limit: usize) -> Result<usize, StoreError>;

    /// Cheap check that the store is reachable (for `/readyz` after a failure).
    fn ping(&mut self) -> Result<(), StoreError>;

    /// Cluster mode: records `settings` as those of `stream`'s cluster unless settings are
    /// recorded already, and returns what is recorded then — the first node's (see
    /// `crate::cluster::node`). A store no cluster can share (`memory:`) records nothing.
    fn agree_settings(&mut self, stream: &str, settings: &str) -> Result<String, StoreError> {
        let _ = stream;
        Ok(settings.to_owned())
    }

    /// Proves the store writable: commits a write (one that changes nothing a reader sees). A
    /// store that opens but cannot be written (a read-only file, a read-only server) fails here,
    /// at start, instead of acknowledging writes it will never hold.
    fn probe(&mut self) -> Result<(), StoreError>;
}

/// Opens (and migrates) the store a `--database-url` names.
pub fn open(url: &str, options: &StoreOptions) -> Result<Box<dyn Store>, StoreError> {
    if url == "memory:" || url == "memory" {
        Ok(Box::new(memory::MemoryStore))
    } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(bad_url(url));
        }
        Ok(Box::new(sqlite::SqliteStore::open(path, options)?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(postgres::PostgresStore::open(url, options)?))
    } else {
        Err(bad_url(url))
    }
}
