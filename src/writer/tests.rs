//! The writer against stores that fail on purpose: retries, poison ops, a full store, a stop
//! that reaches its deadline, and the bound on what sends may acknowledge.

use super::*;
use crate::store::Snapshot;
use parking_lot::Mutex;

/// How a [`Scripted`] store answers a write.
#[derive(Clone)]
enum Rule {
    /// Fail the next `n` writes with `kind`.
    FailNext(usize, ErrorKind),
    /// Refuse (for good) any write holding the op for which this returns true.
    Poison(fn(&Op) -> bool),
    /// Fail with `Full` any write of more than `n` ops.
    Fits(usize),
    /// Fail every write with `Unreachable` until the switch is turned on.
    Down(Arc<std::sync::atomic::AtomicBool>),
}

/// Records every committed op, and fails as its rules say.
struct Scripted {
    ops: Arc<Mutex<Vec<Op>>>,
    writes: Arc<Mutex<Vec<usize>>>,
    rules: Vec<Rule>,
}

impl Store for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }
    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        for rule in &mut self.rules {
            match rule {
                Rule::FailNext(n, kind) if *n > 0 => {
                    *n -= 1;
                    return Err(StoreError::new(*kind, "injected failure"));
                }
                Rule::Poison(bad) if ops.iter().any(*bad) => {
                    return Err(StoreError::new(ErrorKind::Rejected, "injected: invalid byte sequence"));
                }
                Rule::Fits(n) if ops.len() > *n => {
                    return Err(StoreError::new(ErrorKind::Full, "injected: database or disk is full"));
                }
                Rule::Down(up) if !up.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Err(StoreError::new(ErrorKind::Unreachable, "injected: connection refused"));
                }
                _ => {}
            }
        }
        self.writes.lock().push(ops.len());
        self.ops.lock().extend_from_slice(ops);
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

struct Rig {
    writer: Writer,
    ops: Arc<Mutex<Vec<Op>>>,
    writes: Arc<Mutex<Vec<usize>>>,
    metrics: Arc<Metrics>,
    dir: tempfile::TempDir,
}

fn rig(rules: Vec<Rule>, max_pending: usize, max_write_lag: Duration) -> Rig {
    let ops = Arc::new(Mutex::new(Vec::new()));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new(&["t"]));
    let store = Scripted { ops: ops.clone(), writes: writes.clone(), rules };
    let config = WriterConfig { max_pending, max_write_lag, spill_dir: dir.path().to_path_buf() };
    let writer = Writer::start(Box::new(store), config, metrics.clone()).unwrap();
    Rig { writer, ops, writes, metrics, dir }
}

fn op(id: i64) -> Op {
    Op::DeleteUser { id }
}

