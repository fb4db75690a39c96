//! `postgres://…`: the PostgreSQL store, on tokio-postgres.
//!
//! # What a caller can rely on
//!
//! - **Open** connects (retrying for up to `StoreOptions::connect_timeout` while the server is
//!   unreachable or starting up; `0`: one attempt), then applies the migrations in
//!   `migrations/postgres/` under an advisory lock, so two instances starting at once apply each
//!   version exactly once. Any failure is one line naming the server (never the password).
//! - **Write** applies a batch in one transaction. Every op but `Message` runs in batch order,
//!   pipelined (all statements go out back to back; one round trip, not one per op). The
//!   batch's messages then go in with one **binary COPY** straight into `messages`. Copying the
//!   messages last is safe: `messages` has no foreign keys and no other op reads or writes it.
//! - **Idempotence**: every other statement is written to be harmless when repeated, and a COPY
//!   that hits a message already stored (`created_ns` is the primary key, so it can't write one
//!   twice) fails the transaction; the batch is then applied again at once with its messages
//!   copied into a per-connection temporary staging table and moved over with `INSERT … SELECT
//!   … ON CONFLICT (created_ns) DO NOTHING`. So a batch whose commit outcome was unknown (the
//!   connection died during `COMMIT`) can be written again — the writer thread does exactly
//!   that — and writes nothing twice, while a first attempt, the common case, pays for a plain
//!   COPY only (the staged path moves rows ~2.5× slower).
//! - **Faults**: any error drops the connection; the next call dials a fresh one. A call that
//!   finds its reused connection dead (PostgreSQL restarted, `pg_terminate_backend`, an idle
//!   timeout) retries once at once on a fresh connection, so an idle connection lost between
//!   batches costs no failed write. A call that gets no answer within [`OP_TIMEOUT`] fails and
//!   drops the connection (a half-open socket can't stall the writer forever).
//! - **Durability**: a commit returns once PostgreSQL has it on disk (`synchronous_commit`, on by
//!   default; `--durable-acks` sets it on for the session in case the server turned it off).
//! - **Load** reads everything in one `REPEATABLE READ` snapshot with binary `COPY … TO STDOUT`,
//!   messages oldest first; the highest user id ever stored comes from `user_id_high`.
//! - **Cull** deletes at most `limit` of the oldest expired messages per call, in a statement of
//!   its own, through the primary key.
//!
//! Session state (the staging table, prepared statements) lives on the connection, so the store
//! needs a real session: a pooler in transaction mode (PgBouncer `pool_mode=transaction`) in front
//! of PostgreSQL won't do. TLS is not built in (`sslmode=require` fails at connect).
//!
//! # Why a runtime of its own
//!
//! [`Store`] is synchronous and used from one OS thread, the writer's. The store owns a
//! current-thread tokio runtime and blocks on it; the connection task runs only while a call is
//! in progress, which is all it needs. Called from inside another runtime (e.g. `open` in an
//! async `main`), it runs its future on a scoped helper thread instead, since blocking a runtime
//! thread on another runtime panics.

use super::migrations::{self, Migration};
use super::{MessageRow, Op, SessionRow, Snapshot, Store, StoreError, StoreOptions, UserRow};
use crate::clock::Clock;
use bytes::BytesMut;
use futures_util::StreamExt;
use postgres_types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};
use std::error::Error as _;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, IsolationLevel, NoTls, Statement};

/// Longest a write, a culling step or a ping may wait for PostgreSQL before the connection is
/// presumed dead and dropped. A batch takes milliseconds; this only catches half-open sockets and
/// a server that stopped answering.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a ping may take (it backs `/readyz`).
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one connection attempt may take (TCP connect and startup).
const CONNECT_ATTEMPT: Duration = Duration::from_secs(5);
/// The session-level advisory lock held while migrating: "chatbus" in ASCII. Advisory locks are
/// per database, so instances on different databases of one server don't wait for each other.
const MIGRATION_LOCK: i64 = 0x0063_6861_7462_7573;

/// Column types of the staging table and of the messages `COPY OUT`, in column order.
const MESSAGE_TYPES: [Type; 6] = [Type::INT8, Type::UUID, Type::INT8, Type::INT8, Type::TEXT, Type::TEXT];

