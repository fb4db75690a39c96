//! The request's own limits: a URI or a header block that is too large gets chatbus's enveloped
//! 414 or 431, with the CORS header, like every other answer; past hyper's own bounds (more than
//! 100 header fields, a request head over 64 KiB, a request line that is not HTTP) hyper answers
//! with a bare status and closes the connection — the limitation the README states. Both sides of
//! that line are checked here, so a change of either shows.

mod support;

use support::client::err;
use support::raw::{raw_get, RawConn};
use support::server::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_uri_or_large_headers_get_an_enveloped_answer() {
    let srv = TestServer::sqlite(&[]).await;
    let api = srv.api();
    let long = format!("/api/users?pad={}", "x".repeat(9 * 1024));
    err(&api.get(&long).await, 414, "URI");
    let just_fits = format!("/api/users?pad={}", "x".repeat(8 * 1024 - 20));
    assert_eq!(api.get(&just_fits).await.status, 200, "8 KiB of URI is fine");
    let pad = "y".repeat(33 * 1024);
    err(&api.fresh().request("GET", "/api/users", None, &[("x-pad", &pad)]).await, 431, "headers");
    let pad = "y".repeat(16 * 1024);
    assert_eq!(api.request("GET", "/api/users", None, &[("x-pad", &pad)]).await.status, 200, "16 KiB of headers");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_hypers_own_bounds_the_answer_is_bare() {
    let srv = TestServer::sqlite(&[]).await;
    // More than 100 header fields: hyper's 431, no envelope (hyper 1.x has no hook for it).
    let mut conn = RawConn::connect(srv.addr()).await;
    let mut req = String::from("GET /api/users HTTP/1.1\r\nHost: chatbus\r\n");
    for i in 0..120 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    conn.write(req.as_bytes()).await.unwrap();
    let r = conn.must_read().await;
    assert_eq!((r.status, r.body.len()), (431, 0), "hyper's own answer");
    // A request line that is not HTTP: hyper's 400.
    let mut conn = RawConn::connect(srv.addr()).await;
    conn.write(b"HELLO THERE\r\n\r\n").await.unwrap();
    let r = conn.must_read().await;
    assert_eq!((r.status, r.body.len()), (400, 0), "hyper's own answer");
    // The server is unharmed.
    let mut conn = RawConn::connect(srv.addr()).await;
    conn.write(raw_get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(conn.must_read().await.status, 200);
    srv.stop().await;
}
