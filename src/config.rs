//! The command line: every flag of the contract, each also read from its environment variable.

use clap::Parser;
use std::time::Duration;

/// Default for `--max-pending`: writes queued for the store before sends answer 503. About
/// 100k message rows is tens of MB, and a few seconds of the fastest sustained send rate.
pub const DEFAULT_MAX_PENDING: usize = 100_000;

/// Default for `--max-users`: a million users with a session each take about 700 MB (README,
/// "Memory"), far beyond any benchmark and within a small server's memory.
pub const DEFAULT_MAX_USERS: usize = 1_000_000;
/// Default for `--max-sessions-per-user`: tabs and devices of one person, not a session flood.
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 100;
/// Default for `--max-contacts-per-user`.
pub const DEFAULT_MAX_CONTACTS_PER_USER: usize = 1_000;
/// Default for `--max-connections`: ten times the largest benchmark; each idle connection costs
/// a few KiB and a file descriptor.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// A connection that starts no request (a slow client's headers never complete, or an idle
/// keep-alive connection) for a whole period of this length is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// chatbus: a backend for interval-polling chat clients.
#[derive(Debug, Clone, Parser)]
#[command(name = "chatbus", version, about)]
pub struct Config {
    /// Where to listen [default: 127.0.0.1:8080, or 0.0.0.0:$PORT when only PORT is set]
    #[arg(long, env = "CHATBUS_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// `sqlite:PATH` (embedded), `postgres://…`, or `memory:` (no persistence)
    #[arg(long, env = "DATABASE_URL", value_name = "URL", default_value = "sqlite:chatbus.db")]
    pub database_url: String,

    /// Close sessions idle for longer than this (e.g. 300ms, 2s, 5m)
    #[arg(long, env = "CHATBUS_SESSION_TTL", value_name = "DUR", default_value = "5m", value_parser = positive_duration)]
    pub session_ttl: Duration,

    /// Drop messages older than this from mailboxes and the store
    #[arg(long, env = "CHATBUS_MESSAGE_TTL", value_name = "DUR", default_value = "5m", value_parser = positive_duration)]
    pub message_ttl: Duration,

    /// Messages each user's mailbox holds
    #[arg(long, env = "CHATBUS_MAILBOX_CAPACITY", value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub mailbox_capacity: u32,

    /// Runtime worker threads [default: number of cores]
    #[arg(long, env = "CHATBUS_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Engine shards [default: --threads]
    #[arg(long, env = "CHATBUS_SHARDS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub shards: Option<u16>,

    /// Answer a send only after the store committed it (group commit)
    #[arg(long, env = "CHATBUS_DURABLE_ACKS")]
    pub durable_acks: bool,

