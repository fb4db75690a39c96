//! The server on PostgreSQL, over real HTTP: the contract against the PostgreSQL store, identical
//! state after a graceful restart, nothing acknowledged lost to a SIGKILL under `--durable-acks`,
//! and the faults of issue 3 — connections killed mid-load and (deterministically) during
//! `COMMIT`, PostgreSQL restarted and stopped mid-load, `/readyz` while it is down, a full write
//! queue while it is down, and PostgreSQL unreachable at start.
//!
//! The fault tests all end the same way: after a graceful stop (or the crash), the `messages`
//! table is compared, uuid by uuid, with the messages the clients got a `200` for — no more, no
//! fewer, none twice ([`assert_exactly`]).
//!
//! Tests that leave PostgreSQL alone get a database of their own on the shared server
//! (`support/pg.rs`: `DATABASE_URL`, or the local one on 127.0.0.1:5432). Tests that stop or
//! restart PostgreSQL run a throwaway cluster of their own (`support/cluster.rs`), so no other
//! test is disturbed. Nothing waits on a guess: every wait is for a condition, with a deadline.

#[path = "support/cluster.rs"]
mod cluster;
mod common;
#[path = "support/pg.rs"]
mod pg;

use cluster::{Cluster, Stop};
use common::{config, TestServer};
use pg::TestDb;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::BufRead;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JSON_CT: &str = "application/json; charset=utf-8";
const NS: i128 = 1_000_000_000;
/// A session id no server handed out (but well-formed).
const NO_SESSION: &str = "0123456789abcdef0123456789abcdef";
/// A user id no test creates.
const NO_USER: i64 = 987_654;
/// A mailbox big enough to hold every message a load test sends.
const BIG_MAILBOX: &str = "65536";

// ---- an HTTP client that checks the envelope -------------------------------------------------

/// A client for one server, checking what the contract says of every answer.
#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: String) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        Self { base, http }
    }

    fn of(ts: &TestServer) -> Self {
        Self::new(ts.base.clone())
    }

    /// One request; `Err` only when there was no answer (connection refused or reset).
    async fn try_call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), reqwest::Error> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let raw = res.bytes().await?;
        let ctx = format!("{method} {path} -> {status} {:?}", String::from_utf8_lossy(&raw));
        let header = |name: &str| headers.get(name).map(|v| v.to_str().expect("ASCII header").to_owned());
        assert_eq!(header("access-control-allow-origin").as_deref(), Some("*"), "{ctx}");
        if status == 204 {
            assert!(raw.is_empty(), "204 has no body: {ctx}");
            return Ok((status, Value::Null));
        }
        if status == 405 {
            assert!(header("allow").is_some_and(|a| !a.is_empty()), "405 carries Allow: {ctx}");
        }
        if path == "/metrics" && status == 200 {
            assert!(header("content-type").is_some_and(|ct| ct.starts_with("text/plain")), "{ctx}");
            return Ok((status, Value::String(String::from_utf8_lossy(&raw).into_owned())));
        }
        assert_eq!(header("content-type").as_deref(), Some(JSON_CT), "{ctx}");
        let v: Value = serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("not JSON ({e}): {ctx}"));
        assert_eq!(v["meta"]["http_code"].as_u64(), Some(u64::from(status)), "meta.http_code = status: {ctx}");
        if status >= 400 {
            assert!(v.get("response").is_none(), "an error carries no response: {ctx}");
            assert!(v["meta"]["message"].as_str().is_some_and(|m| !m.trim().is_empty()), "a message: {ctx}");
        }
        Ok((status, v))
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.try_call(method, path, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// A `200` with a value: returns the value.
    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body.as_ref()).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        assert_eq!(v["meta"], json!({"http_code": 200}), "{method} {path}: {v}");
        v["response"].clone()
    }

    /// Plain success: `{"meta":{"http_code":200,"message":"OK!"}}`.
    async fn ok_plain(&self, method: &str, path: &str) {
        let (status, v) = self.call(method, path, None).await;
        assert_eq!((status, v.clone()), (200, json!({"meta": {"http_code": 200, "message": "OK!"}})), "{path}");
    }

    /// An error answer with `status` whose message names `word`.
    #[track_caller]
    fn err(answer: (u16, Value), status: u16, word: &str) {
        let (s, v) = answer;
        assert_eq!(s, status, "expected {status} naming {word:?}: {v}");
        let msg = v["meta"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(word), "the message should name {word:?}: {msg:?}");
    }

    async fn user(&self, uuid: &str) -> i64 {
        self.ok("POST", "/api/user", Some(json!({ "uuid": uuid }))).await["id"].as_i64().expect("id")
    }

    async fn session(&self, user_id: i64) -> String {
        self.ok("POST", &format!("/api/session/{user_id}"), None).await["uuid"].as_str().expect("uuid").to_owned()
    }

    async fn try_send(&self, session: &str, receiver: i64, body: &str) -> Result<(u16, Value), reqwest::Error> {
        self.try_call("POST", &format!("/api/message/{session}"), Some(&json!({"receiver_id": receiver, "body": body})))
            .await
    }

    async fn send(&self, session: &str, receiver: i64, body: &str) -> Value {
        let (status, v) = self.try_send(session, receiver, body).await.expect("send");
        assert_eq!(status, 200, "send: {v}");
        v["response"].clone()
    }

    /// A messages answer: (meta, messages).
    async fn poll(&self, path: &str) -> (Value, Vec<Value>) {
        let (status, v) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {v}");
        (v["meta"].clone(), v["response"].as_array().expect("messages array").clone())
    }

    /// The uuids of every message in the session user's mailbox.
    async fn mailbox(&self, session: &str) -> Vec<String> {
        self.poll(&format!("/api/messages/{session}")).await.1.iter().map(uuid_of).collect()
    }

    async fn readyz(&self) -> (u16, Value) {
        self.get("/readyz").await
    }
}

fn uuid_of(m: &Value) -> String {
    m["uuid"].as_str().unwrap_or_else(|| panic!("uuid in {m}")).to_owned()
}

/// Nanoseconds since the epoch of an RFC 3339 timestamp.
fn parse_ts(s: &str) -> i128 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .unix_timestamp_nanos()
}

fn created(m: &Value) -> i128 {
    parse_ts(m["created_utc"].as_str().unwrap_or_else(|| panic!("created_utc in {m}")))
}

