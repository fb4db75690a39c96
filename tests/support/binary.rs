//! The `chatbus` binary as an operator runs it: flags and environment variables, signals, a
//! crash. [`Chatbus`] runs it on a port of its own with its stderr collected, and SIGKILLs it
//! when dropped (also when the test panicked); [`run`] runs it to completion (`--help`, a bad
//! flag).

use super::client::Api;
pub use super::cluster::free_port;
use super::wait::blocking;
use std::io::BufRead;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary cargo built for these tests.
pub const EXE: &str = env!("CARGO_BIN_EXE_chatbus");

/// How long a graceful stop may take.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Runs the binary with `args` to completion (stdin closed) and returns what it wrote.
pub fn run(args: &[&str]) -> Output {
    Command::new(EXE).args(args).env_remove("RUST_LOG").stdin(Stdio::null()).output().expect("run chatbus")
}

/// Runs the binary with `args`, which must fail with a one-line error ([`one_line_error`]);
/// returns the line.
#[track_caller]
pub fn run_to_error(args: &[&str]) -> String {
    let out = run(args);
    one_line_error(out.status, &String::from_utf8_lossy(&out.stderr))
}

/// An error exit: non-zero, one line on stderr, no panic. Returns the line.
#[track_caller]
pub fn one_line_error(status: ExitStatus, stderr: &str) -> String {
    assert!(!status.success(), "expected a non-zero exit, got {status}: {stderr}");
    let err = stderr.trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "expected a one-line error, got:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The `chatbus` binary running as a child process. See the module doc.
pub struct Chatbus {
    child: std::process::Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Chatbus {
    /// Spawns `chatbus --listen 127.0.0.1:<free port> --database-url <url> --threads 2 <extra>`;
    /// it may not serve yet (see [`Chatbus::wait_up`]).
    pub fn spawn(url: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--listen", &listen, "--database-url", url, "--threads", "2"];
        args.extend_from_slice(extra);
        Self::spawn_on(port, &args, &[])
    }

    /// [`Chatbus::spawn`], then waits until it serves.
    pub async fn start(url: &str, extra: &[&str]) -> Self {
        let mut bin = Self::spawn(url, extra);
        bin.wait_up(Duration::from_secs(30)).await;
        bin
    }

    /// Spawns the binary with exactly `args` and the environment variables `env` (on top of the
    /// test's, without `RUST_LOG`); it must be told, one way or the other, to listen on
    /// 127.0.0.1:`port`.
    pub fn spawn_on(port: u16, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_program(EXE, args, port, env)
    }

    /// Spawns `program` with `args` — a wrapper such as `prlimit` that runs the binary — as
    /// [`Chatbus::spawn_on`] does.
    pub fn spawn_program(program: &str, args: &[&str], port: u16, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
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

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client for it.
    pub fn api(&self) -> Api {
        Api::new(format!("http://127.0.0.1:{}", self.port))
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `/healthz` answers 200; panics (with its stderr) if the process exits instead
    /// or `limit` passes.
    pub async fn wait_up(&mut self, limit: Duration) {
        let api = self.api();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("chatbus exited ({status}) instead of coming up:\n{}", self.stderr());
            }
            if api.try_call("GET", "/healthz", None).await.is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "chatbus did not come up within {limit:?}:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL: no graceful stop, nothing flushed. Returns once the process is gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL chatbus");
        self.child.wait().expect("wait for chatbus");
    }

    /// Waits for the process to exit on its own; returns its status and its whole stderr.
    pub async fn exit(&mut self, limit: Duration) -> (ExitStatus, String) {
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

    /// SIGTERM (through the `kill` command: no unsafe code in tests), then waits up to 30 s for
    /// the graceful exit; returns its status and its whole stderr.
    pub async fn terminate(&mut self) -> (ExitStatus, String) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        self.exit(STOP_LIMIT).await
    }

    /// [`Chatbus::terminate`], and the exit must be 0.
    pub async fn stop(mut self) {
        let (status, stderr) = self.terminate().await;
        assert_eq!(status.code(), Some(0), "a graceful stop exits 0:\n{stderr}");
    }
}

impl Drop for Chatbus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
