//! chatbus nodes of one cluster, for the multi-node tests (`tests/cluster_nodes.rs`): every node
//! is the real binary ([`Chatbus`]) with `--nats-url` on the test's own NATS ([`super::nats`])
//! and `--database-url` on the test's own database ([`super::pg::TestDb`]).
//!
//! - [`Nodes`]: starts nodes with the same arguments, SIGKILLs or SIGTERMs one and starts it
//!   again, adds one (waiting for it or not), and keeps the [`Ring`] of their clients current.
//! - [`Ring`]: the clients of the nodes that serve, shared with the load (a killed node leaves
//!   it, a restarted or added one comes in on its port once it serves).
//! - [`Senders`]: senders spread over the nodes that keep sending to one receiver, each moving
//!   to the next node after a send that was not acknowledged, recording every acknowledgement
//!   and every send whose effect is unknown (no answer, or an error: it may still have been
//!   logged).
//! - [`RoundRobin`]: a receiver polling the nodes in turn with the cursor of the previous answer.
//! - [`Sse`]: a receiver streaming over SSE from one node, or resuming on the next node with
//!   `Last-Event-ID` when its node goes away.
//! - [`assert_received`]: what a receiver got, checked against what was sent and acknowledged.
//! - [`assert_nodes_agree`]: every node answers the same (messages from the start, users,
//!   sessions).

use super::binary::Chatbus;
use super::client::{ok, Api};
use super::contract::{assert_message_shape, uuid_of};
use super::load::SetOnDrop;
use super::store::postgres_messages;
use super::timestamp::created;
use super::wait::{wait_until, wait_until_or};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The stream every test's nodes share (each test has a NATS of its own).
pub const STREAM: &str = "chatbus-nodes";

/// How long a node may take to catch up and serve.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// The chatbus nodes of one test. See the module doc.
pub struct Nodes {
    db_url: String,
    args: Vec<String>,
    nodes: Vec<Option<Chatbus>>,
    ring: Ring,
}