fn cursor(ns: i128) -> Value {
    json!({"unix": i64::try_from(ns.div_euclid(NS)).unwrap(), "nano": i64::try_from(ns.rem_euclid(NS)).unwrap()})
}

/// `/api/messages/{s}/{unix}/{nano}` for a timestamp in ns.
fn after(s: &str, ns: i128) -> String {
    format!("/api/messages/{s}/{}/{}", ns.div_euclid(NS), ns.rem_euclid(NS))
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---- waiting, blocking, and reading the store --------------------------------------------------

/// Polls `check` every 20 ms until it holds; panics naming `what` after `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the throwaway cluster again and waits until chatbus reports ready on it.
async fn start_and_wait_ready(cluster: &Arc<Cluster>, api: &Api) {
    let c = cluster.clone();
    blocking(move || c.start()).await;
    wait_until("/readyz 200 once PostgreSQL is back", Duration::from_secs(20), || async {
        api.readyz().await.0 == 200
    })
    .await;
}

/// Runs blocking work (a `pg_ctl`, an admin query) off the runtime the server under test uses.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The first column of every row of `sql` (cast it to text) in the database at `url`.
async fn query_text(url: &str, sql: &str) -> Vec<String> {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let conn = tokio::spawn(connection);
    let rows = client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {}", pg::describe(&e)));
    drop(client);
    let _ = conn.await;
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

/// Every row of `messages` as its API uuid (duplicates, if any, kept), oldest first.
async fn stored_messages(url: &str) -> Vec<String> {
    query_text(url, "SELECT replace(uuid::text, '-', '') FROM messages ORDER BY created_ns").await
}

/// `stored` (rows of `messages`) holds exactly the `acked` messages: none missing, none extra,
/// none twice.
#[track_caller]
fn assert_exactly(stored: &[String], acked: &HashSet<String>, what: &str) {
    let set: HashSet<&String> = stored.iter().collect();
    let twice = stored.len() - set.len();
    let missing = acked.iter().filter(|u| !set.contains(u)).count();
    let extra = set.iter().filter(|u| !acked.contains(**u)).count();
    assert!(
        (twice, missing, extra) == (0, 0, 0),
        "{what}: {} rows for {} acknowledged messages: {missing} acknowledged missing, {extra} never \
         acknowledged, {twice} stored twice",
        stored.len(),
        acked.len()
    );
}

// ---- load ------------------------------------------------------------------------------------

/// Users with a session each, sending to one receiver.
struct Party {
    receiver: i64,
    receiver_session: String,
    senders: Vec<String>,
}

impl Party {
    async fn create(api: &Api, prefix: &str, senders: usize) -> Self {
        let receiver = api.user(&format!("{prefix}-receiver")).await;
        let receiver_session = api.session(receiver).await;
        let mut sessions = Vec::new();
        for i in 0..senders {
            let id = api.user(&format!("{prefix}-sender-{i}")).await;
            sessions.push(api.session(id).await);
        }
        Self { receiver, receiver_session, senders: sessions }
    }
}

/// Every sender sends `per_sender` messages, all at once; returns the acknowledged uuids.
async fn send_all(api: &Api, party: &Party, per_sender: usize) -> HashSet<String> {
    let tasks: Vec<_> = party
        .senders
        .iter()
        .enumerate()
        .map(|(i, session)| {
            let (api, session, rx) = (api.clone(), session.clone(), party.receiver);
            tokio::spawn(async move {
                let mut acked = Vec::with_capacity(per_sender);
                for n in 0..per_sender {
                    acked.push(uuid_of(&api.send(&session, rx, &format!("{i}/{n}")).await));
                }
                acked
            })
        })
        .collect();
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.expect("sender task"));
    }
    acked
}

