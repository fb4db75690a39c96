//! The cluster's log (`chatbus::cluster::Log`) against real NATS servers of the test's own:
//! ordering, deduplication, two readers agreeing through the `Sequencer`, and nothing
//! acknowledged lost or doubled when a NATS server crashes or a NATS cluster's stream leader dies.

mod support;

use chatbus::cluster::{Applied, Command, Entry, Log, LogConfig, LogError, Sequencer, Stored};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::nats::{Nats, NatsCluster};
use support::wait::{blocking, wait_until};

/// The ack timeout the tests run with: short, so an outage shows as errors quickly.
const TIMEOUT: Duration = Duration::from_secs(1);

fn config(replicas: usize) -> LogConfig {
    LogConfig { replicas, timeout: TIMEOUT, ..LogConfig::default() }
}

/// A send whose message uuid is `id` (so the log's entries can be counted by id).
fn send(id: &str) -> Command {
    Command::Send {
        session: "ab".repeat(16),
        receiver_id: 2,
        body: format!("body of {id}"),
        attachments: "[]".into(),
        message: id.into(),
    }
}

fn id_of(command: &Command) -> &str {
    match command {
        Command::Send { message, .. } => message,
        Command::CreateUser { uuid, .. } => uuid,
        other => panic!("unexpected command {other:?}"),
    }
}

