//! Reaching PostgreSQL: dialing (and waiting for a server that is starting), the per-connection
//! setup (staging table, prepared statements), the one connection the store keeps, and telling
//! a lost connection from a failed statement.

use super::{ErrorKind, StoreError};
use std::error::Error as _;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Statement};

/// Longest a ping may take (it backs `/readyz`).
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one connection attempt may take (TCP connect and startup).
pub(super) const CONNECT_ATTEMPT: Duration = Duration::from_secs(5);

/// The staging table the batch's messages are copied into, one per connection. `ON COMMIT DELETE
/// ROWS` empties it at every commit and a rollback takes its rows with it, so it never carries
/// rows from one batch into the next. Temporary tables are not WAL-logged.
const CREATE_STAGING: &str = "CREATE TEMPORARY TABLE IF NOT EXISTS chatbus_messages_in (
        created_ns BIGINT NOT NULL, uuid UUID NOT NULL, sender_id BIGINT NOT NULL,
        receiver_id BIGINT NOT NULL, body TEXT NOT NULL, attachments TEXT
    ) ON COMMIT DELETE ROWS";

/// The statements a connection prepares once, at connect.
pub(super) struct Statements {
    /// Insert the user; if its id exists, set the display name. A conflict on `uuid` alone (the
    /// retry of a committed batch that deleted a user and gave its uuid to a new id) is skipped
    /// too: the rest of that batch deletes the row anyway, so re-applying converges instead of
    /// failing forever. Raises `user_id_high` to the id.
    pub(super) upsert_user: Statement,
    pub(super) delete_user: Statement,
    pub(super) insert_session: Statement,
    pub(super) delete_session: Statement,
    /// One statement per `TouchSessions` op; the newest time per session wins, never moving one back.
    pub(super) touch_sessions: Statement,
    pub(super) add_contact: Statement,
    pub(super) remove_contact: Statement,
    pub(super) watermark: Statement,
    /// Raise the log position of a stream (never lower it).
    pub(super) log_position: Statement,
    /// Makes sure a stream's position row exists (at 0), so that it can be locked.
    pub(super) log_position_row: Statement,
    /// Locks a stream's position row for the transaction and reads its `seq`.
    pub(super) log_position_lock: Statement,
    /// Messages straight into the table (fails on a duplicate).
    pub(super) copy_messages: Statement,
    /// Messages into the staging table, and from there into the table skipping duplicates.
    pub(super) copy_staged: Statement,
    pub(super) merge_staged: Statement,
    pub(super) cull: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            upsert_user: client
                .prepare(
                    "WITH inserted AS (
                         INSERT INTO users (id, uuid, display_name, left_ns) VALUES ($1, $2, $3, $4)
                         ON CONFLICT DO NOTHING RETURNING id),
                     high AS (UPDATE user_id_high SET id = $1 WHERE id < $1)
                     UPDATE users SET display_name = $3
                      WHERE id = $1 AND display_name <> $3 AND NOT EXISTS (SELECT 1 FROM inserted)",
                )
                .await?,
            delete_user: client.prepare("DELETE FROM users WHERE id = $1").await?,
            insert_session: client
                .prepare(
                    "INSERT INTO sessions (uuid, user_id, created_ns, last_active_ns)
                     SELECT $1::uuid, $2::bigint, $3::bigint, $4::bigint
                      WHERE EXISTS (SELECT 1 FROM users WHERE id = $2)
                     ON CONFLICT (uuid) DO NOTHING",
                )
                .await?,
            delete_session: client.prepare("DELETE FROM sessions WHERE uuid = $1").await?,
            touch_sessions: client
                .prepare(
                    "UPDATE sessions s SET last_active_ns = t.ns
                       FROM (SELECT u, max(n) AS ns FROM unnest($1::uuid[], $2::bigint[]) AS x(u, n)
                              GROUP BY u) t
                      WHERE s.uuid = t.u AND s.last_active_ns < t.ns",
                )
                .await?,
            add_contact: client
                .prepare(
                    "INSERT INTO contacts (user_a, user_b)
                     SELECT $1::bigint, $2::bigint
                      WHERE EXISTS (SELECT 1 FROM users WHERE id = $1)
                        AND EXISTS (SELECT 1 FROM users WHERE id = $2)
                     ON CONFLICT (user_a, user_b) DO NOTHING",
                )
                .await?,
            remove_contact: client.prepare("DELETE FROM contacts WHERE user_a = $1 AND user_b = $2").await?,
            watermark: client
                .prepare("UPDATE users SET left_ns = $2 WHERE id = $1 AND (left_ns IS NULL OR left_ns < $2)")
                .await?,
            log_position: client
                .prepare(
                    "INSERT INTO log_position (stream, seq, created_ns, user_id) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (stream) DO UPDATE
                     SET seq = EXCLUDED.seq, created_ns = EXCLUDED.created_ns, user_id = EXCLUDED.user_id
                     WHERE log_position.seq < EXCLUDED.seq",
                )
                .await?,
            log_position_row: client
                .prepare(
                    "INSERT INTO log_position (stream, seq, created_ns, user_id) VALUES ($1, 0, 0, 0)
                     ON CONFLICT (stream) DO NOTHING",
                )
                .await?,
            log_position_lock: client
                .prepare("SELECT seq FROM log_position WHERE stream = $1 FOR UPDATE")
                .await?,
            copy_messages: client
                .prepare(
                    "COPY messages (created_ns, uuid, sender_id, receiver_id, body, attachments) FROM STDIN (FORMAT binary)",
                )
                .await?,
            copy_staged: client
                .prepare(
                    "COPY pg_temp.chatbus_messages_in (created_ns, uuid, sender_id, receiver_id, body, attachments)
                     FROM STDIN (FORMAT binary)",
                )
                .await?,
            // ORDER BY: the keys arrive in index order, so the B-tree grows at its right edge.
            merge_staged: client
                .prepare(
                    "INSERT INTO messages (created_ns, uuid, sender_id, receiver_id, body, attachments)
                     SELECT created_ns, uuid, sender_id, receiver_id, body, attachments
                       FROM pg_temp.chatbus_messages_in ORDER BY created_ns
                     ON CONFLICT (created_ns) DO NOTHING",
                )
                .await?,
            cull: client
                .prepare(
                    "DELETE FROM messages WHERE created_ns IN
                         (SELECT created_ns FROM messages WHERE created_ns < $1 ORDER BY created_ns LIMIT $2)",
                )
                .await?,
        })
    }
}

