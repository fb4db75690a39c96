//! Whether the store takes writes, since when it does not, and why — for `/readyz`, for the
//! bound on what sends may acknowledge from memory, for the log, and for `store_errors_total`.
//!
//! The log gets one ERROR line when the store starts failing (with the cause), another every
//! [`REMIND`] while it keeps failing or whenever the cause changes, and one INFO line when it
//! takes writes again — never a line per retry.

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{ErrorKind, StoreError};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How often a store that keeps failing is logged again.
pub const REMIND: Duration = Duration::from_secs(30);

/// Which store call an outcome is about (the `op` label of `store_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCall {
    /// Applying a batch.
    Write,
    /// Deleting expired messages.
    Cull,
    /// Checking that an idle store still answers.
    Ping,
}

impl StoreCall {
    fn label(self) -> &'static str {
        match self {
            StoreCall::Write => "write",
            StoreCall::Cull => "cull",
            StoreCall::Ping => "ping",
        }
    }
}

/// What the log was last told.
#[derive(Debug)]
struct Told {
    error: StoreError,
    at: Instant,
}

/// The store's health; see the module doc.
#[derive(Debug, Default)]
pub struct Health {
    /// Wall time (ns) of the first failure since the store last took a write; 0 while healthy.
    failing_since: AtomicI64,
    /// The latest failure, and when the log last heard of one.
    last: Mutex<Option<Told>>,
}

impl Health {
    /// Whether the last store call succeeded.
    pub fn is_healthy(&self) -> bool {
        self.failing_since.load(Ordering::Relaxed) == 0
    }

    /// How long the store has been failing, if it is.
    pub fn failing_for(&self) -> Option<Duration> {
        match self.failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_nanos(Clock::wall_ns().saturating_sub(since).max(0) as u64)),
        }
    }

    /// The failure the store is in, if it is failing.
    pub fn failure(&self) -> Option<StoreError> {
        if self.is_healthy() {
            return None;
        }
        self.last.lock().as_ref().map(|t| t.error.clone())
    }

    /// Records a successful call.
    pub fn ok(&self) {
        let since = self.failing_since.swap(0, Ordering::Relaxed);
        if since != 0 {
            let down = Duration::from_nanos(Clock::wall_ns().saturating_sub(since).max(0) as u64);
            tracing::info!(after = ?down, "the store takes writes again");
            *self.last.lock() = None;
        }
    }

    /// Records a failed call; `waiting` is how many writes wait for the store.
    pub fn failed(&self, call: StoreCall, error: &StoreError, waiting: usize, metrics: &Metrics) {
        metrics.store_errors.with_label_values(&[call.label(), error.kind().label()]).inc();
        if error.kind() == ErrorKind::Rejected {
            // The data was refused, not the store: it is set aside, and the store is fine.
            return;
        }
        let now = Clock::wall_ns();
        let first = self.failing_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        let mut last = self.last.lock();
        let changed = last.as_ref().is_none_or(|t| t.error != *error);
        let due = last.as_ref().is_none_or(|t| t.at.elapsed() >= REMIND);
        if first || changed || due {
            let since = self.failing_for().unwrap_or_default();
            tracing::error!(
                call = call.label(),
                kind = error.kind().label(),
                error = %error,
                failing_for = ?since,
                waiting,
                "the store is failing; retrying with backoff"
            );
            *last = Some(Told { error: error.clone(), at: Instant::now() });
        }
    }
}
