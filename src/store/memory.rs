//! `memory:`: a store that keeps nothing, so benchmarks measure the engine and HTTP alone.

use super::{Op, Snapshot, Store, StoreError};

/// Accepts every write and forgets it; starts empty.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
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

    fn probe(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
