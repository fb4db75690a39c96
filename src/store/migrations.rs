//! Versioned schema migrations, embedded from `migrations/<store>/NNNN_name.sql`, and the one
//! runner both stores use.
//!
//! [`run`] records applied versions in `schema_migrations` and applies each file not applied yet,
//! in version order, in a transaction of its own together with its row — so a crash mid-way
//! leaves every version either fully applied and recorded or not at all. A store provides the
//! connection as a [`Target`]; the PostgreSQL store also holds an advisory lock around the run,
//! so two instances starting at once apply each version exactly once (SQLite's `BEGIN IMMEDIATE`
//! in its `apply_once` does the same for two processes on one file).

use super::StoreError;
use crate::clock::Clock;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The number the file name starts with.
    pub version: i64,
    /// The rest of the file name.
    pub name: &'static str,
    /// The SQL to run.
    pub sql: &'static str,
}

/// The SQLite migrations, oldest first.
pub const SQLITE: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../migrations/sqlite/0001_init.sql") },
    Migration { version: 2, name: "log_position", sql: include_str!("../../migrations/sqlite/0002_log_position.sql") },
    Migration {
        version: 3,
        name: "cluster_settings",
        sql: include_str!("../../migrations/sqlite/0003_cluster_settings.sql"),
    },
];

/// The PostgreSQL migrations, oldest first.
pub const POSTGRES: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../migrations/postgres/0001_init.sql") },
    Migration {
        version: 2,
        name: "log_position",
        sql: include_str!("../../migrations/postgres/0002_log_position.sql"),
    },
    Migration {
        version: 3,
        name: "cluster_settings",
        sql: include_str!("../../migrations/postgres/0003_cluster_settings.sql"),
    },
];

/// The table of applied versions; the same text for both stores.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ns BIGINT NOT NULL)";

/// Whether version `$1` is applied (a row, or none). `$n` parameters work in both stores.
pub const IS_APPLIED: &str = "SELECT 1 FROM schema_migrations WHERE version = $1";

/// Records version `$1`, named `$2`, applied at `$3` (ns).
pub const RECORD: &str = "INSERT INTO schema_migrations (version, name, applied_ns) VALUES ($1, $2, $3)";

/// A write that changes nothing a reader sees, for `Store::probe`: the newest migration's row
/// rewritten with its own values. Both stores write (and log) a new row version for it.
pub const PROBE: &str = "UPDATE schema_migrations SET applied_ns = applied_ns
    WHERE version = (SELECT max(version) FROM schema_migrations)";

/// What the runner needs of a store's connection. Errors are one line of text; the runner adds
/// which store and which migration.
pub trait Target {
    /// Runs `sql` (one or more statements) outside a transaction.
    fn execute(&mut self, sql: &str) -> Result<(), String>;

    /// In one transaction: unless [`IS_APPLIED`] finds `m.version`, runs `m.sql` and
    /// [`RECORD`]s it at `applied_ns`. Returns whether it ran.
    fn apply_once(&mut self, m: &Migration, applied_ns: i64) -> Result<bool, String>;
}

/// Applies the migrations of `all` not applied yet, in order. `store` names the store in errors
/// and logs.
pub fn run(store: &str, target: &mut dyn Target, all: &[Migration]) -> Result<(), StoreError> {
    target.execute(CREATE_TABLE).map_err(|e| StoreError::other(format!("{store}: creating schema_migrations: {e}")))?;
    for m in all {
        let applied = target
            .apply_once(m, Clock::wall_ns())
            .map_err(|e| StoreError::other(format!("{store}: migration {:04}_{}: {e}", m.version, m.name)))?;
        if applied {
            tracing::info!(store, version = m.version, name = m.name, "applied migration");
        }
    }
    Ok(())
}