impl Nodes {
    /// Starts `n` nodes at once on the database `db_url` and the NATS `nats_urls`
    /// (comma-separated), each with `extra` arguments, and waits until every one serves.
    pub async fn start(n: usize, db_url: &str, nats_urls: &str, extra: &[&str]) -> Self {
        let mut args: Vec<String> = vec![
            "--nats-url".into(),
            nats_urls.into(),
            "--nats-stream".into(),
            STREAM.into(),
            "--connect-timeout".into(),
            "10s".into(),
            // Every message of a test stays in the receiver's mailbox: no gap to reason about.
            "--mailbox-capacity".into(),
            super::contract::BIG_MAILBOX.into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut nodes = Self { db_url: db_url.to_owned(), args, nodes: Vec::new(), ring: Ring::default() };
        for _ in 0..n {
            let bin = nodes.spawn();
            nodes.nodes.push(Some(bin));
        }
        for i in 0..n {
            let bin = nodes.nodes[i].as_mut().expect("spawned");
            bin.wait_up(START_LIMIT).await;
            nodes.ring.push(bin.api());
        }
        nodes
    }

    fn spawn(&self) -> Chatbus {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Chatbus::spawn(&self.db_url, &args)
    }

    /// The live nodes' clients, by node index.
    pub fn ring(&self) -> Ring {
        self.ring.clone()
    }

    /// How many nodes there are (live or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s client (panics if it is down).
    pub fn api(&self, i: usize) -> Api {
        self.nodes[i].as_ref().unwrap_or_else(|| panic!("node {i} is down")).api()
    }

    /// Every live node's client (of those serving: not one still starting), with its index.
    pub fn apis(&self) -> Vec<(usize, Api)> {
        let ring = self.ring.0.read().unwrap();
        ring.iter().enumerate().filter_map(|(i, api)| Some((i, api.clone()?))).collect()
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        ([127, 0, 0, 1], self.nodes[i].as_ref().expect("node is up").port()).into()
    }

    /// Node `i`'s stderr so far.
    pub fn stderr(&self, i: usize) -> String {
        self.nodes[i].as_ref().map(Chatbus::stderr).unwrap_or_default()
    }

    /// SIGKILLs node `i`; it leaves the ring first (its clients then get no answer).
    pub fn kill(&mut self, i: usize) {
        self.ring.remove(i);
        let mut bin = self.nodes[i].take().unwrap_or_else(|| panic!("node {i} is down already"));
        bin.kill();
    }

    /// SIGTERMs node `i` (a graceful stop) and waits for it to exit; it leaves the ring first (new
    /// requests go to the other nodes, those in flight on it finish there). As a load balancer
    /// drains a backend, the signal waits for the sends already routed to the node
    /// ([`Ring::lease`]): one routed but not yet written could otherwise reach it just as the stop
    /// closes its idle keep-alive connections — a race of HTTP/1.1 keep-alive that no server can
    /// answer (seen once in CI as a send without an answer). Polls and streams stay open across
    /// the signal. Returns its exit status, its whole stderr, and how long it took to exit after
    /// the signal.
    pub async fn terminate(&mut self, i: usize) -> (ExitStatus, String, Duration) {
        self.ring.remove(i);
        let ring = self.ring.clone();
        wait_until("the sends routed to the node to finish", Duration::from_secs(10), || {
            let leased = ring.leased(i);
            async move { leased == 0 }
        })
        .await;
        let mut bin = self.nodes[i].take().unwrap_or_else(|| panic!("node {i} is down already"));
        let began = Instant::now();
        let (status, stderr) = bin.terminate().await;
        (status, stderr, began.elapsed())
    }

    /// Starts node `i` again (same arguments, a new port) and waits until it serves; it rejoins
    /// the ring then. Returns how long it took to serve.
    pub async fn restart(&mut self, i: usize) -> Duration {
        assert!(self.nodes[i].is_none(), "node {i} still runs");
        let started = Instant::now();
        let mut bin = self.spawn();
        bin.wait_up(START_LIMIT).await;
        let took = started.elapsed();
        self.ring.set(i, bin.api());
        self.nodes[i] = Some(bin);
        took
    }

    /// Starts one more node (same arguments) and waits until it serves; it joins the ring.
    /// Returns its index and how long it took to serve.
    pub async fn add(&mut self) -> (usize, Duration) {
        let started = Instant::now();
        let i = self.spawn_more();
        self.wait_joined(i).await;
        (i, started.elapsed())
    }

    /// Spawns one more node (same arguments) without waiting for it; returns its index. It is
    /// not in the ring until [`Nodes::wait_joined`].
    pub fn spawn_more(&mut self) -> usize {
        let bin = self.spawn();
        self.nodes.push(Some(bin));
        self.ring.0.write().unwrap().push(None);
        self.nodes.len() - 1
    }

    /// Waits until node `i`, spawned by [`Nodes::spawn_more`], serves; it joins the ring then.
    pub async fn wait_joined(&mut self, i: usize) {
        let bin = self.nodes[i].as_mut().expect("spawned");
        bin.wait_up(START_LIMIT).await;
        self.ring.set(i, bin.api());
    }

    /// Whether node `i`'s process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].as_mut().is_some_and(Chatbus::is_running)
    }

    /// Every live node's `/readyz` status, by index.
    pub async fn readiness(&self) -> Vec<u16> {
        let mut statuses = Vec::new();
        for (_, api) in self.apis() {
            statuses.push(api.readyz().await.status);
        }
        statuses
    }

    /// Waits until every live node answers `/readyz` with `status`.
    pub async fn wait_ready(&self, status: u16, limit: Duration) {
        wait_until(&format!("/readyz {status} on every node"), limit, || async {
            self.readiness().await.iter().all(|&s| s == status)
        })
        .await;
    }

    /// SIGTERMs every live node; each must exit 0.
    pub async fn stop(mut self) {
        for bin in std::mem::take(&mut self.nodes).into_iter().flatten() {
            bin.stop().await;
        }
    }
}

/// A test that fails with nodes up shows the end of each one's stderr: what a node logged is
/// often the only account of why a cluster did not do what the test waited for.
impl Drop for Nodes {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (i, bin) in self.nodes.iter().enumerate() {
            let Some(bin) = bin else { continue };
            let stderr = bin.stderr();
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = &lines[lines.len().saturating_sub(STDERR_TAIL)..];
            eprintln!("--- node {i}: the last {} lines of its stderr ---\n{}", tail.len(), tail.join("\n"));
        }
    }
}

/// How many lines of a node's stderr a failed test shows.
const STDERR_TAIL: usize = 60;

