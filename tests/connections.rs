//! Connection handling: a slow or idle client cannot hold a connection forever; a busy one keeps it.

mod support;

use std::time::{Duration, Instant};
use support::server::{config, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let mut cfg = config("memory:", &[]);
    cfg.idle_timeout = Duration::from_millis(500);
    let srv = TestServer::start(&cfg).await;
    let mut slow = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
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
    assert_eq!(srv.get("/healthz").await.status, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_stays_open_and_an_idle_one_is_closed() {
    let mut cfg = config("memory:", &[]);
    cfg.idle_timeout = Duration::from_millis(300);
    let srv = TestServer::start(&cfg).await;
    let mut conn = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    // Requests every 100 ms for well over two idle periods: the connection must stay.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0 && buf.starts_with(b"HTTP/1.1 200"), "closed while busy after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then idle: closed within two periods.
    let idle_since = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.expect("still open after 5 s");
    assert!(matches!(n, Ok(0) | Err(_)), "expected a close, got {n:?}");
    assert!(idle_since.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", idle_since.elapsed());
    srv.stop().await;
}
