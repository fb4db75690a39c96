//! fanin: many senders to one receiver that streams over Server-Sent Events, at full speed —
//! every acknowledged message must arrive exactly once, in order.
//!
//!   fanin --url http://127.0.0.1:18580 --senders 1000 --duration 10s
//!
//! The receiver's mailbox must hold everything sent (run chatbus with `--mailbox-capacity
//! 1048576`), else the stream reports a gap and the missing count says how many it skipped.
//! Prints one line: `FANIN senders=.. acknowledged=.. delivered=.. missing=.. duplicated=..
//! out_of_order=.. gaps=.. sends_per_s=.. p50_ms=.. p99_ms=..` (send→delivery latency) and exits
//! 1 when anything is missing, duplicated or out of order.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use chatbus_loadtest::client::Api;
use clap::Parser;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Many senders, one receiver on SSE, every message once.
#[derive(Parser)]
struct Args {
    /// chatbus base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:18580")]
    url: String,
    /// Senders, each with a session of its own.
    #[arg(long, default_value_t = 1000)]
    senders: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Requests in flight at once (connections).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Client runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let api = Api::new(&args.url, args.connections, Duration::from_secs(30));
    api.check_identity().await?;
    let run_id = std::process::id();
    let receiver = api.create_user(&format!("fanin-rx-{run_id}"), "").await?;
    let rx_session = api.open_session(receiver.id).await?.uuid;
    let mut senders = Vec::new();
    for i in 0..args.senders {
        let u = api.create_user(&format!("fanin-{run_id}-{i}"), "").await?;
        senders.push(api.open_session(u.id).await?.uuid);
    }
    // The receiver's stream, from the start of its (empty) mailbox.
    let server: SocketAddr = args.url.trim_start_matches("http://").parse().context("--url must be http://IP:PORT")?;
    let mut stream = TcpStream::connect(server).await?;
    stream.write_all(format!("GET /api/stream/{rx_session} HTTP/1.1\r\nHost: chatbus\r\n\r\n").as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next_line().await?.unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("the stream answered {status}");
    }
    // uuid -> when its send started.
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let (api, sent_at) = (api.clone(), sent_at.clone());
        let path = format!("/api/message/{s}");
        let body = Bytes::from(format!("{{\"receiver_id\":{},\"body\":\"fan-in from {i}\"}}", receiver.id));
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match api.request(Method::POST, &path, Some(body.clone())).await {
                    Ok(a) if a.status == StatusCode::OK => {
                        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
                        let uuid = v["response"]["uuid"].as_str().unwrap_or("?").to_owned();
                        sent_at.lock().await.insert(uuid, t);
                    }
                    _ => errors += 1,
                }
            }
            errors
        }));
    }
    // Read the stream while the senders send, and a little after.
    let (mut delivered, mut duplicated, mut out_of_order, mut gaps) = (0u64, 0u64, 0u64, 0u64);
    let mut seen = HashSet::new();
    let mut last_id: Option<(i64, u32)> = None;
    let mut latency = Histogram::<u64>::new(3)?;
    let mut send_errors = 0;
    let mut sending = true;
    let mut kind = String::new();
    let mut id = None;
    let read_until = |now: Instant, sending: bool, acked: usize, delivered: u64| {
        sending || (delivered < acked as u64 && now < deadline + Duration::from_secs(10))
    };
    loop {
        if sending && tasks.iter().all(|t| t.is_finished()) {
            for t in tasks.drain(..) {
                send_errors += t.await?;
            }
            sending = false;
        }
        let acked = sent_at.lock().await.len();
        if !read_until(Instant::now(), sending, acked, delivered) {
            break;
        }
        let Ok(line) = tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await else { continue };
        let Some(line) = line? else { bail!("the stream ended") };
        if let Some(v) = line.strip_prefix("id: ") {
            let (u, n) = v.split_once('.').context("id")?;
            id = Some((u.parse::<i64>()?, n.parse::<u32>()?));
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            if kind == "gap" {
                gaps += 1;
                continue;
            }
            let m: serde_json::Value = serde_json::from_str(data)?;
            let uuid = m["uuid"].as_str().unwrap_or("?").to_owned();
            delivered += 1;
            if let Some(t) = sent_at.lock().await.get(&uuid) {
                let _ = latency.record(t.elapsed().as_micros() as u64);
            }
            if !seen.insert(uuid) {
                duplicated += 1;
            }
            if id.is_some() && last_id.is_some() && id <= last_id {
                out_of_order += 1;
            }
            last_id = id.take();
        }
    }
    let acked = sent_at.lock().await;
    let missing = acked.keys().filter(|u| !seen.contains(*u)).count();
    let secs = args.duration.as_secs_f64();
    println!(
        "FANIN senders={} acknowledged={} delivered={delivered} missing={missing} duplicated={duplicated} \
         out_of_order={out_of_order} gaps={gaps} send_errors={send_errors} sends_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        args.senders,
        acked.len(),
        acked.len() as f64 / secs,
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
    );
    if missing > 0 || duplicated > 0 || out_of_order > 0 {
        std::process::exit(1);
    }
    Ok(())
}
