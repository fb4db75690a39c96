//! The write-behind pipeline: one dedicated thread drains a crossbeam channel into the store.
//!
//! Handlers never touch the store. They [`WriterHandle::submit`] an [`Op`] (messages: done, the
//! message is acknowledged once it is in memory) or [`WriterHandle::submit_durable`] one and
//! await the returned [`Ack`] (users, sessions, contacts; messages under `--durable-acks`).
//!
//! The thread takes whatever is queued — up to [`MAX_BATCH`] ops — and applies it as one
//! transaction, then completes the acks of that batch: group commit, so many waiting requests
//! share one commit. A batch that fails is retried, whole and in order, with backoff until it
//! commits (every op is idempotent, so an unknown outcome is safe to retry); nothing queued is
//! ever dropped. Between batches it deletes expired messages in bounded steps.
//!
//! [`Writer::stop`] queues a stop marker and joins the thread, which first applies everything
//! queued before the marker: graceful shutdown loses nothing acknowledged.
//!
//! The queue is bounded by `--max-pending` for sends only ([`WriterHandle::is_full`]): past it,
//! sends answer 503 instead of letting memory grow. Rare ops (users, sessions, contacts, culling)
//! are always queued, since they are few and waited for.

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Op, Store};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use prometheus::IntGauge;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most ops applied in one transaction.
pub const MAX_BATCH: usize = 8192;
/// How long the thread waits for work before it checks whether there is any other to do.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// How long the store may go without a write, cull or ping before the thread pings it, so that
/// `/readyz` notices an unreachable store on an idle server too.
pub const HEALTH_CHECK: Duration = Duration::from_secs(1);
/// Most expired messages deleted in one culling step.
pub const CULL_STEP: usize = 5000;

/// Resolves once the op it was returned for has committed; an error means the writer is gone.
pub type Ack = oneshot::Receiver<()>;

enum Command {
    Apply(Op, Option<oneshot::Sender<()>>),
    Cull { before_ns: i64 },
    Stop,
}

struct Shared {
    /// Commands queued and not yet done: the `writer_queue_depth` gauge itself, so the metric is
    /// exact at every moment and kept in this one place.
    pending: IntGauge,
    max_pending: i64,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
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
    fn queue(&self, cmd: Command) {
        self.shared.pending.inc();
        if self.tx.send(cmd).is_err() {
            // Only after Writer::stop; nothing can be written any more.
            self.shared.pending.dec();
            tracing::error!("write queued after the writer stopped; dropped");
        }
    }

    /// Queues `op` without waiting (write-behind).
    pub fn submit(&self, op: Op) {
        self.queue(Command::Apply(op, None));
    }

    /// Queues `op`; the returned [`Ack`] resolves once it has committed.
    pub fn submit_durable(&self, op: Op) -> Ack {
        let (tx, rx) = oneshot::channel();
        self.queue(Command::Apply(op, Some(tx)));
        rx
    }

    /// Asks the writer to delete messages created before `before_ns`, in bounded steps.
    pub fn cull(&self, before_ns: i64) {
        self.queue(Command::Cull { before_ns });
    }

    /// Writes queued and not yet committed.
    pub fn pending(&self) -> usize {
        usize::try_from(self.shared.pending.get()).unwrap_or(0)
    }

    /// Whether the queue has reached `--max-pending` (sends answer 503).
    pub fn is_full(&self) -> bool {
        self.shared.pending.get() >= self.shared.max_pending
    }

    /// Whether the last store write succeeded.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }
}

