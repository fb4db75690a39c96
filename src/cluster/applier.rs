//! The applier: the task that applies the cluster's [`Log`] to this node's engine, in order.
//!
//! It reads the log from the entry after its starting [`Position`] on ([`Log::read_from`]), and
//! for each entry runs the [`Sequencer`] (contiguity, `created_ns`, user ids) and then
//! [`Engine::apply`]. After each entry it hands the entry's outcome to whoever registered for its
//! message id ([`ApplierHandle::expect`]) — the publisher, which answers its client with it —
//! then publishes the position it reached on a `watch` channel ([`ApplierHandle::wait_applied`]:
//! a node answers a request only once it has applied at least the entry the request depends on).
//! An entry nobody waits for (another node's, or a publisher that gave up) is simply applied.
//!
//! **It stops rather than diverge.** A gap or a replay in the log ([`SequenceError`]) or an entry
//! this node cannot read would leave this node's state different from the others', so the
//! applier ends, returning the error from its task; everyone waiting on it is told it stopped
//! ([`Stopped`]), and the node must not serve on (a restart replays from a saved position). A
//! refusal by the engine is *not* such an error: every node refuses the same entry alike, and the
//! refusal is the entry's outcome.
//!
//! After each entry it queues the position reached to the store ([`Engine::record_log_position`],
//! behind the entry's own writes), so a restarted node loads the store and resumes the log where
//! the store stands ([`resume_position`]).
//!
//! Until the first reader of the log can be made (NATS unreachable at start) it retries every
//! 100 ms: the position stays where it was, which is what readiness reports from.

use super::command::{Position, SequenceError, Sequencer};
use super::log::{Log, LogError};
use crate::engine::{Effect, Engine, EngineError};
use crate::store::LogPosition;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// What applying an entry gave its publisher: the engine's effect or its refusal.
pub type Outcome = Result<Effect, EngineError>;

/// Why the applier stopped (what its task returns).
#[derive(Debug, thiserror::Error)]
pub enum ApplierError {
    /// The log skipped or repeated an entry: this node's state can no longer be trusted.
    #[error("cluster log out of sequence: {0}")]
    Sequence(#[from] SequenceError),
    /// An entry could not be read as a command.
    #[error("cluster log: {0}")]
    Log(#[from] LogError),
    /// The log's reader ended: its connection was closed.
    #[error("cluster log: the reader ended (connection closed)")]
    Ended,
}

/// The applier has stopped (see the module doc): nothing more will be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cluster log's applier stopped")]
pub struct Stopped;

/// Publishers waiting for their entries' outcomes, by message id; `None` once the applier stopped.
type Waiters = Arc<Mutex<Option<HashMap<String, oneshot::Sender<Outcome>>>>>;

/// Starts appliers; see the module doc.
#[derive(Debug)]
pub struct Applier;

/// A running applier as its users see it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApplierHandle {
    applied: watch::Receiver<Position>,
    waiters: Waiters,
}

impl Applier {
    /// Starts applying `log` to `engine` from the entry after `from` (an engine whose state is
    /// that position's: `Position::default()` for an empty engine and the log's start). Returns
    /// the handle and the task, which ends only when the applier stops, with why.
    pub fn start(log: Log, engine: Arc<Engine>, from: Position) -> (ApplierHandle, JoinHandle<ApplierError>) {
        let (applied_tx, applied) = watch::channel(from);
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let task = tokio::spawn(run(log, engine, from, applied_tx, waiters.clone()));
        (ApplierHandle { applied, waiters }, task)
    }
}

impl ApplierHandle {
    /// Where the applier stands: the last entry applied.
    pub fn position(&self) -> Position {
        *self.applied.borrow()
    }

    /// Waits until the entry `seq` (and every one before it) is applied; returns the position
    /// then. Fails only if the applier stopped before getting there.
    pub async fn wait_applied(&self, seq: u64) -> Result<Position, Stopped> {
        let mut applied = self.applied.clone();
        let position = applied.wait_for(|p| p.seq >= seq).await.map_err(|_| Stopped)?;
        Ok(*position)
    }