/// The staging table the batch's messages are copied into, one per connection. `ON COMMIT DELETE
/// ROWS` empties it at every commit and a rollback takes its rows with it, so it never carries
/// rows from one batch into the next. Temporary tables are not WAL-logged.
const CREATE_STAGING: &str = "CREATE TEMPORARY TABLE IF NOT EXISTS chatbus_messages_in (
        created_ns BIGINT NOT NULL, uuid UUID NOT NULL, sender_id BIGINT NOT NULL,
        receiver_id BIGINT NOT NULL, body TEXT NOT NULL, attachments TEXT
    ) ON COMMIT DELETE ROWS";

/// The statements a connection prepares once, at connect.
struct Statements {
    /// Insert the user; if its id exists, set the display name. A conflict on `uuid` alone (the
    /// retry of a committed batch that deleted a user and gave its uuid to a new id) is skipped
    /// too: the rest of that batch deletes the row anyway, so re-applying converges instead of
    /// failing forever. Raises `user_id_high` to the id.
    upsert_user: Statement,
    delete_user: Statement,
    insert_session: Statement,
    delete_session: Statement,
    /// One statement per `TouchSessions` op; the newest time per session wins, never moving one back.
    touch_sessions: Statement,
    add_contact: Statement,
    remove_contact: Statement,
    watermark: Statement,
    /// Messages straight into the table (fails on a duplicate).
    copy_messages: Statement,
    /// Messages into the staging table, and from there into the table skipping duplicates.
    copy_staged: Statement,
    merge_staged: Statement,
    cull: Statement,
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
struct ConnectionTask(Option<JoinHandle<()>>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// One live connection, set up for writing.
struct Conn {
    client: Client,
    statements: Statements,
    task: ConnectionTask,
}

impl Conn {
    /// Says goodbye to the server (a `Terminate` message) instead of just closing the socket.
    async fn close(mut self) {
        let task = self.task.0.take();
        drop(self);
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

/// What a call needs to reach the server: the configuration and the connection, if there is one.
struct Link {
    config: Config,
    durable: bool,
    /// `host:port/dbname as user`, for messages.
    target: String,
    conn: Option<Conn>,
}

impl Link {
    /// The connection, dialing one if there is none; and whether it was already there.
    async fn connection(&mut self) -> Result<(&mut Conn, bool), StoreError> {
        let reused = self.conn.is_some();
        let conn = match &mut self.conn {
            Some(conn) => conn,
            empty => {
                let fresh = connect(&self.config, self.durable).await.map_err(|e| {
                    StoreError::Other(format!("postgres: connecting to {}: {}", self.target, describe(&e)))
                })?;
                empty.insert(fresh)
            }
        };
        Ok((conn, reused))
    }

    /// Judges how a call went: `Ok(Some(_))` done; `Ok(None)` the reused connection turned out
    /// dead, so run the call once more on a fresh one (every call is safe to repeat); `Err` failed.
    /// On any error the connection is dropped, so the next call starts from a clean session.
    fn settle<T>(
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
                return Err(StoreError::Other(format!(
                    "postgres: {what}: no answer from {} within {limit:?}; reconnecting",
                    self.target
                )));
            }
        };
        self.conn = None;
        if reused && connection_lost(&error) {
            tracing::info!(error = %describe(&error), "postgres connection lost; reconnecting");
            return Ok(None);
        }
        Err(StoreError::Other(format!("postgres: {what}: {}", describe(&error))))
    }
}

/// Awaits `future` for at most `limit`; `Err(limit)` when it took longer.
async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Result<T, Duration> {
    tokio::time::timeout(limit, future).await.map_err(|_| limit)
}

/// The PostgreSQL store. See the module doc.
pub struct PostgresStore {
    link: Link,
    runtime: OwnRuntime,
}

/// The store's runtime. Dropping a runtime blocks, which tokio forbids inside another runtime (a
/// store dropped in an async `main` after a failed start): there it is shut down in the background.
struct OwnRuntime(Option<Runtime>);

impl std::ops::Deref for OwnRuntime {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        self.0.as_ref().expect("the runtime lives until the store is dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            }
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.link.target)
            .field("connected", &self.link.conn.is_some())
            .finish()
    }
}

impl PostgresStore {
    /// Connects to the server `url` names (`postgres://user:password@host:port/dbname?…`, or
    /// libpq's `key=value` form), waiting up to `options.connect_timeout` for it, and migrates.
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            StoreError::Other(format!("postgres: bad database url: {}", describe(&e)))
        })?;
        if config.get_application_name().is_none() {
            config.application_name("chatbus");
        }
        config.connect_timeout(CONNECT_ATTEMPT);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Other(format!("postgres: cannot start the client runtime: {e}")))?;
        let target = target(&config);
        let mut link = Link { config, durable: options.durable, target, conn: None };
        let wait = options.connect_timeout;
        let conn = block_on(&runtime, open_connection(&link, wait))?;
        link.conn = Some(conn);
        Ok(Self { link, runtime: OwnRuntime(Some(runtime)) })
    }
}