/// The writer thread; see the module doc.
#[derive(Debug)]
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread that owns `store`.
    pub fn start(store: Box<dyn Store>, max_pending: usize, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            pending: metrics.queue_depth.clone(),
            max_pending: i64::try_from(max_pending.max(1)).unwrap_or(i64::MAX),
            healthy: AtomicBool::new(true),
            metrics,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new().name("chatbus-writer".into()).spawn(move || run(store, &rx, &shared))?
        };
        Ok(Self { handle: WriterHandle { tx, shared }, thread: Some(thread) })
    }

    /// A handle for queueing writes.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Applies everything queued so far, then stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.queue(Command::Stop);
            if thread.join().is_err() {
                tracing::error!("writer thread panicked");
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn run(mut store: Box<dyn Store>, rx: &Receiver<Command>, shared: &Shared) {
    let mut ops: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
    let mut cull_before: Option<i64> = None;
    let mut cull_backoff = Duration::ZERO;
    let mut last_contact = Instant::now();
    let mut stopping = false;
    while !stopping {
        // Wait for work; with culling to do, only peek (or back off after a failure).
        let wait = match cull_before {
            Some(_) => cull_backoff,
            None => IDLE_WAIT,
        };
        let mut taken = 0usize;
        let mut take = |cmd: Command, ops: &mut Vec<Op>, acks: &mut Vec<_>, stopping: &mut bool| {
            taken += 1;
            match cmd {
                Command::Apply(op, ack) => {
                    ops.push(op);
                    acks.extend(ack);
                }
                Command::Cull { before_ns } => {
                    cull_before = Some(cull_before.map_or(before_ns, |b: i64| b.max(before_ns)));
                }
                Command::Stop => *stopping = true,
            }
        };
        match rx.recv_timeout(wait) {
            Ok(cmd) => take(cmd, &mut ops, &mut acks, &mut stopping),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stopping = true,
        }
        // Drain what is queued; when stopping, drain everything queued before the marker.
        while ops.len() < MAX_BATCH || stopping {
            match rx.try_recv() {
                Ok(cmd) => take(cmd, &mut ops, &mut acks, &mut stopping),
                Err(_) => break,
            }
            if ops.len() >= MAX_BATCH {
                commit(&mut *store, &mut ops, &mut acks, shared);
            }
        }
        if !ops.is_empty() || !acks.is_empty() {
            commit(&mut *store, &mut ops, &mut acks, shared);
            last_contact = Instant::now();
        } else if last_contact.elapsed() >= HEALTH_CHECK && cull_before.is_none() {
            // Idle: make sure /readyz still tells the truth about the store.
            set_health(shared, StoreCall::Ping, store.ping().map_err(|e| e.to_string()));
            last_contact = Instant::now();
        }
        shared.pending.sub(i64::try_from(taken).unwrap_or(i64::MAX));
        if let Some(before) = cull_before.filter(|_| !stopping) {
            let culled = store.cull_messages(before, CULL_STEP);
            last_contact = Instant::now();
            match culled {
                Ok(n) => {
                    shared.metrics.messages_culled.inc_by(n as u64);
                    cull_backoff = Duration::ZERO;
                    if n < CULL_STEP {
                        cull_before = None;
                    }
                    set_health(shared, StoreCall::Cull, Ok(()));
                }
                Err(e) => {
                    // Retried after new work arrives or the backoff passes, whichever is first.
                    cull_backoff = (cull_backoff * 2).clamp(Duration::from_millis(20), Duration::from_secs(2));
                    set_health(shared, StoreCall::Cull, Err(format!("culling expired messages: {e}")));
                }
            }
        }
    }
    tracing::debug!("writer stopped");
}

/// Which store call an outcome is about (the `op` label of `store_errors_total`).
#[derive(Debug, Clone, Copy)]
enum StoreCall {
    Write,
    Cull,
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

/// Records whether the store answered, logging only the transitions.
fn set_health(shared: &Shared, call: StoreCall, result: Result<(), String>) {
    match result {
        Ok(()) => {
            if !shared.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!("the store answers again");
            }
        }
        Err(e) => {
            shared.metrics.store_errors.with_label_values(&[call.label()]).inc();
            if shared.healthy.swap(false, Ordering::Relaxed) {
                tracing::error!(error = %e, "the store is unreachable; retrying with backoff");
            }
        }
    }
}

/// Applies `ops` in one transaction, retrying until it commits, then completes `acks`.
fn commit(store: &mut dyn Store, ops: &mut Vec<Op>, acks: &mut Vec<oneshot::Sender<()>>, shared: &Shared) {
    if ops.is_empty() && acks.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(20);
    loop {
        let started = Instant::now();
        match store.write(ops) {
            Ok(()) => {
                shared.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                // Ops are in order, so the first message is the batch's oldest.
                if let Some(Op::Message(m)) = ops.iter().find(|op| matches!(op, Op::Message(_))) {
                    let lag_ns = Clock::wall_ns().saturating_sub(m.created_ns);
                    shared.metrics.message_lag_seconds.observe(lag_ns.max(0) as f64 / 1e9);
                }
                shared.metrics.batch_size.observe(ops.len() as f64);
                set_health(shared, StoreCall::Write, Ok(()));
                break;
            }
            Err(e) => {
                shared.metrics.store_errors.with_label_values(&[StoreCall::Write.label()]).inc();
                if shared.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, ops = ops.len(), "store write failed; retrying with backoff");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    ops.clear();
    for ack in acks.drain(..) {
        let _ = ack.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Snapshot, StoreError};
    use parking_lot::Mutex;

    /// Records every committed op; fails the first `failures` writes.
    struct Recording {
        ops: Arc<Mutex<Vec<Op>>>,
        failures: usize,
    }

    impl Store for Recording {
        fn kind(&self) -> &'static str {
            "recording"
        }
        fn load(&mut self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(StoreError::Other("injected failure".into()));
            }
            self.ops.lock().extend_from_slice(ops);
            Ok(())
        }
        fn cull_messages(&mut self, _before_ns: i64, _limit: usize) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn ping(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn op(id: i64) -> Op {
        Op::DeleteUser { id }
    }

    #[test]
    fn stop_drains_everything_in_order_and_retries_failed_batches() {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let store = Recording { ops: ops.clone(), failures: 3 };
        let writer = Writer::start(Box::new(store), 1_000_000, Arc::new(Metrics::new(&["t"]))).unwrap();
        let handle = writer.handle();
        let mut acks = Vec::new();
        for id in 0..20_000 {
            if id % 1000 == 0 {
                acks.push(handle.submit_durable(op(id)));
            } else {
                handle.submit(op(id));
            }
        }
        writer.stop();
        let written = ops.lock().clone();
        assert_eq!(written, (0..20_000).map(op).collect::<Vec<_>>(), "everything, once, in order");
        for mut ack in acks {
            assert_eq!(ack.try_recv(), Ok(()), "every durable op acknowledged after its commit");
        }
        assert_eq!(handle.pending(), 0, "the queue depth returns to zero");
        assert!(handle.is_healthy(), "healthy again after the injected failures");
    }

    #[test]
    fn a_durable_ack_waits_for_the_commit() {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let store = Recording { ops: ops.clone(), failures: 0 };
        let writer = Writer::start(Box::new(store), 10, Arc::new(Metrics::new(&["t"]))).unwrap();
        let ack = writer.handle().submit_durable(op(7));
        // Blocking receive from a plain thread: resolves only once the op is in the store.
        assert_eq!(ack.blocking_recv(), Ok(()));
        assert_eq!(*ops.lock(), vec![op(7)]);
        writer.stop();
    }
}
