//! The cluster's log applied to engines (`chatbus::cluster::Applier`) against a real NATS server
//! of the test's own: two "nodes" (an engine each, with its own connection and applier) take
//! commands at once and agree on every message and timestamp; a receiver polling both in turn
//! with the cursor gets every acknowledged message exactly once; an applier started late catches
//! up to the same state; an entry no node can read stops the applier instead of letting it
//! diverge. Nothing is wired into HTTP yet: the tests publish commands as a node's handlers will.

mod support;

use bytes::BytesMut;
use chatbus::cluster::{
    resume_position, Applier, ApplierError, ApplierHandle, Command, Log, LogConfig, Outcome, Position, PublishError,
    Publisher, Stopped,
};
use chatbus::engine::{Effect, Engine, EngineConfig, SessionId};
use chatbus::metrics::Metrics;
use chatbus::store::memory::MemoryStore;
use chatbus::store::sqlite::SqliteStore;
use chatbus::store::{Snapshot, Store, StoreOptions};
use chatbus::writer::{Writer, WriterConfig};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::nats::Nats;
use support::timestamp::created;
use support::wait::blocking;
use tokio::task::JoinHandle;

/// How long anything one node does may take before the test fails.
const LIMIT: Duration = Duration::from_secs(10);

/// One node: an engine on a memory store, its own connection to the log, and its applier.
struct Node {
    log: Log,
    engine: Arc<Engine>,
    applier: ApplierHandle,
    task: JoinHandle<ApplierError>,
    _writer: Writer,
}

impl Node {
    /// A node with an empty engine applying the log `stream` from its start.
    async fn start(url: &str, stream: &str) -> Self {
        Self::start_on(url, stream, Box::new(MemoryStore), None).await
    }

    /// A node on `store`: with `snapshot`, its engine restored from it and the log resumed where
    /// the snapshot says the store stands, as a restarted node does; else empty, from the start.
    async fn start_on(url: &str, stream: &str, store: Box<dyn Store>, snapshot: Option<Snapshot>) -> Self {
        let log = Log::open(url, stream, LogConfig { timeout: Duration::from_secs(2), ..LogConfig::default() })
            .await
            .expect("open the log");
        let metrics = Arc::new(Metrics::new(&["cluster"]));
        let writer = Writer::start(store, WriterConfig::new(1_000_000), metrics.clone()).expect("start a writer");
        let engine = Arc::new(Engine::new(EngineConfig::new(4, 10_000), writer.handle(), metrics));
        let from = match snapshot {
            Some(snapshot) => {
                let from = resume_position(&snapshot.log_positions, stream);
                engine.restore(snapshot);
                from
            }
            None => Position::default(),
        };
        let (applier, task) = Applier::start(log.clone(), engine.clone(), from);
        Self { log, engine, applier, task, _writer: writer }
    }

    /// Stops applying and writes everything queued to the store (a graceful stop).
    async fn stop(self) {
        self.task.abort();
        let writer = self._writer;
        let report = blocking(move || writer.stop(Duration::from_secs(10))).await;
        assert_eq!(report.spilled, 0, "everything written");
    }

    /// What a node's handler will do: register for the outcome, publish until acknowledged
    /// (retrying with the same id), then wait until applied. Returns the entry's sequence number
    /// and its outcome.
    async fn run(&self, msg_id: &str, command: &Command) -> (u64, Outcome) {
        tokio::time::timeout(LIMIT, self.publisher().write(msg_id, command))
            .await
            .unwrap_or_else(|_| panic!("{msg_id} not applied within {LIMIT:?}"))
            .unwrap_or_else(|e| panic!("{msg_id}: {e}"))
    }

    /// The node's publisher: what its handlers will write through.
    fn publisher(&self) -> Publisher {
        Publisher::new(self.log.clone(), self.applier.clone(), LIMIT)
    }

    async fn create_user(&self, uuid: &str) -> i64 {
        let command = Command::CreateUser { uuid: uuid.into(), display_name: format!("name of {uuid}") };
        match self.run(uuid, &command).await.1 {
            Ok(Effect::User(user)) => user.id,
            other => panic!("create {uuid}: {other:?}"),
        }
    }

