//! PostgreSQL store (placeholder until the PostgreSQL issue lands).

use super::{Op, Snapshot, Store, StoreError, StoreOptions};

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PostgresStore;

impl PostgresStore {
    /// Connects and migrates.
    pub fn open(_url: &str, _options: &StoreOptions) -> Result<Self, StoreError> {
        Err(StoreError::Other("postgres store not implemented yet".into()))
    }
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }
    fn write(&mut self, _ops: &[Op]) -> Result<(), StoreError> {
        Ok(())
    }
    fn cull_messages(&mut self, _before_ns: i64, _limit: usize) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn ping(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
