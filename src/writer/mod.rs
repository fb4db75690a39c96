//! The write-behind pipeline: one dedicated thread drains a crossbeam channel into the store.
//!
//! # What the engine can rely on
//!
//! - The engine [`WriterHandle::submit`]s an [`Op`] (write-behind: messages, acknowledged once in
//!   memory) or [`WriterHandle::submit_durable`]s one and awaits the returned [`Commit`] (users,
//!   sessions, contacts; messages under `--durable-acks`). Ops are applied in the order queued.
//! - The thread takes whatever is queued — up to [`MAX_BATCH`] ops — and applies it as one
//!   transaction, then completes the batch's commits: group commit, so many waiting requests
//!   share one commit. After a batch it sleeps [`LINGER`] before taking the next, unless woken
//!   by a durable write or a stop: a busy server's write-behind sends then queue without waking
//!   it one by one. An idle thread blocks on the channel, so the first write after a quiet spell
//!   wakes it at once. Between batches it deletes expired messages in bounded steps, and an idle
//!   store is pinged every [`HEALTH_CHECK`] so `/readyz` tells the truth.
//! - **No poison batch.** A batch the store refuses for good ([`ErrorKind::Rejected`]) is split
//!   in halves, and the halves applied in order, until the one op at fault is found; that op is
//!   set aside — logged with its id, counted in `store_dead_letters_total`, appended to the
//!   dead-letter file ([`spill`]) — its commit completes as [`Outcome::Refused`], and everything
//!   else commits.
//! - **Transient failures** (unreachable, full, busy, read-only, other) are retried with
//!   backoff, forever while running. When the store is full, the batch is cut into smaller
//!   transactions (halving down to one op), so a nearly full disk still takes what fits; it grows
//!   back after each success. Every op is idempotent, so a batch whose outcome was unknown can be
//!   applied again.
//! - **Bounded exposure.** Sends are refused ([`WriterHandle::admit_send`]) once `--max-pending`
//!   writes are queued, and once the store has failed for longer than `--max-write-lag` without
//!   taking a write. So what is acknowledged from memory but not in the store is at most
//!   `--max-pending` writes and at most `--max-write-lag` (plus one batch) of sends.
//! - **A stop that ends.** [`Writer::stop`] gives the thread until a deadline to write
//!   everything queued. Whatever is still unwritten then — the failing batch and all queued
//!   behind it — is spilled, in order, to a file in `--spill-dir` that the next start replays
//!   ([`spill::replay`]); their commits complete as [`Outcome::Unconfirmed`].
//!
//! [`health`] keeps since-when and why the store fails, for `/readyz`, the log and the metrics.

mod apply;
pub mod commit;
pub mod health;
pub mod spill;

pub use commit::{Commit, Outcome};

use crate::metrics::Metrics;
use crate::store::{ErrorKind, Op, Store, StoreError};
use apply::Applier;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use health::{Health, StoreCall};
use parking_lot::Mutex;
use prometheus::IntGauge;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most ops applied in one transaction.
pub const MAX_BATCH: usize = 8192;
/// How long the thread waits for work before it checks whether there is any other to do.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// After a batch, how long the thread sleeps before it takes the next, so that a busy server's
/// write-behind sends queue without waking it: it is woken at once only when idle, or for a
/// durable write or a stop. A send reaches the store at most this much later than it would
/// otherwise; what is acknowledged and what a stop writes do not change.
const LINGER: Duration = Duration::from_millis(1);
/// How long the store may go without a write, cull or ping before the thread pings it, so that
/// `/readyz` notices an unreachable store on an idle server too.
pub const HEALTH_CHECK: Duration = Duration::from_secs(1);
/// Most expired messages deleted in one culling step.
pub const CULL_STEP: usize = 5000;
/// The first wait before retrying a failed store call; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The writer's settings (from the command line).
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// `--max-pending`: writes queued before sends are refused.
    pub max_pending: usize,
    /// `--max-write-lag`: how long the store may fail before sends are refused.
    pub max_write_lag: Duration,
    /// `--spill-dir`: where the spill and dead-letter files go.
    pub spill_dir: PathBuf,
}

impl WriterConfig {
    /// `max_pending`, the default `--max-write-lag` (5 s), and the system's temporary directory
    /// for files (for benchmarks and tests whose store never fails).
    pub fn new(max_pending: usize) -> Self {
        Self { max_pending, max_write_lag: Duration::from_secs(5), spill_dir: std::env::temp_dir() }
    }
}

