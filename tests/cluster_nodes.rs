//! Several chatbus nodes as one server (cluster mode, `--nats-url`): the real binary, on a NATS
//! JetStream of the test's own (never the machine's on 4222) and a PostgreSQL database of the
//! test's own, as an operator runs them.
//!
//! What a user relies on, whichever node a request lands on: every acknowledged message reaches
//! its receiver exactly once, in order, with the `created_utc` it was acknowledged with —
//! polling round-robin over the nodes with the cursor, or streaming from yet another node; every
//! node answers alike once it caught up; PostgreSQL holds each acknowledged message exactly once.
//! User ids are unique and one per uuid however many nodes create it at once. And that holds
//! through a node SIGKILLed mid-load (and restarted), a node stopped gracefully mid-load (it exits
//! 0 at once, and restarts), every node SIGKILLed at once while PostgreSQL trails the log (and
//! the whole cluster down for longer than `--message-ttl`), a node joining late, the NATS server
//! SIGKILLed and restarted (writes answer 503 meanwhile, polls go on from memory), the stream's
//! leader lost in a 3-server NATS cluster, and PostgreSQL stopped under the cluster (sends are
//! acknowledged for `--max-write-lag`, then refused, and none is lost). A WebSocket on one node
//! gets what the others take, and resumes on another with `?cursor=`; contacts changed through one
//! node show through all. The whole 3-server NATS cluster crashes and comes back: writes answer
//! 503 meanwhile, and nothing acknowledged is lost, whether it was killed or stopped gracefully,
//! and every node agrees. Sessions and messages expire by the log's ticks, alike on every node.
//!
//! A send that got no answer, or a 503, may or may not have been logged (the publish may have
//! been stored before the answer was lost): such a message may reach the receiver, but only
//! once, and only if it was sent ([`Sent::unknown`]).

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::binary::{free_port, run_to_error};
use support::client::{err, ok_plain, Api};
use support::cluster::{Cluster, Stop};
use support::contract::{assert_message_shape, uuid_of};
use support::nats::{Nats, NatsCluster};
use support::nodes::{
    assert_nodes_agree, assert_received, pg_messages, wait_received, Ack, Nodes, Ring, RoundRobin, Senders, Sent, Sse,
    STREAM,
};
use support::pg::TestDb;
use support::store::{assert_exactly, postgres_rows};
use support::timestamp::{created, cursor};
use support::wait::{blocking, wait_until};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How many senders the load has.
const SENDERS: usize = 8;
/// How long receivers may take to get every acknowledged message once the load stopped.
const DELIVERY_LIMIT: Duration = Duration::from_secs(15);
/// How long nodes may take to agree once the load stopped.
const AGREE_LIMIT: Duration = Duration::from_secs(15);

/// The receiver and the senders: users created through node `create_on`, their sessions
/// opened through node `open_on` right after (the log orders the two).
struct Party {
    receiver: i64,
    receiver_session: String,
    senders: Vec<String>,
}

impl Party {
    async fn create(create_on: &Api, open_on: &Api) -> Self {
        let receiver = create_on.user("receiver").await;
        let mut ids = Vec::new();
        for i in 0..SENDERS {
            ids.push(create_on.user(&format!("sender-{i}")).await);
        }
        let receiver_session = open_on.session(receiver).await;
        let mut senders = Vec::new();
        for id in ids {
            senders.push(open_on.session(id).await);
        }
        Self { receiver, receiver_session, senders }
    }
}

/// PostgreSQL's `messages` hold exactly what the nodes show (the receiver's whole mailbox:
/// every message goes to the receiver), each once; that is every acknowledged message, plus at
/// most sends whose effect was unknown.
async fn assert_postgres_holds(db_url: &str, mailbox: &[Value], sent: &Sent) {
    let shown: HashSet<String> = mailbox.iter().map(uuid_of).collect();
    assert_eq!(shown.len(), mailbox.len(), "a message twice in the mailbox");
    let rows = pg_messages(db_url, shown.len()).await;
    assert_exactly(&rows, &shown, "PostgreSQL's messages against the nodes' mailbox");
    let acked = sent.acked_uuids();
    assert!(acked.is_subset(&shown), "every acknowledged message is stored");
    assert!(shown.len() - acked.len() <= sent.unknown.len(), "only sends of unknown effect beyond the acknowledged");
}

/// Waits until every receiver holds every acknowledged message, stops them, and checks what
/// What every load test checks at its end: the poller and `streams` got every acknowledged
/// message once, in order ([`receivers_got_everything`]), and every node shows the same mailbox,
/// with no gap. Returns what the poller got and what the nodes show.
async fn received_and_agreed(
    nodes: &Nodes,
    receiver_session: &str,
    poller: RoundRobin,
    streams: Vec<Sse>,
    sent: &Sent,
) -> (Vec<Value>, support::nodes::View) {
    let polled = receivers_got_everything(poller, streams, sent).await;
    let agreed = assert_nodes_agree(nodes, receiver_session, AGREE_LIMIT).await;
    assert_eq!(agreed.meta["gap"], false, "every message is in the mailbox");
    (polled, agreed)
}

/// each got (see [`assert_received`]); returns what the poller got.
async fn receivers_got_everything(poller: RoundRobin, streams: Vec<Sse>, sent: &Sent) -> Vec<Value> {
    let acked = sent.acked_uuids();
    wait_received("the round-robin poller", &acked, DELIVERY_LIMIT, || poller.uuids()).await;
    for (i, sse) in streams.iter().enumerate() {
        wait_received(&format!("SSE stream {i}"), &acked, DELIVERY_LIMIT, || sse.uuids()).await;
    }
    let polled = poller.finish().await;
    assert_received("the round-robin poller", &polled, sent);
    for (i, sse) in streams.into_iter().enumerate() {
        assert_received(&format!("SSE stream {i}"), &sse.finish().await, sent);
    }
    polled
}

/// A lock on a table of the test's database, held by a transaction of the test's own: the
/// nodes' writes to it wait (the nodes go on acknowledging: their writes trail anyway).
struct TableLock {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl TableLock {
    /// `LOCK TABLE table IN SHARE MODE`: reads go on, writes wait.
    async fn take(url: &str, table: &str) -> Self {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        client.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN SHARE MODE")).await.expect("lock");
        Self { client, connection }
    }