#[test]
fn stop_drains_everything_in_order_and_retries_failed_batches() {
    let r = rig(vec![Rule::FailNext(3, ErrorKind::Unreachable)], 1_000_000, Duration::from_secs(5));
    let handle = r.writer.handle();
    let mut commits = Vec::new();
    for id in 0..20_000 {
        if id % 1000 == 0 {
            commits.push(handle.submit_durable(op(id)));
        } else {
            handle.submit(op(id));
        }
    }
    assert_eq!(r.writer.stop(Duration::from_secs(30)), StopReport::default(), "nothing spilled");
    assert_eq!(*r.ops.lock(), (0..20_000).map(op).collect::<Vec<_>>(), "everything, once, in order");
    for c in commits {
        assert_eq!(c.outcome(), Some(Outcome::Committed), "every durable op completed after its commit");
    }
    assert_eq!(handle.pending(), 0, "the queue depth returns to zero");
    assert!(handle.is_healthy(), "healthy again after the injected failures");
    let text = String::from_utf8(r.metrics.render()).unwrap();
    assert!(text.contains(r#"chatbus_store_errors_total{kind="unreachable",op="write"} 3"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_commit_waits_for_the_store() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = rig(vec![Rule::Down(up.clone())], 10, Duration::from_secs(5));
    let commit = r.writer.handle().submit_durable(op(7));
    let waiting = tokio::spawn({
        let commit = commit.clone();
        async move { commit.wait().await }
    });
    // The store stays down until the writer has failed at least twice.
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.metrics.render().windows(12).filter(|w| w == b"unreachable\"").count() == 0 {
        assert!(Instant::now() < deadline, "the writer never tried");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(commit.outcome(), None, "not committed while the store is down");
    assert!(!r.writer.handle().is_healthy());
    up.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(waiting.await.unwrap(), Outcome::Committed);
    assert_eq!(*r.ops.lock(), vec![op(7)]);
    tokio::task::spawn_blocking(move || r.writer.stop(Duration::from_secs(5))).await.unwrap();
}

/// A poison op in the middle of a batch: the batch is bisected, the op set aside (dead-letter
/// file, metric, `Refused`), every other op committed in order.
#[test]
fn a_poison_op_is_set_aside_and_the_rest_commits() {
    fn poison(op: &Op) -> bool {
        *op == Op::DeleteUser { id: 4321 }
    }
    let r = rig(vec![Rule::Poison(poison)], 1_000_000, Duration::from_secs(5));
    let handle = r.writer.handle();
    let mut bad = None;
    for id in 0..10_000 {
        if id == 4321 {
            bad = Some(handle.submit_durable(op(id)));
        } else {
            handle.submit(op(id));
        }
    }
    let good = handle.submit_durable(op(10_000));
    assert_eq!(r.writer.stop(Duration::from_secs(30)), StopReport::default());
    let expected: Vec<Op> = (0..=10_000).filter(|&id| id != 4321).map(op).collect();
    assert_eq!(*r.ops.lock(), expected, "everything but the poison op, once, in order");
    assert_eq!(bad.unwrap().outcome(), Some(Outcome::Refused));
    assert_eq!(good.outcome(), Some(Outcome::Committed));
    let letters = std::fs::read_to_string(r.dir.path().join(spill::DEAD_LETTERS)).unwrap();
    let letters: Vec<spill::DeadLetter> = letters.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].op, op(4321));
    assert!(letters[0].error.contains("invalid byte sequence"), "{}", letters[0].error);
    assert_eq!(r.metrics.dead_letters.get(), 1);
    assert!(handle.is_healthy(), "refused data does not make the store unhealthy");
}

/// A full store takes what fits: the writer cuts the batch into smaller transactions.
#[test]
fn a_full_store_gets_smaller_transactions() {
    let r = rig(vec![Rule::Fits(100)], 1_000_000, Duration::from_secs(5));
    let handle = r.writer.handle();
    for id in 0..5000 {
        handle.submit(op(id));
    }
    assert_eq!(r.writer.stop(Duration::from_secs(60)), StopReport::default());
    assert_eq!(*r.ops.lock(), (0..5000).map(op).collect::<Vec<_>>());
    assert!(r.writes.lock().iter().all(|&n| n <= 100), "no transaction larger than what fits");
}

/// A stop during an outage ends at its deadline, spilling every unwritten op in order; the
/// spill replays into a store that works.
#[test]
fn a_stop_during_an_outage_spills_and_the_spill_replays() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = rig(vec![Rule::Down(up)], 1_000_000, Duration::from_secs(5));
    let handle = r.writer.handle();
    let durable = handle.submit_durable(op(0));
    for id in 1..3000 {
        handle.submit(op(id));
    }
    let started = Instant::now();
    let report = r.writer.stop(Duration::from_millis(300));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the stop took {took:?}");
    assert_eq!(report.spilled, 3000);
    assert!(report.lost.is_none());
    assert_eq!(durable.outcome(), Some(Outcome::Unconfirmed), "a durable op never confirmed is said so");
    assert!(r.ops.lock().is_empty());
    assert_eq!(handle.pending(), 0);
    let file = report.file.unwrap();
    assert_eq!(spill::read_spill(&file).unwrap(), (0..3000).map(op).collect::<Vec<_>>());

    let replayed_ops = Arc::new(Mutex::new(Vec::new()));
    let mut store = Scripted { ops: replayed_ops.clone(), writes: Arc::new(Mutex::new(Vec::new())), rules: Vec::new() };
    let done = replay_spills(r.dir.path(), &mut store, Arc::new(Metrics::new(&["t"]))).unwrap();
    assert_eq!(done, spill::Replayed { files: 1, ops: 3000 });
    assert_eq!(*replayed_ops.lock(), (0..3000).map(op).collect::<Vec<_>>());
    assert!(!file.exists(), "a replayed spill file is deleted");
}

/// What sends may acknowledge without the store is bounded in count (`--max-pending`) and in
/// time (`--max-write-lag`).
#[test]
fn sends_are_refused_past_the_count_and_time_bounds() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = rig(vec![Rule::Down(up.clone())], 50, Duration::from_millis(300));
    let handle = r.writer.handle();
    assert_eq!(handle.admit_send(), Ok(()));
    handle.submit(op(1));
    // The store fails: sends are still admitted, until it has failed for longer than the lag.
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.is_healthy() {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    assert_eq!(handle.admit_send(), Ok(()), "within --max-write-lag");
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(handle.admit_send(), Err(Refusal::StoreStalled), "past --max-write-lag");
    for id in 2..=60 {
        handle.submit(op(id));
    }
    assert_eq!(handle.admit_send(), Err(Refusal::QueueFull), "past --max-pending");
    up.store(true, std::sync::atomic::Ordering::Relaxed);
    while handle.admit_send().is_err() {
        assert!(Instant::now() < deadline, "never admitted again");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.writer.stop(Duration::from_secs(5)), StopReport::default());
    assert_eq!(r.ops.lock().len(), 60);
}

/// A busy writer sleeps between batches instead of blocking on the channel (so sends do not
/// wake it one by one); every write-behind op still reaches the store on its own, with nothing
/// else to wake the thread, and so does a durable one queued while it sleeps.
#[test]
fn a_lingering_writer_still_writes_everything_promptly() {
    let r = rig(vec![], 1_000, Duration::from_secs(5));
    let handle = r.writer.handle();
    let written = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.ops.lock().len() < n {
            assert!(Instant::now() < deadline, "op {n} was queued but never written");
            std::thread::sleep(Duration::from_micros(100));
        }
    };
    // Each op arrives right after the one before was written: the thread is busy, lingering.
    for id in 0..50 {
        handle.submit(op(id));
        written(usize::try_from(id).unwrap() + 1);
    }
    let commit = handle.submit_durable(op(50));
    written(51);
    let deadline = Instant::now() + Duration::from_secs(5);
    while commit.outcome().is_none() {
        assert!(Instant::now() < deadline, "the durable op never committed");
        std::thread::sleep(Duration::from_micros(100));
    }
    assert_eq!(commit.outcome(), Some(Outcome::Committed));
    assert_eq!(*r.ops.lock(), (0..=50).map(op).collect::<Vec<_>>(), "everything, once, in order");
    assert_eq!(r.writer.stop(Duration::from_secs(5)), StopReport::default());
}