/// Why a send is refused before anything changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-pending` writes are queued.
    QueueFull,
    /// The store has failed for longer than `--max-write-lag`.
    StoreStalled,
}

/// What [`Writer::stop`] left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Writes that could not be written before the deadline, and the spill file holding them.
    pub spilled: usize,
    /// The spill file, when there is one.
    pub file: Option<PathBuf>,
    /// Set when the spill file itself could not be written: those writes are lost.
    pub lost: Option<String>,
}

enum Command {
    Apply(Op, Option<Arc<Commit>>),
    Cull { before_ns: i64 },
    Stop,
}

struct Shared {
    /// Commands queued and not yet done: the `writer_queue_depth` gauge itself, so the metric is
    /// exact at every moment and kept in this one place.
    pending: IntGauge,
    max_pending: i64,
    max_write_lag: Duration,
    health: Health,
    /// Set by [`Writer::stop`]: past it, give up on the store and spill.
    deadline: Mutex<Option<Instant>>,
    spill_dir: PathBuf,
    metrics: Arc<Metrics>,
    /// The writer thread, to wake from [`LINGER`] for a durable write or a stop.
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl Shared {
    fn past_deadline(&self) -> bool {
        self.deadline.lock().is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps `backoff`, but not past the deadline.
    fn back_off(&self, backoff: Duration) {
        let wait = match *self.deadline.lock() {
            Some(d) => backoff.min(d.saturating_duration_since(Instant::now())),
            None => backoff,
        };
        std::thread::sleep(wait);
    }

    fn waiting(&self) -> usize {
        usize::try_from(self.pending.get()).unwrap_or(0)
    }
}

/// A cheap, cloneable way to queue writes. See the module doc.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle").field("pending", &self.pending()).finish()
    }
}

impl WriterHandle {
    /// Queues `cmd`; `urgent` wakes the thread from its [`LINGER`] (an idle thread blocked on
    /// the channel wakes for any command).
    fn queue(&self, cmd: Command, urgent: bool) {
        self.shared.pending.inc();
        let sent = self.tx.send(cmd);
        if urgent {
            if let Some(t) = self.shared.thread.get() {
                t.unpark();
            }
        }
        if let Err(crossbeam_channel::SendError(cmd)) = sent {
            // Only after Writer::stop; nothing can be written any more.
            self.shared.pending.dec();
            if let Command::Apply(op, commit) = cmd {
                tracing::error!(?op, "a write was queued after the writer stopped; it is lost");
                if let Some(c) = commit {
                    c.complete(Outcome::Unconfirmed);
                }
            }
        }
    }

    /// Queues `op` without waiting (write-behind).
    pub fn submit(&self, op: Op) {
        self.queue(Command::Apply(op, None), false);
    }

    /// Queues `op`; the returned [`Commit`] completes once it has committed (or was refused, or
    /// could not be written before a stop).
    pub fn submit_durable(&self, op: Op) -> Arc<Commit> {
        let commit = Arc::new(Commit::new());
        self.queue(Command::Apply(op, Some(commit.clone())), true);
        commit
    }

    /// Asks the writer to delete messages created before `before_ns`, in bounded steps.
    pub fn cull(&self, before_ns: i64) {
        self.queue(Command::Cull { before_ns }, false);
    }

    /// Writes queued and not yet committed.
    pub fn pending(&self) -> usize {
        self.shared.waiting()
    }

    /// Whether a send may be acknowledged now (see the module doc, "Bounded exposure"): one or two
    /// relaxed loads while the store is healthy.
    pub fn admit_send(&self) -> Result<(), Refusal> {
        if self.shared.pending.get() >= self.shared.max_pending {
            return Err(Refusal::QueueFull);
        }
        match self.shared.health.failing_for() {
            Some(d) if d > self.shared.max_write_lag => Err(Refusal::StoreStalled),
            _ => Ok(()),
        }
    }

    /// Whether the queue has reached `--max-pending`.
    pub fn is_full(&self) -> bool {
        self.shared.pending.get() >= self.shared.max_pending
    }

    /// Whether the last store call succeeded.
    pub fn is_healthy(&self) -> bool {
        self.shared.health.is_healthy()
    }

    /// Why the store is failing, while it is.
    pub fn failure(&self) -> Option<StoreError> {
        self.shared.health.failure()
    }
}

