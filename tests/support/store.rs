//! The store a test runs on, and reading its rows back.
//!
//! [`TestStore`] is a fresh SQLite file in a temporary directory or a fresh database on the
//! shared PostgreSQL ([`super::pg::TestDb`]); either way [`TestStore::url`] is what
//! `--database-url` takes. Its readers ([`TestStore::messages`], [`TestStore::count`], …) let a
//! scenario compare the rows with what the API acknowledged, the same way on both stores — the
//! two schemas mirror each other (`migrations/`); ids that the API shows as 32 hex digits are
//! `TEXT` in SQLite and `UUID` in PostgreSQL, which the readers paper over.
//!
//! Tests on a throwaway cluster ([`super::cluster::Cluster`]) read it with the `postgres_*`
//! functions, by URL.

use super::pg::{self, TestDb};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A fresh, empty store for one test; deleted with it.
#[derive(Debug)]
pub enum TestStore {
    /// `sqlite:<dir>/chatbus.db`; the directory lives as long as this.
    Sqlite { dir: tempfile::TempDir, url: String },
    /// A database of its own on the shared PostgreSQL.
    Postgres(TestDb),
}

impl TestStore {
    /// A fresh SQLite file in a temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("chatbus.db").display());
        Self::Sqlite { dir, url }
    }

    /// A fresh database on the shared PostgreSQL; panics, saying how to provide one, when there
    /// is none.
    pub fn postgres() -> Self {
        Self::Postgres(TestDb::create())
    }

    /// `"sqlite"` or `"postgres"`, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// The `--database-url` of this store.
    pub fn url(&self) -> &str {
        match self {
            Self::Sqlite { url, .. } => url,
            Self::Postgres(db) => db.url(),
        }
    }

    /// The SQLite file (panics for PostgreSQL).
    pub fn sqlite_path(&self) -> PathBuf {
        match self {
            Self::Sqlite { dir, .. } => dir.path().join("chatbus.db"),
            Self::Postgres(_) => panic!("not a SQLite store"),
        }
    }

    /// The first column of every row of `sql` as text (integers written in decimal, NULL as
    /// `NULL`). `sql` must be valid on both stores; PostgreSQL needs text, so cast there.
    pub async fn rows(&self, sql: &str) -> Vec<String> {
        match self {
            Self::Sqlite { .. } => sqlite_rows(&self.sqlite_path(), sql),
            Self::Postgres(db) => postgres_rows(db.url(), sql).await,
        }
    }

    /// Every row of `messages` as its API uuid (duplicates, if any, kept), oldest first.
    pub async fn messages(&self) -> Vec<String> {
        match self {
            Self::Sqlite { .. } => self.rows("SELECT uuid FROM messages ORDER BY created_ns").await,
            Self::Postgres(db) => postgres_messages(db.url()).await,
        }
    }

    /// Every row of `sessions` as its API uuid.
    pub async fn sessions(&self) -> Vec<String> {
        match self {
            Self::Sqlite { .. } => self.rows("SELECT uuid FROM sessions").await,
            Self::Postgres(_) => self.rows("SELECT replace(uuid::text, '-', '') FROM sessions").await,
        }
    }

    /// `id uuid display_name` of every row of `users`, by id.
    pub async fn users(&self) -> Vec<String> {
        self.rows("SELECT id || ' ' || uuid || ' ' || display_name FROM users ORDER BY id").await
    }

    /// `user_a,user_b` of every row of `contacts`.
    pub async fn contacts(&self) -> Vec<String> {
        self.rows("SELECT user_a || ',' || user_b FROM contacts ORDER BY user_a, user_b").await
    }

    /// The number of rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        let rows = self.rows(&format!("SELECT count(*) || '' FROM {table}")).await;
        assert_eq!(rows.len(), 1, "count of {table}");
        rows[0].parse().unwrap_or_else(|e| panic!("count of {table}: {e}"))
    }
}

/// Every row of `messages` in the SQLite file at `path`, as API uuids, oldest first.
pub fn sqlite_messages(path: &Path) -> Vec<String> {
    sqlite_rows(path, "SELECT uuid FROM messages ORDER BY created_ns")
}

fn sqlite_rows(path: &Path, sql: &str) -> Vec<String> {
    use rusqlite::types::ValueRef;
    let c = rusqlite::Connection::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    c.busy_timeout(std::time::Duration::from_secs(5)).expect("busy timeout");
    let mut st = c.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows = st.query_map([], |r| {
        Ok(match r.get_ref(0)? {
            ValueRef::Null => "NULL".to_owned(),
            ValueRef::Integer(i) => i.to_string(),
            ValueRef::Real(f) => f.to_string(),
            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            ValueRef::Blob(_) => panic!("{sql}: a blob"),
        })
    });
    rows.and_then(|rows| rows.collect::<Result<Vec<_>, _>>()).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The first column (which must be text: cast it) of every row of `sql` in the PostgreSQL
/// database at `url`.
pub async fn postgres_rows(url: &str, sql: &str) -> Vec<String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {}", pg::redact(url), pg::describe(&e)));
    let conn = tokio::spawn(connection);
    let rows = client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {}", pg::describe(&e)));
    drop(client);
    let _ = conn.await;
    rows.iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_else(|| "NULL".to_owned())).collect()
}

/// Runs `sql` (simple query protocol: no transaction block around it) in the PostgreSQL
/// database at `url`.
pub async fn postgres_execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {}", pg::redact(url), pg::describe(&e)));
    let conn = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {}", pg::describe(&e)));
    drop(client);
    let _ = conn.await;
}

/// The single number `sql` returns (cast to text) in the PostgreSQL database at `url`.
pub async fn postgres_count(url: &str, sql: &str) -> i64 {
    let rows = postgres_rows(url, sql).await;
    assert_eq!(rows.len(), 1, "{sql}");
    rows[0].parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every row of `messages` in the PostgreSQL database at `url` as its API uuid (duplicates, if
/// any, kept), oldest first.
pub async fn postgres_messages(url: &str) -> Vec<String> {
    postgres_rows(url, "SELECT replace(uuid::text, '-', '') FROM messages ORDER BY created_ns").await
}

/// `stored` (rows of `messages`, or a mailbox) holds exactly the `acked` messages: none
/// missing, none extra, none twice.
#[track_caller]
pub fn assert_exactly(stored: &[String], acked: &HashSet<String>, what: &str) {
    let set: HashSet<&String> = stored.iter().collect();
    let twice = stored.len() - set.len();
    let missing = acked.iter().filter(|u| !set.contains(u)).count();
    let extra = set.iter().filter(|u| !acked.contains(**u)).count();
    assert!(
        (twice, missing, extra) == (0, 0, 0),
        "{what}: {} rows for {} acknowledged messages: {missing} acknowledged missing, {extra} never \
         acknowledged, {twice} stored twice",
        stored.len(),
        acked.len()
    );
}
