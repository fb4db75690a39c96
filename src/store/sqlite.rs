//! The embedded default store: one SQLite file (rusqlite, bundled), WAL journal.
//!
//! `synchronous=NORMAL` by default: a commit survives a crash of the process (the WAL is in the
//! OS's hands), which is what write-behind needs. `--durable-acks` switches to
//! `synchronous=FULL`, so an acknowledged write survives a power loss too.

use super::migrations::{self, Migration};
use super::{ErrorKind, LogPosition, MessageRow, Op, SessionRow, Snapshot, Store, StoreError, StoreOptions, UserRow};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::new(kind_of(&e), format!("sqlite: {e}"))
    }
}

/// What an SQLite error says about the store (see [`ErrorKind`]).
fn kind_of(e: &rusqlite::Error) -> ErrorKind {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DiskFull => ErrorKind::Full,
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => ErrorKind::Busy,
            ErrorCode::ReadOnly | ErrorCode::PermissionDenied => ErrorKind::ReadOnly,
            ErrorCode::CannotOpen => ErrorKind::Unreachable,
            ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch => ErrorKind::Rejected,
            _ => ErrorKind::Other,
        },
        rusqlite::Error::ToSqlConversionFailure(_) => ErrorKind::Rejected,
        _ => ErrorKind::Other,
    }
}

/// A 128-bit id as the text column holds it: 32 lowercase hex digits, as the API writes it.
fn hex(uuid: u128) -> String {
    format!("{uuid:032x}")
}

/// A text column back into a 128-bit id; `None` for anything but 32 hex digits.
fn parse_hex(s: &str) -> Option<u128> {
    let lower_hex = s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (s.len() == 32 && lower_hex).then(|| u128::from_str_radix(s, 16).ok())?
}

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database file at `path`.
    pub fn open(path: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::other(format!("sqlite: could not enable WAL (got {mode})")));
        }
        conn.pragma_update(None, "synchronous", if options.durable { "FULL" } else { "NORMAL" })?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::run("sqlite", &mut Migrations(&mut conn), migrations::SQLITE)?;
        Ok(Self { conn })
    }
}

/// The connection as the migration runner sees it.
struct Migrations<'a>(&'a mut Connection);

impl migrations::Target for Migrations<'_> {
    fn execute(&mut self, sql: &str) -> Result<(), String> {
        self.0.execute_batch(sql).map_err(|e| e.to_string())
    }

    fn apply_once(&mut self, m: &Migration, applied_ns: i64) -> Result<bool, String> {
        let mut run = || -> rusqlite::Result<bool> {
            let tx = self.0.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if tx.query_row(migrations::IS_APPLIED, [m.version], |_| Ok(())).optional()?.is_some() {
                return Ok(false);
            }
            tx.execute_batch(m.sql)?;
            tx.execute(migrations::RECORD, params![m.version, m.name, applied_ns])?;
            tx.commit()?;
            Ok(true)
        };
        run().map_err(|e| e.to_string())
    }
}

