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
//!   drops the connection (a half-open socket can't stall the writer forever). Every call goes
//!   through that one skeleton, `PostgresStore::call`.
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
//!
//! # Files
//!
//! `conn` reaches the server and keeps the connection, `write` applies a batch, `load` reads
//! everything back; this file holds the store itself, its runtime and its migrations.

mod conn;
mod load;
mod write;

use super::migrations::{self, Migration};
use super::{ErrorKind, Op, Snapshot, Store, StoreError, StoreOptions};
use bytes::BytesMut;
use conn::{Conn, Link, CONNECT_ATTEMPT, PING_TIMEOUT};
use postgres_types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};
use std::future::Future;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_postgres::{Client, Config};

/// Longest a write, a culling step or a ping may wait for PostgreSQL before the connection is
/// presumed dead and dropped. A batch takes milliseconds; this only catches half-open sockets and
/// a server that stopped answering.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// The session-level advisory lock held while migrating: "chatbus" in ASCII. Advisory locks are
/// per database, so instances on different databases of one server don't wait for each other.
const MIGRATION_LOCK: i64 = 0x0063_6861_7462_7573;

/// Column types of the staging table and of the messages `COPY OUT`, in column order.
pub(super) const MESSAGE_TYPES: [Type; 6] = [Type::INT8, Type::UUID, Type::INT8, Type::INT8, Type::TEXT, Type::TEXT];

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
            StoreError::other(format!("postgres: bad database url: {}", conn::describe(&e)))
        })?;
        if config.get_application_name().is_none() {
            config.application_name("chatbus");
        }
        config.connect_timeout(CONNECT_ATTEMPT);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::other(format!("postgres: cannot start the client runtime: {e}")))?;
        let target = conn::target(&config);
        let mut link = Link { config, durable: options.durable, target, conn: None };
        let wait = options.connect_timeout;
        let (mut client, task) = block_on(&runtime, || conn::dial_waiting(&link, wait))?;
        migrate(&runtime, &mut client, &link.target)?;
        let statements = block_on(&runtime, || conn::setup(&client, link.durable)).map_err(|e| {
            StoreError::other(format!("postgres: setting up the session on {}: {}", link.target, conn::describe(&e)))
        })?;
        link.conn = Some(Conn { client, statements, task });
        Ok(Self { link, runtime: OwnRuntime(Some(runtime)) })
    }

    /// The one retry skeleton every call goes through: runs `call` on the connection (dialing
    /// one if there is none) within `limit`; when a reused connection turns out dead, runs it once
    /// more on a fresh one (every call is safe to repeat). See `Link::settle`.
    fn call<T: Send>(
        &mut self,
        what: &str,
        limit: Option<Duration>,
        mut call: impl AsyncFnMut(&mut Conn) -> Result<T, tokio_postgres::Error> + Send,
    ) -> Result<T, StoreError> {
        let Self { link, runtime } = self;
        block_on(runtime, move || async move {
            loop {
                let (conn, reused) = link.connection().await?;
                let outcome = match limit {
                    Some(limit) => conn::within(limit, call(conn)).await,
                    None => Ok(call(conn).await),
                };
                if let Some(value) = link.settle(what, reused, outcome)? {
                    return Ok(value);
                }
            }
        })
    }
}

/// Applies the migrations not applied yet (see [`migrations::run`]), all under
/// [`MIGRATION_LOCK`]: a second instance starting at the same moment waits, then finds every
/// version applied.
fn migrate(runtime: &Runtime, client: &mut Client, target: &str) -> Result<(), StoreError> {
    let fail = |what: &str, e: tokio_postgres::Error| {
        StoreError::other(format!("postgres: {what} on {target}: {}", conn::describe(&e)))
    };
    block_on(runtime, || client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]))
        .map_err(|e| fail("taking the migration lock", e))?;
    // On failure the connection is dropped, which releases the lock as well.
    migrations::run("postgres", &mut Migrations { runtime, client }, migrations::POSTGRES)?;
    block_on(runtime, || client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]))
        .map_err(|e| fail("releasing the migration lock", e))?;
    Ok(())
}

/// A connection as the migration runner sees it.
struct Migrations<'a> {
    runtime: &'a Runtime,
    client: &'a mut Client,
}

impl migrations::Target for Migrations<'_> {
    fn execute(&mut self, sql: &str) -> Result<(), String> {
        let client = &*self.client;
        block_on(self.runtime, || client.batch_execute(sql)).map_err(|e| conn::describe(&e))
    }

    fn apply_once(&mut self, m: &Migration, applied_ns: i64) -> Result<bool, String> {
        let client = &mut *self.client;
        block_on(self.runtime, || async move {
            let tx = client.transaction().await?;
            if tx.query_opt(migrations::IS_APPLIED, &[&m.version]).await?.is_some() {
                return Ok(false);
            }
            tx.batch_execute(m.sql).await?;
            tx.execute(migrations::RECORD, &[&m.version, &m.name, &applied_ns]).await?;
            tx.commit().await?;
            Ok(true)
        })
        .map_err(|e: tokio_postgres::Error| conn::describe(&e))
    }
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        // No time limit: a big table takes as long as it takes.
        self.call("load", None, async |conn| load::load_all(conn).await)
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.call("write", Some(OP_TIMEOUT), async |conn| write::write(conn, ops).await)
    }

    fn cull_messages(&mut self, before_ns: i64, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let deleted = self.call("culling messages", Some(OP_TIMEOUT), async |conn| {
            conn.client.execute(&conn.statements.cull, &[&before_ns, &limit]).await
        })?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.call("ping", Some(PING_TIMEOUT), async |conn| conn.client.simple_query("SELECT 1").await.map(drop))
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.call("proving the store writable", Some(OP_TIMEOUT), async |conn| {
            conn.client.execute(migrations::PROBE, &[]).await.map(drop)
        })
    }

    fn agree_settings(&mut self, stream: &str, settings: &str) -> Result<String, StoreError> {
        self.call("recording the cluster's settings", Some(OP_TIMEOUT), async |conn| {
            conn.client
                .execute(
                    "INSERT INTO cluster_settings (stream, settings) VALUES ($1, $2) ON CONFLICT (stream) DO NOTHING",
                    &[&stream, &settings],
                )
                .await?;
            let row =
                conn.client.query_one("SELECT settings FROM cluster_settings WHERE stream = $1", &[&stream]).await?;
            row.try_get::<_, String>(0)
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

/// Runs the future `make` returns to completion on `runtime` — on a scoped helper thread when
/// this thread is already inside a tokio runtime (where blocking on another one would panic).
/// The future is made on the thread that runs it, so it need not be `Send`.
fn block_on<M, F>(runtime: &Runtime, make: M) -> F::Output
where
    M: FnOnce() -> F + Send,
    F: Future,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(make());
    }
    std::thread::scope(|s| match s.spawn(|| runtime.block_on(make())).join() {
        Ok(output) => output,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// A 128-bit id as a PostgreSQL `uuid`: 16 bytes, big-endian, so the uuid's text form without the
/// dashes is the id's 32 hex digits.
#[derive(Debug, Clone, Copy)]
pub(super) struct PgUuid(pub(super) u128);

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