/// The task driving a connection's socket; aborted when dropped, so a dropped connection never
/// lingers on the runtime.
pub(super) struct ConnectionTask(Option<JoinHandle<()>>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// One live connection, set up for writing.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) statements: Statements,
    pub(super) task: ConnectionTask,
}

impl Conn {
    /// Says goodbye to the server (a `Terminate` message) instead of just closing the socket.
    pub(super) async fn close(mut self) {
        let task = self.task.0.take();
        drop(self);
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

/// What a call needs to reach the server: the configuration and the connection, if there is one.
pub(super) struct Link {
    pub(super) config: Config,
    pub(super) durable: bool,
    /// `host:port/dbname as user`, for messages.
    pub(super) target: String,
    pub(super) conn: Option<Conn>,
}

impl Link {
    /// The connection, dialing one if there is none; and whether it was already there.
    pub(super) async fn connection(&mut self) -> Result<(&mut Conn, bool), StoreError> {
        let reused = self.conn.is_some();
        let conn = match &mut self.conn {
            Some(conn) => conn,
            empty => {
                let fresh = connect(&self.config, self.durable).await.map_err(|e| {
                    StoreError::new(
                        ErrorKind::Unreachable,
                        format!("postgres: connecting to {}: {}", self.target, describe(&e)),
                    )
                })?;
                empty.insert(fresh)
            }
        };
        Ok((conn, reused))
    }

    /// Judges how a call went: `Ok(Some(_))` done; `Ok(None)` the reused connection turned out
    /// dead, so run the call once more on a fresh one (every call is safe to repeat); `Err` failed.
    /// On any error the connection is dropped, so the next call starts from a clean session.
    pub(super) fn settle<T>(
        &mut self,
        what: &str,
        reused: bool,
        outcome: Result<Result<T, tokio_postgres::Error>, Duration>,
    ) -> Result<Option<T>, StoreError> {
        let error = match outcome {
            Ok(Ok(value)) => return Ok(Some(value)),
            Ok(Err(error)) => error,
            Err(limit) => {
                self.conn = None;
                return Err(StoreError::new(
                    ErrorKind::Unreachable,
                    format!("postgres: {what}: no answer from {} within {limit:?}; reconnecting", self.target),
                ));
            }
        };
        self.conn = None;
        if reused && connection_lost(&error) {
            tracing::info!(error = %describe(&error), "postgres connection lost; reconnecting");
            return Ok(None);
        }
        Err(StoreError::new(kind_of(&error), format!("postgres: {what}: {}", describe(&error))))
    }
}

/// Awaits `future` for at most `limit`; `Err(limit)` when it took longer.
pub(super) async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Result<T, Duration> {
    tokio::time::timeout(limit, future).await.map_err(|_| limit)
}

/// Dials, retrying while the server is unreachable or starting, for up to `wait` (at start).
pub(super) async fn dial_waiting(link: &Link, wait: Duration) -> Result<(Client, ConnectionTask), StoreError> {
    let deadline = Instant::now() + wait;
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match dial(&link.config).await {
            Ok(dialed) => return Ok(dialed),
            Err(e) if retryable(&e) && Instant::now() + backoff < deadline => {
                if attempts == 1 {
                    tracing::warn!(server = %link.target, error = %describe(&e), ?wait, "PostgreSQL is not reachable yet; waiting for it");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                let tries = if attempts > 1 { format!(" ({attempts} attempts in {wait:?})") } else { String::new() };
                return Err(StoreError::new(
                    kind_of(&e),
                    format!("postgres: cannot connect to {}{tries}: {}", link.target, describe(&e)),
                ));
            }
        }
    }
}

/// Opens a connection and spawns the task that drives it.
async fn dial(config: &Config) -> Result<(Client, ConnectionTask), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %describe(&e), "postgres connection closed");
        }
    });
    Ok((client, ConnectionTask(Some(task))))
}

