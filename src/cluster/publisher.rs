//! The publisher: how a node turns one write into an entry of the cluster's log and the
//! entry's outcome — what the engine's mutations will call in cluster mode.
//!
//! 1. Register for the outcome of `msg_id` with the applier *before* publishing, so the entry
//!    cannot be applied unseen ([`ApplierHandle::expect`]).
//! 2. Publish under `msg_id` until JetStream acknowledges it, retrying with the **same** id on
//!    every error: a publish answered with an error may still have been stored (the client
//!    resends what it buffered across a reconnect), and the stream's duplicate window makes the
//!    retry store nothing twice. Retries stop at the deadline: the write then answers 503 and its
//!    effect is unknown — exactly what a client already handles for a lost answer (it retries
//!    with its own id, or reads back). The deadline bounds the whole: a try that would outlast
//!    it is cut short.
//! 3. Wait for the outcome the applier hands over once it applied the entry — or, should the
//!    applier move past the entry's sequence number without one (it had applied another entry
//!    under that number: this node's log diverged, see [`LogError::Inconsistent`]), give up at
//!    once rather than wait for an outcome that cannot come (the write's client waited until it
//!    gave up, before).
//!
//! A publish acknowledged as a *duplicate* names the entry of the first publish with that id.
//! If that entry was applied before this registration (a retry after an answer was lost), no
//! outcome will come for it: the publisher waits until the applier has passed that entry and
//! reports [`PublishError::AlreadyApplied`] with its sequence, so the caller answers from the
//! state, as the single-node paths do for a repeated create.

use super::applier::{ApplierHandle, Outcome};
use super::command::Command;
use super::log::{Log, LogError};
use std::time::Duration;
use tokio::time::Instant;

/// Why a write did not get its outcome.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// JetStream did not acknowledge the entry before the deadline: it may or may not be in the
    /// log (503; the client retries).
    #[error("the cluster log did not take the write within {waited:?}: {last}")]
    NotStored {
        /// How long it tried.
        waited: Duration,
        /// The last error.
        last: LogError,
    },
    /// Stored, but this node's applier stopped before applying it (the node must not serve on).
    #[error("the cluster log's applier stopped before applying entry {0}")]
    ApplierStopped(u64),
    /// The entry was stored and applied before: by an earlier publish with the same id, whose
    /// outcome went to that publish. Applied by now: answer from the state.
    #[error("entry {0} with this id was applied already")]
    AlreadyApplied(u64),
    /// JetStream stored the write as entry `{0}`, but this node had applied another entry under
    /// that sequence number: its log diverged (see [`LogError::Inconsistent`]). The write is in
    /// the log; this node will not apply it.
    #[error("the cluster log stored this write as entry {0}, which this node had applied as another entry")]
    NotApplied(u64),
}

/// Publishes writes and waits for their outcomes; see the module doc. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    log: Log,
    applier: ApplierHandle,
    /// How long one write may keep retrying its publish.
    deadline: Duration,
}

impl Publisher {
    /// A publisher into `log`, whose entries `applier` applies on this node. A write retries its
    /// publish for at most `deadline`.
    pub fn new(log: Log, applier: ApplierHandle, deadline: Duration) -> Self {
        Self { log, applier, deadline }
    }

    /// Publishes `command` under `msg_id` and returns the entry's sequence and outcome.
    pub async fn write(&self, msg_id: &str, command: &Command) -> Result<(u64, Outcome), PublishError> {
        /// The first pause between retries; it doubles up to [`MAX_PAUSE`].
        const FIRST_PAUSE: Duration = Duration::from_millis(10);
        const MAX_PAUSE: Duration = Duration::from_millis(500);
        let started = Instant::now();
        let outcome = self.applier.expect(msg_id);
        // However the write ends — also when its client goes away and this future is dropped —
        // the registration goes with it (once the outcome was handed over, there is none left).
        let _registered = Registered { applier: &self.applier, msg_id };
        let mut pause = FIRST_PAUSE;
        let stored = loop {
            // The last try gets only what is left of the deadline, not a whole request timeout.
            let left = self.deadline.saturating_sub(started.elapsed());
            let tried = tokio::time::timeout(left, self.log.publish(msg_id, command)).await;
            match tried.unwrap_or(Err(LogError::Timeout(left))) {
                Ok(stored) => break stored,
                Err(e) if started.elapsed() + pause >= self.deadline => {
                    return Err(PublishError::NotStored { waited: started.elapsed(), last: e });
                }
                Err(e) => tracing::debug!(msg_id, "cluster log publish failed, retrying with the same id: {e}"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        };
        if stored.duplicate {
            // Applied before we registered, or about to be: which, only the position can tell.
            self.applier.wait_applied(stored.seq).await.map_err(|_| PublishError::ApplierStopped(stored.seq))?;
            return match tokio::time::timeout(Duration::ZERO, outcome).await {
                Ok(Ok(outcome)) => Ok((stored.seq, outcome)),
                _ => Err(PublishError::AlreadyApplied(stored.seq)),
            };
        }
        let mut outcome = outcome;
        tokio::select! {
            biased;
            got = &mut outcome => got.map(|o| (stored.seq, o)).map_err(|_| PublishError::ApplierStopped(stored.seq)),
            passed = self.applier.wait_applied(stored.seq) => {
                passed.map_err(|_| PublishError::ApplierStopped(stored.seq))?;
                // The applier hands an entry's outcome over before it moves past the entry: none
                // now means the entry it applied under this number was another one.
                outcome.try_recv().map(|o| (stored.seq, o)).map_err(|_| PublishError::NotApplied(stored.seq))
            }
        }
    }
}

/// A write's registration for its outcome, withdrawn when dropped.
struct Registered<'a> {
    applier: &'a ApplierHandle,
    msg_id: &'a str,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.applier.forget(self.msg_id);
    }
}
