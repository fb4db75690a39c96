//! The invariants a client relies on, over real HTTP: exactly-once delivery with the cursor under
//! concurrent senders, identical state after a graceful restart, nothing acknowledged lost to a
//! crash after the write-behind window, and culling that takes effect in memory and the store.

mod common;

use common::{config, temp_sqlite, TestServer};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

fn cursor_path(session: &str, cursor: &Value) -> String {
    format!("/api/messages/{session}/{}/{}", cursor["unix"], cursor["nano"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_one_receiver_exactly_once_in_order() {
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 300;
    let (_dir, url) = temp_sqlite();
    let srv = std::sync::Arc::new(TestServer::start(&config(&url, &["--mailbox-capacity", "65536"])).await);
    let rx = srv.user("receiver").await;
    let rx_session = srv.session(rx).await;
    let mut tasks = Vec::new();
    for i in 0..SENDERS {
        let srv = srv.clone();
        tasks.push(tokio::spawn(async move {
            let me = srv.user(&format!("sender-{i}")).await;
            let session = srv.session(me).await;
            let mut acked = Vec::with_capacity(PER_SENDER);
            for n in 0..PER_SENDER {
                let m = srv.send(&session, rx, &format!("{i}/{n}")).await;
                acked.push(m["uuid"].as_str().unwrap().to_owned());
            }
            acked
        }));
    }
    // Poll with the cursor while the senders run.
    let mut seen: Vec<String> = Vec::new();
    let mut path = format!("/api/messages/{rx_session}");
    let mut senders_done = false;
    let mut acked: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "timed out with {} of {} seen", seen.len(), SENDERS * PER_SENDER);
        let (status, v) = srv.get(&path).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["meta"]["gap"], false, "a client that keeps up never sees a gap");
        let batch = v["response"].as_array().unwrap();
        seen.extend(batch.iter().map(|m| m["uuid"].as_str().unwrap().to_owned()));
        // Within an answer, timestamps strictly increase (compared as (unix, nano), not as
        // strings); across answers, each starts after the cursor it was asked with.
        let times: Vec<(i64, i64)> = batch.iter().map(|m| parse_ts(m["created_utc"].as_str().unwrap())).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "not strictly increasing within an answer");
        if let Some(first) = times.first() {
            if let Some(prev) = prev_cursor(&path) {
                assert!(*first > prev, "answer starts at or before the cursor");
            }
        }
        path = cursor_path(&rx_session, &v["meta"]["cursor"]);
        if senders_done && seen.len() >= acked.len() {
            break;
        }
        if !senders_done && tasks.iter().all(|t| t.is_finished()) {
            for t in tasks.drain(..) {
                acked.extend(t.await.unwrap());
            }
            senders_done = true;
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a message was delivered twice");
    assert_eq!(unique.len(), SENDERS * PER_SENDER);
    assert_eq!(unique, acked.iter().collect::<HashSet<_>>(), "delivered set differs from acknowledged set");
    let (_, v) = srv.get(&path).await;
    assert_eq!(v["response"].as_array().unwrap().len(), 0, "nothing after the final cursor");
}

/// `(unix, nano)` of a `:unix/:nano` cutoff path, if it has one.
fn prev_cursor(path: &str) -> Option<(i64, i64)> {
    let mut it = path.rsplit('/');
    let nano = it.next()?.parse().ok()?;
    let unix = it.next()?.parse().ok()?;
    Some((unix, nano))
}

/// `(unix, nano)` of an RFC 3339 UTC timestamp as chatbus writes it.
fn parse_ts(s: &str) -> (i64, i64) {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).expect("rfc3339");
    let ns = t.unix_timestamp_nanos();
    ((ns.div_euclid(1_000_000_000)) as i64, (ns.rem_euclid(1_000_000_000)) as i64)
}

