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

use std::time::Duration;

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// One mutation, in the order the engine made it. Every op is idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Errors at the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no store chatbus knows.
    #[error("unsupported database url {0:?} (expected sqlite:PATH, postgres://..., or memory:)")]
    BadUrl(String),
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Anything else, already described with its context on one line (PostgreSQL's errors with
    /// the server and the call, a corrupt row, a failed migration).
    #[error("{0}")]
    Other(String),
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
}

/// Opens (and migrates) the store a `--database-url` names.
pub fn open(url: &str, options: &StoreOptions) -> Result<Box<dyn Store>, StoreError> {
    if url == "memory:" || url == "memory" {
        Ok(Box::new(memory::MemoryStore))
    } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(StoreError::BadUrl(url.to_owned()));
        }
        Ok(Box::new(sqlite::SqliteStore::open(path, options)?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(postgres::PostgresStore::open(url, options)?))
    } else {
        Err(StoreError::BadUrl(url.to_owned()))
    }
}