/// The clients of the live nodes, by node index (`None`: down). Cheap to clone; clones share.
#[derive(Clone, Default)]
pub struct Ring(Arc<RwLock<Vec<Option<Api>>>>, Arc<Mutex<HashMap<usize, usize>>>);

/// A request routed to node `.1` through [`Ring::lease`]: counted until dropped.
pub struct Lease(Arc<Mutex<HashMap<usize, usize>>>, usize);

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(n) = self.0.lock().unwrap().get_mut(&self.1) {
            *n -= 1;
        }
    }
}

impl Ring {
    /// A ring of exactly `apis` (not kept current by [`Nodes`]).
    pub fn of(apis: Vec<Api>) -> Self {
        Self(Arc::new(RwLock::new(apis.into_iter().map(Some).collect())), Arc::default())
    }

    /// Like [`Ring::at_or_after`], and the request is counted against its node until the lease
    /// is dropped: [`Nodes::terminate`] lets such requests finish before it signals the node.
    pub fn lease(&self, i: usize) -> Option<(usize, Api, Lease)> {
        let ring = self.0.read().unwrap();
        let (j, api) = (0..ring.len()).map(|k| (i + k) % ring.len()).find_map(|j| Some((j, ring[j].clone()?)))?;
        // Under the read lock: `remove` (the write lock) cannot come between the pick and the count.
        *self.1.lock().unwrap().entry(j).or_default() += 1;
        Some((j, api, Lease(self.1.clone(), j)))
    }

    /// Requests leased on node `i` and not finished.
    fn leased(&self, i: usize) -> usize {
        self.1.lock().unwrap().get(&i).copied().unwrap_or(0)
    }

    fn push(&self, api: Api) {
        self.0.write().unwrap().push(Some(api));
    }

    fn set(&self, i: usize, api: Api) {
        self.0.write().unwrap()[i] = Some(api);
    }

    fn remove(&self, i: usize) {
        self.0.write().unwrap()[i] = None;
    }

    /// How many slots (live nodes or not).
    pub fn len(&self) -> usize {
        self.0.read().unwrap().len()
    }

    /// The first live node at or after index `i` (modulo the ring), with its index; `None`
    /// while every node is down.
    pub fn at_or_after(&self, i: usize) -> Option<(usize, Api)> {
        let ring = self.0.read().unwrap();
        (0..ring.len()).map(|k| (i + k) % ring.len()).find_map(|j| Some((j, ring[j].clone()?)))
    }
}

/// One acknowledged send: its message as the node answered it.
#[derive(Debug, Clone)]
pub struct Ack {
    pub message: Value,
    pub created: i128,
    /// The node that answered.
    pub node: usize,
    /// When the answer came.
    pub at: Instant,
}

/// What [`Senders`] recorded.
#[derive(Debug, Default)]
pub struct Sent {
    /// Acknowledged sends by message uuid.
    pub acked: HashMap<String, Ack>,
    /// The bodies of sends whose effect is unknown: no answer, or a 503 (which may come after
    /// the entry was logged). Such a message may or may not be delivered.
    pub unknown: HashSet<String>,
    /// How many sends got no answer.
    pub unanswered: usize,
    /// How many sends were answered 503, and the slowest of those answers.
    pub unavailable: usize,
    pub slowest_503: Duration,
    /// Any other answer (never expected): `status: body`.
    pub unexpected: Vec<String>,
}

impl Sent {
    /// The acknowledged uuids.
    pub fn acked_uuids(&self) -> HashSet<String> {
        self.acked.keys().cloned().collect()
    }
}

