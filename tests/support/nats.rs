//! NATS servers of the test's own, for the cluster tests: never the machine's shared one on 4222.
//!
//! [`Nats::start`] runs `nats-server -js` on loopback ports of its own (outside the ephemeral
//! range, see [`cluster_port`]) with its storage in a temporary directory, and returns once it
//! answers `/healthz` with JetStream ready. [`Nats::kill`] SIGKILLs it (a crash: JetStream keeps
//! only what it had written); [`Nats::restart`] starts it again on the same ports and storage.
//! [`NatsCluster::start`] runs three such servers as one NATS cluster (routes between them, one
//! cluster name), so a stream can have 3 replicas; [`NatsCluster::stream_leader`] and
//! [`NatsCluster::meta_leader`] ask the monitoring port (`/jsz`) which server leads, to kill it;
//! [`NatsCluster::kill_all`] (or [`NatsCluster::terminate_all`]) and [`NatsCluster::restart_all`]
//! take the whole cluster down and up.
//! Dropping either kills every server and deletes the storage, also when the test panicked.
//!
//! `nats-server` is found on `PATH`, else in `/usr/sbin` or `/usr/local/bin` (Debian installs it
//! in `/usr/sbin`, off a normal user's `PATH`). Without it the test panics saying how to install
//! it: nothing here skips.
//!
//! Every method blocks (it waits for a server); from async code call it through
//! `support::wait::blocking`.

use super::cluster::cluster_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a server may take to start (JetStream recovers its storage first).
const START_LIMIT: Duration = Duration::from_secs(15);

/// One `nats-server` process of the test's own. See the module doc.
pub struct Nats {
    child: Option<Child>,
    args: Vec<String>,
    port: u16,
    monitor: u16,
    name: String,
    dir: tempfile::TempDir,
}

impl Nats {
    /// Starts a lone server with JetStream and waits until it is ready.
    pub fn start() -> Self {
        let mut nats = Self::configure("solo", &[]);
        nats.spawn();
        nats.wait_ready();
        nats
    }

    /// The server with its ports and storage chosen, not started; `cluster` is extra arguments.
    fn configure(name: &str, cluster: &[String]) -> Self {
        let dir = tempfile::Builder::new().prefix("chatbus-nats-").tempdir().expect("a temporary directory");
        let (port, monitor) = (cluster_port(), cluster_port());
        let mut args: Vec<String> = vec![
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            monitor.to_string(),
            "-n".into(),
            name.into(),
            "-sd".into(),
            dir.path().to_str().expect("a UTF-8 temporary path").into(),
        ];
        args.extend_from_slice(cluster);
        Self { child: None, args, port, monitor, name: name.into(), dir }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server {} already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the nats-server log");
        let child = Command::new(binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's name (`-n`), as `/jsz` reports leaders.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it runs (was started and not killed since).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILLs the server and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again on the same ports and storage, and waits until it is ready.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Waits until `/healthz` says the server and its JetStream are ready.
    pub fn wait_ready(&mut self) {
        self.wait_until_answers("/healthz", "ready", |body| body.contains("\"ok\""));
    }

    /// Waits until the server answers on its monitoring port (`/varz`): it runs and serves
    /// clients, whatever its JetStream's state.
    fn wait_serving(&mut self) {
        self.wait_until_answers("/varz", "serving", |_| true);
    }

    /// Waits until the monitoring port's `path` answers with a body `accepted` takes; fails
    /// loudly if the server exits or [`START_LIMIT`] passes first (`what` names the state).
    fn wait_until_answers(&mut self, path: &str, what: &str, accepted: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("nats-server {} exited ({status}) while starting:\n{}", self.name, self.log());
            }
            if get(self.monitor, path).is_some_and(|body| accepted(&body)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} not {what} within {START_LIMIT:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `/jsz` of this server's monitoring port with stream details, as JSON; `None` if it does not
    /// answer.
    pub fn jsz(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&get(self.monitor, "/jsz?acc=%24G&streams=true")?).ok()
    }

    /// What the server wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }
}

/// Which server leads a stream, as a running server reports it every 50 ms, from when the watch
/// started until it is dropped: what tells a write refused because NATS elected a leader again
/// (each election takes seconds: no server leads meanwhile, or another one does after it) from
/// one refused while NATS had a leader all along.
pub struct LeaderWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<LeaderSeen>>>,
    thread: Option<JoinHandle<()>>,
}

/// A change a [`LeaderWatch`] saw: when (since it started), and the leader's index (`None`: none).
type LeaderSeen = (Duration, Option<usize>);

impl LeaderWatch {
    /// Whether NATS was electing the stream's leader at some moment since the watch started: no
    /// running server named a leader, or the leader changed.
    pub fn saw_election(&self) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.len() > 1 || seen.iter().any(|(_, leader)| leader.is_none())
    }

    /// Every change seen so far, for a failure message.
    pub fn history(&self) -> String {
        let seen = self.seen.lock().unwrap();
        let changes: Vec<String> = seen
            .iter()
            .map(|(at, leader)| format!("{at:.1?}: {}", leader.map_or("none".to_string(), |i| format!("n{i}"))))
            .collect();
        changes.join(", ")
    }
}