/// Senders that send until stopped, each at most one message per `pace`, recording every
/// acknowledged uuid — and every answer that was not a `200`.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(api: &Api, party: &Party, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let tasks = party
            .senders
            .iter()
            .enumerate()
            .map(|(i, session)| {
                let (api, session, rx) = (api.clone(), session.clone(), party.receiver);
                let (stop, acked) = (stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let mut tick = tokio::time::interval(pace);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        n += 1;
                        match api.try_send(&session, rx, &format!("{i}/{n}")).await {
                            Ok((200, v)) => {
                                acked.lock().unwrap().insert(uuid_of(&v["response"]));
                            }
                            Ok((status, v)) => failures.push(format!("{status}: {v}")),
                            Err(e) => {
                                // The server is gone (or killed on purpose): stop this sender.
                                failures.push(format!("no answer: {e}"));
                                break;
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        Self { stop, acked, tasks }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` further sends have been acknowledged.
    async fn progress(&self, more: usize, what: &str) {
        let target = self.acked() + more;
        wait_until(&format!("{more} more acknowledged sends {what}"), Duration::from_secs(30), || async {
            self.acked() >= target
        })
        .await;
    }

    /// Stops the senders; every send must have been answered `200`. Returns the acknowledged.
    async fn finish(self) -> HashSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.expect("load task"));
        }
        assert!(failures.is_empty(), "{} sends were not acknowledged, e.g. {:?}", failures.len(), &failures[..1]);
        Arc::try_unwrap(self.acked).expect("tasks done").into_inner().unwrap()
    }
}

/// A client polling one mailbox with the cursor, as a chat client does, until stopped.
struct Poller {
    stop: Arc<AtomicBool>,
    polls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Poller {
    fn start(api: &Api, session: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicUsize::new(0));
        let task = {
            let (api, session, stop, polls) = (api.clone(), session.to_owned(), stop.clone(), polls.clone());
            tokio::spawn(async move {
                let (mut seen, mut failures) = (Vec::new(), Vec::new());
                let mut path = format!("/api/messages/{session}");
                while !stop.load(Ordering::Relaxed) {
                    match api.try_call("GET", &path, None).await {
                        Ok((200, v)) => {
                            seen.extend(v["response"].as_array().expect("messages").iter().map(uuid_of));
                            let c = &v["meta"]["cursor"];
                            path = format!("/api/messages/{session}/{}/{}", c["unix"], c["nano"]);
                            polls.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, v)) => failures.push(format!("{status}: {v}")),
                        Err(e) => failures.push(format!("no answer: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (seen, failures)
            })
        };
        Self { stop, polls, task }
    }

    fn polls(&self) -> usize {
        self.polls.load(Ordering::Relaxed)
    }

    /// Stops polling; every poll must have answered `200`. Returns the uuids received, in order.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let (seen, failures) = self.task.await.expect("poller task");
        assert!(failures.is_empty(), "{} polls failed, e.g. {:?}", failures.len(), &failures[..1]);
        seen
    }
}

/// What the poller received is a subset of the acknowledged messages, each received once.
#[track_caller]
fn assert_received_once(seen: &[String], acked: &HashSet<String>) {
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a poller received a message twice");
    assert!(seen.iter().all(|u| acked.contains(u)), "a poller received a message that was never acknowledged");
}

// ---- the binary ----------------------------------------------------------------------------------

/// The `chatbus` binary on a port of its own, its stderr collected; SIGKILLed when dropped.
struct Chatbus {
    child: std::process::Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Chatbus {
    fn spawn(url: &str, extra: &[&str]) -> Self {
        let port = cluster::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatbus"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--database-url", url, "--threads", "2"])
            .args(extra)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chatbus");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr pipe");
        let reader = {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            })
        };
        Self { child, port, stderr, reader: Some(reader) }
    }

    fn api(&self) -> Api {
        Api::new(format!("http://127.0.0.1:{}", self.port))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `/healthz` answers; panics (with its stderr) if the process exits instead.
    async fn wait_up(&mut self, limit: Duration) {
        let api = self.api();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("chatbus exited ({status}) instead of coming up:\n{}", self.stderr());
            }
            if matches!(api.try_call("GET", "/healthz", None).await, Ok((200, _))) {
                return;
            }
            assert!(Instant::now() < deadline, "chatbus did not come up within {limit:?}:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL: no graceful stop, nothing flushed.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL chatbus");
        self.child.wait().expect("wait for chatbus");
    }

    /// Waits for the process to exit on its own; returns its status and its whole stderr.
    async fn exit(&mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "chatbus did not exit within {limit:?}:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(reader) = self.reader.take() {
            blocking(move || reader.join().expect("stderr reader")).await;
        }
        (status, self.stderr())
    }

    /// SIGTERM, then waits for the graceful exit.
    async fn terminate(&mut self) -> ExitStatus {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(ok.success(), "kill -TERM failed");
        self.exit(Duration::from_secs(30)).await.0
    }
}

impl Drop for Chatbus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- 1. the contract on PostgreSQL ------------------------------------------------------------

/// A compact pass over every route with `--database-url postgres://…`, then the tables after a
/// graceful stop hold exactly what the API showed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_contract_on_the_postgres_store() {
    let db = TestDb::create();
    let srv = TestServer::start(&config(db.url(), &["--mailbox-capacity", "3"])).await;
    let api = Api::of(&srv);

    // Service routes.
    assert_eq!(api.ok("GET", "/", None).await, json!({"app": "Chat Bus"}));
    assert_eq!(api.get("/healthz").await.0, 200);
    assert_eq!(api.readyz().await.0, 200, "ready on a reachable PostgreSQL");

    // Users.
    assert_eq!(api.ok("GET", "/api/users", None).await, json!([]));
    let alice = api.ok("POST", "/api/user", Some(json!({"uuid": "alice", "display_name": "Alice"}))).await;
    let a = alice["id"].as_i64().expect("id");
    assert!(a > 0);
    assert_eq!(alice, json!({"id": a, "uuid": "alice", "display_name": "Alice"}));
    let bob = api.ok("POST", "/api/users", Some(json!({"uuid": "bob"}))).await;
    let b = bob["id"].as_i64().expect("id");
    assert_eq!(bob, json!({"id": b, "uuid": "bob", "display_name": ""}), "the alias; display_name defaults to \"\"");
    assert_eq!(
        api.ok("POST", "/api/user", Some(json!({"uuid": "alice", "display_name": "Other"}))).await,
        alice,
        "an existing uuid comes back unchanged"
    );
    assert_eq!(api.ok("GET", &format!("/api/user/{a}"), None).await, alice);
    assert_eq!(api.ok("GET", "/api/user.uuid/bob", None).await, bob);
    let c = api.user("carol").await;
    let d = api.user("dave").await;
    let ids: Vec<i64> =
        api.ok("GET", "/api/users", None).await.as_array().unwrap().iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![a, b, c, d], "all users, by id");
    Api::err(api.get("/api/user/abc").await, 400, "id");
    Api::err(api.get(&format!("/api/user/{NO_USER}")).await, 404, "user");
    Api::err(api.get("/api/user.uuid/nobody").await, 404, "uuid");
    Api::err(api.call("POST", "/api/user", Some(&json!({}))).await, 400, "uuid");
    let put = |id: i64, body: Value| {
        let api = api.clone();
        async move { api.call("PUT", &format!("/api/user/{id}"), Some(&body)).await }
    };
    let (s, v) = put(a, json!({"display_name": "Alice A.", "uuid": "mallory"})).await;
    assert_eq!((s, &v["response"]), (200, &json!({"id": a, "uuid": "alice", "display_name": "Alice A."})));
    let alice = v["response"].clone();
    Api::err(put(a, json!({})).await, 400, "display_name");
    Api::err(put(NO_USER, json!({"display_name": "x"})).await, 404, "user");

    // Sessions.
    let session = api.ok("POST", &format!("/api/session/{a}"), None).await;
    let sa = session["uuid"].as_str().unwrap().to_owned();
    assert!(is_hex32(&sa), "{session}");
    assert_eq!((&session["user_id"], &session["user"]), (&json!(a), &alice));
    assert!(parse_ts(session["last_active_utc"].as_str().unwrap()) >= created(&session), "{session}");
    let sb = api.session(b).await;
    let sc = api.session(c).await;
    let sd = api.session(d).await;
    Api::err(api.call("POST", &format!("/api/session/{NO_USER}"), None).await, 404, "user");
    let listed: HashSet<String> =
        api.ok("GET", "/api/sessions", None).await.as_array().unwrap().iter().map(uuid_of).collect();
    assert_eq!(listed, HashSet::from([sa.clone(), sb.clone(), sc.clone(), sd.clone()]));

    // Contacts: mutual, idempotent, with presence.
    api.ok_plain("POST", &format!("/api/contact/{sa}/{b}")).await;
    api.ok_plain("POST", &format!("/api/contact/{sa}/{b}")).await;
    api.ok_plain("POST", &format!("/api/contact/{sa}/{c}")).await;
    assert_eq!(
        api.ok("GET", &format!("/api/contacts/{sb}"), None).await,
        json!([{"user": alice, "is_online": true, "is_typing": false}])
    );
    api.ok_plain("DELETE", &format!("/api/contact/{sa}/{c}")).await;
    api.ok_plain("DELETE", &format!("/api/contact/{sa}/{c}")).await;
    assert_eq!(
        api.ok("GET", &format!("/api/contacts/{sa}"), None).await,
        json!([{"user": bob, "is_online": true, "is_typing": false}])
    );
    Api::err(api.call("POST", &format!("/api/contact/{sa}/{a}"), None).await, 400, "user_id");
    Api::err(api.call("POST", &format!("/api/contact/{sa}/{NO_USER}"), None).await, 404, "user");
    Api::err(api.call("POST", &format!("/api/contact/{NO_SESSION}/{b}"), None).await, 404, "session");
    Api::err(api.get(&format!("/api/contacts/{NO_SESSION}")).await, 404, "session");

    // Messages: both mailboxes, oldest first, the cursor, the alias, attachments, bad input.
    let m1 = api.send(&sa, b, "hello ✓").await;
    assert!(is_hex32(&uuid_of(&m1)), "{m1}");
    assert_eq!(
        (&m1["sender_id"], &m1["receiver_id"], &m1["body"], &m1["attachments"]),
        (&json!(a), &json!(b), &json!("hello ✓"), &Value::Null)
    );
    let m2 = api
        .ok(
            "POST",
            &format!("/api/send/{sb}"),
            Some(json!({"receiver_id": a, "body": "", "attachments": {"z": 1, "a": [true, null]}})),
        )
        .await;
    assert_eq!(m2["attachments"], json!({"z": 1, "a": [true, null]}));
    assert!(created(&m2) > created(&m1), "server timestamps strictly increase");
    Api::err(
        api.call("POST", &format!("/api/message/{sa}"), Some(&json!({"receiver_id": NO_USER, "body": "x"}))).await,
        400,
        "receiver_id",
    );
    Api::err(
        api.call("POST", &format!("/api/message/{sa}"), Some(&json!({"receiver_id": b, "body": "x".repeat(1025)})))
            .await,
        400,
        "body",
    );
    Api::err(
        api.call("POST", &format!("/api/message/{NO_SESSION}"), Some(&json!({"receiver_id": b, "body": "x"}))).await,
        404,
        "session",
    );
    for s in [&sa, &sb] {
        let (meta, msgs) = api.poll(&format!("/api/messages/{s}")).await;
        assert_eq!(msgs, vec![m1.clone(), m2.clone()]);
        assert_eq!(meta, json!({"http_code": 200, "cursor": cursor(created(&m2)), "gap": false}));
    }
    let (meta, msgs) = api.poll(&after(&sb, created(&m1))).await;
    assert_eq!((msgs, &meta["cursor"]), (vec![m2.clone()], &cursor(created(&m2))), "strictly after the cutoff");
    let unix = created(&m1).div_euclid(NS) as i64;
    assert_eq!(api.poll(&format!("/api/messages/{sb}/{}", unix - 1)).await.1.len(), 2, ":unix alone");
    let later = created(&m2).div_euclid(NS) as i64 + 1;
    let (meta, msgs) = api.poll(&format!("/api/messages/{sb}/{later}")).await;
    assert_eq!((msgs.len(), &meta["cursor"]), (0, &json!({"unix": later, "nano": 0})), "none: the cutoff");

    // The gap (capacity 3): dave's 4 messages push the first out of carol's mailbox.
    let mut g = Vec::new();
    for i in 0..4 {
        g.push(api.send(&sd, c, &format!("g{i}")).await);
    }
    let (meta, msgs) = api.poll(&format!("/api/messages/{sc}")).await;
    assert_eq!((msgs, &meta["gap"]), (g[1..].to_vec(), &json!(true)), "no cutoff: older than what left");
    assert_eq!(api.poll(&after(&sc, created(&g[0]))).await.0["gap"], false, "the client saw g0: no gap");
    assert_eq!(api.poll(&after(&sc, created(&g[0]) - 1)).await.0["gap"], true, "g0 left after this cutoff");
    let carol_session = api
        .ok("GET", "/api/sessions", None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["uuid"] == sc.as_str())
        .cloned()
        .expect("carol's session");
    assert!(
        parse_ts(carol_session["last_active_utc"].as_str().unwrap()) > created(&g[3]),
        "polling marks the session active: {carol_session}"
    );

    // Closing and deleting.
    api.ok_plain("DELETE", &format!("/api/session/{sd}")).await;
    Api::err(api.call("DELETE", &format!("/api/session/{sd}"), None).await, 404, "session");
    Api::err(api.get(&format!("/api/messages/{sd}")).await, 404, "session");
    api.ok_plain("DELETE", &format!("/api/user/{d}")).await;
    Api::err(api.get(&format!("/api/user/{d}")).await, 404, "user");
    Api::err(api.call("DELETE", &format!("/api/user/{d}"), None).await, 404, "user");
    assert_eq!(api.poll(&format!("/api/messages/{sc}")).await.1, g[1..].to_vec(), "messages outlive their sender");

    // The rest of the envelope rules: unknown path, wrong method, preflight.
    assert_eq!(api.get("/api/nothing").await, (404, json!({"meta": {"http_code": 404, "message": "Not Found."}})));
    assert_eq!(api.call("GET", &format!("/api/message/{sa}"), None).await.0, 405);
    assert_eq!(api.call("OPTIONS", "/api/users", None).await, (204, Value::Null));
    let (status, metrics) = api.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.as_str().unwrap().contains("chatbus_http_requests_total"), "{metrics}");
    srv.stop().await;

    // The tables hold exactly that.
    let url = db.url();
    assert_eq!(
        query_text(url, "SELECT id || ' ' || uuid || ' ' || display_name FROM users ORDER BY id").await,
        vec![format!("{a} alice Alice A."), format!("{b} bob "), format!("{c} carol ")]
    );
    let sessions: HashSet<String> =
        query_text(url, "SELECT replace(uuid::text, '-', '') FROM sessions").await.into_iter().collect();
    assert_eq!(sessions, HashSet::from([sa, sb, sc]));
    assert_eq!(
        query_text(url, "SELECT user_a || ',' || user_b FROM contacts").await,
        vec![format!("{},{}", a.min(b), a.max(b))]
    );
    let all: HashSet<String> = [&m1, &m2].into_iter().chain(&g).map(uuid_of).collect();
    assert_exactly(&stored_messages(url).await, &all, "messages after a graceful stop");
    assert_eq!(
        query_text(url, "SELECT attachments FROM messages WHERE attachments IS NOT NULL").await,
        vec![r#"{"z":1,"a":[true,null]}"#.to_owned()],
        "attachments byte for byte"
    );
}

// ---- 2. graceful restart -----------------------------------------------------------------------

/// Everything a client can observe, sessions first (polls move `last_active_utc`).
async fn observe(api: &Api, sessions: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    out.insert("sessions".into(), api.get("/api/sessions").await.1);
    out.insert("users".into(), api.get("/api/users").await.1);
    for s in sessions {
        out.insert(format!("contacts {s}"), api.get(&format!("/api/contacts/{s}")).await.1);
    }
    for s in sessions {
        out.insert(format!("messages {s}"), api.get(&format!("/api/messages/{s}")).await.1);
        out.insert(format!("messages-cut {s}"), api.get(&format!("/api/messages/{s}/1/0")).await.1);
    }
    out
}

/// As `invariants.rs` does for SQLite: users, sessions (with `last_active_utc`), contacts,
/// messages and gap watermarks come back identical; closed sessions and deleted users stay gone;
/// ids and timestamps continue after the restored ones (a deleted user's id is never reused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_restores_identical_state() {
    let db = TestDb::create();
    let cfg = config(db.url(), &["--mailbox-capacity", "5"]);
    let srv = TestServer::start(&cfg).await;
    let api = Api::of(&srv);
    let ids = [api.user("alice").await, api.user("bob").await, api.user("carol").await];
    api.call("PUT", &format!("/api/user/{}", ids[0]), Some(&json!({"display_name": "Alice A."}))).await;
    let mut sessions = Vec::new();
    for id in ids {
        sessions.push(api.session(id).await);
    }
    sessions.push(api.session(ids[0]).await);
    api.ok_plain("POST", &format!("/api/contact/{}/{}", sessions[0], ids[1])).await;
    api.ok_plain("POST", &format!("/api/contact/{}/{}", sessions[2], ids[0])).await;
    for n in 0..9 {
        // Mailboxes of capacity 5 overflow: the gap watermarks must survive too.
        api.send(&sessions[n % 3], ids[(n + 1) % 3], &format!("message {n} ✓")).await;
    }
    api.ok(
        "POST",
        &format!("/api/message/{}", sessions[1]),
        Some(json!({"receiver_id": ids[0], "body": "", "attachments": {"z": 1, "a": [true, null]}})),
    )
    .await;
    // A closed session stays closed; a deleted user (the newest id) stays deleted.
    let dave = api.user("dave").await;
    let dave_session = api.session(dave).await;
    api.ok_plain("DELETE", &format!("/api/session/{dave_session}")).await;
    api.ok_plain("DELETE", &format!("/api/user/{dave}")).await;
    let mut before = observe(&api, &sessions).await;
    // The polls inside `observe` moved last_active again: the state at stop is this one.
    before.insert("sessions".into(), api.get("/api/sessions").await.1);
    let gaps: Vec<&Value> = sessions.iter().map(|s| &before[&format!("messages {s}")]["meta"]["gap"]).collect();
    assert!(gaps.iter().any(|g| **g == json!(true)), "some mailbox overflowed: {gaps:?}");
    srv.stop().await;

    let srv = TestServer::start(&cfg).await;
    let api = Api::of(&srv);
    let after = observe(&api, &sessions).await;
    for (k, v) in &before {
        assert_eq!(Some(v), after.get(k), "{k} differs after restart");
    }
    Api::err(api.call("DELETE", &format!("/api/session/{dave_session}"), None).await, 404, "session");
    Api::err(api.get(&format!("/api/user/{dave}")).await, 404, "user");
    assert_eq!(api.user("erin").await, dave + 1, "a deleted user's id is not handed out again");
    let m = api.send(&sessions[0], ids[1], "after restart").await;
    let last_before = before[&format!("messages {}", sessions[1])]["response"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .expect("bob has messages");
    assert!(created(&m) > created(&last_before), "timestamps continue after the restored ones");
    srv.stop().await;

    // And once more, after a restart with nothing in between but the new user.
    let srv = TestServer::start(&cfg).await;
    let api = Api::of(&srv);
    assert_eq!(api.user("frank").await, dave + 2);
    srv.stop().await;
}

// ---- 3. SIGKILL under --durable-acks ------------------------------------------------------------

/// The binary, killed with SIGKILL right after the last acknowledgement of several concurrent
/// clients, has every acknowledged message in `messages` (and nothing else); killed again in the
/// middle of the load, it has every acknowledged one plus at most the requests then in flight.
/// Each restart shows exactly what the table holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_durable_acks_loses_no_acknowledged_message() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 150;
    let db = TestDb::create();
    let flags = ["--durable-acks", "--mailbox-capacity", BIG_MAILBOX];
    let mut bin = Chatbus::spawn(db.url(), &flags);
    bin.wait_up(Duration::from_secs(30)).await;
    let api = bin.api();
    let party = Party::create(&api, "kill", CLIENTS).await;

    // Everything answered, then SIGKILL at once.
    let mut acked = send_all(&api, &party, PER_CLIENT).await;
    bin.kill();
    assert_eq!(acked.len(), CLIENTS * PER_CLIENT);
    assert_exactly(&stored_messages(db.url()).await, &acked, "SIGKILL right after the last ack");
    drop(bin);

    let mut bin = Chatbus::spawn(db.url(), &flags);
    bin.wait_up(Duration::from_secs(30)).await;
    let api = bin.api();
    let restored: Vec<String> = api.mailbox(&party.receiver_session).await;
    assert_exactly(&restored, &acked, "the receiver's mailbox after the restart");

    // SIGKILL while the clients are still sending.
    let load = Load::start(&api, &party, Duration::from_millis(1));
    load.progress(600, "before the kill").await;
    bin.kill();
    load.stop.store(true, Ordering::Relaxed);
    let mut in_flight = 0;
    for t in load.tasks {
        // Each client's last send got no answer (the process died under it) or was refused.
        for failure in t.await.expect("load task") {
            assert!(failure.starts_with("no answer"), "a send failed before the kill: {failure}");
            in_flight += 1;
        }
    }
    acked.extend(Arc::try_unwrap(load.acked).expect("tasks done").into_inner().unwrap());
    let stored = stored_messages(db.url()).await;
    let set: HashSet<&String> = stored.iter().collect();
    assert_eq!(set.len(), stored.len(), "a message stored twice");
    let missing = acked.iter().filter(|u| !set.contains(u)).count();
    assert_eq!(missing, 0, "{missing} acknowledged messages lost to SIGKILL under --durable-acks");
    let unacked = stored.len() - acked.len();
    assert!(unacked <= in_flight, "{unacked} stored messages were never sent ({in_flight} requests were in flight)");
    eprintln!("killed mid-load: {} acknowledged, {unacked} more stored, {in_flight} requests in flight", acked.len());
    drop(bin);

    let mut bin = Chatbus::spawn(db.url(), &flags);
    bin.wait_up(Duration::from_secs(30)).await;
    let restored = bin.api().mailbox(&party.receiver_session).await;
    assert_eq!(restored, stored, "the restart shows exactly what the table holds, in order");
    assert_eq!(bin.terminate().await.code(), Some(0));
}

/// Sets the flag when dropped: stops a helper thread also when the test panics.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

// ---- 4. connections killed mid-load ---------------------------------------------------------------

/// Several clients send while another thread keeps killing every connection to the test's
/// database (`pg_terminate_backend`); after a graceful stop the table holds exactly the
/// acknowledged messages.
async fn connections_killed_mid_load(durable: bool) {
    const KILLS: usize = 20;
    const MESSAGES: usize = 1500;
    let db = Arc::new(TestDb::create());
    // A kill every 15 ms can keep every write from committing for seconds on a loaded machine;
    // this test is about what a retried batch writes, so it allows a long write-behind window
    // (the bound itself is tested in store_faults.rs).
    let mut flags = vec!["--mailbox-capacity", BIG_MAILBOX, "--max-write-lag", "120s"];
    if durable {
        flags.push("--durable-acks");
    }
    let srv = TestServer::start(&config(db.url(), &flags)).await;
    let api = Api::of(&srv);
    let party = Party::create(&api, "victim", 6).await;

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_killer_on_panic = SetOnDrop(stop.clone());
    let killed = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (db, stop, killed) = (db.clone(), stop.clone(), killed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                killed.fetch_add(db.terminate_connections(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let poller = Poller::start(&api, &party.receiver_session);
    let load = Load::start(&api, &party, Duration::from_millis(5));
    wait_until(
        &format!("{KILLS} connections killed and {MESSAGES} messages acknowledged"),
        Duration::from_secs(30),
        || async { killed.load(Ordering::Relaxed) >= KILLS && load.acked() >= MESSAGES },
    )
    .await;
    let acked = load.finish().await;
    stop.store(true, Ordering::Relaxed);
    blocking(move || killer.join().expect("killer thread")).await;
    let killed = killed.load(Ordering::Relaxed);
    assert_received_once(&poller.finish().await, &acked);
    eprintln!("durable acks {durable}: {killed} connections killed while {} messages were sent", acked.len());
    srv.stop().await;
    let what = format!("{killed} connections killed mid-load (durable acks: {durable})");
    assert_exactly(&stored_messages(db.url()).await, &acked, &what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_load_write_behind() {
    connections_killed_mid_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_load_durable_acks() {
    connections_killed_mid_load(true).await;
}

/// Runs `sql`, one statement (simple query protocol: no transaction block around it).
async fn execute(url: &str, sql: &str) {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let conn = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {}", pg::describe(&e)));
    drop(client);
    let _ = conn.await;
}

/// The single number `sql` returns (cast to text).
async fn query_count(url: &str, sql: &str) -> i64 {
    let rows = query_text(url, sql).await;
    assert_eq!(rows.len(), 1, "{sql}");
    rows[0].parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The case random kills almost never hit: the connection dies *during* `COMMIT`, after the
/// batch committed but before chatbus heard so. A throwaway cluster waits for a synchronous
/// standby that does not exist, so every commit hangs right after it is durable locally; killing
/// the waiting backend leaves the batch committed and chatbus without an answer. The writer must
/// write the batch again — idempotently — and answer every send once the commit goes through;
/// the table ends with each acknowledged message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_during_commit_is_retried_idempotently() {
    const SENDS: usize = 40;
    let cluster = Arc::new(blocking(Cluster::started).await);
    let url = cluster.url();
    // The binary: see `postgres_restart_and_outage_mid_load`.
    let mut bin = Chatbus::spawn(&url, &["--durable-acks"]);
    bin.wait_up(Duration::from_secs(30)).await;
    let api = bin.api();
    let party = Party::create(&api, "commit", 4).await;
    // No session activity left to write, so the first commit to wait holds messages only.
    wait_until("the sessions' last activity to be in the store", Duration::from_secs(10), || async {
        let listed: HashSet<String> = api.get("/api/sessions").await.1["response"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| format!("{} {}", uuid_of(s), parse_ts(s["last_active_utc"].as_str().unwrap())))
            .collect();
        let stored: HashSet<String> =
            query_text(&url, "SELECT replace(uuid::text, '-', '') || ' ' || last_active_ns FROM sessions")
                .await
                .into_iter()
                .collect();
        listed == stored
    })
    .await;

    execute(&url, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'").await;
    execute(&url, "SELECT pg_reload_conf()").await;
    wait_until("the synchronous standby setting to take effect", Duration::from_secs(10), || async {
        query_text(&url, "SELECT current_setting('synchronous_standby_names')").await == ["nobody"]
    })
    .await;
    let waiting = "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'chatbus' \
                   AND wait_event = 'SyncRep'";
    let sends: Vec<_> = (0..SENDS)
        .map(|n| {
            let (api, session, rx) = (api.clone(), party.senders[n % party.senders.len()].clone(), party.receiver);
            tokio::spawn(async move { api.try_send(&session, rx, &format!("c{n}")).await.map_err(|e| e.to_string()) })
        })
        .collect();
    wait_until("chatbus's commit to wait for the standby", Duration::from_secs(10), || async {
        query_count(&url, waiting).await >= 1
    })
    .await;
    let killed = query_count(
        &url,
        "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity WHERE application_name = 'chatbus'",
    )
    .await;
    assert_eq!(killed, 1, "the store holds one connection");
    // Committed (locally) although chatbus never heard: the outcome it must treat as unknown.
    wait_until("the killed batch to be visible", Duration::from_secs(10), || async {
        query_count(&url, "SELECT count(*)::text FROM messages").await >= 1
    })
    .await;
    if sends.iter().any(|t| t.is_finished()) {
        let mut early = Vec::new();
        for t in sends.into_iter().filter(|t| t.is_finished()) {
            early.push(t.await.expect("send task"));
        }
        panic!("sends answered before their batch's commit was confirmed: {early:?}\n{}", bin.stderr());
    }
    // The writer reconnects and writes the batch again; that commit waits too. Then let go.
    wait_until("the retried batch's commit to wait for the standby", Duration::from_secs(20), || async {
        query_count(&url, waiting).await >= 1
    })
    .await;
    execute(&url, "ALTER SYSTEM RESET synchronous_standby_names").await;
    execute(&url, "SELECT pg_reload_conf()").await;
    let mut acked = HashSet::new();
    for t in sends {
        let answer = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap_or_else(|_| panic!("a send was never answered:\n{}", bin.stderr()))
            .expect("send task");
        match answer {
            Ok((200, v)) => acked.insert(uuid_of(&v["response"])),
            other => panic!("a send after the commit was retried: {other:?}\n{}", bin.stderr()),
        };
    }
    assert_eq!(acked.len(), SENDS);
    assert_eq!(bin.terminate().await.code(), Some(0), "graceful stop:\n{}", bin.stderr());
    assert_exactly(&stored_messages(&url).await, &acked, "after a connection died during COMMIT");
}

// ---- 5. PostgreSQL restarted and stopped mid-load ---------------------------------------------

/// On a cluster of its own, under a steady load with a poller: PostgreSQL restarts (fast), then
/// stays down for a while — chatbus keeps serving sends and polls from memory, `/readyz` says
/// 503 while it is down and 200 once it is back — and the table ends with exactly the
/// acknowledged messages. Then the same under `--durable-acks` with a crash restart (immediate):
/// sends wait for the store, then every one commits, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_and_outage_mid_load() {
    let cluster = Arc::new(blocking(Cluster::started).await);
    let url = cluster.url();
    let pace = Duration::from_millis(5);

    // The binary, not an in-process server: if the test fails while PostgreSQL is down, a
    // SIGKILL ends it (an in-process writer would keep retrying, and the test would hang).
    let mut bin = Chatbus::spawn(&url, &["--mailbox-capacity", BIG_MAILBOX]);
    bin.wait_up(Duration::from_secs(30)).await;
    let api = bin.api();
    let party = Party::create(&api, "load", 4).await;
    let load = Load::start(&api, &party, pace);
    let poller = Poller::start(&api, &party.receiver_session);
    load.progress(200, "before the restart").await;

    let c = cluster.clone();
    blocking(move || c.restart(Stop::Fast)).await;
    load.progress(200, "after PostgreSQL restarted").await;
    wait_until("/readyz 200 after the restart", Duration::from_secs(20), || async { api.readyz().await.0 == 200 })
        .await;

    let c = cluster.clone();
    blocking(move || c.stop(Stop::Immediate)).await;
    let down = Instant::now();
    let (acked_at_stop, polls_at_stop) = (load.acked(), poller.polls());
    wait_until("/readyz 503 while PostgreSQL is down", Duration::from_secs(15), || async {
        api.readyz().await.0 == 503
    })
    .await;
    // Down for at least 1.5 s, while sends and polls go on from memory.
    wait_until("sends and polls to go on while PostgreSQL is down", Duration::from_secs(20), || async {
        down.elapsed() >= Duration::from_millis(1500)
            && load.acked() >= acked_at_stop + 200
            && poller.polls() >= polls_at_stop + 20
    })
    .await;
    let (status, v) = api.readyz().await;
    assert_eq!(status, 503, "still not ready while PostgreSQL is down: {v}");
    assert!(v["meta"]["message"].as_str().unwrap().contains("unreachable"), "{v}");
    assert_eq!(api.get("/healthz").await.0, 200);

    start_and_wait_ready(&cluster, &api).await;
    load.progress(200, "after PostgreSQL came back").await;
    let acked = load.finish().await;
    assert_received_once(&poller.finish().await, &acked);
    assert_eq!(bin.terminate().await.code(), Some(0), "graceful stop:\n{}", bin.stderr());
    let stored = stored_messages(&url).await;
    assert_exactly(&stored, &acked, "after a restart and an outage of PostgreSQL (write-behind)");

    // --durable-acks, and PostgreSQL crashes and restarts under the load.
    let mut bin = Chatbus::spawn(&url, &["--mailbox-capacity", BIG_MAILBOX, "--durable-acks"]);
    bin.wait_up(Duration::from_secs(30)).await;
    let api = bin.api();
    assert_eq!(api.mailbox(&party.receiver_session).await, stored, "restored from the restarted PostgreSQL");
    let load = Load::start(&api, &party, pace);
    load.progress(200, "before the crash").await;
    let c = cluster.clone();
    blocking(move || c.restart(Stop::Immediate)).await;
    load.progress(200, "after PostgreSQL crashed and restarted").await;
    wait_until("/readyz 200 after the crash restart", Duration::from_secs(20), || async {
        api.readyz().await.0 == 200
    })
    .await;
    let mut all = acked;
    all.extend(load.finish().await);
    assert_eq!(bin.terminate().await.code(), Some(0), "graceful stop:\n{}", bin.stderr());
    assert_exactly(&stored_messages(&url).await, &all, "after a crash restart of PostgreSQL (durable acks)");
}

// ---- 6. --max-pending while PostgreSQL is down ---------------------------------------------------

/// With PostgreSQL stopped, sends are acknowledged from memory until the queue reaches
/// `--max-pending`; past it they answer 503 with a clear message, store nothing, and `/readyz`
/// says 503, while polls still answer. Once PostgreSQL is back everything recovers and the table
/// holds exactly the acknowledged messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_max_pending_while_postgres_is_down_are_503_and_recover() {
    const MAX_PENDING: usize = 64;
    let cluster = Arc::new(blocking(Cluster::started).await);
    let url = cluster.url();
    // The binary: see `postgres_restart_and_outage_mid_load`.
    let mut bin = Chatbus::spawn(&url, &["--max-pending", &MAX_PENDING.to_string()]);
    bin.wait_up(Duration::from_secs(30)).await;
    let api = bin.api();
    let a = api.user("a").await;
    let b = api.user("b").await;
    let sa = api.session(a).await;
    let sb = api.session(b).await;
    let mut acked = HashSet::from([uuid_of(&api.send(&sa, b, "before").await)]);

    let c = cluster.clone();
    blocking(move || c.stop(Stop::Fast)).await;
    let refused = loop {
        let (status, v) = api.try_send(&sa, b, &format!("down {}", acked.len())).await.expect("an answer");
        match status {
            200 => {
                acked.insert(uuid_of(&v["response"]));
            }
            503 => break v,
            _ => panic!("a send while PostgreSQL is down: {status} {v}"),
        }
        assert!(acked.len() <= MAX_PENDING + 1, "more than --max-pending sends acknowledged while the store is down");
    };
    let msg = refused["meta"]["message"].as_str().unwrap();
    assert!(msg.contains("max-pending"), "the 503 should say the write queue is full: {msg:?}");
    let (status, ready) = api.readyz().await;
    assert_eq!(status, 503, "not ready while the store is down and the queue full: {ready}");
    for _ in 0..3 {
        assert_eq!(api.try_send(&sa, b, "still down").await.expect("an answer").0, 503, "stays full while down");
    }
    let mailbox: HashSet<String> = api.mailbox(&sb).await.into_iter().collect();
    assert_eq!(mailbox, acked, "polls answer, and a refused send is in no mailbox");
    assert_eq!(api.get("/healthz").await.0, 200);

    start_and_wait_ready(&cluster, &api).await;
    for n in 0..20 {
        acked.insert(uuid_of(&api.send(&sa, b, &format!("after {n}")).await));
    }
    assert_eq!(bin.terminate().await.code(), Some(0), "graceful stop:\n{}", bin.stderr());
    assert_exactly(&stored_messages(&url).await, &acked, "after the queue filled and drained");
}

/// `/readyz` follows the store also when nothing is being written: PostgreSQL stopped under an
/// idle server is a 503 (the contract: ready = "the store is reachable"), and a 200 once it is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_an_unreachable_store_without_traffic() {
    let cluster = Arc::new(blocking(Cluster::started).await);
    // The binary: see `postgres_restart_and_outage_mid_load`.
    let mut bin = Chatbus::spawn(&cluster.url(), &[]);
    bin.wait_up(Duration::from_secs(30)).await;
    let api = bin.api();
    api.user("idle").await;
    assert_eq!(api.readyz().await.0, 200);
    let c = cluster.clone();
    blocking(move || c.stop(Stop::Fast)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = api.readyz().await;
        if status == 503 {
            break;
        }
        if Instant::now() >= deadline {
            let log = bin.stderr();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "/readyz still answers {status} {v} 10 s after PostgreSQL stopped under an idle server; \
                 chatbus logged {} lines, the last ones:\n{}",
                lines.len(),
                lines[lines.len().saturating_sub(4)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While it is known to be down, changes that must be durable before they are answered are
    // refused at once instead of waiting for the outage; nothing changes in memory either.
    let (status, v) = api.call("POST", "/api/user", Some(&json!({"uuid": "during-outage"}))).await;
    assert_eq!(status, 503, "{v}");
    assert!(v["meta"]["message"].as_str().unwrap_or("").contains("store is unreachable"), "{v}");
    assert_eq!(api.get("/api/user.uuid/during-outage").await.0, 404, "a refused user must not exist");
    start_and_wait_ready(&cluster, &api).await;
    let (status, v) = api.call("POST", "/api/user", Some(&json!({"uuid": "during-outage"}))).await;
    assert_eq!(status, 200, "accepted again once the store is back: {v}");
    assert_eq!(bin.terminate().await.code(), Some(0), "graceful stop:\n{}", bin.stderr());
}

// ---- 7. PostgreSQL unreachable at start ---------------------------------------------------------

/// Nothing listening: a one-line error naming the server (never the password) and a non-zero
/// exit — at once without `--connect-timeout`, after the wait with one. With `--connect-timeout
/// 10s` and PostgreSQL starting within that window, chatbus waits for it and comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_at_start() {
    let cluster = Arc::new(blocking(Cluster::init).await); // not started: nothing on its port
    let port = cluster.port();
    let url = format!("postgres://postgres:sekrit@127.0.0.1:{port}/postgres");

    let started = Instant::now();
    let (status, err) = Chatbus::spawn(&url, &[]).exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "exit status {status}: {err}");
    let err = err.trim_end();
    assert_eq!(err.lines().count(), 1, "a one-line error:\n{err}");
    assert!(err.starts_with("chatbus: cannot open store"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "names the server: {err}");
    assert!(!err.contains("sekrit") && !err.contains("panicked"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "fails at once: {:?}", started.elapsed());

    let (status, err) = Chatbus::spawn(&url, &["--connect-timeout", "1s"]).exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "exit status {status}: {err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(last.starts_with("chatbus: cannot open store") && last.contains("attempts"), "{err}");
    assert!(!err.contains("sekrit") && !err.contains("panicked"), "{err}");

    let spawned = Instant::now();
    let mut bin = Chatbus::spawn(&url, &["--connect-timeout", "10s"]);
    wait_until("chatbus to say it waits for PostgreSQL", Duration::from_secs(8), || {
        let said = bin.stderr().contains("not reachable yet");
        async move { said }
    })
    .await;
    assert!(bin.is_running(), "still waiting:\n{}", bin.stderr());
    let c = cluster.clone();
    blocking(move || c.start()).await;
    bin.wait_up(Duration::from_secs(20)).await;
    assert!(spawned.elapsed() < Duration::from_secs(12), "up within the window: {:?}", spawned.elapsed());
    let api = bin.api();
    let id = api.user("patient").await;
    let s = api.session(id).await;
    let m = api.send(&s, id, "made it").await;
    assert_eq!(api.readyz().await.0, 200);
    assert_eq!(bin.terminate().await.code(), Some(0), "graceful stop:\n{}", bin.stderr());
    assert_exactly(&stored_messages(&cluster.url()).await, &HashSet::from([uuid_of(&m)]), "after the wait");
}