/// Opens the log, retrying while the servers are still electing leaders, for at most 10 s.
async fn open(urls: &str, stream: &str, config: LogConfig) -> Log {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Log::open(urls, stream, config).await {
            Ok(log) => return log,
            Err(e) => assert!(Instant::now() < deadline, "could not open the log: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads exactly `count` entries from `from` on, within 10 s (retrying to start the reader while
/// the servers elect leaders, as a node would).
async fn read(log: &Log, from: u64, count: usize) -> Vec<Entry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut entries = loop {
        match log.read_from(from).await {
            Ok(entries) => break entries,
            Err(e) => assert!(Instant::now() < deadline, "could not read the log: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(10), entries.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} entries from {from} within 10 s", out.len()));
        out.push(next.expect("the log's stream does not end").expect("an entry"));
    }
    out
}

/// What a publisher saw: the ack it finally got, and every error before it with how long the
/// failing call took.
struct Outcome {
    stored: Stored,
    errors: Vec<(String, Duration)>,
    /// From the first attempt to the ack.
    took: Duration,
}

/// Publishes until acknowledged, retrying after any error with the same message id (what a node
/// does), for at most `limit`.
async fn publish_until_acked(log: &Log, id: &str, command: &Command, limit: Duration) -> Outcome {
    let first = Instant::now();
    let deadline = first + limit;
    let mut errors = Vec::new();
    loop {
        let started = Instant::now();
        match log.publish(id, command).await {
            Ok(stored) => return Outcome { stored, errors, took: first.elapsed() },
            Err(e) => errors.push((e.to_string(), started.elapsed())),
        }
        assert!(Instant::now() < deadline, "{id} not acknowledged within {limit:?}: {errors:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_come_back_in_order_and_a_repeated_id_is_stored_once() {
    let nats = blocking(Nats::start).await;
    let log = open(&nats.url(), "order", config(1)).await;
    let ids: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let stored = log.publish(id, &send(id)).await.expect("publish");
        assert_eq!(stored, Stored { seq: i as u64 + 1, duplicate: false });
    }

    let all = read(&log, 1, ids.len()).await;
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=40).collect::<Vec<u64>>());
    assert_eq!(all.iter().map(|e| id_of(&e.command)).collect::<Vec<_>>(), ids);
    assert!(all.windows(2).all(|w| w[0].timestamp_ns <= w[1].timestamp_ns), "stream timestamps in order");

    let tail = read(&log, 31, 10).await;
    assert_eq!(tail, all[30..]);

    // The same id again, even with another payload: not stored, and the ack names the first.
    let again = log.publish("m6", &send("other")).await.expect("publish");
    assert_eq!(again, Stored { seq: 7, duplicate: true });
    let extent = log.extent().await.expect("extent");
    assert_eq!((extent.first_seq, extent.last_seq, extent.entries), (1, 40, 40));

    // A reader that starts past the end waits for what comes next.
    let mut waiting = log.read_from(41).await.expect("read");
    log.publish("m40", &send("m40")).await.expect("publish");
    let next = tokio::time::timeout(Duration::from_secs(5), waiting.next()).await.expect("the new entry");
    assert_eq!(next.expect("an entry").expect("readable").seq, 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_readers_derive_the_same_timestamps_and_user_ids() {
    let nats = blocking(Nats::start).await;
    let log = open(&nats.url(), "agree", config(1)).await;
    // Four publishers at once, users and messages mixed: the log decides the order.
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..30 {
                    let id = format!("p{p}-{i}");
                    let command = if i % 3 == 0 {
                        Command::CreateUser { uuid: id.clone(), display_name: id.clone() }
                    } else {
                        send(&id)
                    };
                    log.publish(&id, &command).await.expect("publish");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }

    // Two nodes: separate connections, separate readers, separate sequencers.
    let other = open(&nats.url(), "agree", config(1)).await;
    let (a, b) = tokio::join!(read(&log, 1, 120), read(&other, 1, 120));
    let applied = |entries: &[Entry]| -> Vec<Applied> {
        let mut sequencer = Sequencer::new();
        entries.iter().map(|e| sequencer.apply(e.seq, e.timestamp_ns, &e.command).expect("in order")).collect()
    };
    let (a, b) = (applied(&a), applied(&b));
    assert_eq!(a, b);
    assert!(a.windows(2).all(|w| w[0].created_ns < w[1].created_ns), "created strictly increasing");
    let ids: Vec<i64> = a.iter().filter_map(|x| x.user_id).collect();
    assert_eq!(ids, (1..=40).collect::<Vec<i64>>());
}

/// Publishers that retry until acknowledged; returns every id with its final ack and errors.
fn spawn_publishers(
    log: &Log,
    publishers: usize,
    each: usize,
    acked: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, Outcome)>>> {
    (0..publishers)
        .map(|p| {
            let (log, acked) = (log.clone(), acked.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..each {
                    let id = format!("p{p}-{i}");
                    let outcome = publish_until_acked(&log, &id, &send(&id), Duration::from_secs(15)).await;
                    acked.fetch_add(1, Ordering::Relaxed);
                    outcomes.push((id, outcome));
                }
                outcomes
            })
        })
        .collect()
}

/// Every acknowledged id is in the log exactly once, at the sequence its ack named (or, for a
/// retry acked as a duplicate, the first one's).
async fn assert_exactly_once(log: &Log, outcomes: &[(String, Outcome)]) {
    let extent = log.extent().await.expect("extent");
    assert_eq!(extent.first_seq, 1);
    let entries = read(log, 1, extent.last_seq as usize).await;
    let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
    for entry in &entries {
        seen.entry(id_of(&entry.command)).or_default().push(entry.seq);
    }
    for (id, outcome) in outcomes {
        assert_eq!(seen.get(id.as_str()), Some(&vec![outcome.stored.seq]), "{id} (acked {:?})", outcome.stored);
    }
    assert_eq!(entries.len(), outcomes.len(), "nothing stored that was not acknowledged");
}

/// Waits until `n` publishes were acknowledged (the fault then strikes mid-load).
async fn until_acked(acked: &Arc<AtomicUsize>, n: usize) {
    wait_until(&format!("{n} acknowledged publishes"), Duration::from_secs(10), || {
        let done = acked.load(Ordering::Relaxed);
        async move { done >= n }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nats_server_loses_no_acknowledged_entry_and_stores_none_twice() {
    let mut nats = blocking(Nats::start).await;
    let log = open(&nats.url(), "crash", config(1)).await;
    // A node's reader, open across the crash: it must go on where it was, no gap, no repeat.
    let follower = Follower::start(&log).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let publishers = spawn_publishers(&log, 4, 60, &acked);

    until_acked(&acked, 40).await;
    nats.kill();
    // While it is down, a publish fails — within the timeout, not after a hang.
    let started = Instant::now();
    let down = log.publish("while-down", &send("while-down")).await;
    assert!(
        matches!(down, Err(LogError::Timeout(_) | LogError::Unreachable(_))),
        "publish while NATS is down: {down:?}"
    );
    assert!(started.elapsed() < TIMEOUT + Duration::from_millis(500), "took {:?}", started.elapsed());
    let nats = blocking(move || {
        nats.restart();
        nats
    })
    .await;

    let mut outcomes = Vec::new();
    for publisher in publishers {
        outcomes.extend(publisher.await.expect("publisher"));
    }
    // The failed publish may still have been stored (the client buffers while disconnected):
    // settle it the way a node would, by retrying its id until acknowledged.
    let settled = publish_until_acked(&log, "while-down", &send("while-down"), Duration::from_secs(10)).await;
    outcomes.push(("while-down".into(), settled));

    let errors: Vec<&(String, Duration)> = outcomes.iter().flat_map(|(_, o)| &o.errors).collect();
    assert!(!errors.is_empty(), "the outage showed as errors to the publishers");
    assert!(
        errors.iter().all(|(_, took)| *took < TIMEOUT + Duration::from_millis(500)),
        "every failed publish returned within the timeout: {errors:?}"
    );
    // Read through a fresh connection, as a restarted node would.
    let reader = open(&nats.url(), "crash", config(1)).await;
    assert_exactly_once(&reader, &outcomes).await;
    follower.caught_up(outcomes.len() as u64).await;
}

/// A reader that follows the log from the start as a node would, through its sequencer.
struct Follower {
    applied: Arc<std::sync::Mutex<Result<u64, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    async fn start(log: &Log) -> Self {
        let mut entries = log.read_from(1).await.expect("read the log");
        let applied = Arc::new(std::sync::Mutex::new(Ok(0)));
        let shared = applied.clone();
        let task = tokio::spawn(async move {
            let mut sequencer = Sequencer::new();
            while let Some(entry) = entries.next().await {
                // A read error (the connection broke) is survivable; a gap or repeat is not.
                let Ok(entry) = entry else { continue };
                let result = sequencer.apply(entry.seq, entry.timestamp_ns, &entry.command);
                *shared.lock().expect("lock") = result.map(|a| a.seq).map_err(|e| e.to_string());
            }
        });
        Self { applied, task }
    }

    /// Waits (10 s at most) until it applied entry `last`, having refused none.
    async fn caught_up(self, last: u64) {
        let applied = self.applied.clone();
        wait_until(&format!("the follower applying entry {last}"), Duration::from_secs(10), || {
            let now = applied.lock().expect("lock").clone();
            async move {
                match now {
                    Ok(seq) => seq >= last,
                    Err(e) => panic!("the follower refused an entry: {e}"),
                }
            }
        })
        .await;
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_cluster_losing_its_stream_leader_loses_no_acknowledged_entry() {
    let mut cluster = blocking(NatsCluster::start).await;
    let log = open(&cluster.urls(), "failover", config(3)).await;
    let follower = Follower::start(&log).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let publishers = spawn_publishers(&log, 4, 60, &acked);

    until_acked(&acked, 40).await;
    let (cluster, was_meta_leader) = blocking(move || {
        let leader = cluster.wait_stream_leader("failover", Duration::from_secs(5));
        let was_meta_leader = cluster.meta_leader() == Some(leader);
        cluster.servers[leader].kill();
        (cluster, was_meta_leader)
    })
    .await;
    let killed_at = Instant::now();

    let mut outcomes = Vec::new();
    for publisher in publishers {
        outcomes.extend(publisher.await.expect("publisher"));
    }
    eprintln!(
        "stream leader killed (meta leader too: {was_meta_leader}); the last publish was acknowledged \
         {:?} later; {} publishes retried, the slowest acknowledged after {:?}",
        killed_at.elapsed(),
        outcomes.iter().filter(|(_, o)| !o.errors.is_empty()).count(),
        outcomes.iter().map(|(_, o)| o.took).max().unwrap_or_default()
    );
    let new_leader = blocking(move || (cluster.wait_stream_leader("failover", Duration::from_secs(5)), cluster)).await;
    let (_, cluster) = new_leader;
    let reader = open(&cluster.urls(), "failover", config(3)).await;
    assert_exactly_once(&reader, &outcomes).await;
    follower.caught_up(outcomes.len() as u64).await;
}