/// Everything a client can observe, in an order that does not disturb what it captures:
/// sessions first (polls move `last_active_utc`), then the rest.
async fn observe(srv: &TestServer, sessions: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    out.insert("sessions".into(), srv.get("/api/sessions").await.1);
    out.insert("users".into(), srv.get("/api/users").await.1);
    for s in sessions {
        out.insert(format!("contacts {s}"), srv.get(&format!("/api/contacts/{s}")).await.1);
    }
    for s in sessions {
        out.insert(format!("messages {s}"), srv.get(&format!("/api/messages/{s}")).await.1);
        out.insert(format!("messages-cut {s}"), srv.get(&format!("/api/messages/{s}/1/0")).await.1);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_restores_identical_state() {
    let (_dir, url) = temp_sqlite();
    let cfg = config(&url, &["--mailbox-capacity", "5"]);
    let srv = TestServer::start(&cfg).await;
    let ids = [srv.user("alice").await, srv.user("bob").await, srv.user("carol").await];
    srv.call("PUT", &format!("/api/user/{}", ids[0]), Some(r#"{"display_name":"Alice A."}"#)).await;
    let mut sessions = Vec::new();
    for id in ids {
        sessions.push(srv.session(id).await);
    }
    sessions.push(srv.session(ids[0]).await);
    srv.post(&format!("/api/contact/{}/{}", sessions[0], ids[1]), "").await;
    srv.post(&format!("/api/contact/{}/{}", sessions[2], ids[0]), "").await;
    for n in 0..9 {
        // Alice's mailbox (capacity 5) overflows: the gap watermark must survive too.
        srv.send(&sessions[n % 3], ids[(n + 1) % 3], &format!("message {n} ✓")).await;
    }
    let (s, _) = srv
        .post(
            &format!("/api/message/{}", sessions[1]),
            r#"{"receiver_id": 1, "body": "", "attachments": {"z": 1, "a": [true, null]}}"#,
        )
        .await;
    assert_eq!(s, 200);
    // A closed session stays closed; a deleted user stays deleted.
    let extra = srv.user("dave").await;
    let dave_session = srv.session(extra).await;
    srv.call("DELETE", &format!("/api/session/{dave_session}"), None).await;
    srv.call("DELETE", &format!("/api/user/{extra}"), None).await;
    // Polls move last_active; observe after them, as the restarted server will be observed.
    let mut before = observe(&srv, &sessions).await;
    // The polls inside `observe` moved last_active again: the state at stop is this one.
    before.insert("sessions".into(), srv.get("/api/sessions").await.1);
    srv.stop().await;

    let srv = TestServer::start(&cfg).await;
    let after = observe(&srv, &sessions).await;
    for (k, v) in &before {
        assert_eq!(Some(v), after.get(k), "{k} differs after restart");
    }
    assert_eq!(srv.get(&format!("/api/session/{dave_session}")).await.0, 405);
    assert_eq!(srv.call("DELETE", &format!("/api/session/{dave_session}"), None).await.0, 404);
    assert_eq!(srv.get(&format!("/api/user/{extra}")).await.0, 404);
    // New ids and timestamps continue after the restored ones.
    assert_eq!(srv.user("erin").await, extra + 1);
    let m = srv.send(&sessions[0], ids[1], "after restart").await;
    let last_before = before[&format!("messages {}", sessions[1])]["response"].as_array().unwrap().last().unwrap()
        ["created_utc"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(parse_ts(m["created_utc"].as_str().unwrap()) > parse_ts(&last_before));
    srv.stop().await;
}

/// Finds a free port by binding port 0 and letting it go.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn_binary(url: &str, port: u16, extra: &[&str]) -> Child {
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_chatbus"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--database-url", url, "--threads", "2"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn chatbus"),
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await {
            if r.status() == 200 {
                return child;
            }
        }
        assert!(Instant::now() < deadline, "chatbus did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post_json(client: &reqwest::Client, url: String, body: Value) -> Value {
    let r = client.post(url).body(body.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// SIGKILL after the write-behind window (the contract's ~100 ms; we wait 500 ms): every message
/// acknowledged before the window must be there after a restart. With `--durable-acks`, no wait:
/// everything acknowledged must be there.
async fn crash_case(extra: &[&str], wait: Duration) {
    let (_dir, url) = temp_sqlite();
    let port = free_port();
    let mut child = spawn_binary(&url, port, extra).await;
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    let u = post_json(&c, format!("{base}/api/user"), serde_json::json!({"uuid": "a"})).await["response"]["id"]
        .as_i64()
        .unwrap();
    let s = post_json(&c, format!("{base}/api/session/{u}"), Value::Null).await["response"]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut acked = HashSet::new();
    for n in 0..400 {
        let m = post_json(
            &c,
            format!("{base}/api/message/{s}"),
            serde_json::json!({"receiver_id": u, "body": format!("m{n}")}),
        )
        .await;
        acked.insert(m["response"]["uuid"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(wait).await;
    child.0.kill().unwrap(); // SIGKILL: no graceful stop
    child.0.wait().unwrap();
    drop(child);
    let port = free_port();
    let _child = spawn_binary(&url, port, extra).await;
    let v: Value =
        c.get(format!("http://127.0.0.1:{port}/api/messages/{s}")).send().await.unwrap().json().await.unwrap();
    let restored: HashSet<String> =
        v["response"].as_array().unwrap().iter().map(|m| m["uuid"].as_str().unwrap().to_owned()).collect();
    let missing = acked.difference(&restored).count();
    assert_eq!(missing, 0, "{missing} acknowledged messages lost");
    assert_eq!(restored.len(), acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_flush_window_loses_nothing_acknowledged() {
    crash_case(&[], Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_with_durable_acks_loses_nothing_acknowledged() {
    crash_case(&["--durable-acks"], Duration::ZERO).await;
}

fn sqlite_count(url: &str, table: &str) -> i64 {
    let path = url.strip_prefix("sqlite:").unwrap();
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ttls_cull_memory_and_store_and_stay_culled_after_restart() {
    let (_dir, url) = temp_sqlite();
    let cfg = config(&url, &["--session-ttl", "2s", "--message-ttl", "2s"]);
    let srv = TestServer::start(&cfg).await;
    let a = srv.user("a").await;
    let b = srv.user("b").await;
    let idle = srv.session(a).await;
    let busy = srv.session(b).await;
    let sent = srv.send(&busy, a, "short-lived").await;
    let sent_at = Instant::now();
    assert_eq!(sqlite_count(&url, "sessions"), 2);
    // Keep `busy` alive by polling; `idle` is never used again.
    let mut idle_gone = None;
    let mut message_gone = None;
    let mut store_clean = None;
    let deadline = sent_at + Duration::from_secs(8);
    while idle_gone.is_none() || message_gone.is_none() || store_clean.is_none() {
        assert!(
            Instant::now() < deadline,
            "culling did not happen in time: {idle_gone:?} {message_gone:?} {store_clean:?}"
        );
        let (s, v) = srv.get(&format!("/api/messages/{busy}")).await;
        assert_eq!(s, 200, "a session in use is never culled: {v}");
        if message_gone.is_none() && v["response"].as_array().unwrap().is_empty() {
            message_gone = Some(sent_at.elapsed());
            assert_eq!(v["meta"]["gap"], true, "a poll from the start sees that a message left");
        }
        if idle_gone.is_none() && srv.get(&format!("/api/contacts/{idle}")).await.0 == 404 {
            idle_gone = Some(sent_at.elapsed());
        }
        if store_clean.is_none() && sqlite_count(&url, "messages") == 0 && sqlite_count(&url, "sessions") == 1 {
            store_clean = Some(sent_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not before the TTL, and within about a second after it.
    for (what, t) in [("message", message_gone), ("session", idle_gone)] {
        let t = t.unwrap();
        assert!(t >= Duration::from_millis(1900), "{what} culled too early: {t:?}");
        assert!(t <= Duration::from_millis(3500), "{what} culled too late: {t:?}");
    }
    let cursor = sent["created_utc"].as_str().unwrap();
    let (unix, nano) = parse_ts(cursor);
    let (_, v) = srv.get(&format!("/api/messages/{busy}/{unix}/{nano}")).await;
    assert_eq!(v["meta"]["gap"], false, "the client that saw the culled message missed nothing");
    srv.stop().await;

    let srv = TestServer::start(&cfg).await;
    assert_eq!(srv.get(&format!("/api/contacts/{idle}")).await.0, 404, "culled session came back");
    let (_, v) = srv.get(&format!("/api/messages/{busy}")).await;
    assert_eq!(v["response"].as_array().unwrap().len(), 0, "culled message came back");
    assert_eq!(v["meta"]["gap"], true, "the culled-message watermark survives the restart");
    let (_, v) = srv.get(&format!("/api/messages/{busy}/{unix}/{nano}")).await;
    assert_eq!(v["meta"]["gap"], false, "and still hides nothing and invents nothing for a cursor at it");
    srv.stop().await;
}