/// Senders spread over the nodes, sending to one receiver until stopped. See the module doc.
pub struct Senders {
    stop: Arc<AtomicBool>,
    _stop_on_drop: SetOnDrop,
    count: Arc<AtomicUsize>,
    sent: Arc<Mutex<Sent>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Senders {
    /// One task per session of `sessions`, the `i`-th sending through node `i % ring.len()` (after
    /// a send that was not acknowledged, through the next live one until one is), each
    /// sending at most one message per `pace` (zero: as fast as answered) to `receiver`.
    pub fn start(ring: &Ring, sessions: &[String], receiver: i64, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Mutex::new(Sent::default()));
        let tasks = sessions
            .iter()
            .enumerate()
            .map(|(i, session)| {
                let (ring, session) = (ring.clone(), session.clone());
                let (stop, count, sent) = (stop.clone(), count.clone(), sent.clone());
                tokio::spawn(async move {
                    // Its own node (of those in the ring now); after sends that were not
                    // acknowledged, the next ones.
                    let home = i;
                    let mut misses = 0;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let Some((node, api, _lease)) = ring.lease(home + misses) else {
                            // Every node is down: nothing to send through.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let began = Instant::now();
                        n += 1;
                        let body = format!("{i}/{n}");
                        let answer = api.try_send(&session, receiver, &body).await;
                        let took = began.elapsed();
                        {
                            let mut s = sent.lock().unwrap();
                            match answer {
                                Ok(r) if r.status == 200 => {
                                    let m = ok(&r);
                                    assert_message_shape(&m);
                                    assert_eq!(m["body"], body, "{r:?}");
                                    let ack = Ack { created: created(&m), message: m, node, at: Instant::now() };
                                    let uuid = uuid_of(&ack.message);
                                    assert!(s.acked.insert(uuid, ack).is_none(), "a uuid acknowledged twice: {r:?}");
                                    count.fetch_add(1, Ordering::Relaxed);
                                    misses = 0;
                                }
                                Ok(r) => {
                                    if r.status == 503 {
                                        s.unavailable += 1;
                                        s.slowest_503 = s.slowest_503.max(took);
                                    } else {
                                        s.unexpected.push(format!("node {node}: {}: {}", r.status, r.text()));
                                    }
                                    s.unknown.insert(body);
                                    misses += 1;
                                }
                                Err(_) => {
                                    s.unknown.insert(body);
                                    s.unanswered += 1;
                                    misses += 1;
                                }
                            }
                        }
                        if !pace.is_zero() {
                            tokio::time::sleep(pace.saturating_sub(took)).await;
                        } else if misses > 0 {
                            // Not acknowledged: no spinning on a node that is going away.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Self { _stop_on_drop: SetOnDrop(stop.clone()), stop, count, sent, tasks }
    }

    /// How many sends have been acknowledged so far.
    pub fn acked(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// How many sends were answered 503 so far.
    pub fn unavailable(&self) -> usize {
        self.sent.lock().unwrap().unavailable
    }

    /// Waits (at most `limit`) until `more` further sends have been acknowledged.
    pub async fn progress(&self, more: usize, limit: Duration, what: &str) {
        let target = self.acked() + more;
        let waited = wait_until_or(limit, || async { self.acked() >= target }).await;
        if !waited {
            // Read under the lock, panic outside it (the senders go on with it until dropped).
            let (unavailable, unanswered, unexpected) = {
                let s = self.sent.lock().unwrap();
                (s.unavailable, s.unanswered, s.unexpected.clone())
            };
            let acked = self.acked();
            panic!(
                "timed out after {limit:?} waiting for {more} more acknowledged sends {what}: {} of them came; \
                 {acked} acknowledged in all, {unavailable} answered 503, {unanswered} unanswered, unexpected \
                 answers: {unexpected:?}",
                more - target.saturating_sub(acked),
            );
        }
    }

    /// Stops the senders (each finishes the send it is in) and returns what they recorded;
    /// every answer must have been a 200 or a 503.
    pub async fn finish(self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a sender task");
        }
        let sent = Arc::try_unwrap(self.sent).expect("tasks done").into_inner().unwrap();
        assert!(sent.unexpected.is_empty(), "sends answered neither 200 nor 503: {:?}", sent.unexpected);
        sent
    }
}

/// A receiver polling the live nodes in turn (each poll on the next node), with the cursor of
/// the previous answer, every `pace`. A node that does not answer is skipped (its poll is
/// repeated on the next one with the same cursor); any answer but a 200 is a failure.
pub struct RoundRobin {
    stop: Arc<AtomicBool>,
    polls: Arc<AtomicUsize>,
    _stop_on_drop: SetOnDrop,
    got: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<Vec<String>>,
}

impl RoundRobin {
    pub fn start(ring: &Ring, session: &str, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(AtomicUsize::new(0));
        let task = {
            let (ring, session, stop, got) = (ring.clone(), session.to_owned(), stop.clone(), got.clone());
            let polls = polls.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut path = format!("/api/messages/{session}");
                let mut node = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some((at, api)) = ring.at_or_after(node) else {
                        tokio::time::sleep(pace).await;
                        continue;
                    };
                    node = at + 1;
                    match api.try_call("GET", &path, None).await {
                        Ok(r) if r.status == 200 => {
                            let msgs = r.response().as_array().expect("messages").clone();
                            for m in &msgs {
                                assert_message_shape(m);
                            }
                            assert_eq!(r.json["meta"]["gap"], false, "no gap: the mailbox holds everything");
                            got.lock().unwrap().extend(msgs);
                            let c = &r.json["meta"]["cursor"];
                            path = format!("/api/messages/{session}/{}/{}", c["unix"], c["nano"]);
                            polls.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("node {at}: {}: {}", r.status, r.text())),
                        Err(_) => {} // killed: the next node answers the same poll
                    }
                    tokio::time::sleep(pace).await;
                }
                failures
            })
        };
        Self { _stop_on_drop: SetOnDrop(stop.clone()), stop, polls, got, task }
    }

    /// How many polls were answered 200 so far.
    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::Relaxed)
    }

    /// The uuids received so far.
    pub fn uuids(&self) -> HashSet<String> {
        self.got.lock().unwrap().iter().map(uuid_of).collect()
    }

    /// Stops polling; every answered poll must have been a 200. Returns the messages received,
    /// in order.
    pub async fn finish(self) -> Vec<Value> {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.expect("the poller task");
        assert!(failures.is_empty(), "polls not answered 200: {failures:?}");
        Arc::try_unwrap(self.got).expect("task done").into_inner().unwrap()
    }
}

/// A receiver streaming `/api/stream/<session>` over SSE, collecting the messages it is sent
/// (each event's id must be its message's cursor); a `gap` event is a failure. From one node
/// ([`Sse::open`]: the stream ending is a failure), or from the nodes of a ring
/// ([`Sse::open_resuming`]): when its node goes away it reconnects to the next live one with
/// `Last-Event-ID`, as a browser's `EventSource` does.
pub struct Sse {
    got: Arc<Mutex<Vec<Value>>>,
    reconnects: Arc<AtomicUsize>,
    task: JoinHandle<Result<(), String>>,
}

type Lines = tokio::io::Lines<BufReader<TcpStream>>;

impl Sse {
    /// Opens the stream on `addr` and checks its head.
    pub async fn open(addr: SocketAddr, session: &str) -> Self {
        let lines = sse_connect(addr, session, None).await.unwrap_or_else(|e| panic!("SSE on {addr}: {e}"));
        Self::run(lines, session, None)
    }