    async fn open_session(&self, user_id: i64) -> String {
        let session = hex(rand::random());
        match self.run(&session, &Command::OpenSession { user_id, session: session.clone() }).await.1 {
            Ok(Effect::Session(view)) => assert_eq!(view.uuid, session),
            other => panic!("open a session for {user_id}: {other:?}"),
        }
        session
    }

    /// Sends a message and returns its JSON as the publishing node answered it.
    async fn send(&self, session: &str, receiver_id: i64, body: &str) -> (u64, Vec<u8>) {
        let message = hex(rand::random());
        let command = Command::Send {
            session: session.into(),
            receiver_id,
            body: body.into(),
            attachments: "null".into(),
            message: message.clone(),
        };
        match self.run(&message, &command).await {
            (seq, Ok(Effect::Message(json))) => (seq, json.json().to_vec()),
            (_, other) => panic!("send {body}: {other:?}"),
        }
    }

    /// Waits until this node applied entry `seq`.
    async fn applied(&self, seq: u64) {
        tokio::time::timeout(LIMIT, self.applier.wait_applied(seq))
            .await
            .unwrap_or_else(|_| panic!("entry {seq} not applied within {LIMIT:?}"))
            .expect("the applier runs");
    }

    /// The session's messages after `cutoff`, as the poll's comma-separated JSON, and the poll.
    fn poll(&self, session: &str, cutoff: Option<chatbus::clock::Cursor>) -> (Vec<u8>, chatbus::engine::Polled) {
        let session = self.engine.session(session.parse::<SessionId>().expect("a session id")).expect("a session");
        let mut out = BytesMut::new();
        let polled = self.engine.poll(&session, cutoff, &mut out);
        (out.to_vec(), polled)
    }

    /// Everything the node shows: users, sessions, each session's contacts and whole mailbox.
    /// Mailboxes are read directly, not through [`Engine::poll`], which would mark the session
    /// active on this node's clock. `activity`: include the sessions' `last_active`.
    fn state(&self, activity: bool) -> String {
        let mut sessions = self.engine.sessions();
        if !activity {
            sessions.iter_mut().for_each(|s| s.last_active_utc.clear());
        }
        let mut out = format!("{:?}\n{sessions:?}\n", self.engine.users());
        for s in &sessions {
            let session = self.engine.session(s.uuid.parse().expect("a session id")).expect("a session");
            let mut messages = BytesMut::new();
            let read = session.user.mailbox.read_into(None, &mut messages);
            out += &format!(
                "{} {:?} {read:?} {}\n",
                s.uuid,
                self.engine.contacts(&session),
                String::from_utf8_lossy(&messages)
            );
        }
        out
    }
}

fn hex(n: u128) -> String {
    format!("{n:032x}")
}

/// The messages of a poll's comma-separated JSON.
fn messages(json: &[u8]) -> Vec<serde_json::Value> {
    let mut array = b"[".to_vec();
    array.extend_from_slice(json);
    array.push(b']');
    serde_json::from_slice(&array).expect("JSON messages")
}

