//! holdbench: many held long-polls or event streams at once against a running chatbus, and what
//! they cost it: the server's resident memory, and the latency of plain polls meanwhile.
//!
//!   holdbench --url http://127.0.0.1:18580 --server-pid <pid> --holds 100000 --kind longpoll
//!
//! It opens `--holds` connections, each holding one request (`GET /api/messages/...?wait=60s`
//! re-issued when answered, `GET /api/stream/...`, or a WebSocket `GET /api/ws/...`), spread over
//! `--sessions` sessions. A
//! connection comes from one of the loopback addresses 127.0.0.1, 127.0.0.2, … (one per 25,000
//! connections: each source address has ~28,000 ephemeral ports). Once the server's gauge
//! (`chatbus_waiting_polls` or `chatbus_open_streams`) shows them all held, it reads the server's
//! RSS (`/proc/<pid>/status`), then sends plain polls from `--probe-connections` connections for
//! `--duration` and reports their latency. Open files: the client raises its soft limit to the
//! hard one; run it (and the server) under `prlimit --nofile=N:N` for N above `--holds`.
//!
//! Prints one line: `HOLDBENCH kind=.. holds=.. rss_mib=.. rss_per_hold_b=.. probe_rps=..
//! probe_p50_us=.. probe_p99_us=.. probe_errors=..`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chatbus_loadtest::client::Api;
use clap::Parser;
use hdrhistogram::Histogram;
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Many held long-polls or streams, and what they cost the server.
#[derive(Parser)]
struct Args {
    /// chatbus base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:18580")]
    url: String,
    /// The server's process id, to read its RSS.
    #[arg(long)]
    server_pid: u32,
    /// Connections each holding one request.
    #[arg(long, default_value_t = 100_000)]
    holds: usize,
    /// `longpoll` or `sse`.
    #[arg(long, default_value = "longpoll")]
    kind: String,
    /// Sessions the holds spread over (users with a session each).
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// How long to probe with plain polls once everything is held.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Connections sending the probe polls, back to back.
    #[arg(long, default_value_t = 4)]
    probe_connections: usize,
    /// Client runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if (limit as usize) < args.holds + 100 {
        bail!("the open-file limit is {limit}; run under `prlimit --nofile=N:N` with N above --holds");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    rt.block_on(run(args))
}

/// The server's resident set size in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read the server's status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kib * 1024)
}

/// The value of a gauge in `/metrics`.
async fn gauge(api: &Api, name: &str) -> Result<i64> {
    let metrics = api.request(Method::GET, "/metrics", None).await?;
    let text = String::from_utf8_lossy(&metrics.body);
    Ok(text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0))
}