    async fn release(self) {
        self.client.batch_execute("ROLLBACK").await.expect("unlock");
        drop(self.client);
        let _ = self.connection.await;
    }
}

async fn start_nats() -> Nats {
    blocking(Nats::start).await
}

async fn create_db() -> TestDb {
    blocking(TestDb::create).await
}

/// Three nodes take the load, a fourth streams: users created on node 0 and their sessions
/// opened on node 1 at once; 8 senders spread over nodes 0–2 send concurrently to one receiver,
/// who polls nodes 0–2 in turn with the cursor and also streams over SSE from node 3. Every
/// acknowledged message is received exactly once, in order, as acknowledged, by both; then all
/// four nodes answer alike, and PostgreSQL holds exactly the acknowledged messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_deliver_every_acknowledged_message_once_in_order_and_agree() {
    let started = Instant::now();
    let (nats, db) = (start_nats().await, create_db().await);
    let nodes = Nodes::start(4, db.url(), &nats.url(), &[]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    // Opened on node 3 at once: that node learns of the session from the log.
    let sse = Sse::open(nodes.addr(3), &party.receiver_session).await;
    let three = Ring::of((0..3).map(|i| nodes.api(i)).collect());
    let poller = RoundRobin::start(&three, &party.receiver_session, Duration::from_millis(5));
    let senders = Senders::start(&three, &party.senders, party.receiver, Duration::ZERO);
    senders.progress(1_500, Duration::from_secs(25), "from three nodes").await;
    let sent = senders.finish().await;
    assert_eq!((sent.unanswered, sent.unavailable), (0, 0), "every send acknowledged: nothing went wrong");
    assert!(sent.acked.values().any(|a| a.node == 2), "node 2 took sends");

    let (polled, agreed) = received_and_agreed(&nodes, &party.receiver_session, poller, vec![sse], &sent).await;
    assert_eq!(agreed.messages, polled, "the mailbox from the start is what the poller got, in order");
    assert_eq!(agreed.users.as_array().map(Vec::len), Some(SENDERS + 1), "{}", agreed.users);
    assert_eq!(agreed.sessions.as_array().map(Vec::len), Some(SENDERS + 1), "{}", agreed.sessions);
    let rows = pg_messages(db.url(), sent.acked.len()).await;
    assert_exactly(&rows, &sent.acked_uuids(), "PostgreSQL's messages against the acknowledged");
    nodes.stop().await;
    eprintln!("{} messages over 4 nodes in {:?}", sent.acked.len(), started.elapsed());
}

/// The same users created through all three nodes at once get one id each, whichever node
/// answered, and no two users share one; sessions opened for them through every node at once
/// all open; then every node lists the same users and sessions, and PostgreSQL holds each user
/// and session once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_created_through_every_node_at_once_get_one_id_each() {
    const USERS: usize = 30;
    let (nats, db) = (start_nats().await, create_db().await);
    let nodes = Nodes::start(3, db.url(), &nats.url(), &[]).await;
    let creating: Vec<_> = nodes
        .apis()
        .into_iter()
        .map(|(i, api)| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                for k in 0..USERS {
                    // Each node in another order, so that creates of one uuid race.
                    let uuid = format!("user-{}", (k + i * 7) % USERS);
                    let user = api.create_user(&uuid, Some(&format!("User {uuid}"))).await;
                    got.push((uuid, user["id"].as_i64().expect("an id")));
                }
                got
            })
        })
        .collect();
    let mut ids: HashMap<String, HashSet<i64>> = HashMap::new();
    for task in creating {
        for (uuid, id) in task.await.expect("a creating task") {
            ids.entry(uuid).or_default().insert(id);
        }
    }
    assert_eq!(ids.len(), USERS);
    assert!(ids.values().all(|set| set.len() == 1), "one id per uuid, whichever node answered: {ids:?}");
    let unique: HashSet<i64> = ids.values().flatten().copied().collect();
    assert_eq!(unique.len(), USERS, "no two users share an id: {ids:?}");

    let opening: Vec<_> = nodes
        .apis()
        .into_iter()
        .map(|(_, api)| {
            let ids: Vec<i64> = unique.iter().copied().collect();
            tokio::spawn(async move {
                let mut sessions = Vec::new();
                for id in ids {
                    sessions.push(api.session(id).await);
                }
                sessions
            })
        })
        .collect();
    let mut sessions = HashSet::new();
    for task in opening {
        sessions.extend(task.await.expect("an opening task"));
    }
    assert_eq!(sessions.len(), 3 * USERS, "every session opened, each with an id of its own");

    let some_session = sessions.iter().next().expect("a session").clone();
    let agreed = assert_nodes_agree(&nodes, &some_session, AGREE_LIMIT).await;
    let listed: HashSet<String> = agreed.sessions.as_array().expect("sessions").iter().map(uuid_of).collect();
    assert_eq!(listed, sessions, "every node lists exactly the sessions opened");
    let mut expected: Vec<String> =
        ids.iter().map(|(uuid, id)| format!("{} {uuid}", id.iter().next().unwrap())).collect();
    expected.sort_by_key(|row| row.split(' ').next().and_then(|id| id.parse::<i64>().ok()));
    let users_sql = "SELECT id || ' ' || uuid FROM users ORDER BY id";
    let sessions_sql = "SELECT replace(uuid::text, '-', '') FROM sessions";
    wait_until("PostgreSQL to hold every user and session", Duration::from_secs(15), || async {
        postgres_rows(db.url(), users_sql).await.len() >= USERS
            && postgres_rows(db.url(), sessions_sql).await.len() >= 3 * USERS
    })
    .await;
    assert_eq!(postgres_rows(db.url(), users_sql).await, expected, "PostgreSQL's users");
    assert_exactly(&postgres_rows(db.url(), sessions_sql).await, &sessions, "PostgreSQL's sessions");
    nodes.stop().await;
}