/// 8 senders spread over two nodes publish at once, each waiting for its own outcome; a
/// receiver polls the two nodes in turn with the cursor, each only once it applied the last
/// acknowledged entry (as a node will before answering): it gets every acknowledged message
/// exactly once, in strictly increasing order, byte for byte as the publishing node answered it
/// (so both nodes stamped it alike), and at the end the two nodes show the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_polling_both_nodes_gets_every_acknowledged_message_once_in_order() {
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 100;
    let started = Instant::now();
    let nats = blocking(Nats::start).await;
    let nodes = Arc::new([Node::start(&nats.url(), "apply").await, Node::start(&nats.url(), "apply").await]);

    let receiver = nodes[0].create_user("receiver").await;
    let rx_session = nodes[1].open_session(receiver).await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let node = &nodes[i % 2];
        let id = node.create_user(&format!("sender {i}")).await;
        senders.push(nodes[(i + 1) % 2].open_session(id).await);
    }

    let last_acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let tasks: Vec<JoinHandle<Vec<Vec<u8>>>> = senders
        .into_iter()
        .enumerate()
        .map(|(i, session)| {
            let (nodes, last_acked) = (nodes.clone(), last_acked.clone());
            tokio::spawn(async move {
                let mut acked = Vec::with_capacity(PER_SENDER);
                for n in 0..PER_SENDER {
                    // Each sender alternates nodes too: a session is served by any node.
                    let (seq, json) = nodes[(i + n) % 2].send(&session, receiver, &format!("{i}:{n}")).await;
                    last_acked.fetch_max(seq, Ordering::AcqRel);
                    acked.push(json);
                }
                acked
            })
        })
        .collect();

    let poller = {
        let (nodes, last_acked, done, rx_session) =
            (nodes.clone(), last_acked.clone(), done.clone(), rx_session.clone());
        tokio::spawn(async move {
            let mut received: Vec<Vec<u8>> = Vec::new();
            let mut cursor = None;
            let deadline = Instant::now() + Duration::from_secs(15);
            for turn in 0usize.. {
                // Read `done` first: once it is set, every ack is in `last_acked`.
                let finished = done.load(Ordering::Acquire);
                let node = &nodes[turn % 2];
                node.applied(last_acked.load(Ordering::Acquire)).await;
                let (json, polled) = node.poll(&rx_session, cursor);
                assert!(!polled.gap, "nothing left the mailbox");
                for m in messages(&json) {
                    received.push(serde_json::to_vec(&m).expect("JSON"));
                }
                cursor = Some(polled.cursor);
                if finished {
                    break;
                }
                assert!(Instant::now() < deadline, "the senders did not finish within 15 s");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            received
        })
    };

    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("a sender"));
    }
    done.store(true, Ordering::Release);
    let received = poller.await.expect("the poller");

    // Exactly once, in order, and as the publishing node answered it.
    let re_rendered: HashSet<Vec<u8>> = acked
        .iter()
        .map(|json| {
            serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(json).expect("JSON")).expect("JSON")
        })
        .collect();
    assert_eq!(acked.len(), SENDERS * PER_SENDER);
    assert_eq!(re_rendered.len(), acked.len(), "every acknowledged message is distinct");
    assert_eq!(received.len(), acked.len(), "every acknowledged message, and nothing twice");
    assert_eq!(received.iter().cloned().collect::<HashSet<_>>(), re_rendered);
    let created: Vec<i128> =
        received.iter().map(|m| created(&serde_json::from_slice::<serde_json::Value>(m).expect("JSON"))).collect();
    assert!(created.windows(2).all(|w| w[0] < w[1]), "created_utc strictly increasing");

    // Both nodes, once at the same entry, show the same everything.
    let last = nodes[0].applier.position().seq.max(nodes[1].applier.position().seq);
    nodes[0].applied(last).await;
    nodes[1].applied(last).await;
    assert_eq!(nodes[0].applier.position(), nodes[1].applier.position());
    // Not `last_active`: the poller's `Engine::poll` marked the receiver's session active on one
    // node's clock (in cluster mode a poll is to report activity through `Touch` instead: next).
    assert_eq!(nodes[0].state(false), nodes[1].state(false));
    assert_eq!(nodes[0].applier.waiting() + nodes[1].applier.waiting(), 0, "no outcome left unclaimed");
    assert!(!nodes[0].task.is_finished() && !nodes[1].task.is_finished(), "the appliers run on");
    eprintln!("{} messages through two nodes in {:?}", acked.len(), started.elapsed());
}

