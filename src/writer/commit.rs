//! [`Commit`]: the outcome of one durable write, shared by everyone who waits for it.
//!
//! The writer thread completes it exactly once. Unlike a oneshot channel, any number of tasks can
//! wait on the same commit — the request that made the write, and a duplicate `POST /api/user`
//! that must not be answered before the first one's user is in the store — and a waiter that goes
//! away (a client that hung up) takes nothing with it.

use std::sync::atomic::{AtomicU8, Ordering};
use tokio::sync::Notify;

/// How a durable write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It is in the store.
    Committed,
    /// The store refused it for good; it was set aside in the dead-letter file.
    Refused,
    /// The writer stopped before it could be written; it was spilled to a file that the next
    /// start replays, or lost with the process. Either way it was not confirmed.
    Unconfirmed,
}

const PENDING: u8 = 0;

impl Outcome {
    fn code(self) -> u8 {
        match self {
            Outcome::Committed => 1,
            Outcome::Refused => 2,
            Outcome::Unconfirmed => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Outcome::Committed),
            2 => Some(Outcome::Refused),
            3 => Some(Outcome::Unconfirmed),
            _ => None,
        }
    }
}

/// The outcome of one durable write; see the module doc.
#[derive(Debug, Default)]
pub struct Commit {
    state: AtomicU8,
    done: Notify,
}

impl Commit {
    /// A write not yet done.
    pub fn new() -> Self {
        Self::default()
    }

    /// The outcome, if the write is done.
    pub fn outcome(&self) -> Option<Outcome> {
        Outcome::from_code(self.state.load(Ordering::Acquire))
    }

    /// Waits until the write is done.
    pub async fn wait(&self) -> Outcome {
        loop {
            let notified = self.done.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a completion between the check and the await
            // still wakes us.
            notified.as_mut().enable();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            notified.await;
        }
    }

    /// Records the outcome (the first one wins) and wakes every waiter.
    pub(crate) fn complete(&self, outcome: Outcome) {
        let _ = self.state.compare_exchange(PENDING, outcome.code(), Ordering::AcqRel, Ordering::Acquire);
        self.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_sees_the_one_outcome() {
        for _ in 0..200 {
            let c = Arc::new(Commit::new());
            let waiters: Vec<_> = (0..4)
                .map(|_| {
                    let c = c.clone();
                    tokio::spawn(async move { c.wait().await })
                })
                .collect();
            let completer = {
                let c = c.clone();
                std::thread::spawn(move || {
                    c.complete(Outcome::Committed);
                    c.complete(Outcome::Refused); // too late: the first outcome stands
                })
            };
            for w in waiters {
                assert_eq!(w.await.unwrap(), Outcome::Committed);
            }
            completer.join().unwrap();
            assert_eq!(c.wait().await, Outcome::Committed, "a late waiter returns at once");
        }
    }
}
