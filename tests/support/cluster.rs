//! A throwaway PostgreSQL cluster for tests that stop, restart or crash PostgreSQL itself.
//!
//! [`Cluster::init`] runs `initdb` into a temporary directory and configures the cluster to
//! listen on 127.0.0.1 at a free port outside the ephemeral range (its socket in that directory
//! too, never the system's), so that stopping it disturbs no other test and no other database.
//! It is started and stopped with `pg_ctl` ([`Cluster::start`], [`Cluster::stop`],
//! [`Cluster::restart`]); dropping it stops it (immediately) and deletes the directory, also when
//! the test panicked.
//!
//! PostgreSQL refuses to run as root, so when the suite runs as root every command runs as the
//! `postgres` user (`runuser -u postgres --`) and the directory is handed to that user.
//!
//! The binaries are found in `$CHATBUS_TEST_PG_BIN` when set, else in the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout), else on `PATH`. Without them the test panics
//! saying how to provide them: a test that needs a cluster never passes by skipping.
//!
//! The cluster runs with `fsync = off`: it only ever loses its *processes* (`pg_ctl stop -m
//! immediate`), never the machine, and the kernel keeps what a killed server wrote, so durability
//! across a PostgreSQL crash is still tested — only faster.
//!
//! Tests reach it as `support::cluster` (`mod support;`). Every method blocks (it runs a
//! command); from async code call it through `tokio::task::spawn_blocking`
//! (`support::wait::blocking`).

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// How `pg_ctl stop` stops the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `-m fast`: roll back open transactions, disconnect clients, shut down cleanly.
    Fast,
    /// `-m immediate`: quit at once, as a crash would; the next start runs recovery.
    Immediate,
}

impl Stop {
    fn flag(self) -> &'static str {
        match self {
            Stop::Fast => "fast",
            Stop::Immediate => "immediate",
        }
    }
}

/// A PostgreSQL cluster of its own in a temporary directory. See the module doc.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// Creates the cluster (`initdb`), configured but not started.
    pub fn init() -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("chatbus-pg-").tempdir().expect("a temporary directory");
        let as_postgres = running_as_root();
        if as_postgres {
            let out =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).output().expect("run chown");
            assert!(out.status.success(), "chown postgres {}: {}", dir.path().display(), stderr(&out));
        }
        let port = cluster_port();
        let cluster = Self { dir, bin, port, as_postgres };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        );
        // Appending keeps the file's owner (the postgres user).
        let conf = format!(
            "\n# chatbus tests\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 16MB\nmax_connections = 30\n\
             logging_collector = off\n",
            cluster.dir.path().display()
        );
        let path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&path, text).expect("write postgresql.conf");
        cluster
    }

    /// [`Cluster::init`], then [`Cluster::start`].
    pub fn started() -> Self {
        let cluster = Self::init();
        cluster.start();
        cluster
    }

    /// The port it listens on (also while stopped; see `cluster_port`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let data = self.data();
        let log = self.log_path();
        self.run("pg_ctl", &["start", "-D", path_str(&data), "-l", path_str(&log), "-w", "-t", "60"]);
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&self, how: Stop) {
        let data = self.data();
        self.run("pg_ctl", &["stop", "-D", path_str(&data), "-m", how.flag(), "-w", "-t", "60"]);
    }

    /// Stops the server (`how`) and starts it again, waiting until it accepts connections.
    pub fn restart(&self, how: Stop) {
        self.stop(how);
        self.start();
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Runs one of PostgreSQL's programs (as the postgres user when we are root); panics with
    /// its output and the server log when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let out = self.try_run(program, args);
        assert!(
            out.status.success(),
            "{program} {}: {}\n{}\n--- server log ---\n{}",
            args.join(" "),
            out.status,
            stderr(&out),
            self.log()
        );
    }

    fn try_run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let data = self.data();
            let out = self.try_run("pg_ctl", &["stop", "-D", path_str(&data), "-m", "immediate", "-w", "-t", "30"]);
            if !out.status.success() {
                eprintln!("warning: could not stop the test cluster on port {}: {}", self.port, stderr(&out));
            }
        }
    }
}

/// Where `initdb` and `pg_ctl` are; panics saying how to provide them.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHATBUS_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if Command::new("initdb").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return PathBuf::new(); // on PATH
    }
    panic!(
        "\n\nThis test runs a throwaway PostgreSQL cluster and needs PostgreSQL's server programs \
         (initdb, pg_ctl): install them (Debian: `apt-get install postgresql`) or name their \
         directory in CHATBUS_TEST_PG_BIN.\n"
    );
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A port for a cluster: free now, and outside the kernel's ephemeral range (32768–60999 on
/// Linux), where `bind(port 0)` — every other test server, [`free_port`] — never lands. A cluster
/// that is not running leaves its port unbound, and nothing else may take it meanwhile: a test
/// that expects "nothing listens there" must not find some other server.
pub fn cluster_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BASE: u32 = 20_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let _ = NEXT.compare_exchange(0, 1 + seed % SPAN, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let port = u16::try_from(BASE + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN).expect("a port");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for a test cluster in {BASE}..{}", BASE + SPAN);
}

/// A port nothing listens on right now (from the kernel's ephemeral range).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("local addr").port()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn stderr(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout).trim(), String::from_utf8_lossy(&out.stderr).trim())
}
