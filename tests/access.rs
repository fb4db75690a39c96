//! Access control and resource bounds (contract: the README's "Running in production" and
//! configuration): the admin token on every admin route, the refusal to listen openly, the send
//! rate, each capacity cap naming its flag, paging, the connection cap, and the open-file limit.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::binary::{run_to_error, Chatbus};
use support::client::{err, ok, ok_plain};
use support::contract::NO_SESSION;
use support::raw::{raw_get, RawConn};
use support::server::TestServer;
use support::wait::wait_until;

const TOKEN: &str = "s3cret-token";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Every admin route: 401 without the token or with another, with `WWW-Authenticate: Bearer`;
/// with it, what the route does. Session routes need no token; 404 and 405 come before 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token_and_session_routes_do_not() {
    let srv = TestServer::sqlite(&["--admin-token", TOKEN]).await;
    let api = srv.api();
    let good = bearer(TOKEN);
    let admin = |method: &'static str, path: String, body: Option<Value>| {
        let api = api.clone();
        let good = good.clone();
        async move {
            let body = body.map(|b| b.to_string().into_bytes());
            for auth in [None, Some("Bearer wrong-token"), Some("s3cret-token"), Some("Basic czNjcmV0")] {
                let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
                let r = api.request(method, &path, body.clone(), &headers).await;
                err(&r, 401, "authorization");
                assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{method} {path}");
            }
            api.request(method, &path, body, &[("authorization", &good)]).await
        }
    };
    let alice = ok(&admin("POST", "/api/user".into(), Some(json!({"uuid": "alice"}))).await);
    let a = alice["id"].as_i64().unwrap();
    let bob = ok(&admin("POST", "/api/users".into(), Some(json!({"uuid": "bob"}))).await);
    let b = bob["id"].as_i64().unwrap();
    assert_eq!(ok(&admin("GET", "/api/users".into(), None).await).as_array().unwrap().len(), 2);
    assert_eq!(ok(&admin("GET", format!("/api/user/{a}"), None).await), alice);
    assert_eq!(ok(&admin("GET", "/api/user.uuid/bob".into(), None).await), bob);
    ok(&admin("PUT", format!("/api/user/{a}"), Some(json!({"display_name": "A"}))).await);
    let session = ok(&admin("POST", format!("/api/session/{a}"), None).await);
    let s = session["uuid"].as_str().unwrap().to_owned();
    assert_eq!(ok(&admin("GET", "/api/sessions".into(), None).await).as_array().unwrap().len(), 1);

    // What a session does needs only its id.
    ok_plain(&api.post(&format!("/api/contact/{s}/{b}"), "").await);
    assert_eq!(ok(&api.get(&format!("/api/contacts/{s}")).await).as_array().unwrap().len(), 1);
    let m = api.send(&s, b, "no token needed").await;
    assert_eq!(api.poll(&format!("/api/messages/{s}")).await.1, vec![m]);
    ok_plain(&api.delete(&format!("/api/contact/{s}/{b}")).await);
    // Open routes.
    for path in ["/", "/healthz", "/readyz", "/metrics"] {
        assert_eq!(api.get(path).await.status, 200, "{path}");
    }
    assert_eq!(api.call("OPTIONS", "/api/users", None).await.status, 204);
    // Precedence: an unknown path and a wrong method before the token; the token before the body.
    assert_eq!(api.get("/api/userz").await.status, 404);
    assert_eq!(api.call("PATCH", "/api/users", None).await.status, 405);
    let big = vec![b' '; 70 * 1024];
    err(&api.fresh().request("POST", "/api/user", Some(big), &[]).await, 401, "authorization");
    ok_plain(&admin("DELETE", format!("/api/user/{b}"), None).await);
    ok_plain(&api.delete(&format!("/api/session/{s}")).await);
    srv.stop().await;
}

/// Without a token, chatbus listens openly only on loopback; anywhere else it refuses to start
/// with one line, unless `--open-admin` says that is intended (or a token is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_listener_needs_a_token_or_open_admin() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("db").display());
    let line = run_to_error(&["--listen", "0.0.0.0:0", "--database-url", &url]);
    assert!(line.contains("--admin-token") && line.contains("--open-admin"), "{line}");
    let port = support::binary::free_port();
    let listen = format!("0.0.0.0:{port}");
    for extra in [["--open-admin", ""], ["--admin-token", TOKEN]] {
        let mut args = vec!["--listen", &listen, "--database-url", &url];
        args.extend(extra.iter().filter(|a| !a.is_empty()));
        let mut bin = Chatbus::spawn_on(port, &args, &[]);
        bin.wait_up(Duration::from_secs(20)).await;
        bin.stop().await;
    }
    // The variable works as the flag does.
    let mut bin =
        Chatbus::spawn_on(port, &["--listen", &listen, "--database-url", &url], &[("CHATBUS_ADMIN_TOKEN", TOKEN)]);
    bin.wait_up(Duration::from_secs(20)).await;
    assert_eq!(bin.api().get("/api/users").await.status, 401);
    bin.stop().await;
}

