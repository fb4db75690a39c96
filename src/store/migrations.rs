//! Versioned schema migrations, embedded from `migrations/<store>/NNNN_name.sql`.
//!
//! Each store applies the files it has not applied yet, in version order, each in its own
//! transaction together with its row in `schema_migrations`. The runner is a dozen lines and
//! shared by both stores; the PostgreSQL store wraps it in an advisory lock so that two
//! instances starting at once cannot both apply a version.

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
pub const SQLITE: &[Migration] =
    &[Migration { version: 1, name: "init", sql: include_str!("../../migrations/sqlite/0001_init.sql") }];

/// The PostgreSQL migrations, oldest first.
pub const POSTGRES: &[Migration] =
    &[Migration { version: 1, name: "init", sql: include_str!("../../migrations/postgres/0001_init.sql") }];