async fn run(args: Args) -> Result<()> {
    let api = Api::new(&args.url, 8, Duration::from_secs(30));
    api.check_identity().await?;
    let server: SocketAddr = args.url.trim_start_matches("http://").parse().context("--url must be http://IP:PORT")?;
    let run_id = std::process::id();
    let mut sessions = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let u = api.create_user(&format!("holdbench-{run_id}-{i}"), "").await?;
        sessions.push(api.open_session(u.id).await?.uuid);
    }
    let base_rss = rss(args.server_pid)?;
    let (path_of, gauge_name): (fn(&str) -> String, &str) = match args.kind.as_str() {
        "longpoll" => (|s| format!("/api/messages/{s}/1/0?wait=60s"), "chatbus_waiting_polls"),
        "sse" => (|s| format!("/api/stream/{s}/1/0"), "chatbus_open_streams"),
        // Idle keep-alive connections after one request: what a connection alone costs.
        "idle" => (|_| "/healthz".to_owned(), ""),
        "ws" => (|s| format!("/api/ws/{s}?cursor=1.000000000"), "chatbus_open_sockets"),
        other => bail!("--kind longpoll, sse, ws or idle, not {other}"),
    };
    let failed = Arc::new(AtomicU64::new(0));
    let idle_done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.holds {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / 25_000) as u8));
        let request = format!("GET {} HTTP/1.1\r\nHost: chatbus\r\n\r\n", path_of(&sessions[i % sessions.len()]));
        let failed = failed.clone();
        let idle_done = idle_done.clone();
        let idle = gauge_name.is_empty();
        let ws = args.kind == "ws";
        let path = path_of(&sessions[i % sessions.len()]);
        tasks.spawn(async move {
            let held = if ws {
                hold_socket(source, server, &path).await
            } else {
                hold(source, server, request, idle, &idle_done).await
            };
            if held.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        if i % 1000 == 999 {
            // Let the accept loop keep up.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while gauge_name.is_empty() && !tasks.is_empty() && idle_done.load(Ordering::Relaxed) < args.holds as u64 {
        if Instant::now() > deadline {
            bail!("connections did not come up");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The gauge on connections of its own, each try short and retried: a connection made while
    // thousands are being opened can lose its SYN to a full accept backlog, and the kernel's
    // retransmissions back off past half a minute.
    let watch = Api::new(&args.url, 1, Duration::from_secs(3));
    while !gauge_name.is_empty() {
        let held = match gauge(&watch, gauge_name).await {
            Ok(held) => held,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if held as usize >= args.holds {
            break;
        }
        if Instant::now() > deadline || failed.load(Ordering::Relaxed) > 0 {
            bail!("only {held} of {} held ({} connections failed)", args.holds, failed.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let opened_in = started.elapsed();
    let held_rss = rss(args.server_pid)?;
    // Probe: plain polls, back to back, on their own connections.
    let probe = Api::new(&args.url, args.probe_connections, Duration::from_secs(10));
    let probe_deadline = Instant::now() + args.duration;
    let mut probes = Vec::new();
    for c in 0..args.probe_connections {
        let probe = probe.clone();
        let path = format!("/api/messages/{}/1/0", sessions[c % sessions.len()]);
        probes.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut errors = 0u64;
            while Instant::now() < probe_deadline {
                let t = Instant::now();
                match probe.request(Method::GET, &path, None).await {
                    Ok(a) if a.status.is_success() => {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (h, errors)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for p in probes {
        let (h, e) = p.await?;
        all.add(&h)?;
        errors += e;
    }
    let still_held = if gauge_name.is_empty() { 0 } else { gauge(&api, gauge_name).await? };
    println!(
        "HOLDBENCH kind={} holds={} opened_s={:.1} still_held={still_held} rss_mib={:.1} base_rss_mib={:.1} \
         rss_per_hold_b={:.0} probe_rps={:.0} probe_p50_us={} probe_p99_us={} probe_errors={errors}",
        args.kind,
        args.holds,
        opened_in.as_secs_f64(),
        held_rss as f64 / 1048576.0,
        base_rss as f64 / 1048576.0,
        held_rss.saturating_sub(base_rss) as f64 / args.holds as f64,
        all.len() as f64 / args.duration.as_secs_f64(),
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
    );
    tasks.abort_all();
    Ok(())
}

/// Holds one request open on its own connection from `source`, re-issuing it when answered; or,
/// with `idle`, makes one request and then holds the connection idle.
async fn hold(source: IpAddr, server: SocketAddr, request: String, idle: bool, idle_done: &AtomicU64) -> Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(server).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        stream.write_all(request.as_bytes()).await?;
        // Read until the answer (or the stream) ends; a long-poll answer is re-issued.
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            if buf[..n].ends_with(b"}") || buf[..n].ends_with(b"0\r\n\r\n") {
                break;
            }
        }
        if idle {
            idle_done.fetch_add(1, Ordering::Relaxed);
            std::future::pending::<()>().await;
        }
    }
}

/// Holds one WebSocket open from `source`, answering pings, until the server closes it.
async fn hold_socket(source: IpAddr, server: SocketAddr, path: &str) -> Result<()> {
    use futures_util::StreamExt;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{server}{path}"), stream).await?;
    while let Some(frame) = ws.next().await {
        frame?;
    }
    Ok(())
}