/// `--send-rate N`: a bucket of N per session, refilled at N a second; past it 429 with
/// `Retry-After` in whole seconds (at least 1). Other sessions are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_the_rate_get_429_with_retry_after() {
    let srv = TestServer::sqlite(&["--send-rate", "2"]).await;
    let api = srv.api();
    let a = api.user("a").await;
    let b = api.user("b").await;
    let sa = api.session(a).await;
    let sb = api.session(b).await;
    // A bucket of 2, refilled at 2 a second: two sends pass, and a third within the half second
    // it takes to earn a token back is refused.
    let started = Instant::now();
    for _ in 0..2 {
        api.send(&sa, b, "within the rate").await;
    }
    let r = api.post(&format!("/api/message/{sa}"), json!({"receiver_id": b, "body": "one too many"})).await;
    assert!(started.elapsed() < Duration::from_millis(500), "three local requests took {:?}", started.elapsed());
    err(&r, 429, "--send-rate");
    assert_eq!(r.header("retry-after"), Some("1"), "whole seconds, at least 1: {}", r.text());
    api.send(&sb, a, "another session has its own bucket").await;
    // Bad input still wins over the rate (precedence), and the refused send changed nothing.
    err(&api.post(&format!("/api/message/{sa}"), json!({"receiver_id": b})).await, 400, "body");
    let (_, msgs) = api.poll(&format!("/api/messages/{sa}")).await;
    assert!(msgs.iter().all(|m| m["body"] != "one too many"), "a refused send is in no mailbox");
    // Once a token is back, sends go through again.
    wait_until("a token to come back", Duration::from_secs(5), || async {
        api.post(&format!("/api/message/{sa}"), json!({"receiver_id": b, "body": "later"})).await.status == 200
    })
    .await;
    srv.stop().await;
}

/// Each cap answers with its status and names its flag; below it, everything works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cap_answers_naming_its_flag() {
    let srv =
        TestServer::sqlite(&["--max-users", "3", "--max-sessions-per-user", "2", "--max-contacts-per-user", "1"]).await;
    let api = srv.api();
    let ids = [api.user("a").await, api.user("b").await, api.user("c").await];
    err(&api.post("/api/user", json!({"uuid": "d"})).await, 503, "--max-users");
    assert_eq!(api.user("a").await, ids[0], "an existing uuid is still answered at the cap");
    let s1 = api.session(ids[0]).await;
    api.session(ids[0]).await;
    err(&api.post(&format!("/api/session/{}", ids[0]), "").await, 429, "--max-sessions-per-user");
    ok_plain(&api.delete(&format!("/api/session/{s1}")).await);
    api.session(ids[0]).await; // a closed session frees its place
    let sb = api.session(ids[1]).await;
    ok_plain(&api.post(&format!("/api/contact/{sb}/{}", ids[0]), "").await);
    ok_plain(&api.post(&format!("/api/contact/{sb}/{}", ids[0]), "").await); // idempotent at the cap
    err(&api.post(&format!("/api/contact/{sb}/{}", ids[2]), "").await, 429, "--max-contacts-per-user");
    ok_plain(&api.delete(&format!("/api/user/{}", ids[2])).await);
    api.user("d").await; // a deleted user frees its place
    srv.stop().await;
}

/// `?limit=&after_id=` and `?limit=&after=` page through users (by id) and sessions (by uuid);
/// bad paging parameters are 400s naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_sessions_page() {
    let srv = TestServer::sqlite(&[]).await;
    let api = srv.api();
    let mut ids = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..7 {
        let id = api.user(&format!("u{i}")).await;
        ids.push(id);
        sessions.push(api.session(id).await);
    }
    ok_plain(&api.delete(&format!("/api/user/{}", ids[3])).await);
    ids.remove(3);
    sessions.remove(3);
    ok_plain(&api.delete(&format!("/api/session/{}", sessions[0])).await);
    sessions.remove(0);
    let page_ids = |v: Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|u| u["id"].as_i64().unwrap()).collect() };
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = page_ids(ok(&api.get(&format!("/api/users?limit=2&after_id={after}")).await));
        assert!(page.len() <= 2);
        let Some(&last) = page.last() else { break };
        seen.extend(page);
        after = last;
    }
    assert_eq!(seen, ids, "every user once, by id, across a deleted id");
    assert_eq!(page_ids(ok(&api.get("/api/users?after_id=0").await)), ids, "after_id alone: a full page");
    sessions.sort();
    let mut seen = Vec::new();
    let mut path = "/api/sessions?limit=4".to_owned();
    loop {
        let page: Vec<String> = ok(&api.get(&path).await)
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["uuid"].as_str().unwrap().to_owned())
            .collect();
        let Some(last) = page.last().cloned() else { break };
        seen.extend(page);
        path = format!("/api/sessions?limit=4&after={last}");
    }
    assert_eq!(seen, sessions, "every session once, in uuid order");
    for bad in ["limit=0", "limit=10001", "limit=x", "limit=-1"] {
        err(&api.get(&format!("/api/users?{bad}")).await, 400, "limit");
        err(&api.get(&format!("/api/sessions?{bad}")).await, 400, "limit");
    }
    err(&api.get("/api/users?after_id=x").await, 400, "after_id");
    err(&api.get("/api/sessions?after=xyz").await, 400, "after");
    // `after` need not be a live session: the page starts after it in uuid order.
    let expected: Vec<&String> = sessions.iter().filter(|s| s.as_str() > NO_SESSION).take(1).collect();
    let got = ok(&api.get(&format!("/api/sessions?after={NO_SESSION}&limit=1")).await);
    let got: Vec<&str> = got.as_array().unwrap().iter().map(|s| s["uuid"].as_str().unwrap()).collect();
    assert_eq!(got, expected.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    srv.stop().await;
}