/// A node that starts after everything happened applies the log from its start and ends with
/// the state of the nodes that were there all along: users (one deleted, one renamed),
/// sessions (one closed), contacts, mailboxes, and the same refusals along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applier_started_late_catches_up_to_the_same_state() {
    let nats = blocking(Nats::start).await;
    let (a, b) = (Node::start(&nats.url(), "late").await, Node::start(&nats.url(), "late").await);
    let mut users = Vec::new();
    for i in 0..6 {
        users.push([&a, &b][i % 2].create_user(&format!("user {i}")).await);
    }
    let mut sessions = Vec::new();
    for (i, user) in users.iter().enumerate() {
        sessions.push([&b, &a][i % 2].open_session(*user).await);
    }
    for (i, user) in users.iter().enumerate().skip(1) {
        let (_, outcome) =
            a.run(&hex(rand::random()), &Command::AddContact { user_id: users[0], contact_id: *user }).await;
        assert_eq!(outcome, Ok(Effect::Done), "contact {i}");
    }
    for n in 0..60 {
        let (from, to) = (n % users.len(), (n * 7 + 1) % users.len());
        [&a, &b][n % 2].send(&sessions[from], users[to], &format!("message {n}")).await;
    }
    let rename = Command::UpdateUser { user_id: users[2], display_name: "renamed".into() };
    assert!(matches!(b.run(&hex(rand::random()), &rename).await.1, Ok(Effect::User(_))));
    let close = Command::CloseSession { session: sessions[3].clone() };
    assert_eq!(a.run(&hex(rand::random()), &close).await.1, Ok(Effect::Done));
    assert_eq!(b.run(&hex(rand::random()), &Command::DeleteUser { user_id: users[4] }).await.1, Ok(Effect::Done));
    let touch = Command::Touch { sessions: sessions.clone() };
    assert_eq!(a.run(&hex(rand::random()), &touch).await.1, Ok(Effect::Done));
    assert_eq!(a.run(&hex(rand::random()), &Command::Tick).await.1, Ok(Effect::Done));
    // Refused on every node alike: a closed session's send, a deleted receiver.
    let refused = Command::Send {
        session: sessions[3].clone(),
        receiver_id: users[0],
        body: "late".into(),
        attachments: "null".into(),
        message: hex(rand::random()),
    };
    assert_eq!(b.run(&hex(rand::random()), &refused).await.1, Err(chatbus::engine::EngineError::NoSuchSession));
    let last = b.send(&sessions[0], users[1], "last").await.0;
    a.applied(last).await;

    let late = Node::start(&nats.url(), "late").await;
    let started = Instant::now();
    late.applied(last).await;
    eprintln!("{last} entries caught up in {:?}", started.elapsed());
    assert_eq!(late.applier.position(), a.applier.position());
    let state = late.state(true);
    assert_eq!(state, a.state(true), "{state}");
    assert_eq!(state, b.state(true));
    assert_eq!(late.engine.users().len(), 5);
    assert_eq!(late.engine.sessions().len(), 4);
}

/// A node restarted from its store resumes the log where the store stands: the applier records
/// its position behind each entry's writes; a new node loads the store (SQLite here; the same
/// ops go to PostgreSQL), restores its engine, resumes the sequencer at that position and
/// replays only the rest — and ends in the state of a node that applied everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resumes_the_log_where_its_store_stands() {
    let nats = blocking(Nats::start).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db").to_str().unwrap().to_owned();
    let open = |path: &str| Box::new(SqliteStore::open(path, &StoreOptions::default()).expect("open SQLite"));
    let a = Node::start(&nats.url(), "restart").await;
    let b = Node::start_on(&nats.url(), "restart", open(&path), None).await;
    let mut users = Vec::new();
    for i in 0..4 {
        users.push([&a, &b][i % 2].create_user(&format!("user {i}")).await);
    }
    let mut sessions = Vec::new();
    for user in &users {
        sessions.push(a.open_session(*user).await);
    }
    let mut last = 0;
    for n in 0..40 {
        last = [&a, &b][n % 2].send(&sessions[n % 4], users[(n + 1) % 4], &format!("before {n}")).await.0;
    }
    b.applied(last).await;
    b.stop().await;

    // While b is down the others go on: more of everything.
    let late_user = a.create_user("while b was down").await;
    let late_session = a.open_session(late_user).await;
    for n in 0..30 {
        a.send(&sessions[n % 4], if n % 3 == 0 { late_user } else { users[n % 4] }, &format!("after {n}")).await;
    }
    last = a.send(&late_session, users[0], "from the late user").await.0;

    let mut store = open(&path);
    let snapshot = store.load().expect("load");
    let from = resume_position(&snapshot.log_positions, "restart");
    assert!(from.seq > 40 && from.seq < last, "the store holds the log up to b's stop: {from:?}, the log is at {last}");
    let c = Node::start_on(&nats.url(), "restart", store, Some(snapshot)).await;
    c.applied(last).await;
    assert_eq!(c.applier.position(), a.applier.position());
    // Activity is not compared: the store keeps last_active in batches (a restart may show it older).
    let state = c.state(false);
    assert_eq!(state, a.state(false), "{state}");
    assert_eq!(c.engine.users().len(), 5);
}

