//! PostgreSQL for tests: a throwaway database per test.
//!
//! [`TestDb::create`] connects to the server `DATABASE_URL` names — by default the local one,
//! `postgres://postgres@127.0.0.1:5432/postgres` — creates a database with a unique name on it,
//! and drops that database (closing any connection still on it) when the `TestDb` is dropped,
//! also when the test panicked. With no `DATABASE_URL` and the local server down, it starts the
//! local cluster (`pg_ctlcluster`, Debian's postgresql-common) once per test process. Without a
//! reachable server it panics with a message saying how to provide one: a test that needs
//! PostgreSQL never passes by skipping.
//!
//! Tests reach it as `support::pg` (`mod support;`); it uses nothing else of `support`, so that
//! `benches/restore.rs` can include it alone (`#[path = "../tests/support/pg.rs"] mod pg;`).
//! Every call works from plain and from async tests alike: the admin work runs on a helper thread
//! with a runtime of its own.

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::{Client, NoTls};

/// The server used when `DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own for one test; dropped with it.
#[derive(Debug)]
pub struct TestDb {
    /// The server's URL as given (its database is where we create and drop ours).
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    /// Creates a uniquely named, empty database. Panics, saying how to provide PostgreSQL, when
    /// the server is unreachable.
    pub fn create() -> Self {
        let admin_url = admin_url();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!("chatbus_test_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let url = with_dbname(&admin_url, &name);
        let sql = format!("CREATE DATABASE \"{name}\"");
        let create = || {
            on_helper_thread(async {
                let client = connect(&admin_url).await?;
                client.batch_execute(&sql).await.map_err(|e| format!("CREATE DATABASE failed: {}", describe(&e)))
            })
        };
        let mut result = create();
        if result.is_err() && std::env::var_os("DATABASE_URL").is_none() {
            match start_local_cluster() {
                Ok(true) => result = create(),
                Ok(false) => {}
                Err(why) => result = result.map_err(|e| format!("{e}; starting the local cluster failed too: {why}")),
            }
        }
        if let Err(e) = result {
            panic!(
                "\n\nPostgreSQL is needed for this test and is not usable at {}: {e}\n\
                 Provide one where the user may CREATE DATABASE, either\n  \
                 - install and start a local one on port 5432 (`pg_ctlcluster --skip-systemctl-redirect VERSION main start`;\n    \
                 with DATABASE_URL unset the tests start an installed, stopped cluster themselves), or\n  \
                 - point DATABASE_URL at one: DATABASE_URL=postgres://USER:PASSWORD@HOST:PORT/postgres cargo test\n",
                redact(&admin_url)
            );
        }
        Self { admin_url, name, url }
    }

    /// The URL of this test's database, for `--database-url` or `PostgresStore::open`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `sql` (one or more statements) in this test's database.
    pub fn execute(&self, sql: &str) {
        on_helper_thread(async {
            let client = connect(&self.url).await?;
            client.batch_execute(sql).await.map_err(|e| describe(&e))
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs `sql` in this test's database and returns the first column of every row, which must
    /// be a `bigint` (cast it: `count(*)` is one; `SELECT x::bigint`).
    pub fn query_i64(&self, sql: &str) -> Vec<i64> {
        on_helper_thread(async {
            let client = connect(&self.url).await?;
            let rows = client.query(sql, &[]).await.map_err(|e| describe(&e))?;
            rows.iter()
                .map(|r| r.try_get::<_, Option<i64>>(0).map(|v| v.unwrap_or(0)).map_err(|e| describe(&e)))
                .collect()
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The single `bigint` `sql` returns.
    pub fn query_one_i64(&self, sql: &str) -> i64 {
        let rows = self.query_i64(sql);
        assert_eq!(rows.len(), 1, "{sql}: expected one row");
        rows[0]
    }

    /// Kills every connection to this test's database (`pg_terminate_backend`), as an operator or
    /// a failover would; returns how many there were.
    pub fn terminate_connections(&self) -> usize {
        on_helper_thread(async {
            let client = connect(&self.admin_url).await?;
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&self.name],
                )
                .await
                .map_err(|e| describe(&e))?;
            Ok(rows.len())
        })
        .unwrap_or_else(|e| panic!("terminating connections: {e}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let result = on_helper_thread(async {
            let client = connect(&self.admin_url).await?;
            client.batch_execute(&sql).await.map_err(|e| describe(&e))
        });
        if let Err(e) = result {
            // Not a panic: this may run while a failed test unwinds.
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

/// Starts the local cluster on port 5432 if it is installed and down, once per process, and waits
/// for it: `Ok(true)` when it was started (or found running after all), `Ok(false)` when there is
/// none to start.
fn start_local_cluster() -> Result<bool, String> {
    static STARTED: std::sync::OnceLock<Result<bool, String>> = std::sync::OnceLock::new();
    STARTED
        .get_or_init(|| {
            let Ok(out) = std::process::Command::new("pg_lsclusters").arg("--no-header").output() else {
                return Ok(false); // postgresql-common is not installed
            };
            // "15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/…"
            let listing = String::from_utf8_lossy(&out.stdout).into_owned();
            let Some(cluster) = listing
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.len() >= 4 && f[2] == "5432")
            else {
                return Ok(false);
            };
            if cluster[3] != "online" {
                eprintln!("PostgreSQL tests: starting the local cluster {} {}", cluster[0], cluster[1]);
                let out = std::process::Command::new("pg_ctlcluster")
                    .args(["--skip-systemctl-redirect", cluster[0], cluster[1], "start"])
                    .output()
                    .map_err(|e| format!("pg_ctlcluster: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "pg_ctlcluster {} {} start: {}",
                        cluster[0],
                        cluster[1],
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                match on_helper_thread(async { connect(DEFAULT_URL).await.map(drop) }) {
                    Ok(()) => return Ok(true),
                    Err(e) if std::time::Instant::now() > deadline => return Err(format!("still unreachable: {e}")),
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
        .clone()
}

/// The server to use: `DATABASE_URL` or [`DEFAULT_URL`].
pub fn admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => {
            let url = url.trim().to_owned();
            assert!(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "DATABASE_URL must be a postgres://… URL for the PostgreSQL tests (got {:?})",
                redact(&url)
            );
            url
        }
        _ => DEFAULT_URL.to_owned(),
    }
}

/// `url` with its database replaced by `db` (query parameters kept).
pub fn with_dbname(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (path, query) = rest.find('?').map_or((rest, ""), |i| rest.split_at(i));
    let authority = path.split('/').next().unwrap_or("");
    format!("{scheme}://{authority}/{db}{query}")
}

/// `url` with any password masked, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

async fn connect(url: &str) -> Result<Client, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| describe(&e))?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs `future` on a new thread with a current-thread runtime, so callers may be sync or async.
fn on_helper_thread<T: Send>(future: impl Future<Output = Result<T, String>> + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(future)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A tokio-postgres error with its causes, on one line.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', "; ")
}