fn bad_row(what: &str) -> StoreError {
    StoreError::other(format!("sqlite: corrupt row in {what}"))
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let c = &self.conn;
        let mut snap = Snapshot::default();
        let mut st = c.prepare("SELECT id, uuid, display_name, left_ns FROM users ORDER BY id")?;
        snap.users = st
            .query_map([], |r| {
                Ok(UserRow { id: r.get(0)?, uuid: r.get(1)?, display_name: r.get(2)?, left_ns: r.get(3)? })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare("SELECT uuid, user_id, created_ns, last_active_ns FROM sessions ORDER BY created_ns")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        for row in rows {
            let (uuid, user_id, created_ns, last_active_ns) = row?;
            let uuid = parse_hex(&uuid).ok_or_else(|| bad_row("sessions"))?;
            snap.sessions.push(SessionRow { uuid, user_id, created_ns, last_active_ns });
        }
        snap.max_user_id = c
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'users'", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let mut st = c.prepare("SELECT user_a, user_b FROM contacts ORDER BY user_a, user_b")?;
        snap.contacts = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        let mut st = c.prepare(
            "SELECT created_ns, uuid, sender_id, receiver_id, body, attachments FROM messages ORDER BY created_ns",
        )?;
        let rows =
            st.query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
        for row in rows {
            let (created_ns, uuid, sender_id, receiver_id, body, attachments) = row?;
            let uuid = parse_hex(&uuid).ok_or_else(|| bad_row("messages"))?;
            snap.messages.push(MessageRow { uuid, created_ns, sender_id, receiver_id, body, attachments });
        }
        let mut st = c.prepare("SELECT stream, seq, created_ns, user_id FROM log_position ORDER BY stream")?;
        snap.log_positions = st
            .query_map([], |r| {
                Ok((r.get(0)?, LogPosition { seq: r.get(1)?, created_ns: r.get(2)?, user_id: r.get(3)? }))
            })?
            .collect::<Result<_, _>>()?;
        Ok(snap)
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Cluster mode: the positions held, read inside this (immediate, so exclusive) transaction.
        let streams = super::logged_streams(ops);
        let mut held = Vec::with_capacity(streams.len());
        for stream in streams {
            let seq: Option<i64> = tx
                .prepare_cached("SELECT seq FROM log_position WHERE stream = ?1")?
                .query_row([stream], |r| r.get(0))
                .optional()?;
            held.push((stream, seq.unwrap_or(0)));
        }
        let logged = (!held.is_empty()).then(|| super::logged_writes(ops, &held));
        let list: Box<dyn Iterator<Item = &Op>> = match &logged {
            Some(l) => Box::new(l.ops.iter().copied()),
            None => Box::new(ops.iter()),
        };
        for op in list {
            match op {
                Op::UpsertUser(u) => {
                    // Two statements, not ON CONFLICT(id): a retried batch that deleted a user and
                    // gave its uuid to a new id must not fail on the uuid forever.
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO users (id, uuid, display_name, left_ns) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![u.id, u.uuid, u.display_name, u.left_ns])?;
                    tx.prepare_cached("UPDATE users SET display_name = ?2 WHERE id = ?1")?
                        .execute(params![u.id, u.display_name])?;
                }
                Op::DeleteUser { id } => {
                    tx.prepare_cached("DELETE FROM users WHERE id = ?1")?.execute([id])?;
                }
                Op::InsertSession(s) => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO sessions (uuid, user_id, created_ns, last_active_ns)
                         SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM users WHERE id = ?2)",
                    )?
                    .execute(params![hex(s.uuid), s.user_id, s.created_ns, s.last_active_ns])?;
                }
                Op::DeleteSession { uuid } => {
                    tx.prepare_cached("DELETE FROM sessions WHERE uuid = ?1")?.execute([hex(*uuid)])?;
                }
                Op::TouchSessions(touches) => {
                    let mut st = tx.prepare_cached(
                        "UPDATE sessions SET last_active_ns = ?2 WHERE uuid = ?1 AND last_active_ns < ?2",
                    )?;
                    for (uuid, ns) in touches {
                        st.execute(params![hex(*uuid), ns])?;
                    }
                }
                Op::AddContact { a, b } => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO contacts (user_a, user_b)
                         SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM users WHERE id = ?1)
                                         AND EXISTS (SELECT 1 FROM users WHERE id = ?2)",
                    )?
                    .execute([a, b])?;
                }
                Op::RemoveContact { a, b } => {
                    tx.prepare_cached("DELETE FROM contacts WHERE user_a = ?1 AND user_b = ?2")?.execute([a, b])?;
                }
                Op::Message(m) => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO messages (created_ns, uuid, sender_id, receiver_id, body, attachments)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        m.created_ns,
                        hex(m.uuid),
                        m.sender_id,
                        m.receiver_id,
                        m.body,
                        m.attachments
                    ])?;
                }
                // Flattened by `logged_writes`; an entry nested in an entry is never made.
                Op::Logged { .. } => {}
                Op::Watermark { user_id, left_ns } => {
                    tx.prepare_cached(
                        "UPDATE users SET left_ns = ?2 WHERE id = ?1 AND (left_ns IS NULL OR left_ns < ?2)",
                    )?
                    .execute([user_id, left_ns])?;
                }
            }
        }
        for (stream, p) in logged.iter().flat_map(|l| l.positions.iter()) {
            tx.prepare_cached(
                "INSERT INTO log_position (stream, seq, created_ns, user_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stream) DO UPDATE
                 SET seq = excluded.seq, created_ns = excluded.created_ns, user_id = excluded.user_id
                 WHERE log_position.seq < excluded.seq",
            )?
            .execute(params![stream, p.seq, p.created_ns, p.user_id])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn cull_messages(&mut self, before_ns: i64, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // created_ns is the rowid: this deletes a bounded prefix of the table.
        let n = self
            .conn
            .prepare_cached(
                "DELETE FROM messages WHERE created_ns IN
                 (SELECT created_ns FROM messages WHERE created_ns < ?1 ORDER BY created_ns LIMIT ?2)",
            )?
            .execute([before_ns, limit])?;
        Ok(n)
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn agree_settings(&mut self, stream: &str, settings: &str) -> Result<String, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO cluster_settings (stream, settings) VALUES (?1, ?2) ON CONFLICT (stream) DO NOTHING",
            params![stream, settings],
        )?;
        let recorded: String =
            tx.query_row("SELECT settings FROM cluster_settings WHERE stream = ?1", [stream], |r| r.get(0))?;
        tx.commit()?;
        Ok(recorded)
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(migrations::PROBE, [])?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_idempotent_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let path = path.to_str().unwrap();
        let mut s = SqliteStore::open(path, &StoreOptions::default()).unwrap();
        let user = |id: i64| UserRow { id, uuid: format!("u{id}"), display_name: String::new(), left_ns: None };
        let msg = MessageRow {
            uuid: 0xabc,
            created_ns: 1_000_000_000_123,
            sender_id: 1,
            receiver_id: 2,
            body: "hi".into(),
            attachments: Some("{\"a\":1}".into()),
        };
        let session = SessionRow { uuid: u128::MAX - 5, user_id: 1, created_ns: 5, last_active_ns: 6 };
        let batch = vec![
            Op::UpsertUser(user(1)),
            Op::UpsertUser(user(2)),
            Op::InsertSession(session.clone()),
            Op::AddContact { a: 1, b: 2 },
            Op::Message(msg.clone()),
            Op::TouchSessions(vec![(session.uuid, 9)]),
            Op::Watermark { user_id: 2, left_ns: 77 },
        ];
        s.write(&batch).unwrap();
        s.write(&batch).unwrap(); // a retried batch changes nothing
                                  // A committed batch that deleted a user and gave its uuid to a new id, applied again.
        let reuse = vec![
            Op::UpsertUser(user(3)),
            Op::DeleteUser { id: 3 },
            Op::UpsertUser(UserRow { id: 4, uuid: "u3".into(), display_name: String::new(), left_ns: None }),
        ];
        s.write(&reuse).unwrap();
        s.write(&reuse).unwrap();
        s.write(&[Op::DeleteUser { id: 4 }]).unwrap();
        drop(s);
        let mut s = SqliteStore::open(path, &StoreOptions::default()).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.users.len(), 2);
        assert_eq!(snap.users[1].left_ns, Some(77));
        assert_eq!(snap.sessions, vec![SessionRow { last_active_ns: 9, ..session }]);
        assert_eq!(snap.contacts, vec![(1, 2)]);
        assert_eq!(snap.messages, vec![msg]);
        // Deleting a user cascades to sessions and contacts; a session for a gone user is ignored.
        s.write(&[
            Op::DeleteUser { id: 1 },
            Op::InsertSession(SessionRow { uuid: 1, user_id: 1, created_ns: 1, last_active_ns: 1 }),
        ])
        .unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.users.len(), 1);
        assert_eq!(snap.max_user_id, 4, "the highest id ever stored is remembered (3 and 4 were deleted)");
        assert!(snap.sessions.is_empty() && snap.contacts.is_empty());
        assert_eq!(snap.messages.len(), 1, "messages outlive their users");
        assert_eq!(s.cull_messages(2_000_000_000_000, 10).unwrap(), 1);
        assert!(s.load().unwrap().messages.is_empty());
    }
}