/// A write published again under its id (a client's retry after a lost answer) stores nothing
/// twice: its outcome went to the first publish, so the second is told the entry is applied
/// already and which one it is. With NATS gone, a write gives up at its deadline with the
/// reason, rather than hang; with NATS back, writes go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_write_stores_nothing_twice_and_a_lost_log_is_a_clear_failure() {
    let mut nats = blocking(Nats::start).await;
    let node = Node::start(&nats.url(), "publish").await;
    let command = Command::CreateUser { uuid: "once".into(), display_name: String::new() };
    let (seq, outcome) = node.publisher().write("create once", &command).await.expect("written");
    assert!(matches!(outcome, Ok(Effect::User(_))), "{outcome:?}");
    match node.publisher().write("create once", &command).await {
        Err(PublishError::AlreadyApplied(again)) => assert_eq!(again, seq),
        other => panic!("a repeated id: {other:?}"),
    }
    assert_eq!(node.log.extent().await.expect("extent").entries, 1, "stored once");

    nats.kill();
    let publisher = Publisher::new(node.log.clone(), node.applier.clone(), Duration::from_millis(800));
    let started = Instant::now();
    let result = publisher.write("while down", &Command::Tick).await;
    assert!(matches!(result, Err(PublishError::NotStored { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    assert_eq!(node.applier.waiting(), 0, "the registration is withdrawn");
    // A write whose client went away while it retried (its future dropped) withdraws it too.
    let abandoned =
        tokio::time::timeout(Duration::from_millis(200), publisher.write("abandoned", &Command::Tick)).await;
    assert!(abandoned.is_err(), "still retrying when its client went: {abandoned:?}");
    assert_eq!(node.applier.waiting(), 0, "an abandoned write's registration is withdrawn");

    nats.restart();
    let (_, outcome) = node.run("after the restart", &Command::Tick).await;
    assert_eq!(outcome, Ok(Effect::Done));
}

/// An entry that is not a command would leave this node's state unlike the others': the applier
/// stops, and says so to everyone waiting on it, rather than skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_entry_stops_the_applier() {
    let nats = blocking(Nats::start).await;
    let node = Node::start(&nats.url(), "garbage").await;
    let user = node.create_user("before").await;
    assert_eq!(user, 1);
    let pending = node.applier.expect("never published");

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.publish("garbage.log", "not a command".into()).await.expect("publish").await.expect("stored");

    let (applier, task) = (node.applier.clone(), node.task);
    let task = tokio::time::timeout(LIMIT, task).await.expect("the applier stops").expect("no panic");
    assert!(matches!(task, ApplierError::Log(chatbus::cluster::LogError::Unreadable { seq: 2, .. })), "{task}");
    assert_eq!(applier.position().seq, 1, "nothing past the last good entry");
    assert_eq!(applier.wait_applied(2).await, Err(Stopped));
    assert!(pending.await.is_err(), "a waiting publisher is told");
    assert!(applier.expect("after").await.is_err(), "and so is a late one");
    assert_eq!(applier.waiting(), 0);
}
