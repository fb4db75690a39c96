//! Applying a batch: in order, bisecting what the store refuses for good, shrinking the
//! transactions while the store is full, backing off on transient failures, and giving up at the
//! stop deadline (see the module doc of [`crate::writer`]).

use super::health::StoreCall;
use super::{spill, Batch, Outcome, Shared, FIRST_BACKOFF, MAX_BACKOFF, MAX_BATCH};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{ErrorKind, Op, Store, StoreError};
use std::time::Instant;

/// Applies batches; remembers how many ops fit in one transaction while the store is full.
pub(super) struct Applier {
    pub(super) chunk: usize,
}

impl Applier {
    /// Applies every op of `batch` in order (see the module doc). `Err(i)`: the stop deadline
    /// passed and `batch.ops[i..]` is unwritten.
    pub(super) fn apply(&mut self, store: &mut dyn Store, batch: &Batch, shared: &Shared) -> Result<(), usize> {
        let all = 0..batch.len();
        if all.len() > self.chunk {
            return self.apply_ranges(store, batch, shared, chunks(all, self.chunk).collect(), None);
        }
        // The common case first, with nothing allocated: the whole batch in one transaction.
        let started = Instant::now();
        match store.write(&batch.ops) {
            Ok(()) => {
                self.committed(batch, all, started, shared);
                Ok(())
            }
            Err(e) => self.apply_ranges(store, batch, shared, std::collections::VecDeque::from([all]), Some(e)),
        }
    }

    /// `batch.ops[range]` is committed: tell its writers, and grow the transactions again.
    fn committed(&mut self, batch: &Batch, range: std::ops::Range<usize>, started: Instant, shared: &Shared) {
        observe_commit(&batch.ops[range.clone()], started, &shared.metrics);
        batch.complete(range, Outcome::Committed);
        shared.health.ok();
        self.chunk = (self.chunk * 2).min(MAX_BATCH);
    }

    /// Applies the ranges of `todo`, in order, handling failures (see the module doc); `failed`
    /// is the error the first of them already gave, if it was tried.
    fn apply_ranges(
        &mut self,
        store: &mut dyn Store,
        batch: &Batch,
        shared: &Shared,
        mut todo: std::collections::VecDeque<std::ops::Range<usize>>,
        mut failed: Option<StoreError>,
    ) -> Result<(), usize> {
        // Ranges still to write, in order; together always exactly [first unwritten, len).
        let mut backoff = FIRST_BACKOFF;
        while let Some(range) = todo.pop_front() {
            let started = Instant::now();
            let result = match failed.take() {
                Some(e) => Err(e),
                None => store.write(&batch.ops[range.clone()]),
            };
            match result {
                Ok(()) => {
                    self.committed(batch, range, started, shared);
                    backoff = FIRST_BACKOFF;
                }
                Err(e) if e.kind() == ErrorKind::Rejected => {
                    shared.health.failed(StoreCall::Write, &e, shared.waiting(), &shared.metrics);
                    if range.len() == 1 {
                        set_aside(&batch.ops[range.start], &e, shared);
                        batch.complete(range, Outcome::Refused);
                    } else {
                        let mid = range.start + range.len() / 2;
                        todo.push_front(mid..range.end);
                        todo.push_front(range.start..mid);
                    }
                }
                Err(e) => {
                    shared.health.failed(StoreCall::Write, &e, shared.waiting(), &shared.metrics);
                    if shared.past_deadline() {
                        return Err(range.start);
                    }
                    if e.kind() == ErrorKind::Full && self.chunk > 1 {
                        self.chunk = (self.chunk / 2).max(1);
                        tracing::warn!(ops = self.chunk, "the store is full; retrying in smaller transactions");
                    }
                    for r in chunks(range, self.chunk).rev() {
                        todo.push_front(r);
                    }
                    shared.back_off(backoff);
                    if shared.past_deadline() {
                        return Err(todo.front().map_or(batch.len(), |r| r.start));
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        Ok(())
    }
}

/// `range` cut into consecutive pieces of at most `size`.
fn chunks(range: std::ops::Range<usize>, size: usize) -> impl DoubleEndedIterator<Item = std::ops::Range<usize>> {
    let size = size.max(1);
    let end = range.end;
    let pieces = range.len().div_ceil(size);
    (0..pieces).map(move |i| range.start + i * size..(range.start + (i + 1) * size).min(end))
}

/// Metrics of a committed transaction: its size, its time, and the age of its oldest message.
fn observe_commit(ops: &[Op], started: Instant, metrics: &Metrics) {
    metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
    metrics.batch_size.observe(ops.len() as f64);
    // Ops are in order, so the first message is the oldest.
    if let Some(Op::Message(m)) = ops.iter().find(|op| matches!(op, Op::Message(_))) {
        let lag_ns = Clock::wall_ns().saturating_sub(m.created_ns);
        metrics.message_lag_seconds.observe(lag_ns.max(0) as f64 / 1e9);
    }
}

/// Sets an op the store refused aside: counted, logged, and in the dead-letter file (or, if even
/// that cannot be written, whole in the log).
fn set_aside(op: &Op, error: &StoreError, shared: &Shared) {
    shared.metrics.dead_letters.inc();
    match spill::dead_letter(&shared.spill_dir, op, error) {
        Ok(file) => {
            tracing::error!(op = %op_id(op), %error, file = %file.display(), "the store refused a write; set aside")
        }
        Err(e) => {
            tracing::error!(?op, %error, file_error = %e, "the store refused a write; set aside in this log only")
        }
    }
}

/// A short name of an op for the log: its kind and id.
fn op_id(op: &Op) -> String {
    match op {
        Op::UpsertUser(u) => format!("user {}", u.id),
        Op::DeleteUser { id } => format!("delete user {id}"),
        Op::InsertSession(s) => format!("session {:032x}", s.uuid),
        Op::DeleteSession { uuid } => format!("delete session {uuid:032x}"),
        Op::TouchSessions(t) => format!("activity of {} sessions", t.len()),
        Op::AddContact { a, b } => format!("contact {a}-{b}"),
        Op::RemoveContact { a, b } => format!("remove contact {a}-{b}"),
        Op::Message(m) => format!("message {:032x}", m.uuid),
        Op::Watermark { user_id, .. } => format!("watermark of user {user_id}"),
        Op::Logged { stream, position, ops } => {
            format!("entry {} of log {stream} ({} writes)", position.seq, ops.len())
        }
    }
}