/// Dials (retrying while the server is unreachable, for up to `wait`), migrates, and sets the
/// session up.
async fn open_connection(link: &Link, wait: Duration) -> Result<Conn, StoreError> {
    let deadline = Instant::now() + wait;
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    let (mut client, task) = loop {
        attempts += 1;
        match dial(&link.config).await {
            Ok(dialed) => break dialed,
            Err(e) if retryable(&e) && Instant::now() + backoff < deadline => {
                if attempts == 1 {
                    tracing::warn!(server = %link.target, error = %describe(&e), ?wait, "PostgreSQL is not reachable yet; waiting for it");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                let tries = if attempts > 1 { format!(" ({attempts} attempts in {wait:?})") } else { String::new() };
                return Err(StoreError::Other(format!(
                    "postgres: cannot connect to {}{tries}: {}",
                    link.target,
                    describe(&e)
                )));
            }
        }
    };
    migrate(&mut client, migrations::POSTGRES).await?;
    let statements = setup(&client, link.durable).await.map_err(|e| {
        StoreError::Other(format!("postgres: setting up the session on {}: {}", link.target, describe(&e)))
    })?;
    Ok(Conn { client, statements, task })
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
async fn setup(client: &Client, durable: bool) -> Result<Statements, tokio_postgres::Error> {
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

/// Applies the migrations not applied yet, each in a transaction with its `schema_migrations` row,
/// all under [`MIGRATION_LOCK`]: a second instance starting at the same moment waits, then finds
/// every version applied.
async fn migrate(client: &mut Client, all: &[Migration]) -> Result<(), StoreError> {
    let fail =
        |what: String, e: tokio_postgres::Error| StoreError::Other(format!("postgres: {what}: {}", describe(&e)));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| fail("taking the migration lock".into(), e))?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ns BIGINT NOT NULL)",
            )
            .await
            .map_err(|e| fail("creating schema_migrations".into(), e))?;
        for m in all {
            let label = format!("migration {:04}_{}", m.version, m.name);
            let tx = client.transaction().await.map_err(|e| fail(label.clone(), e))?;
            let done = tx
                .query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[&m.version])
                .await
                .map_err(|e| fail(label.clone(), e))?;
            if done.is_none() {
                tx.batch_execute(m.sql).await.map_err(|e| fail(label.clone(), e))?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_ns) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &Clock::wall_ns()],
                )
                .await
                .map_err(|e| fail(label.clone(), e))?;
                tx.commit().await.map_err(|e| fail(label.clone(), e))?;
                tracing::info!(version = m.version, name = m.name, "applied PostgreSQL migration");
            }
        }
        Ok(())
    }
    .await;
    // On failure the connection is dropped, which releases the lock as well.
    if result.is_ok() {
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| fail("releasing the migration lock".into(), e))?;
    }
    result
}

/// Applies one batch: straight, or when that finds a message already stored, again with the
/// messages staged (see the module doc).
async fn write(conn: &mut Conn, ops: &[Op]) -> Result<(), tokio_postgres::Error> {
    match write_batch(conn, ops, MessagePath::Direct).await {
        // Only the messages' primary key can clash: every other statement skips conflicts.
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::debug!("batch holds messages already stored (a retry); writing it again, skipping those");
            write_batch(conn, ops, MessagePath::Staged).await
        }
        done => done,
    }
}

/// How a batch's messages get into `messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessagePath {
    /// COPY into the table: fastest, fails on a message already there.
    Direct,
    /// COPY into the staging table, then `INSERT … ON CONFLICT DO NOTHING`.
    Staged,
}