/// The unpaginated forms answer up to 10,000 items and then say how to page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unpaginated_form_has_a_documented_bound() {
    let srv = TestServer::sqlite(&[]).await;
    let api = srv.api();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let api = api.clone();
            tokio::spawn(async move {
                for i in (t..10_001).step_by(8) {
                    api.user(&format!("user-{i}")).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let r = api.get("/api/users").await;
    err(&r, 400, "limit");
    assert!(r.message().contains("?limit=N&after_id=ID"), "{}", r.message());
    assert_eq!(ok(&api.get("/api/users?limit=10000").await).as_array().unwrap().len(), 10_000);
    srv.stop().await;
}

/// `--max-connections 2`: a third connection is answered 503 in the envelope and closed, the two
/// open ones are undisturbed, and once one closes a new connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_at_once() {
    let srv = TestServer::sqlite(&["--max-connections", "2"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = RawConn::connect(srv.addr()).await;
        c.write(raw_get("/healthz").as_bytes()).await.unwrap();
        assert_eq!(c.must_read().await.status, 200);
        held.push(c);
    }
    let mut third = RawConn::connect(srv.addr()).await;
    let r = third.must_read().await;
    assert_eq!(r.status, 503);
    let v = r.json();
    assert!(v["meta"]["message"].as_str().unwrap().contains("--max-connections"), "{v}");
    assert!(third.read_response().await.unwrap().is_none(), "and closed");
    for c in &mut held {
        c.write(raw_get("/healthz").as_bytes()).await.unwrap();
        assert_eq!(c.must_read().await.status, 200, "the open connections are undisturbed");
    }
    drop(held.pop());
    wait_until("a freed place to be taken", Duration::from_secs(10), || async {
        let mut c = RawConn::connect(srv.addr()).await;
        c.write(raw_get("/healthz").as_bytes()).await.is_ok()
            && c.read_response().await.ok().flatten().is_some_and(|r| r.status == 200)
    })
    .await;
    srv.stop().await;
}

/// With the open-file limit reached (a hard limit of 64 descriptors), held connections delay new
/// clients but do not stop them: once one closes, the waiting client is served. The failures to
/// accept meanwhile are logged at most once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_file_limit_a_waiting_client_is_served_once_a_descriptor_frees() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("db").display());
    let port = support::binary::free_port();
    let listen = format!("127.0.0.1:{port}");
    let exe = support::binary::EXE;
    let mut bin = Chatbus::spawn_program(
        "prlimit",
        &["--nofile=64:64", exe, "--listen", &listen, "--database-url", &url, "--threads", "2"],
        port,
        &[],
    );
    bin.wait_up(Duration::from_secs(20)).await;
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let mut held = Vec::new();
    // Open connections until one is not answered: the server is out of descriptors.
    let waiting = loop {
        assert!(held.len() < 200, "never ran out of descriptors");
        let mut c = RawConn::connect(addr).await;
        c.write(raw_get("/healthz").as_bytes()).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(500), c.read_response()).await {
            Ok(r) => {
                assert_eq!(r.unwrap().unwrap().status, 200);
                held.push(c);
            }
            Err(_) => break c,
        }
    };
    let blocked_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await; // failures pile up meanwhile
    drop(held.pop());
    let mut waiting = waiting;
    let r = tokio::time::timeout(Duration::from_secs(10), waiting.read_response())
        .await
        .expect("served once a descriptor freed")
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    let blocked_for = blocked_at.elapsed().as_secs_f64();
    drop(held);
    let (_, log) = bin.terminate().await;
    let warns = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(warns >= 1, "the failure was logged:\n{log}");
    assert!((warns as f64) <= blocked_for + 2.0, "{warns} WARN lines in {blocked_for:.1} s:\n{log}");
}