/// The writer thread; see the module doc.
#[derive(Debug)]
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<StopReport>>,
    /// How long [`Drop`] gives the thread when the writer was not stopped explicitly.
    drop_timeout: Duration,
}

impl Writer {
    /// Starts the thread that owns `store`. `metrics` must be this writer's alone: its queue
    /// depth gauge is the writer's counter.
    pub fn start(store: Box<dyn Store>, config: WriterConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            pending: metrics.queue_depth.clone(),
            max_pending: i64::try_from(config.max_pending.max(1)).unwrap_or(i64::MAX),
            max_write_lag: config.max_write_lag,
            health: Health::default(),
            deadline: Mutex::new(None),
            spill_dir: config.spill_dir,
            metrics,
            thread: std::sync::OnceLock::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new().name("chatbus-writer".into()).spawn(move || run(store, &rx, &shared))?
        };
        // Set before any handle exists, so before anything can be queued.
        let _ = shared.thread.set(thread.thread().clone());
        Ok(Self { handle: WriterHandle { tx, shared }, thread: Some(thread), drop_timeout: Duration::from_secs(30) })
    }

    /// A handle for queueing writes.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Writes everything queued so far, giving the store at most `timeout`; spills the rest (see
    /// the module doc). Returns once the thread has ended.
    pub fn stop(mut self, timeout: Duration) -> StopReport {
        self.stop_and_join(timeout)
    }

    fn stop_and_join(&mut self, timeout: Duration) -> StopReport {
        let Some(thread) = self.thread.take() else { return StopReport::default() };
        *self.handle.shared.deadline.lock() = Some(Instant::now() + timeout);
        self.handle.queue(Command::Stop, true);
        thread.join().unwrap_or_else(|_| {
            tracing::error!("the writer thread panicked");
            StopReport { lost: Some("the writer thread panicked".into()), ..StopReport::default() }
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let timeout = self.drop_timeout;
        self.stop_and_join(timeout);
    }
}

/// The ops of one batch and, for each, the commit to complete (durable ops only).
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    commits: Vec<Option<Arc<Commit>>>,
}

impl Batch {
    fn push(&mut self, op: Op, commit: Option<Arc<Commit>>) {
        self.ops.push(op);
        self.commits.push(commit);
    }

    fn len(&self) -> usize {
        self.ops.len()
    }

    fn complete(&self, range: std::ops::Range<usize>, outcome: Outcome) {
        for c in self.commits[range].iter().flatten() {
            c.complete(outcome);
        }
    }

    fn clear(&mut self) {
        self.ops.clear();
        self.commits.clear();
    }
}