/// Applies one batch in one transaction, its messages by `path`.
async fn write_batch(conn: &mut Conn, ops: &[Op], path: MessagePath) -> Result<(), tokio_postgres::Error> {
    let Conn { client, statements: st, .. } = conn;
    let tx = client.transaction().await?;

    // Every op but messages, in batch order. The parameters are owned by the futures, which are
    // all created (and so all sent, see `pipeline`) before the first answer is awaited.
    type Params = Vec<Box<dyn ToSql + Sync + Send>>;
    fn p(value: impl ToSql + Sync + Send + 'static) -> Box<dyn ToSql + Sync + Send> {
        Box::new(value)
    }
    let mut pending = Vec::new();
    for op in ops {
        let (statement, params): (&Statement, Params) = match op {
            Op::UpsertUser(u) => {
                (&st.upsert_user, vec![p(u.id), p(u.uuid.clone()), p(u.display_name.clone()), p(u.left_ns)])
            }
            Op::DeleteUser { id } => (&st.delete_user, vec![p(*id)]),
            Op::InsertSession(s) => {
                (&st.insert_session, vec![p(PgUuid(s.uuid)), p(s.user_id), p(s.created_ns), p(s.last_active_ns)])
            }
            Op::DeleteSession { uuid } => (&st.delete_session, vec![p(PgUuid(*uuid))]),
            Op::TouchSessions(touches) => {
                if touches.is_empty() {
                    continue;
                }
                let uuids: Vec<PgUuid> = touches.iter().map(|&(u, _)| PgUuid(u)).collect();
                let times: Vec<i64> = touches.iter().map(|&(_, ns)| ns).collect();
                (&st.touch_sessions, vec![p(uuids), p(times)])
            }
            Op::AddContact { a, b } => (&st.add_contact, vec![p(*a), p(*b)]),
            Op::RemoveContact { a, b } => (&st.remove_contact, vec![p(*a), p(*b)]),
            Op::Watermark { user_id, left_ns } => (&st.watermark, vec![p(*user_id), p(*left_ns)]),
            Op::Message(_) => continue,
        };
        pending.push(tx.execute_raw(statement, params));
    }
    pipeline(pending).await?;

    // The messages: no foreign keys, and nothing above touches the table, so they can go last.
    if ops.iter().any(|op| matches!(op, Op::Message(_))) {
        let copy = if path == MessagePath::Direct { &st.copy_messages } else { &st.copy_staged };
        let sink = tx.copy_in(copy).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &MESSAGE_TYPES));
        for op in ops {
            let Op::Message(m) = op else { continue };
            writer
                .as_mut()
                .write(&[&m.created_ns, &PgUuid(m.uuid), &m.sender_id, &m.receiver_id, &m.body, &m.attachments])
                .await?;
        }
        writer.finish().await?;
        if path == MessagePath::Staged {
            tx.execute(&st.merge_staged, &[]).await?;
        }
    }
    tx.commit().await
}

/// Awaits `futures` — requests on one connection — so that they are all *sent* first, in order,
/// and only then awaited, in order: one round trip for the lot instead of one each.
/// tokio-postgres queues a request on the first poll of its future, and the server runs a
/// connection's requests in the order they arrive.
async fn pipeline<F>(futures: Vec<F>) -> Result<(), tokio_postgres::Error>
where
    F: Future<Output = Result<u64, tokio_postgres::Error>>,
{
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done = vec![false; futures.len()];
    std::future::poll_fn(|cx| {
        for (future, done) in futures.iter_mut().zip(done.iter_mut()) {
            if let Poll::Ready(result) = future.as_mut().poll(cx) {
                result?;
                *done = true;
            }
        }
        Poll::Ready(Ok::<(), tokio_postgres::Error>(()))
    })
    .await?;
    for (future, done) in futures.iter_mut().zip(done) {
        if !done {
            future.await?;
        }
    }
    Ok(())
}

/// Reads everything, in one consistent snapshot.
async fn load_all(conn: &mut Conn) -> Result<Snapshot, tokio_postgres::Error> {
    let tx =
        conn.client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let mut snap = Snapshot::default();
    copy_out(
        &tx,
        "SELECT id, uuid, display_name, left_ns FROM users ORDER BY id",
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::INT8],
        |r| {
            snap.users.push(UserRow {
                id: r.try_get(0)?,
                uuid: r.try_get::<&str>(1)?.to_owned(),
                display_name: r.try_get::<&str>(2)?.to_owned(),
                left_ns: r.try_get(3)?,
            });
            Ok(())
        },
    )
    .await?;
    copy_out(
        &tx,
        "SELECT uuid, user_id, created_ns, last_active_ns FROM sessions ORDER BY created_ns",
        &[Type::UUID, Type::INT8, Type::INT8, Type::INT8],
        |r| {
            snap.sessions.push(SessionRow {
                uuid: r.try_get::<PgUuid>(0)?.0,
                user_id: r.try_get(1)?,
                created_ns: r.try_get(2)?,
                last_active_ns: r.try_get(3)?,
            });
            Ok(())
        },
    )
    .await?;
    copy_out(&tx, "SELECT user_a, user_b FROM contacts ORDER BY user_a, user_b", &[Type::INT8, Type::INT8], |r| {
        snap.contacts.push((r.try_get(0)?, r.try_get(1)?));
        Ok(())
    })
    .await?;
    copy_out(
        &tx,
        "SELECT created_ns, uuid, sender_id, receiver_id, body, attachments FROM messages ORDER BY created_ns",
        &MESSAGE_TYPES,
        |r| {
            snap.messages.push(MessageRow {
                created_ns: r.try_get(0)?,
                uuid: r.try_get::<PgUuid>(1)?.0,
                sender_id: r.try_get(2)?,
                receiver_id: r.try_get(3)?,
                body: r.try_get::<&str>(4)?.to_owned(),
                attachments: r.try_get::<Option<&str>>(5)?.map(str::to_owned),
            });
            Ok(())
        },
    )
    .await?;
    let high = tx
        .query_one("SELECT GREATEST((SELECT id FROM user_id_high), (SELECT COALESCE(max(id), 0) FROM users))", &[])
        .await?;
    snap.max_user_id = high.try_get(0)?;
    tx.commit().await?;
    Ok(snap)
}