/// Sessions and messages expire by the log's ticks, alike on every node: a session polled only
/// through node 0 stays open on every node, an idle one closes on every node, messages past
/// their TTL leave every node's mailbox — and a node restarted meanwhile agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_messages_expire_alike_on_every_node() {
    let (nats, db) = (start_nats().await, create_db().await);
    let mut nodes = Nodes::start(3, db.url(), &nats.url(), &["--session-ttl", "3s", "--message-ttl", "2s"]).await;
    let (a, b) = (nodes.api(0).user("a").await, nodes.api(0).user("b").await);
    let (kept, idle) = (nodes.api(1).session(a).await, nodes.api(1).session(b).await);
    for i in 0..10 {
        nodes.api(2).send(&idle, a, &format!("{i}")).await;
    }
    // The kept session is polled through node 0 only.
    let polling = {
        let (api, kept) = (nodes.api(0), kept.clone());
        tokio::spawn(async move {
            loop {
                assert_eq!(api.get(&format!("/api/messages/{kept}")).await.status, 200, "the kept session is open");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let listed = |api: Api| async move { api.sessions().await.iter().map(uuid_of).collect::<Vec<_>>() };
    let began = Instant::now();
    loop {
        let mut gone = 0;
        for (i, api) in nodes.apis() {
            let sessions = listed(api).await;
            assert!(sessions.contains(&kept), "node {i} closed the session polled through node 0: {sessions:?}");
            gone += usize::from(!sessions.contains(&idle));
        }
        if gone == 3 {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "the idle session did not close on every node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("the idle session closed on every node {:?} after the last send", began.elapsed());
    nodes.kill(2);
    nodes.restart(2).await;
    for (i, api) in nodes.apis() {
        err(&api.get(&format!("/api/messages/{idle}")).await, 404, "session");
        assert_eq!(listed(api).await, vec![kept.clone()], "node {i}");
    }
    wait_until("the messages to leave every mailbox", Duration::from_secs(10), || async {
        let mut empty = true;
        for (_, api) in nodes.apis() {
            empty &= api.poll(&format!("/api/messages/{kept}")).await.1.is_empty();
        }
        empty
    })
    .await;
    let agreed = assert_nodes_agree(&nodes, &kept, AGREE_LIMIT).await;
    assert_eq!(agreed.meta["gap"], true, "the messages left: a gap from the start");
    if polling.is_finished() {
        // It polls until aborted: it panicked.
        std::panic::resume_unwind(polling.await.expect_err("the kept session's poller").into_panic());
    }
    polling.abort();
    nodes.stop().await;
}

/// A node SIGKILLed mid-load: the senders that were on it go on through the others, and nothing
/// acknowledged is lost — the round-robin poller (which skips the dead node) and a stream from
/// another node get every acknowledged message once. The node restarts with the same arguments
/// while the load goes on, catches up, and then answers as the others do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_nothing_acknowledged_and_catches_up_on_restart() {
    let (nats, db) = (start_nats().await, create_db().await);
    let mut nodes = Nodes::start(3, db.url(), &nats.url(), &[]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    let sse = Sse::open(nodes.addr(2), &party.receiver_session).await;
    let ring = nodes.ring();
    // A stream on the node to be killed resumes on another with Last-Event-ID.
    let resuming = Sse::open_resuming(&ring, 0, &party.receiver_session).await;
    let poller = RoundRobin::start(&ring, &party.receiver_session, Duration::from_millis(5));
    let senders = Senders::start(&ring, &party.senders, party.receiver, Duration::ZERO);
    senders.progress(400, Duration::from_secs(20), "before the kill").await;

    nodes.kill(0);
    senders.progress(400, Duration::from_secs(20), "with node 0 killed").await;
    let took = nodes.restart(0).await;
    let back = Instant::now();
    eprintln!("node 0 restarted and caught up in {took:?}");
    senders.progress(400, Duration::from_secs(20), "with node 0 back").await;
    let sent = senders.finish().await;
    assert!(sent.acked.values().any(|a| a.node == 0 && a.at > back), "the restarted node took sends");

    assert_eq!(resuming.reconnects(), 1, "the stream on the killed node resumed on another");
    let (polled, agreed) =
        received_and_agreed(&nodes, &party.receiver_session, poller, vec![sse, resuming], &sent).await;
    let shown: HashSet<String> = agreed.messages.iter().map(uuid_of).collect();
    assert!(polled.iter().all(|m| shown.contains(&uuid_of(m))), "the poller got nothing the nodes do not show");
    assert_postgres_holds(db.url(), &agreed.messages, &sent).await;
    eprintln!(
        "{} acknowledged, {} without an answer, {} answered 503",
        sent.acked.len(),
        sent.unanswered,
        sent.unavailable
    );
    nodes.stop().await;
}

/// Every node SIGKILLed at once mid-load while PostgreSQL lacks the last hundreds of
/// acknowledged messages (the test holds a lock that stalls the nodes' writes, which trail the
/// acknowledgements; a JetStream ack is the durability): restarted, the nodes replay the stream
/// onto what PostgreSQL holds and serve every acknowledged message once — to a poller and to a
/// stream that resumes across the restarts — and PostgreSQL gets each of them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_at_once_loses_nothing_acknowledged() {
    let (nats, db) = (start_nats().await, create_db().await);
    let mut nodes = Nodes::start(2, db.url(), &nats.url(), &[]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    let ring = nodes.ring();
    let resuming = Sse::open_resuming(&ring, 0, &party.receiver_session).await;
    let poller = RoundRobin::start(&ring, &party.receiver_session, Duration::from_millis(5));
    let senders = Senders::start(&ring, &party.senders, party.receiver, Duration::ZERO);
    senders.progress(500, Duration::from_secs(20), "before PostgreSQL stalls").await;
    let lock = TableLock::take(db.url(), "messages").await;
    senders.progress(500, Duration::from_secs(20), "while PostgreSQL's writes stall").await;

    nodes.kill(0);
    nodes.kill(1);
    let acked = senders.acked();
    lock.release().await;
    let stored = db.query_one_i64("SELECT count(*) FROM messages");
    assert!(stored + 400 < i64::try_from(acked).unwrap(), "PostgreSQL lacks what was acknowledged last");
    let took = (nodes.restart(0).await, nodes.restart(1).await);
    eprintln!("{acked} acknowledged, {stored} in PostgreSQL when both nodes were killed; back after {took:?}");
    senders.progress(300, Duration::from_secs(20), "after the restarts").await;
    let sent = senders.finish().await;

    assert!(resuming.reconnects() >= 1, "the stream resumed after the kill");
    let (_, agreed) = received_and_agreed(&nodes, &party.receiver_session, poller, vec![resuming], &sent).await;
    assert_received("the mailbox from the start", &agreed.messages, &sent);
    assert_postgres_holds(db.url(), &agreed.messages, &sent).await;
    nodes.stop().await;
}

/// The whole cluster crashes while PostgreSQL trails the log (a lock held by the test stalls the
/// nodes' writes; users and sessions created meanwhile are acknowledged: JetStream holds them),
/// and stays down for longer than `--message-ttl`: the nodes start again — the stream still holds
/// what the store lacks — and serve those users and sessions, and PostgreSQL gets them. Before
/// that, while they run, the nodes trim the stream of what the store has held for a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_restarts_after_a_crash_and_an_outage_longer_than_the_message_ttl() {
    const TTL: Duration = Duration::from_secs(2);
    let (nats, db) = (start_nats().await, create_db().await);
    let mut nodes = Nodes::start(2, db.url(), &nats.url(), &["--message-ttl", "2s"]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    for i in 0..20 {
        nodes.api(i % 2).send(&party.senders[i % SENDERS], party.receiver, "before").await;
    }
    // Entries stay at least 10 s, however short the TTL (longer than a publish retries).
    wait_until("the nodes to trim the stream", Duration::from_secs(20), || async {
        stream_state(&nats)["first_seq"].as_u64() > Some(20)
    })
    .await;

    let lock = TableLock::take(db.url(), "users").await;
    let mut late = Vec::new();
    for k in 0..6 {
        let api = nodes.api(k % 2);
        let user = api.create_user(&format!("late-{k}"), Some("created while PostgreSQL stalls")).await;
        let session = nodes.api((k + 1) % 2).open_session(user["id"].as_i64().expect("an id")).await;
        late.push((user, session["uuid"].clone()));
    }
    nodes.kill(0);
    nodes.kill(1);
    let down = Instant::now();
    lock.release().await;
    let stored = db.query_one_i64("SELECT coalesce(max(seq), 0) FROM log_position");
    let logged = stream_last_seq(&nats);
    assert!(u64::try_from(stored).unwrap() < logged, "PostgreSQL ({stored}) trails the stream ({logged})");
    assert_eq!(db.query_one_i64("SELECT count(*) FROM users WHERE uuid LIKE 'late-%'"), 0, "PostgreSQL lacks them");

    // Down for twice the TTL (an age limit on the stream would have dropped the entries).
    tokio::time::sleep((2 * TTL).saturating_sub(down.elapsed())).await;
    let took = (nodes.restart(0).await, nodes.restart(1).await);
    eprintln!("PostgreSQL at entry {stored}, the stream at {logged}; back after {took:?}");
    let agreed = assert_nodes_agree(&nodes, &party.receiver_session, AGREE_LIMIT).await;
    let (users, sessions) = (agreed.users.as_array().expect("users"), agreed.sessions.as_array().expect("sessions"));
    for (user, session) in &late {
        assert!(users.contains(user), "{user} is served after the restart: {users:?}");
        assert!(sessions.iter().any(|s| s["uuid"] == *session), "session {session} is served after the restart");
    }
    wait_until("PostgreSQL to hold the users created while it stalled", Duration::from_secs(15), || async {
        postgres_rows(db.url(), "SELECT uuid FROM users WHERE uuid LIKE 'late-%'").await.len() == late.len()
    })
    .await;
    nodes.stop().await;
}

/// A node joining after thousands of messages (many log entries) loads PostgreSQL, replays the
/// stream from the store's position while the load goes on, and then answers exactly as the
/// others do. Prints how long it took to serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_late_catches_up_from_postgres_and_the_stream() {
    let (nats, db) = (start_nats().await, create_db().await);
    let mut nodes = Nodes::start(2, db.url(), &nats.url(), &[]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    let ring = nodes.ring();
    let senders = Senders::start(&ring, &party.senders, party.receiver, Duration::ZERO);
    senders.progress(4_000, Duration::from_secs(30), "before the late node").await;
    // The load goes on while the late node loads PostgreSQL and replays the stream.
    let stored = db.query_one_i64("SELECT coalesce(max(seq), 0) FROM log_position");
    let logged = stream_last_seq(&nats);
    let before = senders.acked();
    let (late, took) = nodes.add().await;
    eprintln!(
        "a node joining after {before} messages (PostgreSQL at entry {stored}, the stream at {logged}) \
         served after {took:?}"
    );
    senders.progress(300, Duration::from_secs(20), "after the late node joined").await;
    let sent = senders.finish().await;
    assert!(sent.unknown.is_empty(), "nothing went wrong, nothing unknown");
    assert!(sent.acked.values().any(|a| a.node == late), "the late node took sends");

    let agreed = assert_nodes_agree(&nodes, &party.receiver_session, AGREE_LIMIT).await;
    assert_eq!(agreed.meta["gap"], false, "every message is in the mailbox");
    let acked = sent.acked_uuids();
    assert_exactly(&agreed.messages.iter().map(uuid_of).collect::<Vec<_>>(), &acked, "every node's mailbox");
    assert_received("the mailbox from the start", &agreed.messages, &sent);
    let (_, from_late) = nodes.api(late).poll(&format!("/api/messages/{}", party.receiver_session)).await;
    assert_eq!(from_late, agreed.messages);
    let rows = pg_messages(db.url(), acked.len()).await;
    assert_exactly(&rows, &acked, "PostgreSQL's messages against the acknowledged");
    nodes.stop().await;
}

/// The NATS server SIGKILLed mid-load and restarted on the same ports and storage: while it is
/// gone `/readyz` answers 503, writes answer 503 (in the envelope) at once, and polls go on
/// answering 200 from memory; once it is back, `/readyz` is 200 again and writes succeed; nothing
/// acknowledged is lost or delivered twice, and PostgreSQL holds it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_load_writes_answer_503_meanwhile_and_nothing_acknowledged_is_lost() {
    let (mut nats, db) = (start_nats().await, create_db().await);
    let mut nodes = Nodes::start(3, db.url(), &nats.url(), &[]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    let sse = Sse::open(nodes.addr(2), &party.receiver_session).await;
    let ring = nodes.ring();
    let poller = RoundRobin::start(&ring, &party.receiver_session, Duration::from_millis(5));
    let senders = Senders::start(&ring, &party.senders, party.receiver, Duration::from_millis(5));
    senders.progress(300, Duration::from_secs(20), "before NATS goes").await;

    nats = blocking(move || {
        nats.kill();
        nats
    })
    .await;
    let killed = Instant::now();
    nodes.wait_ready(503, Duration::from_secs(10)).await;
    eprintln!("every node not ready {:?} after NATS was killed", killed.elapsed());
    // A node starting meanwhile waits for NATS (--connect-timeout) and does not serve until it
    // has caught up.
    let late = nodes.spawn_more();
    // NATS stays away for longer than a write retries its publish (5 s): what a node does
    // meanwhile is checked all along.
    let (polls, unavailable) = (poller.polls(), senders.unavailable());
    let mut probes = HashSet::new();
    while killed.elapsed() < Duration::from_secs(6) {
        for (i, api) in nodes.apis() {
            let body = format!("probe/{}", probes.len());
            let began = Instant::now();
            let r = api.try_send(&party.senders[i], party.receiver, &body).await.expect("an answer");
            probes.insert(body);
            assert_eq!(r.status, 503, "node {i}: a write while NATS is gone: {r:?}");
            assert!(began.elapsed() < Duration::from_secs(1), "node {i}: 503 after {:?}, not at once", began.elapsed());
            let r = api.readyz().await;
            assert_eq!(r.status, 503, "node {i}: {r:?}");
            let (_, msgs) = api.poll(&format!("/api/messages/{}", party.receiver_session)).await;
            assert!(msgs.len() >= 300, "node {i}: polls answer from memory");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(poller.polls() > polls + 100, "the round-robin poller went on: {} polls", poller.polls() - polls);
    // A send in flight when NATS went answers once its publish's retries ran out (5 s).
    wait_until("the senders to meet 503s", Duration::from_secs(10), || async {
        senders.unavailable() > unavailable + 50
    })
    .await;
    assert!(nodes.is_running(late), "a node starting while NATS is away waits for it:\n{}", nodes.stderr(late));
    let starting = nodes.api(late);
    let healthz = tokio::time::timeout(Duration::from_millis(300), starting.try_call("GET", "/healthz", None)).await;
    assert!(healthz.is_err(), "a node that has not joined the log does not serve: {healthz:?}");

    let mut nats = blocking(move || {
        nats.restart();
        nats
    })
    .await;
    nodes.wait_ready(200, Duration::from_secs(20)).await;
    eprintln!("every node ready again {:?} after NATS was killed", killed.elapsed());
    nodes.wait_joined(late).await;
    eprintln!("the node started while NATS was away served {:?} after NATS was killed", killed.elapsed());
    senders.progress(300, Duration::from_secs(20), "after NATS is back").await;
    let mut sent = senders.finish().await;
    // A write answered 503 may have been logged all the same (see the module doc).
    sent.unknown.extend(probes);
    // A write in flight when NATS went retries its publish for at most 5 s.
    assert!(sent.slowest_503 < Duration::from_secs(6), "a 503 took {:?}", sent.slowest_503);

    let (_, agreed) = received_and_agreed(&nodes, &party.receiver_session, poller, vec![sse], &sent).await;
    assert_postgres_holds(db.url(), &agreed.messages, &sent).await;
    eprintln!(
        "{} acknowledged, {} answered 503 while NATS was away (the slowest after {:?})",
        sent.acked.len(),
        sent.unavailable,
        sent.slowest_503
    );
    nodes.stop().await;
    blocking(move || nats.kill()).await;
}

/// On a 3-server NATS cluster with the stream on 3 replicas, the stream's leader is SIGKILLed
/// mid-load: writes may answer 503 while NATS elects another (seconds), then succeed again
/// through the same nodes; nothing acknowledged is lost or delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_lost_in_a_nats_cluster_loses_nothing_acknowledged() {
    let (nats, db) = (blocking(NatsCluster::start).await, create_db().await);
    let nodes = Nodes::start(3, db.url(), &nats.urls(), &["--nats-replicas", "3"]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    let sse = Sse::open(nodes.addr(2), &party.receiver_session).await;
    let ring = nodes.ring();
    let poller = RoundRobin::start(&ring, &party.receiver_session, Duration::from_millis(5));
    let senders = Senders::start(&ring, &party.senders, party.receiver, Duration::from_millis(5));
    senders.progress(300, Duration::from_secs(20), "before the leader goes").await;

    let (nats, leader) = blocking(move || {
        let mut nats = nats;
        let leader = nats.wait_stream_leader(STREAM, Duration::from_secs(10));
        nats.servers[leader].kill();
        (nats, leader)
    })
    .await;
    let killed = Instant::now();
    // Electing another leader is NATS's part: its raft groups wait 4–9 s (randomised) before a
    // follower stands, longer if a vote splits or the machine is loaded (a CI run with other
    // tests alongside once took over 20 s from the kill to the first acknowledged write again).
    // Generous, and measured apart from chatbus's part, which follows.
    let (nats, elected) = blocking(move || {
        let next = nats.wait_stream_leader(STREAM, Duration::from_secs(60));
        (nats, next)
    })
    .await;
    let election = killed.elapsed();
    // Every sender is on its way again once sends are acknowledged by the dozen.
    senders.progress(SENDERS * 4, Duration::from_secs(20), "after NATS elected another stream leader").await;
    let resumed = killed.elapsed();
    senders.progress(300, Duration::from_secs(20), "after the stream leader was killed").await;
    eprintln!(
        "NATS server n{leader} (the stream's leader) killed: n{elected} leads after {election:?}, writes acknowledged \
         again after {resumed:?}, 300 more after {:?}",
        killed.elapsed()
    );
    let sent = senders.finish().await;

    let (_, agreed) = received_and_agreed(&nodes, &party.receiver_session, poller, vec![sse], &sent).await;
    assert_postgres_holds(db.url(), &agreed.messages, &sent).await;
    eprintln!("{} acknowledged, {} answered 503, {} unanswered", sent.acked.len(), sent.unavailable, sent.unanswered);
    nodes.stop().await;
    drop(nats);
}

/// A node stopped gracefully (SIGTERM) mid-load while senders send through all three: it
/// finishes the requests in flight on it (every send gets an answer, none a 503), ends its
/// streams (a stream on it resumes on another node with `Last-Event-ID`), and exits 0 within a
/// few seconds; nothing acknowledged is lost or delivered twice — to a poller, to the streams,
/// in PostgreSQL. Restarted, it catches up, takes sends again, and answers as the others do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_gracefully_mid_load_exits_0_and_loses_nothing() {
    let (nats, db) = (start_nats().await, create_db().await);
    let mut nodes = Nodes::start(3, db.url(), &nats.url(), &[]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    let sse = Sse::open(nodes.addr(2), &party.receiver_session).await;
    let ring = nodes.ring();
    // A stream on the node to be stopped resumes on another with Last-Event-ID.
    let resuming = Sse::open_resuming(&ring, 0, &party.receiver_session).await;
    let poller = RoundRobin::start(&ring, &party.receiver_session, Duration::from_millis(5));
    let senders = Senders::start(&ring, &party.senders, party.receiver, Duration::ZERO);
    senders.progress(400, Duration::from_secs(20), "before the stop").await;

    let stopping = Instant::now();
    let (status, stderr, took) = nodes.terminate(0).await;
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0:\n{stderr}");
    assert!(took < Duration::from_secs(5), "a graceful stop took {took:?}:\n{stderr}");
    assert!(stderr.contains("everything acknowledged is in the store"), "{stderr}");
    senders.progress(300, Duration::from_secs(20), "with node 0 stopped").await;
    let restart = nodes.restart(0).await;
    let back = Instant::now();
    eprintln!("node 0 exited 0 {took:?} after SIGTERM; restarted and caught up in {restart:?}");
    senders.progress(300, Duration::from_secs(20), "with node 0 back").await;
    let sent = senders.finish().await;
    assert_eq!(
        (sent.unanswered, sent.unavailable),
        (0, 0),
        "a graceful stop answers the requests in flight, and the other nodes take the rest"
    );
    assert!(sent.acked.values().any(|a| a.node == 0 && a.at < stopping), "node 0 took sends before the stop");
    assert!(sent.acked.values().any(|a| a.node == 0 && a.at > back), "the restarted node took sends");

    assert_eq!(resuming.reconnects(), 1, "the stream on the stopped node resumed on another");
    let (_, agreed) = received_and_agreed(&nodes, &party.receiver_session, poller, vec![sse, resuming], &sent).await;
    let acked = sent.acked_uuids();
    assert_exactly(&agreed.messages.iter().map(uuid_of).collect::<Vec<_>>(), &acked, "every node's mailbox");
    assert_received("the mailbox from the start", &agreed.messages, &sent);
    let rows = pg_messages(db.url(), acked.len()).await;
    assert_exactly(&rows, &acked, "PostgreSQL's messages against the acknowledged");
    nodes.stop().await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A chat app's WebSocket client of one session (`/api/ws/:session`): it sends over the socket
/// (`send` frames with a `ref`) to one receiver and checks every frame it gets — `message`
/// frames in strictly increasing `created_utc`, each once, with its cursor; `sent` frames
/// answering a `ref` it sent, once; nothing else (nothing goes wrong where it is used). It
/// reconnects with `?cursor=` of the last message it got.
struct WsClient {
    session: String,
    user: i64,
    /// Whom its sends go to.
    to: i64,
    ws: Option<Ws>,
    /// The messages of the `message` frames, in order, and their uuids.
    got: Vec<Value>,
    seen: HashSet<String>,
    /// The cursor of the last `message` frame.
    cursor: Option<Value>,
    /// Sends not answered yet: ref → body.
    asked: HashMap<String, String>,
    /// The messages the `sent` frames carried.
    sent: Vec<Value>,
    sends: usize,
}

impl WsClient {
    fn new(session: &str, user: i64, to: i64) -> Self {
        Self {
            session: session.to_owned(),
            user,
            to,
            ws: None,
            got: Vec::new(),
            seen: HashSet::new(),
            cursor: None,
            asked: HashMap::new(),
            sent: Vec::new(),
            sends: 0,
        }
    }

    /// Opens the socket on `addr`, from the last message received (from the start the first time).
    async fn connect(&mut self, addr: SocketAddr) {
        let mut path = format!("/api/ws/{}", self.session);
        if let Some(c) = &self.cursor {
            path.push_str(&format!("?cursor={}.{:09}", c["unix"], c["nano"].as_i64().expect("nano")));
        }
        let (ws, res) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .unwrap_or_else(|e| panic!("upgrade {path} on {addr}: {e}"));
        assert_eq!(res.status(), 101);
        self.ws = Some(ws);
    }

    /// Sends one message over the socket.
    async fn send(&mut self) {
        let (reference, body) = (format!("w-{}", self.sends), format!("ws/{}", self.sends));
        let frame = json!({"type": "send", "ref": reference, "receiver_id": self.to, "body": body});
        let ws = self.ws.as_mut().expect("connected");
        ws.send(WsMessage::text(frame.to_string())).await.expect("a frame sent");
        self.asked.insert(reference, body);
        self.sends += 1;
    }

    /// Checks one frame from the server and takes it in.
    fn take(&mut self, frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>) {
        let f: Value = match frame {
            Some(Ok(WsMessage::Text(t))) => serde_json::from_str(t.as_str()).expect("a JSON frame"),
            Some(Ok(WsMessage::Close(close))) => panic!("the socket closed: {close:?}"),
            Some(Ok(_)) => return, // pings are answered for us
            Some(Err(e)) => panic!("the socket broke: {e}"),
            None => panic!("the socket ended"),
        };
        match f["type"].as_str() {
            Some("message") => {
                let m = f["message"].clone();
                assert_message_shape(&m);
                assert_eq!(f["cursor"], cursor(created(&m)), "a message frame's cursor is its created_utc: {f}");
                if let Some(last) = self.got.last() {
                    assert!(created(&m) > created(last), "created_utc not strictly increasing: {last} then {m}");
                }
                assert!(self.seen.insert(uuid_of(&m)), "a message twice on the socket: {m}");
                self.cursor = Some(f["cursor"].clone());
                self.got.push(m);
            }
            Some("sent") => {
                let reference = f["ref"].as_str().unwrap_or_else(|| panic!("a sent frame has its ref: {f}"));
                let body = self.asked.remove(reference).unwrap_or_else(|| panic!("an answer to no open send: {f}"));
                let m = f["message"].clone();
                assert_message_shape(&m);
                assert_eq!((&m["sender_id"], &m["receiver_id"]), (&json!(self.user), &json!(self.to)), "{f}");
                assert_eq!(m["body"], body, "{f}");
                self.sent.push(m);
            }
            _ => panic!("a frame nothing here should cause: {f}"),
        }
    }

    /// Sends a message every 10 ms until `sends` were sent, and reads frames, until `done` holds of
    /// what it received; panics after `limit`.
    async fn run(&mut self, sends: usize, limit: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while self.sends < sends || !done(self) {
            let want_send = self.sends < sends;
            let ws = self.ws.as_mut().expect("connected");
            let frame = tokio::select! {
                _ = tick.tick(), if want_send => None,
                frame = ws.next() => Some(frame),
                () = tokio::time::sleep_until(deadline) => panic!(
                    "the socket: not done within {limit:?}: {} of {sends} sends made, {} answers open, {} messages received",
                    self.sends,
                    self.asked.len(),
                    self.got.len()
                ),
            };
            match frame {
                None => self.send().await,
                Some(frame) => self.take(frame),
            }
        }
    }

    /// Waits until every send made was answered, then closes the socket.
    async fn close(&mut self) {
        self.run(self.sends, Duration::from_secs(10), |c| c.asked.is_empty()).await;
        let mut ws = self.ws.take().expect("connected");
        let _ = ws.close(None).await;
    }
}

/// A WebSocket on node A (`/api/ws/:session`) receives what is sent through nodes B and C —
/// every acknowledged message exactly once, in order, as acknowledged — and its own sends over
/// the socket (answered `sent` with their `ref`) reach a receiver polling node C, once each, in
/// order. Reconnected on node B with `?cursor=` of the last message it got, mid-load, it resumes
/// exactly: nothing missed, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_gets_every_node_s_messages_once_and_resumes_on_another_node() {
    const SENDS: usize = 20;
    let (nats, db) = (start_nats().await, create_db().await);
    let nodes = Nodes::start(3, db.url(), &nats.url(), &[]).await;
    let api = nodes.api(0);
    let (a, b, c, d) = (api.user("ws-a").await, api.user("b").await, api.user("c").await, api.user("d").await);
    let sa = nodes.api(0).session(a).await;
    let (sb, sc, sd) = (nodes.api(1).session(b).await, nodes.api(2).session(c).await, nodes.api(2).session(d).await);
    let mut client = WsClient::new(&sa, a, d);
    client.connect(nodes.addr(0)).await;
    let polling_c = RoundRobin::start(&Ring::of(vec![nodes.api(2)]), &sd, Duration::from_millis(5));
    // b sends through node B, c through node C.
    let senders = Senders::start(&Ring::of(vec![nodes.api(1), nodes.api(2)]), &[sb, sc], a, Duration::from_millis(2));

    client.run(SENDS, Duration::from_secs(20), |c| c.got.len() >= 150).await;
    client.close().await;
    let before = client.got.len();
    client.connect(nodes.addr(1)).await;
    client.run(2 * SENDS, Duration::from_secs(20), |c| c.got.len() >= before + 150).await;
    let sent = senders.finish().await;
    assert!(sent.unknown.is_empty(), "nothing went wrong, every send acknowledged");
    // `node` is the index in the senders' ring: 0 is node B, 1 node C.
    assert!(sent.acked.values().any(|a| a.node == 0) && sent.acked.values().any(|a| a.node == 1), "B and C took sends");

    // Every acknowledged message and every one of its own, and nothing else.
    let own: HashSet<String> = client.sent.iter().map(uuid_of).collect();
    let expected: HashSet<String> = sent.acked_uuids().union(&own).cloned().collect();
    client.run(0, DELIVERY_LIMIT, |c| expected.iter().all(|u| c.seen.contains(u))).await;
    assert_exactly(&client.got.iter().map(uuid_of).collect::<Vec<_>>(), &expected, "the socket's messages");
    let own_by_uuid: HashMap<String, &Value> = client.sent.iter().map(|m| (uuid_of(m), m)).collect();
    for m in &client.got {
        let uuid = uuid_of(m);
        match sent.acked.get(&uuid) {
            Some(ack) => assert_eq!(m, &ack.message, "received on the socket as acknowledged (node {})", ack.node),
            None => assert_eq!(m, own_by_uuid[&uuid], "its own message as the sent frame carried it"),
        }
    }
    // The receiver polling node C: exactly the socket's sends, in order, as answered.
    wait_received("d polling node C", &own, DELIVERY_LIMIT, || polling_c.uuids()).await;
    let polled = polling_c.finish().await;
    let mut answered = client.sent.clone();
    answered.sort_by_key(created);
    assert_eq!(polled, answered, "d got the socket's sends once each, in order, as answered");
    let on_socket: Vec<&Value> = client.got.iter().filter(|m| own.contains(&uuid_of(m))).collect();
    assert_eq!(on_socket, answered.iter().collect::<Vec<_>>(), "in the same order on the socket");
    client.close().await;
    nodes.stop().await;
}

/// Contacts through different nodes: a contact added through node A shows through B and C, both
/// ways (online, as the user is); one added with a user created through another node an instant
/// before succeeds (the log orders the two); removed through C, it is gone through every node and
/// from PostgreSQL. A contact with oneself (400) and with an unknown user (404) answer the same
/// through every node and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_changed_through_one_node_show_through_every_node() {
    let (nats, db) = (start_nats().await, create_db().await);
    let nodes = Nodes::start(3, db.url(), &nats.url(), &[]).await;
    let (u, v) = (nodes.api(0).create_user("u", Some("U")).await, nodes.api(0).create_user("v", Some("V")).await);
    let (uid, vid) = (u["id"].as_i64().expect("id"), v["id"].as_i64().expect("id"));
    let (su, sv) = (nodes.api(1).session(uid).await, nodes.api(2).session(vid).await);
    let online = |user: &Value| json!({"user": user, "is_online": true, "is_typing": false});
    let contact_path = |session: &str, user: i64| format!("/api/contact/{session}/{user}");
    let pg_contacts = "SELECT user_a || ',' || user_b FROM contacts ORDER BY user_a, user_b";
    // What every node lists for u and for v.
    let lists = |expect_u: Vec<Value>, expect_v: Vec<Value>| {
        let (nodes, su, sv) = (&nodes, su.clone(), sv.clone());
        async move {
            for (_, api) in nodes.apis() {
                if api.contacts(&su).await != expect_u || api.contacts(&sv).await != expect_v {
                    return false;
                }
            }
            true
        }
    };

    ok_plain(&nodes.api(0).call("POST", &contact_path(&su, vid), None).await);
    // Read-your-writes on node A at once; the others may trail it by a few entries.
    assert_eq!(nodes.api(0).contacts(&su).await, vec![online(&v)], "node A shows its own change");
    let added = Instant::now();
    wait_until("every node to list the contact both ways", Duration::from_secs(5), || {
        lists(vec![online(&v)], vec![online(&u)])
    })
    .await;
    eprintln!("the contact showed through every node {:?} after node A answered", added.elapsed());
    // A user created through node C, and at once a contact with them through node A.
    let w = nodes.api(2).create_user("w", Some("W")).await;
    let wid = w["id"].as_i64().expect("id");
    ok_plain(&nodes.api(0).call("POST", &contact_path(&su, wid), None).await);
    let w_offline = json!({"user": w, "is_online": false, "is_typing": false});
    wait_until("every node to list both contacts", Duration::from_secs(5), || {
        lists(vec![online(&v), w_offline.clone()], vec![online(&u)])
    })
    .await;
    let pair = |x: i64, y: i64| format!("{},{}", x.min(y), x.max(y));
    wait_until("PostgreSQL to hold both contacts", Duration::from_secs(10), || async {
        postgres_rows(db.url(), pg_contacts).await == sorted(vec![pair(uid, vid), pair(uid, wid)])
    })
    .await;

    // Through every node, the same refusals, and nothing changes.
    let mut refusals = Vec::new();
    for (i, api) in nodes.apis() {
        let oneself = api.call("POST", &contact_path(&su, uid), None).await;
        err(&oneself, 400, "user_id");
        let unknown = api.call("POST", &contact_path(&su, 999_999), None).await;
        err(&unknown, 404, "user_id");
        let unknown_removed = api.call("DELETE", &contact_path(&sv, 999_999), None).await;
        err(&unknown_removed, 404, "user_id");
        refusals.push((i, [oneself.json, unknown.json, unknown_removed.json]));
    }
    let (first, rest) = refusals.split_first().expect("nodes");
    for (i, answers) in rest {
        assert_eq!(answers, &first.1, "node {i} refuses as node {} does", first.0);
    }

    ok_plain(&nodes.api(2).call("DELETE", &contact_path(&su, vid), None).await);
    assert_eq!(nodes.api(2).contacts(&su).await, vec![w_offline.clone()], "node C shows its own change");
    wait_until("the contact to be gone through every node", Duration::from_secs(5), || {
        lists(vec![w_offline.clone()], vec![])
    })
    .await;
    // Removing it again is fine (idempotent), through another node.
    ok_plain(&nodes.api(1).call("DELETE", &contact_path(&sv, uid), None).await);
    wait_until("PostgreSQL to hold only the other contact", Duration::from_secs(10), || async {
        postgres_rows(db.url(), pg_contacts).await == vec![pair(uid, wid)]
    })
    .await;
    assert!(lists(vec![w_offline.clone()], vec![]).await, "nothing changed back");
    nodes.stop().await;
}

fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

/// PostgreSQL — the shared database of two nodes, a throwaway cluster of the test's own — stopped
/// mid-load: sends go on being acknowledged (JetStream holds them) for `--max-write-lag` (2 s
/// here), then every node refuses them with 503 naming the flag, and no more are acknowledged;
/// polls go on answering from memory; `/readyz` says the store is failing. Once PostgreSQL is
/// back every node is ready again and takes sends, and PostgreSQL ends with exactly the
/// acknowledged messages, once each (a refused send changed nothing anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_under_a_cluster_bounds_what_is_acknowledged_and_loses_nothing() {
    const LAG: Duration = Duration::from_secs(2);
    let (nats, pg) = (start_nats().await, Arc::new(blocking(Cluster::started).await));
    let url = pg.url();
    let nodes = Nodes::start(2, &url, &nats.url(), &["--max-write-lag", "2s"]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    let ring = nodes.ring();
    let poller = RoundRobin::start(&ring, &party.receiver_session, Duration::from_millis(5));
    let senders = Senders::start(&ring, &party.senders, party.receiver, Duration::from_millis(5));
    senders.progress(200, Duration::from_secs(20), "before PostgreSQL stops").await;

    let p = pg.clone();
    // From the stop on: the nodes' first failed write comes after it.
    let down = Instant::now();
    blocking(move || p.stop(Stop::Immediate)).await;
    let (acked_at_stop, polls_at_stop) = (senders.acked(), poller.polls());
    wait_until("/readyz to say the store is failing on every node", Duration::from_secs(10), || async {
        let mut failing = true;
        for (_, api) in nodes.apis() {
            let r = api.readyz().await;
            failing &= r.status == 503 && r.message().contains("store");
        }
        failing
    })
    .await;
    // Every node refuses sends once the store failed for longer than --max-write-lag.
    let mut refused = HashSet::new();
    // Probes acknowledged before the bound: acknowledged sends like the senders'.
    let mut probes = Vec::new();
    let limit = LAG + Duration::from_secs(8);
    while refused.len() < nodes.apis().len() {
        assert!(down.elapsed() < limit, "nodes {refused:?} alone refuse sends {limit:?} after PostgreSQL stopped");
        for (i, api) in nodes.apis() {
            if refused.contains(&i) {
                continue;
            }
            let r = api.try_send(&party.senders[i], party.receiver, "probe").await.expect("an answer");
            match r.status {
                503 => {
                    err(&r, 503, "--max-write-lag");
                    refused.insert(i);
                }
                200 => probes.push(Ack {
                    created: created(r.response()),
                    message: r.response().clone(),
                    node: i,
                    at: Instant::now(),
                }),
                _ => panic!("node {i}: a send while PostgreSQL is down: {r:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refusing = down.elapsed();
    let acked_while_down = senders.acked() - acked_at_stop;
    assert!(refusing >= LAG, "sends were refused {refusing:?} after PostgreSQL stopped, before --max-write-lag");
    assert!(acked_while_down >= 50, "sends went on being acknowledged while PostgreSQL was down: {acked_while_down}");
    // Past the bound, nothing more is acknowledged (but the sends in flight), and polls answer.
    let acked_at_refusal = senders.acked();
    let polls = poller.polls();
    wait_until("polls to go on while sends are refused", Duration::from_secs(10), || async {
        poller.polls() >= polls + 50
    })
    .await;
    for (i, api) in nodes.apis() {
        let r = api.try_send(&party.senders[i], party.receiver, "probe").await.expect("an answer");
        err(&r, 503, "--max-write-lag");
        let (_, mailbox) = api.poll(&format!("/api/messages/{}", party.receiver_session)).await;
        assert!(mailbox.len() >= acked_at_refusal, "node {i}: polls answer from memory: {}", mailbox.len());
        let r = api.readyz().await;
        err(&r, 503, "store");
    }
    assert!(
        senders.acked() <= acked_at_refusal + SENDERS,
        "sends acknowledged past --max-write-lag: {} after {acked_at_refusal}",
        senders.acked()
    );
    assert!(poller.polls() > polls_at_stop + 50, "the poller went on");
    eprintln!(
        "PostgreSQL down: {acked_while_down} sends acknowledged, refused from {refusing:?} on; {} 503s",
        senders.unavailable()
    );

    let p = pg.clone();
    blocking(move || p.start()).await;
    nodes.wait_ready(200, Duration::from_secs(20)).await;
    senders.progress(200, Duration::from_secs(20), "after PostgreSQL is back").await;
    let mut sent = senders.finish().await;
    sent.acked.extend(probes.into_iter().map(|ack| (uuid_of(&ack.message), ack)));
    assert_eq!(sent.unanswered, 0, "every send answered");
    assert!(sent.unavailable > 0, "the senders met the bound");

    let (_, agreed) = received_and_agreed(&nodes, &party.receiver_session, poller, vec![], &sent).await;
    let acked = sent.acked_uuids();
    // A refused send changed nothing: exactly the acknowledged, everywhere.
    assert_exactly(&agreed.messages.iter().map(uuid_of).collect::<Vec<_>>(), &acked, "every node's mailbox");
    let rows = pg_messages(&url, acked.len()).await;
    assert_exactly(&rows, &acked, "PostgreSQL's messages against the acknowledged");
    nodes.stop().await;
}

/// How the whole NATS cluster goes down in [`whole_nats_cluster_down_and_back`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NatsDown {
    /// SIGTERM to every server at once: stopped, as for maintenance (each writes out what it holds).
    Stopped,
    /// SIGKILL to every server at once: the whole NATS cluster crashes.
    Crashed,
}

/// The whole 3-server NATS cluster goes down mid-load (the stream on 3 replicas), then starts
/// again on the same ports and storage: meanwhile every node's `/readyz` answers 503, writes
/// answer 503 at once (a write in flight within the publish deadline) and polls answer from
/// memory; once NATS is back every node is ready and takes writes again; nothing acknowledged is
/// lost or delivered twice, every node shows the same, and PostgreSQL holds each message once.
async fn whole_nats_cluster_down_and_back(how: NatsDown) {
    let (nats, db) = (blocking(NatsCluster::start).await, create_db().await);
    let nodes = Nodes::start(3, db.url(), &nats.urls(), &["--nats-replicas", "3"]).await;
    let party = Party::create(&nodes.api(0), &nodes.api(1)).await;
    let sse = Sse::open(nodes.addr(2), &party.receiver_session).await;
    let ring = nodes.ring();
    let poller = RoundRobin::start(&ring, &party.receiver_session, Duration::from_millis(5));
    let senders = Senders::start(&ring, &party.senders, party.receiver, Duration::from_millis(5));
    senders.progress(300, Duration::from_secs(20), "before NATS goes").await;
    // Each node acknowledges its own writes once applied, others' as it reads them from the log:
    // wait until every node holds the first 300, so that "polls answer from memory" below asks
    // for what each held before NATS went, not for how far a busy node had read.
    let receiver_messages = format!("/api/messages/{}", party.receiver_session);
    wait_until("every node to hold 300 messages before NATS goes", Duration::from_secs(20), || async {
        let mut all = true;
        for (_, api) in nodes.apis() {
            all &= api.poll(&receiver_messages).await.1.len() >= 300;
        }
        all
    })
    .await;

    let nats = blocking(move || {
        let mut nats = nats;
        match how {
            NatsDown::Stopped => nats.terminate_all(),
            NatsDown::Crashed => nats.kill_all(),
        }
        nats
    })
    .await;
    let down = Instant::now();
    nodes.wait_ready(503, Duration::from_secs(10)).await;
    let (polls, unavailable) = (poller.polls(), senders.unavailable());
    let mut probes = HashSet::new();
    for (i, api) in nodes.apis() {
        let body = format!("probe/{i}");
        let began = Instant::now();
        let r = api.try_send(&party.senders[i], party.receiver, &body).await.expect("an answer");
        probes.insert(body);
        assert_eq!(r.status, 503, "node {i}: a write while NATS is down: {r:?}");
        assert!(began.elapsed() < Duration::from_secs(1), "node {i}: 503 after {:?}, not at once", began.elapsed());
        let (_, msgs) = api.poll(&format!("/api/messages/{}", party.receiver_session)).await;
        assert!(msgs.len() >= 300, "node {i}: polls answer from memory");
    }
    let acked = senders.acked();
    wait_until("the senders to meet 503s and the poller to go on", Duration::from_secs(10), || async {
        senders.unavailable() > unavailable + 50 && poller.polls() > polls + 50
    })
    .await;
    // A send in flight when NATS went may still be acknowledged (stored before), no other.
    assert!(senders.acked() <= acked + SENDERS, "acknowledged while NATS is down: {}", senders.acked() - acked);

    let nats = blocking(move || {
        let mut nats = nats;
        nats.restart_all();
        nats
    })
    .await;
    let restarted = down.elapsed();
    // JetStream elects its leaders and catches up first (see `NatsCluster::restart_all`).
    nodes.wait_ready(200, Duration::from_secs(45)).await;
    let ready = down.elapsed();
    // Ready means writes go through: not merely the connection back (JetStream refuses writes
    // for seconds after that), but this node's last tick stored. A write must go through within
    // 3 s of ready — well inside the seconds JetStream refuses writes for after a reconnection,
    // which a readiness that only watched the connection would have let through — unless the
    // restarted servers elect the stream's leader once more meanwhile (seen with the whole test
    // file on 2 cores, and with a CPU hog beside it): that takes NATS seconds, watched here.
    let nats = Arc::new(nats);
    let leaders = nats.watch_stream_leader(STREAM);
    for (i, api) in nodes.apis() {
        let began = Instant::now();
        let mut refused = Vec::new();
        loop {
            let body = format!("ready/{i}/{}", refused.len());
            let r = api.try_send(&party.senders[i], party.receiver, &body).await.expect("an answer");
            probes.insert(body);
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503, "node {i}: a write after ready: {r:?}");
            refused.push(r);
            // Longer only while NATS elects the stream's leader again (seconds, by NATS's raft:
            // seen under load), never while the leader it had at ready stays.
            let limit = if leaders.saw_election() { Duration::from_secs(20) } else { Duration::from_secs(3) };
            assert!(
                began.elapsed() < limit,
                "node {i} answered /readyz 200, yet writes were refused for {limit:?}; the stream's leaders since \
                 ready: {}; refused: {refused:?}",
                leaders.history()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !refused.is_empty() {
            eprintln!("node {i}: {} write(s) refused right after ready: {:?}", refused.len(), refused[0]);
        }
    }
    senders.progress(300, Duration::from_secs(30), "after NATS is back").await;
    eprintln!(
        "NATS cluster {how:?}; back after {restarted:?}, every node ready after {ready:?}, 300 more sends \
         acknowledged after {:?}; the stream's leaders since ready: {}",
        down.elapsed(),
        leaders.history()
    );
    let mut sent = senders.finish().await;
    sent.unknown.extend(probes);
    for (i, api) in nodes.apis() {
        let r = api.readyz().await;
        let log = nodes.stderr(i);
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(r.status, 200, "node {i} after NATS came back: {r:?}; it logged:\n{errors:#?}");
        for refused in log.lines().filter(|l| l.contains("not taken")) {
            eprintln!("node {i}: {refused}");
        }
    }

    let (_, agreed) = received_and_agreed(&nodes, &party.receiver_session, poller, vec![sse], &sent).await;
    assert_postgres_holds(db.url(), &agreed.messages, &sent).await;
    eprintln!("{} acknowledged, {} answered 503, {} unanswered", sent.acked.len(), sent.unavailable, sent.unanswered);
    nodes.stop().await;
    drop(leaders);
    drop(nats);
}

/// [`whole_nats_cluster_down_and_back`], the NATS cluster crashed: SIGKILL to all three servers.
/// It takes 8–18 s: nats-server 2.9 elects its leaders again (and catches a replica up) before it
/// takes writes.
///
/// This caught nodes diverging one run in three or four: a node showing messages no other node
/// had and lacking acknowledged ones, and a write through it hanging until its client gave up.
/// Restarted after the crash, a NATS server brings its consumers back and delivers from its own
/// copy of the stream before JetStream has reconciled the copies, and nodes' log readers took
/// those entries. Fixed in `cluster::log` (a new consumer after every reconnection, its first
/// entry and the last one read checked against the stream's leader) and `cluster::publisher` (a
/// write whose entry the applier passed without its outcome answers 503); passed 26 runs in a
/// row since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_nats_cluster_crashed_and_restarted_loses_nothing_acknowledged() {
    whole_nats_cluster_down_and_back(NatsDown::Crashed).await;
}

/// [`whole_nats_cluster_down_and_back`], the NATS cluster stopped: SIGTERM to all three servers.
/// nats-server 2.9 takes 10–30 s to take writes again after a graceful stop of the whole cluster
/// (elections).
///
/// This caught nodes diverging once in CI (2026-12-01): after the restart node 0's mailbox
/// differed from nodes 1 and 2 from the 310th message on (same count, other content). A restarted
/// server's consumer delivered, past its first entry, entries the stream's leader held otherwise
/// (seen in the nodes' logs: "entry 381 not taken (checked after a reconnection)"). Fixed in
/// `cluster::log`: for a minute after a reconnection every entry is checked against the leader;
/// 27 runs alone and 5 of the whole file in a row passed since, several with such entries refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_nats_cluster_stopped_and_restarted_loses_nothing_acknowledged() {
    whole_nats_cluster_down_and_back(NatsDown::Stopped).await;
}

/// The state of the test's stream (`first_seq`, `last_seq`, …) as the NATS server reports it.
fn stream_state(nats: &Nats) -> Value {
    let jsz = nats.jsz().expect("/jsz");
    jsz["account_details"]
        .as_array()
        .and_then(|accounts| {
            accounts.iter().find_map(|a| {
                Some(a["stream_detail"].as_array()?.iter().find(|s| s["name"] == STREAM)?["state"].clone())
            })
        })
        .unwrap_or_else(|| panic!("stream {STREAM} in /jsz: {jsz}"))
}

/// The last sequence number of the test's stream.
fn stream_last_seq(nats: &Nats) -> u64 {
    stream_state(nats)["last_seq"].as_u64().expect("last_seq")
}

/// `--nats-url` needs the PostgreSQL every node shares: with SQLite or memory it is a one-line
/// error and a non-zero exit (before anything connects).
#[test]
fn nats_url_with_sqlite_or_memory_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = format!("sqlite:{}", dir.path().join("chatbus.db").display());
    // A port nothing listens on, never the machine's NATS.
    let nats = format!("nats://127.0.0.1:{}", free_port());
    for url in [sqlite.as_str(), "memory:"] {
        let err = run_to_error(&["--nats-url", &nats, "--database-url", url, "--listen", "127.0.0.1:0"]);
        assert!(err.starts_with("chatbus: "), "{url}: {err}");
        assert!(err.contains("--nats-url") && err.contains("postgres://"), "{url}: {err}");
    }
    assert!(!dir.path().join("chatbus.db").exists(), "nothing was created");
}