/// Per-connection state: the durability setting, the staging table, the prepared statements.
pub(super) async fn setup(client: &Client, durable: bool) -> Result<Statements, tokio_postgres::Error> {
    if durable {
        // The server's default, unless someone turned it off for speed: an acknowledged write
        // must be on disk when COMMIT returns.
        client.batch_execute("SET synchronous_commit = on").await?;
    }
    client.batch_execute(CREATE_STAGING).await?;
    Statements::prepare(client).await
}

/// A fresh connection, set up for writing (the schema is there: `open` migrated it).
async fn connect(config: &Config, durable: bool) -> Result<Conn, tokio_postgres::Error> {
    let (client, task) = dial(config).await?;
    let statements = setup(&client, durable).await?;
    Ok(Conn { client, statements, task })
}

/// Whether `e` says the connection is gone (rather than that a statement failed).
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        Some(db) => {
            matches!(db.severity(), "FATAL" | "PANIC")
                || [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW]
                    .contains(db.code())
        }
        None => e.source().is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// What a PostgreSQL error says about the store (see [`ErrorKind`]), by SQLSTATE class.
pub(super) fn kind_of(e: &tokio_postgres::Error) -> ErrorKind {
    if connection_lost(e) {
        return ErrorKind::Unreachable;
    }
    let Some(code) = e.code() else { return ErrorKind::Other };
    let code = code.code();
    match &code[..2] {
        _ if code == SqlState::DISK_FULL.code() => ErrorKind::Full,
        _ if code == SqlState::READ_ONLY_SQL_TRANSACTION.code() => ErrorKind::ReadOnly,
        _ if code == SqlState::LOCK_NOT_AVAILABLE.code() => ErrorKind::Busy,
        // Connection exceptions, operator intervention (shutdown, cannot connect now).
        "08" | "57" => ErrorKind::Unreachable,
        // Insufficient resources, transaction rollback (serialization failure, deadlock).
        "53" | "40" => ErrorKind::Busy,
        // Data exceptions (e.g. invalid byte sequence for encoding "UTF8": 0x00), integrity
        // constraint violations: the data itself is refused.
        "22" | "23" => ErrorKind::Rejected,
        _ => ErrorKind::Other,
    }
}

/// Whether a failed connection attempt is worth repeating while waiting for the server: it was
/// unreachable, starting or shutting down, or full — not a wrong password or a missing database.
fn retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
        ]
        .contains(code),
        None => e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// `e` with its causes, on one line (tokio-postgres' own `Display` shows only the outermost
/// layer, e.g. just "db error").
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', "; ")
}

/// `host:port/dbname as user` for messages; never the password.
pub(super) fn target(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() { "localhost:5432".to_owned() } else { hosts.join(",") };
    let user = config.get_user().unwrap_or("?");
    let db = config.get_dbname().unwrap_or(user);
    format!("{hosts}/{db} as {user}")
}