/// Streams the rows of `query` (whose columns have `types`) through `row`, in binary COPY format.
async fn copy_out(
    tx: &tokio_postgres::Transaction<'_>,
    query: &str,
    types: &[Type],
    mut row: impl FnMut(&BinaryCopyOutRow) -> Result<(), tokio_postgres::Error>,
) -> Result<(), tokio_postgres::Error> {
    let stream = tx.copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)")).await?;
    let mut rows = pin!(BinaryCopyOutStream::new(stream, types));
    while let Some(r) = rows.next().await {
        row(&r?)?;
    }
    Ok(())
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let Self { link, runtime } = self;
        block_on(runtime, async {
            loop {
                let (conn, reused) = link.connection().await?;
                // No time limit: a big table takes as long as it takes.
                let outcome = Ok(load_all(conn).await);
                if let Some(snapshot) = link.settle("load", reused, outcome)? {
                    return Ok(snapshot);
                }
            }
        })
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let Self { link, runtime } = self;
        block_on(runtime, async {
            loop {
                let (conn, reused) = link.connection().await?;
                let outcome = within(OP_TIMEOUT, write(conn, ops)).await;
                if let Some(()) = link.settle("write", reused, outcome)? {
                    return Ok(());
                }
            }
        })
    }

    fn cull_messages(&mut self, before_ns: i64, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let Self { link, runtime } = self;
        block_on(runtime, async {
            loop {
                let (conn, reused) = link.connection().await?;
                let outcome =
                    within(OP_TIMEOUT, conn.client.execute(&conn.statements.cull, &[&before_ns, &limit])).await;
                if let Some(deleted) = link.settle("culling messages", reused, outcome)? {
                    return Ok(usize::try_from(deleted).unwrap_or(usize::MAX));
                }
            }
        })
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        let Self { link, runtime } = self;
        block_on(runtime, async {
            loop {
                let (conn, reused) = link.connection().await?;
                let outcome = within(PING_TIMEOUT, conn.client.simple_query("SELECT 1")).await;
                if let Some(_rows) = link.settle("ping", reused, outcome)? {
                    return Ok(());
                }
            }
        })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Close politely when we may block here; otherwise the socket just closes.
        if let Some(conn) = self.link.conn.take() {
            if tokio::runtime::Handle::try_current().is_err() {
                self.runtime.block_on(conn.close());
            }
        }
    }
}

/// Runs `future` to completion on `runtime`, from a scoped helper thread when this thread is
/// already inside a tokio runtime (where blocking on another one would panic).
fn block_on<F>(runtime: &Runtime, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(future);
    }
    std::thread::scope(|s| match s.spawn(|| runtime.block_on(future)).join() {
        Ok(output) => output,
        Err(panic) => std::panic::resume_unwind(panic),
    })
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
fn describe(e: &tokio_postgres::Error) -> String {
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
fn target(config: &Config) -> String {
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

/// A 128-bit id as a PostgreSQL `uuid`: 16 bytes, big-endian, so the uuid's text form without the
/// dashes is the id's 32 hex digits.
#[derive(Debug, Clone, Copy)]
struct PgUuid(u128);

impl ToSql for PgUuid {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }

    accepts!(UUID);
    to_sql_checked!();
}

impl<'a> FromSql<'a> for PgUuid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 16] = raw.try_into().map_err(|_| "a uuid must be 16 bytes")?;
        Ok(Self(u128::from_be_bytes(bytes)))
    }

    accepts!(UUID);
}