    /// Opens the stream on the first live node of `ring` at or after `first`; see the type doc.
    pub async fn open_resuming(ring: &Ring, first: usize, session: &str) -> Self {
        let (at, api) = ring.at_or_after(first).expect("a live node");
        let lines = sse_connect(addr_of(&api), session, None).await.unwrap_or_else(|e| panic!("SSE on node {at}: {e}"));
        Self::run(lines, session, Some((ring.clone(), at)))
    }

    fn run(mut lines: Lines, session: &str, mut resume: Option<(Ring, usize)>) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let reconnects = Arc::new(AtomicUsize::new(0));
        let task = {
            let (got, reconnects, session) = (got.clone(), reconnects.clone(), session.to_owned());
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    let ended = sse_read(&mut lines, &got, &mut last).await?;
                    let Some((ring, node)) = resume.as_mut() else { return Err(ended) };
                    // Its node went away: the next live one, from the last event received.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let mut next = *node + 1;
                    lines = loop {
                        let connected = match ring.at_or_after(next) {
                            Some((at, api)) => {
                                next = at + 1;
                                sse_connect(addr_of(&api), &session, last.as_deref()).await.map(|lines| (at, lines))
                            }
                            None => Err("every node is down".to_owned()),
                        };
                        match connected {
                            Ok((at, lines)) => {
                                *node = at;
                                break lines;
                            }
                            Err(e) if Instant::now() > deadline => {
                                return Err(format!("no node to resume on after {ended}: {e}"))
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    };
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Self { got, reconnects, task }
    }

    /// The uuids received so far.
    pub fn uuids(&self) -> HashSet<String> {
        self.got.lock().unwrap().iter().map(uuid_of).collect()
    }

    /// How many times it resumed on another node.
    pub fn reconnects(&self) -> usize {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Closes the stream; it must not have failed. Returns the messages received, in order.
    pub async fn finish(self) -> Vec<Value> {
        if self.task.is_finished() {
            let ended = self.task.await.expect("the SSE task");
            panic!("the SSE stream failed: {ended:?}");
        }
        self.task.abort();
        let _ = self.task.await;
        Arc::try_unwrap(self.got).expect("task done").into_inner().unwrap()
    }
}

/// The address of the node behind `api`.
fn addr_of(api: &Api) -> SocketAddr {
    api.base().strip_prefix("http://").and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("an address: {api:?}"))
}

/// Opens `/api/stream/<session>` on `addr` (with `Last-Event-ID: last` when given) and checks
/// the head of the answer.
async fn sse_connect(addr: SocketAddr, session: &str, last: Option<&str>) -> Result<Lines, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let path = format!("/api/stream/{session}");
    let last = last.map(|l| format!("Last-Event-ID: {l}\r\n")).unwrap_or_default();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: chatbus\r\n{last}\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next_line().await.map_err(|e| e.to_string())?.ok_or("no status line")?;
    assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
    let mut headers = Vec::new();
    loop {
        let l = lines.next_line().await.map_err(|e| e.to_string())?.ok_or("no end of the head")?;
        if l.is_empty() {
            break;
        }
        headers.push(l.to_ascii_lowercase());
    }
    assert!(headers.contains(&"content-type: text/event-stream".to_owned()), "{headers:?}");
    Ok(lines)
}

/// Reads events into `got` until the stream ends (`Ok` with why) or breaks the contract
/// (`Err`); `last` follows the id of the last message received.
async fn sse_read(lines: &mut Lines, got: &Mutex<Vec<Value>>, last: &mut Option<String>) -> Result<String, String> {
    let (mut id, mut kind, mut data) = (None::<String>, None::<String>, None::<Value>);
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok("the stream ended".into()),
            Err(e) => return Ok(format!("the stream broke: {e}")),
        };
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(v).map_err(|e| format!("{e}: {v}"))?);
        } else if line.is_empty() {
            if let (Some(kind), Some(data)) = (kind.take(), data.take()) {
                if kind != "message" {
                    return Err(format!("event {kind}: {data}"));
                }
                assert_message_shape(&data);
                let (unix, nano) = super::timestamp::unix_nano(created(&data));
                let expected = format!("{unix}.{nano:09}");
                if id.take().as_deref() != Some(expected.as_str()) {
                    return Err(format!("event id is not the message's cursor {expected}: {data}"));
                }
                *last = Some(expected);
                got.lock().unwrap().push(data);
            }
        } else if line == "0" {
            return Ok("the stream ended".into());
        }
    }
}

