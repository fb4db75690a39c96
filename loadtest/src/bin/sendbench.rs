//! sendbench: sustained sends per second against a running chatbus, counting exactly what was
//! acknowledged.
//!
//! `C` connections each send as fast as the server answers for `--duration`; every request that
//! was started is finished before the tool reports, so `acknowledged` is exact and can be compared
//! with the rows of the store's `messages` table (see `loadtest/store-bench`).
//!
//!   sendbench --url http://127.0.0.1:18080 --connections 16 --duration 10s
//!
//! Prints one line: `SENDBENCH acknowledged=N rejected_503=N errors=N seconds=S rps=R p50_us=.. p99_us=..`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use chatbus_loadtest::client::Api;
use clap::Parser;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sustained sends per second, counting every acknowledgement.
#[derive(Parser)]
struct Args {
    /// chatbus base URL.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    url: String,
    /// Concurrent connections (each its own sender and session).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Client runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the uuid of every acknowledged message to this file, one per line (for comparing
    /// with the store's rows after a crash; see `loadtest/crash-bench`).
    #[arg(long, value_name = "PATH")]
    acked_file: Option<std::path::PathBuf>,
    /// Stop at the first request without an answer (the server was killed) instead of failing.
    #[arg(long)]
    until_gone: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    rt.block_on(run(args))
}

#[derive(Default)]
struct Tally {
    acknowledged: u64,
    uuids: Vec<String>,
    rejected: u64,
    errors: u64,
    latency: Option<Histogram<u64>>,
}

async fn run(args: Args) -> Result<()> {
    let api = Api::new(&args.url, args.connections, Duration::from_secs(30));
    api.check_identity().await?;
    let run_id = std::process::id();
    let receiver = api.create_user(&format!("sendbench-rx-{run_id}"), "receiver").await?;
    let mut senders = Vec::new();
    for i in 0..args.connections {
        let u = api.create_user(&format!("sendbench-{run_id}-{i}"), "sender").await?;
        senders.push(api.open_session(u.id).await?.uuid);
    }
    let body = Bytes::from(
        serde_json::json!({"receiver_id": receiver.id, "body": "a typical chat line, about sixty characters long."})
            .to_string(),
    );
    let started = Instant::now();
    let deadline = started + args.duration;
    let keep_uuids = args.acked_file.is_some();
    let until_gone = args.until_gone;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|session| {
            let api = api.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let path: Arc<str> = format!("/api/message/{session}").into();
                let mut t = Tally { latency: Histogram::new(3).ok(), ..Tally::default() };
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match api.request(Method::POST, &path, Some(body.clone())).await {
                        Ok(a) if a.status == StatusCode::OK => {
                            t.acknowledged += 1;
                            if keep_uuids {
                                let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
                                t.uuids.push(v["response"]["uuid"].as_str().unwrap_or("?").to_owned());
                            }
                            if let Some(h) = t.latency.as_mut() {
                                let _ = h.record(sent.elapsed().as_micros() as u64);
                            }
                        }
                        Ok(a) if a.status == StatusCode::SERVICE_UNAVAILABLE => t.rejected += 1,
                        Err(_) if until_gone => break,
                        _ => t.errors += 1,
                    }
                }
                t
            })
        })
        .collect();
    let mut total = Tally { latency: Histogram::new(3).ok(), ..Tally::default() };
    for task in tasks {
        let t = task.await?;
        total.acknowledged += t.acknowledged;
        total.rejected += t.rejected;
        total.errors += t.errors;
        total.uuids.extend(t.uuids);
        if let (Some(a), Some(b)) = (total.latency.as_mut(), t.latency.as_ref()) {
            let _ = a.add(b);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (p50, p99) = total.latency.as_ref().map_or((0, 0), |h| (h.value_at_quantile(0.5), h.value_at_quantile(0.99)));
    println!(
        "SENDBENCH acknowledged={} rejected_503={} errors={} seconds={secs:.3} rps={:.0} p50_us={p50} p99_us={p99}",
        total.acknowledged,
        total.rejected,
        total.errors,
        total.acknowledged as f64 / secs
    );
    if let Some(path) = &args.acked_file {
        let mut text = total.uuids.join("\n");
        text.push('\n');
        std::fs::write(path, text)?;
    }
    if total.errors > 0 {
        bail!("{} requests failed", total.errors);
    }
    Ok(())
}