impl Drop for LeaderWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three `nats-server`s on loopback as one NATS cluster with JetStream. See the module doc.
pub struct NatsCluster {
    /// The servers, `n0`, `n1`, `n2`.
    pub servers: Vec<Nats>,
}

impl NatsCluster {
    /// Starts three servers routed to each other and waits until each is ready (which includes
    /// a JetStream meta leader having been elected).
    pub fn start() -> Self {
        let routes: Vec<u16> = (0..3).map(|_| cluster_port()).collect();
        let mut servers: Vec<Nats> = (0..3)
            .map(|i| {
                let others: Vec<String> =
                    (0..3).filter(|&j| j != i).map(|j| format!("nats://127.0.0.1:{}", routes[j])).collect();
                let cluster = vec![
                    "--cluster_name".to_string(),
                    "chatbus-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".into(),
                    others.join(","),
                ];
                Nats::configure(&format!("n{i}"), &cluster)
            })
            .collect();
        for server in &mut servers {
            server.spawn();
        }
        for server in &mut servers {
            server.wait_ready();
        }
        Self { servers }
    }

    /// SIGKILLs every server (the whole NATS cluster crashes at once) and waits until they are
    /// gone.
    pub fn kill_all(&mut self) {
        for server in &mut self.servers {
            server.kill();
        }
    }

    /// SIGTERMs every server at once (the whole NATS cluster stopped) and waits until they are
    /// gone.
    pub fn terminate_all(&mut self) {
        let ids: Vec<String> =
            self.servers.iter().filter_map(|s| s.child.as_ref()).map(|c| c.id().to_string()).collect();
        let sent = Command::new("kill").arg("-TERM").args(&ids).status().expect("run kill");
        assert!(sent.success(), "kill -TERM the nats-servers");
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.wait();
            }
        }
    }

    /// Starts every killed server again on its ports and storage, all at once (a server's
    /// JetStream is ready only once a quorum of them is back), and waits until each serves
    /// clients. Not until their JetStream is ready: after the whole cluster was down that takes
    /// elections and catching up — in nats-server 2.9 anything from 5 s to over 30 s (a replica's
    /// catch-up stalling for 10 s at a time) — and what the chatbus nodes need of it is theirs to
    /// wait for.
    pub fn restart_all(&mut self) {
        for server in self.servers.iter_mut().filter(|s| !s.running()) {
            server.spawn();
        }
        for server in &mut self.servers {
            server.wait_serving();
        }
    }

    /// Every server's URL, comma-separated (what a client gets to fail over between them).
    pub fn urls(&self) -> String {
        self.servers.iter().map(Nats::url).collect::<Vec<_>>().join(",")
    }

    /// The index of the server that leads `stream`, as a running server reports it.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        let leader = self.ask(|jsz| {
            jsz["account_details"].as_array()?.iter().find_map(|account| {
                account["stream_detail"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == stream)
                    .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned))
            })
        })?;
        self.index_of(&leader)
    }

    /// The index of the JetStream meta leader, as a running server reports it.
    pub fn meta_leader(&self) -> Option<usize> {
        let leader = self.ask(|jsz| jsz["meta_cluster"]["leader"].as_str().map(str::to_owned))?;
        self.index_of(&leader)
    }

    /// Waits (with a deadline) until a running server names a leader for `stream` that is itself
    /// running, and returns its index.
    pub fn wait_stream_leader(&self, stream: &str, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.stream_leader(stream).filter(|&i| self.servers[i].running()) {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader for stream {stream} within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts watching which server leads `stream` (see [`LeaderWatch`]).
    pub fn watch_stream_leader(self: &Arc<Self>, stream: &str) -> LeaderWatch {
        let (nats, stream) = (self.clone(), stream.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || {
                let began = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let leader = nats.stream_leader(&stream).filter(|&i| nats.servers[i].running());
                    let mut seen = seen.lock().unwrap();
                    if seen.last().map(|(_, l)| *l) != Some(leader) {
                        seen.push((began.elapsed(), leader));
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        LeaderWatch { stop, seen, thread: Some(thread) }
    }

    fn ask(&self, read: impl Fn(&serde_json::Value) -> Option<String>) -> Option<String> {
        self.servers
            .iter()
            .filter(|s| s.running())
            .filter_map(Nats::jsz)
            .find_map(|jsz| read(&jsz).filter(|leader| !leader.is_empty()))
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name() == name)
    }
}

/// The `nats-server` binary: on `PATH`, else where Debian and a manual install put it.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    let fixed = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].map(PathBuf::from);
    if let Some(found) = on_path.into_iter().chain(fixed).find(|p| p.is_file()) {
        return found;
    }
    panic!(
        "\n\nThe cluster tests run their own NATS servers and need `nats-server` (with JetStream, \
         2.9 or later): install it (Debian: `apt-get install nats-server`) or put it on PATH.\n"
    );
}

/// The body of `GET path` on the monitoring port, or `None` if it does not answer 200.
fn get(port: u16, path: &str) -> Option<String> {
    let mut conn = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_owned())
}