    /// Writes queued for the store before sends answer 503
    #[arg(long, env = "CHATBUS_MAX_PENDING", value_name = "N", default_value_t = DEFAULT_MAX_PENDING,
          value_parser = positive_count)]
    pub max_pending: usize,

    /// Longest the store may fail to take writes while sends are still acknowledged from memory;
    /// past it sends answer 503 until the store takes writes again
    #[arg(long, env = "CHATBUS_MAX_WRITE_LAG", value_name = "DUR", default_value = "5s", value_parser = positive_duration)]
    pub max_write_lag: Duration,

    /// Longest a graceful stop waits for the store before it spills what is unwritten to a file
    #[arg(long, env = "CHATBUS_STOP_TIMEOUT", value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub stop_timeout: Duration,

    /// Where a stop that timed out leaves unwritten writes (replayed at the next start), and where
    /// writes the store refused are set aside [default: the SQLite file's directory, else the
    /// working directory]
    #[arg(long, env = "CHATBUS_SPILL_DIR", value_name = "DIR")]
    pub spill_dir: Option<std::path::PathBuf>,

    /// How long to keep retrying a store that is unreachable at start (0: fail at once)
    #[arg(long, env = "CHATBUS_CONNECT_TIMEOUT", value_name = "DUR", default_value = "0s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Longest `?wait=` a long-poll may ask for
    #[arg(long, env = "CHATBUS_MAX_WAIT", value_name = "DUR", default_value = "60s", value_parser = positive_duration)]
    pub max_wait: Duration,

    /// Interval of the SSE comment and the WebSocket ping
    #[arg(long, env = "CHATBUS_HEARTBEAT", value_name = "DUR", default_value = "15s", value_parser = positive_duration)]
    pub heartbeat: Duration,

    /// Admin routes (users, listing sessions, opening a session for a user) require
    /// `Authorization: Bearer TOKEN`
    #[arg(long, env = "CHATBUS_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Allow listening on a non-loopback address without --admin-token (the API is then open
    /// to anyone who can reach it, as the original's was)
    #[arg(long, env = "CHATBUS_OPEN_ADMIN")]
    pub open_admin: bool,

    /// Sends per second per session (a token bucket holding as many); 0: no limit
    #[arg(long, env = "CHATBUS_SEND_RATE", value_name = "N", default_value_t = 0)]
    pub send_rate: u32,

    /// Most users the server holds; creating more answers 503
    #[arg(long, env = "CHATBUS_MAX_USERS", value_name = "N", default_value_t = DEFAULT_MAX_USERS,
          value_parser = positive_count)]
    pub max_users: usize,

    /// Most live sessions one user may hold; opening more answers 429
    #[arg(long, env = "CHATBUS_MAX_SESSIONS_PER_USER", value_name = "N",
          default_value_t = DEFAULT_MAX_SESSIONS_PER_USER, value_parser = positive_count)]
    pub max_sessions_per_user: usize,

    /// Most contacts one user may have; adding more answers 429
    #[arg(long, env = "CHATBUS_MAX_CONTACTS_PER_USER", value_name = "N",
          default_value_t = DEFAULT_MAX_CONTACTS_PER_USER, value_parser = positive_count)]
    pub max_contacts_per_user: usize,

    /// Most open connections; more are answered 503 and closed, without disturbing the others
    #[arg(long, env = "CHATBUS_MAX_CONNECTIONS", value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = positive_count)]
    pub max_connections: usize,

    /// Run as one node of a cluster on this NATS JetStream (comma-separated URLs); needs a
    /// `postgres://` `--database-url` shared by every node.
    #[arg(long, env = "CHATBUS_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,

    /// The JetStream stream holding the cluster's log (subject `<NAME>.log`).
    #[arg(long, env = "CHATBUS_NATS_STREAM", value_name = "NAME", default_value = "chatbus",
          value_parser = stream_name)]
    pub nats_stream: String,

    /// How many NATS servers keep a copy of the stream when chatbus creates it (3 on a 3-server
    /// NATS cluster); an existing stream is used as it is.
    #[arg(long, env = "CHATBUS_NATS_REPLICAS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,

    /// See [`IDLE_TIMEOUT`]. Not a flag: tests shorten it.
    #[arg(skip = IDLE_TIMEOUT)]
    pub idle_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn positive_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

impl Config {
    /// The address to listen on, applying the `PORT` rule.
    pub fn listen_addr(&self) -> String {
        match (&self.listen, std::env::var("PORT")) {
            (Some(addr), _) => addr.clone(),
            (None, Ok(port)) if !port.is_empty() => format!("0.0.0.0:{port}"),
            _ => "127.0.0.1:8080".to_owned(),
        }
    }

    /// Worker threads: `--threads`, or the number of cores.
    pub fn worker_threads(&self) -> usize {
        self.threads.map(usize::from).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// `--spill-dir`, or its default: the SQLite file's directory, else the working directory.
    pub fn spill_dir(&self) -> std::path::PathBuf {
        if let Some(dir) = &self.spill_dir {
            return dir.clone();
        }
        let url = &self.database_url;
        match url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            Some(path) => match std::path::Path::new(path).parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            },
            None => std::path::PathBuf::from("."),
        }
    }

    /// Engine shards: `--shards`, or the worker thread count.
    pub fn shard_count(&self) -> usize {
        self.shards.map_or_else(|| self.worker_threads(), usize::from)
    }
}

/// A JetStream stream name: letters, digits, `-` and `_` (it also names the log's subject).
fn stream_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a stream name (1-64 letters, digits, '-' or '_')"))
    }
}