    /// Registers for the outcome of the entry published under `msg_id`: call it *before*
    /// publishing, so the outcome cannot be applied unseen. The receiver gets the outcome of the
    /// first entry with that id applied from now on; it fails ([`oneshot::error::RecvError`])
    /// if the applier stops first. A second registration for the same id replaces the first.
    /// A publisher that gives up calls [`ApplierHandle::forget`].
    pub fn expect(&self, msg_id: &str) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        if let Some(waiters) = self.waiters.lock().as_mut() {
            waiters.insert(msg_id.to_owned(), tx);
        }
        // Stopped: `tx` is dropped here, and the receiver fails at once.
        rx
    }

    /// Withdraws a registration (a publish that was never stored).
    pub fn forget(&self, msg_id: &str) {
        if let Some(waiters) = self.waiters.lock().as_mut() {
            waiters.remove(msg_id);
        }
    }

    /// Whether the applier stopped (see the module doc): this node applies nothing more.
    pub fn is_stopped(&self) -> bool {
        self.waiters.lock().is_none()
    }

    /// How many publishers wait for an outcome.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().as_ref().map_or(0, HashMap::len)
    }
}

/// A sequencer position as the stores keep it.
fn store_position(p: Position) -> LogPosition {
    LogPosition { seq: i64::try_from(p.seq).unwrap_or(i64::MAX), created_ns: p.created_ns, user_id: p.user_id }
}

/// Where to resume a log after a start that loaded `snapshot`: the position the store holds for
/// `stream` (its state is that position's), or the log's start.
pub fn resume_position(snapshot_positions: &[(String, LogPosition)], stream: &str) -> Position {
    snapshot_positions.iter().find(|(s, _)| s == stream).map_or_else(Position::default, |(_, p)| Position {
        seq: u64::try_from(p.seq).unwrap_or(0),
        created_ns: p.created_ns,
        user_id: p.user_id,
    })
}

/// The applier's task: see the module doc.
async fn run(
    log: Log,
    engine: Arc<Engine>,
    from: Position,
    applied: watch::Sender<Position>,
    waiters: Waiters,
) -> ApplierError {
    /// How long to wait before trying again to make the log's first reader.
    const RETRY: Duration = Duration::from_millis(100);
    let mut sequencer = Sequencer::resume(from);
    let mut entries = loop {
        match log.read_from(from.seq + 1).await {
            Ok(entries) => break entries,
            Err(e) => {
                tracing::warn!("cluster log: cannot read from entry {} yet: {e}", from.seq + 1);
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let error = loop {
        let entry = match entries.next().await {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => break ApplierError::Log(e),
            None => break ApplierError::Ended,
        };
        let sequenced = match sequencer.apply(entry.seq, entry.timestamp_ns, &entry.command) {
            Ok(sequenced) => sequenced,
            Err(e) => break ApplierError::Sequence(e),
        };
        let outcome = engine.apply(&sequenced, &entry.command);
        let position = sequencer.position();
        // Queued after the entry's own writes: the batch that stores the position stores them.
        engine.record_log_position(log.stream_name(), store_position(position));
        // The outcome before the position: whoever sees the position has its outcome too (a
        // duplicate publish tells the two cases apart that way, see `publisher`).
        if let Some(id) = entry.msg_id {
            let waiter = waiters.lock().as_mut().and_then(|w| w.remove(&id));
            if let Some(waiter) = waiter {
                // The publisher may have stopped waiting (its client left): nothing to do.
                let _ = waiter.send(outcome);
            }
        }
        applied.send_replace(position);
    };
    tracing::error!("cluster log applier stopped at {}: {error}", sequencer.position());
    // Every waiter learns that nothing more comes; `applied` is dropped with this task.
    waiters.lock().take();
    error
}
