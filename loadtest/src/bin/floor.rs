//! The floor: a bare hyper 1.x server on chatbus's own stack (tokio multi-thread runtime,
//! hyper http1 with keep-alive, TCP_NODELAY, mimalloc) that answers every request with the
//! same fixed bytes. Given the bytes chatbus answers in a scenario, it is the ceiling chatbus
//! can reach on this machine: everything but chatbus's own work.
//!
//! ```text
//! floor --listen 127.0.0.1:18081 --threads 1 --body-file out/poll10.body \
//!       --header 'Access-Control-Allow-Origin: *'
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A bare hyper server answering every request with fixed bytes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: SocketAddr,
    /// Runtime worker threads (match chatbus's `--threads`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The answer body, byte for byte.
    #[arg(long, conflicts_with = "size")]
    body_file: Option<PathBuf>,
    /// Or an answer body of this many bytes (a JSON string padded with `x`).
    #[arg(long)]
    size: Option<usize>,
    /// Answer headers, `Name: value`, repeatable. Defaults to chatbus's two:
    /// `Content-Type: application/json; charset=utf-8` and `Access-Control-Allow-Origin: *`.
    #[arg(long = "header")]
    headers: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let body = match (&args.body_file, args.size) {
        (Some(path), _) => Bytes::from(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        (None, Some(n)) => padded_json(n),
        (None, None) => bail!("give --body-file or --size"),
    };
    let mut headers = Vec::new();
    let given: Vec<&str> = if args.headers.is_empty() {
        vec!["Content-Type: application/json; charset=utf-8", "Access-Control-Allow-Origin: *"]
    } else {
        args.headers.iter().map(String::as_str).collect()
    };
    for line in given {
        let (name, value) = line.split_once(':').with_context(|| format!("header {line:?}: want `Name: value`"))?;
        headers.push((HeaderName::try_from(name.trim())?, HeaderValue::try_from(value.trim())?));
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    // The accept loop runs as a task on the workers, as chatbus's does, not on the main thread.
    runtime.block_on(async move { tokio::spawn(serve(args.listen, body, headers)).await? })
}

/// `n` bytes of valid JSON: `"xxx…"`.
fn padded_json(n: usize) -> Bytes {
    let n = n.max(2);
    let mut v = vec![b'x'; n];
    v[0] = b'"';
    v[n - 1] = b'"';
    Bytes::from(v)
}

async fn serve(addr: SocketAddr, body: Bytes, headers: Vec<(HeaderName, HeaderValue)>) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    eprintln!("floor: listening on {addr}, answering {} bytes", body.len());
    let mut header_map = hyper::HeaderMap::new();
    header_map.extend(headers);
    // Built per request from shared parts, as any server builds its answers
    // (`Response` is not `Clone`; `Bytes` and `HeaderMap` clone cheaply).
    let answer = Arc::new((body, header_map));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Out of descriptors and the like: keep serving the connections we have.
                Err(e) => { eprintln!("floor: accept: {e}"); continue; }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = answer.clone();
                async move {
                    // Read the request body as chatbus must (the send scenario POSTs JSON).
                    let _ = req.into_body().collect().await;
                    let mut response = Response::new(Full::new(answer.0.clone()));
                    *response.headers_mut() = answer.1.clone();
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