/// The thread: gathers batches, applies them, culls between them, and on stop drains the queue.
fn run(mut store: Box<dyn Store>, rx: &Receiver<Command>, shared: &Shared) -> StopReport {
    let mut applier = Applier { chunk: MAX_BATCH };
    let mut batch = Batch::default();
    let mut cull_before: Option<i64> = None;
    let mut cull_backoff = Duration::ZERO;
    let mut last_contact = Instant::now();
    let mut stopping = false;
    // Whether the last round found work: then the next one lingers instead of blocking.
    let mut busy = false;
    loop {
        // Busy, with nothing queued yet, no cull and no stop: linger (see `LINGER`) rather than
        // block on the channel, where every send would wake us (a futex call on the request's
        // thread and a context switch per send). With writes already queued (a slow store, a
        // burst) the next batch starts at once, as before.
        let linger = busy && rx.is_empty() && !stopping && cull_before.is_none();
        // Wait for work; with culling to do, only peek (or back off after a failure).
        let wait = if stopping {
            Duration::ZERO
        } else if cull_before.is_some() {
            cull_backoff
        } else {
            IDLE_WAIT
        };
        let mut taken = 0usize;
        let mut take = |cmd: Command, batch: &mut Batch, stopping: &mut bool| {
            taken += 1;
            match cmd {
                Command::Apply(op, commit) => batch.push(op, commit),
                Command::Cull { before_ns } => {
                    cull_before = Some(cull_before.map_or(before_ns, |b: i64| b.max(before_ns)));
                }
                Command::Stop => *stopping = true,
            }
        };
        if linger {
            std::thread::park_timeout(LINGER);
        } else {
            match rx.recv_timeout(wait) {
                Ok(cmd) => take(cmd, &mut batch, &mut stopping),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stopping = true,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => take(cmd, &mut batch, &mut stopping),
                Err(_) => break,
            }
        }
        let drained = taken == 0;
        busy = !drained;
        if batch.len() > 0 {
            if let Err(unwritten) = applier.apply(&mut *store, &batch, shared) {
                shared.pending.sub(i64::try_from(taken).unwrap_or(i64::MAX));
                return spill_rest(&batch, unwritten, rx, shared);
            }
            batch.clear();
            last_contact = Instant::now();
        } else if !stopping && last_contact.elapsed() >= HEALTH_CHECK && cull_before.is_none() {
            // Idle: make sure /readyz still tells the truth about the store.
            match store.ping() {
                Ok(()) => shared.health.ok(),
                Err(e) => shared.health.failed(StoreCall::Ping, &e, shared.waiting(), &shared.metrics),
            }
            last_contact = Instant::now();
        }
        shared.pending.sub(i64::try_from(taken).unwrap_or(i64::MAX));
        if stopping {
            if drained {
                break;
            }
            continue;
        }
        if let Some(before) = cull_before {
            last_contact = Instant::now();
            match store.cull_messages(before, CULL_STEP) {
                Ok(n) => {
                    shared.metrics.messages_culled.inc_by(n as u64);
                    cull_backoff = Duration::ZERO;
                    if n < CULL_STEP {
                        cull_before = None;
                    }
                    shared.health.ok();
                }
                Err(e) => {
                    // Retried after new work arrives or the backoff passes, whichever is first.
                    cull_backoff = (cull_backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                    shared.health.failed(StoreCall::Cull, &e, shared.waiting(), &shared.metrics);
                }
            }
        }
    }
    tracing::debug!("writer stopped");
    StopReport::default()
}

/// At the stop deadline: spills `batch[unwritten..]` and everything still queued, in order.
fn spill_rest(batch: &Batch, unwritten: usize, rx: &Receiver<Command>, shared: &Shared) -> StopReport {
    let mut ops: Vec<Op> = batch.ops[unwritten..].to_vec();
    batch.complete(unwritten..batch.len(), Outcome::Unconfirmed);
    while let Ok(cmd) = rx.try_recv() {
        shared.pending.dec();
        if let Command::Apply(op, commit) = cmd {
            ops.push(op);
            if let Some(c) = commit {
                c.complete(Outcome::Unconfirmed);
            }
        }
    }
    let dir = &shared.spill_dir;
    match spill::spill(dir, &ops) {
        Ok(file) => {
            tracing::error!(
                writes = ops.len(),
                file = %file.display(),
                "the store did not take every write before --stop-timeout; the rest is spilled and the next start with \
                 this --spill-dir replays it"
            );
            StopReport { spilled: ops.len(), file: Some(file), lost: None }
        }
        Err(e) => {
            let why = format!("cannot write a spill file in {}: {e}", dir.display());
            for op in &ops {
                tracing::error!(?op, "lost: {why}");
            }
            StopReport { spilled: ops.len(), file: None, lost: Some(why) }
        }
    }
}

/// Replays the spill files in `dir` into `store` before a start (see [`spill::replay`]): each
/// file's ops go through the same bisecting apply as a running writer's (a refused op is set
/// aside), but a transient failure fails the start instead of waiting.
pub fn replay_spills(dir: &Path, store: &mut dyn Store, metrics: Arc<Metrics>) -> Result<spill::Replayed, StoreError> {
    let shared = Shared {
        pending: IntGauge::new("replay_pending", "unused").map_err(|e| StoreError::other(e.to_string()))?,
        max_pending: i64::MAX,
        max_write_lag: Duration::MAX,
        health: Health::default(),
        // Already past: a transient failure gives up at once.
        deadline: Mutex::new(Some(Instant::now())),
        spill_dir: dir.to_path_buf(),
        metrics,
        thread: std::sync::OnceLock::new(),
    };
    spill::replay(dir, store, |store, ops| {
        let mut batch = Batch::default();
        for op in ops {
            batch.push(op, None);
        }
        let mut applier = Applier { chunk: MAX_BATCH };
        applier.apply(store, &batch, &shared).map_err(|_| {
            shared.health.failure().unwrap_or_else(|| StoreError::new(ErrorKind::Unreachable, "the store failed"))
        })
    })
}

#[cfg(test)]
mod tests;
