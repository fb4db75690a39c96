//! Connection handling: a slow client cannot hold a connection forever.

mod common;

use common::TestServer;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let mut cfg = common::config("memory:", &[]);
    cfg.header_read_timeout = Duration::from_millis(500);
    let srv = TestServer::start(&cfg).await;
    let mut slow = tokio::net::TcpStream::connect(srv.server.local_addr()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // never the blank line
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // e.g. a 408 answer before the close
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after 10 s");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "closed before the timeout: {took:?}");
    // Meanwhile the server kept serving others.
    assert_eq!(srv.get("/healthz").await.0, 200);
    srv.stop().await;
}