/// Waits until every uuid of `acked` is among what `received` returns (a receiver's uuids).
pub async fn wait_received(
    what: &str,
    acked: &HashSet<String>,
    limit: Duration,
    received: impl Fn() -> HashSet<String>,
) {
    let check = || {
        let got = received();
        let missing = acked.iter().filter(|u| !got.contains(*u)).count();
        (missing, got.len())
    };
    let deadline = Instant::now() + limit;
    loop {
        let (missing, got) = check();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {missing} of {} acknowledged messages not received within {limit:?} ({got} received)",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a receiver got, in order, against what was sent: every acknowledged message exactly
/// once, with the `created_utc` and content it was acknowledged with; nothing twice; created_utc
/// strictly increasing; anything else only a send whose effect was unknown (`sent.unknown`).
#[track_caller]
pub fn assert_received(what: &str, got: &[Value], sent: &Sent) {
    let mut seen = HashSet::new();
    let mut previous: Option<i128> = None;
    let mut unacked = 0;
    for m in got {
        let uuid = uuid_of(m);
        assert!(seen.insert(uuid.clone()), "{what}: message {uuid} received twice: {m}");
        let at = created(m);
        if let Some(p) = previous {
            assert!(at > p, "{what}: created_utc not strictly increasing: {p} then {at} ({m})");
        }
        previous = Some(at);
        match sent.acked.get(&uuid) {
            Some(ack) => {
                assert_eq!(m, &ack.message, "{what}: received otherwise than acknowledged (node {})", ack.node)
            }
            None => {
                let body = m["body"].as_str().unwrap_or_default();
                assert!(sent.unknown.contains(body), "{what}: received a message never sent or acknowledged: {m}");
                unacked += 1;
            }
        }
    }
    let missing: Vec<&String> = sent.acked.keys().filter(|u| !seen.contains(*u)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} acknowledged messages never received",
        missing.len(),
        sent.acked.len()
    );
    assert!(unacked <= sent.unknown.len(), "{what}");
}

/// Every row of PostgreSQL's `messages` (at `db_url`) once waiting until there are at least
/// `at_least` rows: the rows are written behind the acknowledgement.
pub async fn pg_messages(db_url: &str, at_least: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = postgres_messages(db_url).await;
        if rows.len() >= at_least {
            return rows;
        }
        assert!(Instant::now() < deadline, "only {} rows in messages within 15 s, expected {at_least}", rows.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one node shows: the receiver's mailbox from the start (the poll's `meta`, with its
/// cursor and gap flag, and its messages), `GET /api/users`, and `GET /api/sessions`.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub meta: Value,
    pub messages: Vec<Value>,
    pub users: Value,
    pub sessions: Value,
}

/// Waits until every live node of `nodes` shows the same [`View`] and returns it, within
/// `limit`. Nodes may trail one another by a few entries, so views are compared round by round
/// until one round agrees — in two phases, because a poll marks the receiver's session served
/// (each node then logs a `Touch`, which moves its `last_active_utc` on every node, each when it
/// applies the entry): first the mailbox, polled on every node until the polls agree; then the
/// users and sessions, listed (which touches nothing) until the lists agree, which they do once
/// the last polls' touches are applied everywhere. Compared in one round with the polls, the
/// sessions differed on a loaded machine for as long as the rounds went on (each round's polls
/// moved them again).
pub async fn assert_nodes_agree(nodes: &Nodes, receiver_session: &str, limit: Duration) -> View {
    let deadline = Instant::now() + limit;
    let poll = format!("/api/messages/{receiver_session}");
    let mailbox = loop {
        let mut views = Vec::new();
        for (i, api) in nodes.apis() {
            let (meta, messages) = api.poll(&poll).await;
            views.push((i, View { meta, messages, users: Value::Null, sessions: Value::Null }));
        }
        if let Some(agreed) = agreed_or_panic(views, deadline, limit).await {
            break agreed;
        }
    };
    loop {
        let mut views = Vec::new();
        for (i, api) in nodes.apis() {
            let (users, sessions) = (ok(&api.get("/api/users").await), ok(&api.get("/api/sessions").await));
            views.push((i, View { meta: Value::Null, messages: Vec::new(), users, sessions }));
        }
        if let Some(lists) = agreed_or_panic(views, deadline, limit).await {
            return View { users: lists.users, sessions: lists.sessions, ..mailbox };
        }
    }
}

/// The view every node of `views` shows, if they agree; else `None` after a pause, or a panic
/// describing the differences once `deadline` has passed.
async fn agreed_or_panic(views: Vec<(usize, View)>, deadline: Instant, limit: Duration) -> Option<View> {
    let (first, rest) = views.split_first().expect("a live node");
    let differing: Vec<usize> = rest.iter().filter(|(_, v)| v != &first.1).map(|(i, _)| *i).collect();
    if differing.is_empty() {
        return Some(first.1.clone());
    }
    if Instant::now() >= deadline {
        for (i, v) in rest {
            if v != &first.1 {
                describe_difference(first.0, &first.1, *i, v);
            }
        }
        panic!("nodes {differing:?} do not show what node {} shows, within {limit:?}", first.0);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    None
}

fn describe_difference(a: usize, va: &View, b: usize, vb: &View) {
    if va.meta != vb.meta {
        eprintln!("the polls' meta differ:\n node {a}: {}\n node {b}: {}", va.meta, vb.meta);
    }
    if va.messages != vb.messages {
        eprintln!(
            "messages differ: node {a} has {}, node {b} has {}; first difference at {:?}",
            va.messages.len(),
            vb.messages.len(),
            va.messages.iter().zip(&vb.messages).position(|(x, y)| x != y)
        );
    }
    if va.users != vb.users {
        eprintln!("users differ:\n node {a}: {}\n node {b}: {}", va.users, vb.users);
    }
    if va.sessions != vb.sessions {
        eprintln!("sessions differ:\n node {a}: {}\n node {b}: {}", va.sessions, vb.sessions);
    }
}
