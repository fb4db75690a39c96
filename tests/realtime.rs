//! Real-time delivery (README, "Real-time delivery"): long-poll and Server-Sent Events on the
//! same cursor as polling — woken by a push into the mailbox and nothing else, `wait` expiry, a
//! session closed while held, a graceful stop with requests held, a slow stream reader overrun
//! by the ring, and exactly-once delivery to a client that keeps switching transports.

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::client::{err, Api};
use support::contract::uuid_of;
use support::server::TestServer;
use support::timestamp::{created, cursor_path, unix_nano};
use support::wait::wait_until;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Users `a`, `b`, `c`, each with a session.
async fn three(api: &Api) -> ([i64; 3], [String; 3]) {
    let ids = [api.user("a").await, api.user("b").await, api.user("c").await];
    let sessions = [api.session(ids[0]).await, api.session(ids[1]).await, api.session(ids[2]).await];
    (ids, sessions)
}

/// A held poll is answered by a push into its mailbox — not by pushes into other mailboxes —
/// with exactly what a plain poll would answer; with nothing, when `wait` passes, `[]` and the
/// cutoff as cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_poll_is_woken_by_its_mailbox_only_and_expires() {
    let srv = TestServer::sqlite(&[]).await;
    let api = srv.api();
    let ([a, b, _], [sa, sb, sc]) = three(&api).await;
    let first = api.send(&sa, b, "before").await;
    let after = support::timestamp::after(&sb, created(&first));

    // Expiry: nothing for b after `first` for 600 ms.
    let started = Instant::now();
    let (meta, msgs) = api.poll(&format!("{after}?wait=600ms")).await;
    let held = started.elapsed();
    assert!(msgs.is_empty(), "{msgs:?}");
    assert!(held >= Duration::from_millis(590), "answered after {held:?}, before the wait passed");
    assert_eq!(meta["cursor"], support::timestamp::cursor(created(&first)), "the cutoff as cursor");

    // Pushes into other mailboxes do not answer it; one into b's does, at once.
    let held_poll = tokio::spawn({
        let (api, path) = (api.clone(), format!("{after}?wait=20s"));
        async move {
            let started = Instant::now();
            let answer = api.poll(&path).await;
            (answer, started.elapsed())
        }
    });
    wait_until("the poll to be held", Duration::from_secs(10), || async {
        api.get("/metrics").await.text().contains("chatbus_waiting_polls 1")
    })
    .await;
    for i in 0..20 {
        api.send(&sc, a, &format!("elsewhere {i}")).await; // into a's and c's mailboxes
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held_poll.is_finished(), "woken by a push into another mailbox");
    let m = api.send(&sc, b, "for b").await;
    let ((meta, msgs), took) = held_poll.await.unwrap();
    assert_eq!(msgs, vec![m.clone()]);
    assert_eq!(meta, json!({"http_code": 200, "cursor": support::timestamp::cursor(created(&m)), "gap": false}));
    assert!(took < Duration::from_secs(10), "{took:?}");
    // It answers at once when there is already something after the cutoff.
    let started = Instant::now();
    assert_eq!(api.poll(&format!("{after}?wait=20s")).await.1, vec![m]);
    assert!(started.elapsed() < Duration::from_secs(2));
    srv.stop().await;
}

/// `?wait=` forms, and the 400s naming `wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_is_parsed_and_bounded() {
    let srv = TestServer::sqlite(&["--max-wait", "2s"]).await;
    let api = srv.api();
    let a = api.user("a").await;
    let s = api.session(a).await;
    for w in ["0", "1", "300ms", "2s"] {
        let started = Instant::now();
        assert_eq!(api.get(&format!("/api/messages/{s}/1/0?wait={w}")).await.status, 200, "{w}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    for w in ["3s", "x", "-1", "1.5", ""] {
        err(&api.get(&format!("/api/messages/{s}/1/0?wait={w}")).await, 400, "wait");
    }
    // Precedence: an unknown session before a bad wait.
    err(&api.get(&format!("/api/messages/{}?wait=x", support::contract::NO_SESSION)).await, 404, "session");
    srv.stop().await;
}

/// A held poll whose session is closed answers 404; one whose session's user is deleted too.
/// While held, a session does not expire, however short its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_session_ends_a_held_poll_and_holding_keeps_it_alive() {
    let srv = TestServer::sqlite(&["--session-ttl", "1s"]).await;
    let api = srv.api();
    let a = api.user("a").await;
    let s = api.session(a).await;
    let held = tokio::spawn({
        let (api, path) = (api.clone(), format!("/api/messages/{s}?wait=30s"));
        async move { api.get(&path).await }
    });
    // Held for three TTLs: the session stays.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(!held.is_finished());
    assert_eq!(api.get(&format!("/api/contacts/{s}")).await.status, 200, "a held session does not expire");
    support::client::ok_plain(&api.delete(&format!("/api/session/{s}")).await);
    err(&tokio::time::timeout(Duration::from_secs(5), held).await.expect("answered").unwrap(), 404, "session");

    let s2 = api.session(a).await;
    let held = tokio::spawn({
        let (api, path) = (api.clone(), format!("/api/messages/{s2}?wait=30s"));
        async move { api.get(&path).await }
    });
    wait_until("the poll to be held", Duration::from_secs(10), || async {
        api.get("/metrics").await.text().contains("chatbus_waiting_polls 1")
    })
    .await;
    support::client::ok_plain(&api.delete(&format!("/api/user/{a}")).await);
    err(&tokio::time::timeout(Duration::from_secs(5), held).await.expect("answered").unwrap(), 404, "session");
    srv.stop().await;
}

/// A client that goes away while its long-poll is held ends the hold (the request future is
/// dropped with everything it held): the waiting gauge falls back to 0, and the session, no
/// longer kept alive by it, expires by its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_long_poll_whose_client_goes_away_ends_its_hold() {
    let srv = TestServer::sqlite(&["--session-ttl", "1s"]).await;
    let api = srv.api();
    let a = api.user("a").await;
    let s = api.session(a).await;
    let mut conn = TcpStream::connect(srv.addr()).await.expect("connect");
    let request = format!("GET /api/messages/{s}?wait=60s HTTP/1.1\r\nHost: chatbus\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("write");
    wait_until("the poll to be held", Duration::from_secs(10), || async {
        api.get("/metrics").await.text().contains("chatbus_waiting_polls 1")
    })
    .await;
    drop(conn);
    wait_until("the hold to end with its client", Duration::from_secs(10), || async {
        api.get("/metrics").await.text().contains("chatbus_waiting_polls 0")
    })
    .await;
    wait_until("the session to expire once nothing holds it", Duration::from_secs(10), || async {
        api.get(&format!("/api/contacts/{s}")).await.status == 404
    })
    .await;
    srv.stop().await;
}

/// A graceful stop answers held polls at once (200 with what they have) and ends streams, and
/// still completes within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_answers_held_polls_and_ends_streams() {
    let srv = TestServer::sqlite(&[]).await;
    let api = srv.api();
    let a = api.user("a").await;
    let s = api.session(a).await;
    let polls: Vec<_> = (0..50)
        .map(|_| {
            let (api, path) = (api.clone(), format!("/api/messages/{s}?wait=60s"));
            tokio::spawn(async move { api.get(&path).await })
        })
        .collect();
    let mut stream = Sse::open(&srv, &s, None).await;
    wait_until("the polls to be held", Duration::from_secs(10), || async {
        api.get("/metrics").await.text().contains("chatbus_waiting_polls 50")
    })
    .await;
    let started = Instant::now();
    let stopping = tokio::spawn(srv.stop());
    for p in polls {
        let r = tokio::time::timeout(Duration::from_secs(5), p).await.expect("answered at once").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.response(), &json!([]), "with what it has: nothing");
    }
    assert!(stream.next_event(Duration::from_secs(5)).await.is_none(), "the stream ended");
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("the stop completed").unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: Option<String>,
    kind: String,
    data: Value,
}

/// A raw SSE client: reads events line by line off the socket.
struct Sse {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
}

impl Sse {
    /// Opens `/api/stream/<session>` with `Last-Event-ID: last` when given, and checks the head.
    async fn open(srv: &TestServer, session: &str, last: Option<&str>) -> Self {
        Self::open_path(srv, &format!("/api/stream/{session}"), last, None).await
    }

    async fn open_path(srv: &TestServer, path: &str, last: Option<&str>, rcvbuf: Option<u32>) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(srv.addr()).await.unwrap();
        let last = last.map(|l| format!("Last-Event-ID: {l}\r\n")).unwrap_or_default();
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: chatbus\r\n{last}\r\n").as_bytes()).await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        let status = lines.next_line().await.unwrap().unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut headers = Vec::new();
        loop {
            let l = lines.next_line().await.unwrap().unwrap();
            if l.is_empty() {
                break;
            }
            headers.push(l.to_ascii_lowercase());
        }
        assert!(headers.contains(&"content-type: text/event-stream".to_owned()), "{headers:?}");
        assert!(headers.contains(&"access-control-allow-origin: *".to_owned()), "{headers:?}");
        assert!(headers.contains(&"transfer-encoding: chunked".to_owned()), "{headers:?}");
        Self { lines }
    }

    /// The next event (skipping `: ping` comments and chunk-size lines); `None` when the
    /// stream ended. Panics after `limit`.
    async fn next_event(&mut self, limit: Duration) -> Option<Event> {
        let (mut id, mut kind, mut data) = (None, None, None);
        loop {
            let line = tokio::time::timeout(limit, self.lines.next_line()).await.expect("an event in time").ok()??;
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).unwrap_or_else(|e| panic!("{e}: {v}")));
            } else if line.is_empty() {
                if let (Some(kind), Some(data)) = (kind.take(), data.take()) {
                    return Some(Event { id: id.take(), kind, data });
                }
            } else if line == "0" {
                return None; // the last chunk: the stream ended
            }
            // Otherwise a chunk size or a comment (`: ping`).
        }
    }
}

/// A stream from the start, then live messages; ids are the messages' cursors; a stream resumed
/// with `Last-Event-ID` continues exactly after it; a bad `Last-Event-ID` is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_delivers_in_order_and_resumes_with_last_event_id() {
    let srv = TestServer::sqlite(&["--heartbeat", "200ms"]).await;
    let api = srv.api();
    let ([_, b, _], [sa, sb, _]) = three(&api).await;
    let m1 = api.send(&sa, b, "one").await;
    let mut sse = Sse::open(&srv, &sb, None).await;
    let e = sse.next_event(Duration::from_secs(5)).await.unwrap();
    let (u, n) = unix_nano(created(&m1));
    assert_eq!(e, Event { id: Some(format!("{u}.{n:09}")), kind: "message".into(), data: m1.clone() });
    let m2 = api.send(&sa, b, "two").await;
    let e2 = sse.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e2.data, m2);
    drop(sse);
    let m3 = api.send(&sa, b, "three").await;
    let mut resumed = Sse::open(&srv, &sb, e2.id.as_deref()).await;
    assert_eq!(resumed.next_event(Duration::from_secs(5)).await.unwrap().data, m3, "exactly after the last id");
    // The path's cutoff works too; Last-Event-ID wins over it.
    let mut from_path = Sse::open_path(&srv, &format!("/api/stream/{sb}/{u}/{n}"), None, None).await;
    assert_eq!(from_path.next_event(Duration::from_secs(5)).await.unwrap().data, m2);
    for bad in ["1.5", "abc", "1471756932.0000000001"] {
        let r = api.request("GET", &format!("/api/stream/{sb}"), None, &[("last-event-id", bad)]).await;
        err(&r, 400, "Last-Event-ID");
    }
    err(&api.get(&format!("/api/stream/{}", support::contract::NO_SESSION)).await, 404, "session");
    err(&api.get(&format!("/api/stream/{sb}/x")).await, 400, "unix");
    srv.stop().await;
}

/// A reader that does not read while the ring (capacity 16) is overrun many times over gets an
/// `event: gap` before the messages that follow, never a duplicate or a reordering — and the
/// senders were never slowed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_reader_overrun_by_the_ring_gets_a_gap() {
    let srv = TestServer::sqlite(&["--mailbox-capacity", "16"]).await;
    let api = srv.api();
    let ([_, b, _], [sa, sb, _]) = three(&api).await;
    let mut sse = Sse::open_path(&srv, &format!("/api/stream/{sb}"), None, Some(4096)).await;
    let body = "x".repeat(1000);
    let mut sent = Vec::new();
    for _ in 0..3000 {
        sent.push(uuid_of(&api.send(&sa, b, &body).await));
    }
    let mut got = Vec::new();
    let mut gaps = 0;
    while got.last() != sent.last() {
        let e = sse.next_event(Duration::from_secs(10)).await.expect("the stream goes on");
        match e.kind.as_str() {
            "gap" => {
                gaps += 1;
                assert!(e.data["cursor"]["unix"].is_i64() && e.data["cursor"]["nano"].is_i64(), "{e:?}");
            }
            "message" => got.push(uuid_of(&e.data)),
            other => panic!("{other}"),
        }
    }
    assert!(gaps >= 1, "overrun without a gap");
    let index: std::collections::HashMap<&String, usize> = sent.iter().enumerate().map(|(i, u)| (u, i)).collect();
    let order: Vec<usize> = got.iter().map(|u| index[u]).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    assert!(got.len() < sent.len(), "the ring overran: {} of {}", got.len(), sent.len());
    srv.stop().await;
}

/// The client of a chat app that keeps switching transports — long-poll, SSE (resuming with
/// `Last-Event-ID`), WebSocket (resuming with `?cursor=`), plain polls — while 8 senders write:
/// every acknowledged message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_across_transports_under_eight_senders() {
    let srv = TestServer::sqlite(&["--mailbox-capacity", "65536"]).await;
    let api = srv.api();
    let rx = api.user("rx").await;
    let rx_session = api.session(rx).await;
    let party = support::load::Party::create(&api, "tx", 8).await;
    let senders: Vec<_> = party
        .senders
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (api, s) = (api.clone(), s.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..150 {
                    acked.push(uuid_of(&api.send(&s, rx, &format!("{i}/{n}")).await));
                }
                acked
            })
        })
        .collect();
    let mut seen: Vec<Value> = Vec::new();
    let mut cursor = json!({"unix": 0, "nano": 0});
    let total = 8 * 150;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut round = 0;
    while seen.len() < total {
        assert!(Instant::now() < deadline, "only {} of {total}", seen.len());
        round += 1;
        let path = cursor_path(&rx_session, &cursor);
        match round % 4 {
            3 => {
                let mut ws = ws_connect(
                    &srv,
                    &format!("/api/ws/{rx_session}?cursor={}.{:09}", cursor["unix"], cursor["nano"].as_i64().unwrap()),
                )
                .await;
                for _ in 0..40 {
                    let Ok(f) = ws_next(&mut ws, Duration::from_secs(10)).await else { break };
                    assert_eq!(f["type"], "message", "no gap: the mailbox holds everything");
                    assert_eq!(f["cursor"], support::timestamp::cursor(created(&f["message"])));
                    cursor = f["cursor"].clone();
                    seen.push(f["message"].clone());
                    if seen.len() == total {
                        break;
                    }
                }
                let _ = ws.close(None).await;
            }
            0 => {
                let (meta, msgs) = api.poll(&format!("{path}?wait=2s")).await;
                seen.extend(msgs);
                cursor = meta["cursor"].clone();
            }
            1 => {
                let (meta, msgs) = api.poll(&path).await;
                seen.extend(msgs);
                cursor = meta["cursor"].clone();
            }
            _ => {
                let last = format!("{}.{:09}", cursor["unix"], cursor["nano"].as_i64().unwrap());
                let mut sse = Sse::open(&srv, &rx_session, Some(&last)).await;
                for _ in 0..40 {
                    let Some(e) = sse.next_event(Duration::from_secs(10)).await else { break };
                    assert_eq!(e.kind, "message", "no gap: the mailbox holds everything");
                    let (u, n) = unix_nano(created(&e.data));
                    cursor = json!({"unix": u, "nano": n});
                    seen.push(e.data);
                    if seen.len() == total {
                        break;
                    }
                }
            }
        }
    }
    let mut acked = HashSet::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    let uuids: Vec<String> = seen.iter().map(uuid_of).collect();
    let unique: HashSet<&String> = uuids.iter().collect();
    assert_eq!(unique.len(), uuids.len(), "a message twice");
    assert_eq!(unique.len(), acked.len(), "every acknowledged message");
    assert!(uuids.iter().all(|u| acked.contains(u)));
    let times: Vec<i128> = seen.iter().map(created).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "in order");
    srv.stop().await;
}

// ---- WebSocket ---------------------------------------------------------------------------------

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(srv: &TestServer, path: &str) -> Ws {
    let (ws, res) = tokio_tungstenite::connect_async(format!("ws://{}{path}", srv.addr())).await.expect("upgrade");
    assert_eq!(res.status(), 101);
    ws
}

/// The next JSON frame (answering pings meanwhile); `Err(close code)` when the server closed.
async fn ws_next(ws: &mut Ws, limit: Duration) -> Result<Value, Option<u16>> {
    loop {
        match tokio::time::timeout(limit, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).expect("JSON frame")),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Messages from the cursor and live, sends over the socket with their `ref`, and every kind of
/// bad frame answered with an `error` frame — the socket stays open through all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_delivers_sends_and_answers_bad_frames() {
    let srv = TestServer::sqlite(&[]).await;
    let api = srv.api();
    let ([a, b, _], [sa, sb, _]) = three(&api).await;
    let m1 = api.send(&sa, b, "one").await;
    let m2 = api.send(&sa, b, "two").await;
    let (u, n) = unix_nano(created(&m1));
    let mut ws = ws_connect(&srv, &format!("/api/ws/{sb}?cursor={u}.{n:09}")).await;
    let f = ws_next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(f, json!({"type": "message", "cursor": support::timestamp::cursor(created(&m2)), "message": m2}));
    let m3 = api.send(&sa, b, "three, live").await;
    assert_eq!(ws_next(&mut ws, Duration::from_secs(5)).await.unwrap()["message"], m3);

    // A send over the socket: the answer carries the ref and the stored message, which also
    // arrives as a message frame (senders see their own messages) and in a's mailbox.
    ws.send(Message::text(json!({"type": "send", "ref": "c-17", "receiver_id": a, "body": "hi"}).to_string()))
        .await
        .unwrap();
    let mut frames = [
        ws_next(&mut ws, Duration::from_secs(5)).await.unwrap(),
        ws_next(&mut ws, Duration::from_secs(5)).await.unwrap(),
    ];
    frames.sort_by_key(|f| f["type"].as_str().unwrap().to_owned());
    assert_eq!(frames[1]["type"], "sent");
    assert_eq!(frames[1]["ref"], "c-17");
    let sent = frames[1]["message"].clone();
    assert_eq!((&sent["sender_id"], &sent["receiver_id"], &sent["body"]), (&json!(b), &json!(a), &json!("hi")));
    assert_eq!(
        frames[0],
        json!({"type": "message", "cursor": support::timestamp::cursor(created(&sent)), "message": sent})
    );
    assert_eq!(api.poll(&format!("/api/messages/{sa}")).await.1.last(), Some(&sent));

    for (frame, reference, code, word) in [
        (
            json!({"type": "send", "ref": "c-18", "receiver_id": a, "body": "x".repeat(1025)}).to_string(),
            json!("c-18"),
            400,
            "body",
        ),
        (
            json!({"type": "send", "ref": "c-19", "receiver_id": 987_654, "body": "x"}).to_string(),
            json!("c-19"),
            400,
            "receiver_id",
        ),
        (json!({"type": "send", "ref": "c-20"}).to_string(), json!("c-20"), 400, "receiver_id"),
        (json!({"type": "dance", "ref": "c-21"}).to_string(), json!("c-21"), 400, "type"),
        (json!({"ref": "c-22"}).to_string(), json!("c-22"), 400, "type"),
        ("{not json".to_owned(), Value::Null, 400, "JSON"),
        ("[1, 2]".to_owned(), Value::Null, 400, "object"),
    ] {
        ws.send(Message::text(frame.clone())).await.unwrap();
        let e = ws_next(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (&e["type"], &e["ref"], &e["http_code"]),
            (&json!("error"), &reference, &json!(code)),
            "{frame}: {e}"
        );
        assert!(e["message"].as_str().unwrap().contains(word), "{frame}: {e}");
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(ws_next(&mut ws, Duration::from_secs(5)).await.unwrap()["http_code"], 400);
    // Still open and delivering.
    let m4 = api.send(&sa, b, "after the errors").await;
    assert_eq!(ws_next(&mut ws, Duration::from_secs(5)).await.unwrap()["message"], m4);
    ws.close(None).await.unwrap();
    srv.stop().await;
}

/// Before the upgrade, errors are ordinary enveloped answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_errors_before_the_upgrade_are_enveloped() {
    let srv = TestServer::sqlite(&[]).await;
    let api = srv.api();
    let a = api.user("a").await;
    let s = api.session(a).await;
    let r = api.get(&format!("/api/ws/{s}")).await;
    err(&r, 426, "upgrade");
    assert_eq!(r.header("upgrade"), Some("websocket"));
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    err(
        &api.request("GET", &format!("/api/ws/{}", support::contract::NO_SESSION), None, &upgrade).await,
        404,
        "session",
    );
    err(&api.request("GET", &format!("/api/ws/{s}?cursor=1.5"), None, &upgrade).await, 400, "cursor");
    srv.stop().await;
}

/// A frame over 64 KiB closes with 1009; a closed session closes with 1000; a stop with 1001; a
/// peer that stops answering pings is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closes_with_the_contracts_codes() {
    let srv = TestServer::sqlite(&["--heartbeat", "300ms"]).await;
    let api = srv.api();
    let a = api.user("a").await;
    let s = api.session(a).await;
    /// Reads frames until the close; returns its code.
    async fn close_code(ws: &mut Ws) -> Option<u16> {
        loop {
            match ws_next(ws, Duration::from_secs(5)).await {
                Ok(_) => {}
                Err(code) => return code,
            }
        }
    }
    let open_sockets = || {
        let api = api.clone();
        async move {
            let m = api.get("/metrics").await.text();
            m.lines().find_map(|l| l.strip_prefix("chatbus_open_sockets ")).map(|v| v.trim().parse::<i64>().unwrap())
        }
    };

    let mut ws = ws_connect(&srv, &format!("/api/ws/{s}")).await;
    ws.send(Message::text("x".repeat(64 * 1024 + 1))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(u16::from(CloseCode::Size)), "over 64 KiB: 1009");

    let mut ws = ws_connect(&srv, &format!("/api/ws/{s}")).await;
    let text64 = json!({"type": "send", "ref": "r", "receiver_id": a, "body": "y", "pad": "z".repeat(64 * 1024 - 80)})
        .to_string();
    assert!(text64.len() <= 64 * 1024);
    ws.send(Message::text(text64)).await.unwrap();
    let mut kinds = HashSet::new();
    while kinds.len() < 2 {
        kinds.insert(ws_next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"].as_str().unwrap().to_owned());
    }
    assert!(kinds.contains("sent"), "64 KiB is allowed: {kinds:?}");

    support::client::ok_plain(&api.delete(&format!("/api/session/{s}")).await);
    assert_eq!(close_code(&mut ws).await, Some(u16::from(CloseCode::Normal)), "session closed: 1000");
    wait_until("no socket open", Duration::from_secs(10), || async { open_sockets().await == Some(0) }).await;

    // A peer that reads nothing answers no ping: closed after about two heartbeats.
    let s2 = api.session(a).await;
    let silent = ws_connect(&srv, &format!("/api/ws/{s2}")).await;
    let started = Instant::now();
    wait_until("the socket to open", Duration::from_secs(10), || async { open_sockets().await == Some(1) }).await;
    wait_until("the silent peer to be closed", Duration::from_secs(10), || async { open_sockets().await == Some(0) })
        .await;
    assert!(started.elapsed() >= Duration::from_millis(550), "closed after {:?}", started.elapsed());
    drop(silent);

    let s3 = api.session(a).await;
    let mut ws = ws_connect(&srv, &format!("/api/ws/{s3}")).await;
    wait_until("the socket to open", Duration::from_secs(10), || async { open_sockets().await == Some(1) }).await;
    let stopping = tokio::spawn(srv.stop());
    assert_eq!(close_code(&mut ws).await, Some(u16::from(CloseCode::Away)), "server stopping: 1001");
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("the stop completed").unwrap();
}

/// An open event stream is a request in flight for as long as it is open: the idle watch (which
/// closes connections that start no request for a whole period) must not cut it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_the_idle_timeout() {
    let store = support::store::TestStore::sqlite();
    let mut cfg = support::server::config(store.url(), &["--heartbeat", "100ms"]);
    cfg.idle_timeout = Duration::from_millis(200);
    let srv = TestServer::start(&cfg).await;
    let api = srv.api();
    let ([_, b, _], [sa, sb, _]) = three(&api).await;
    let mut sse = Sse::open(&srv, &sb, None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // seven idle periods
    let m = api.send(&sa, b, "still there").await;
    assert_eq!(sse.next_event(Duration::from_secs(5)).await.expect("the stream is still open").data, m);
    srv.stop().await;
}

/// A stream whose client went away ends at once — not at its next heartbeat — and lets go of its
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_client_goes() {
    let srv = TestServer::sqlite(&["--heartbeat", "60s"]).await;
    let api = srv.api();
    let ([_, _, _], [_, sb, _]) = three(&api).await;
    let open_streams = || {
        let api = api.clone();
        async move { api.get("/metrics").await.text().contains("chatbus_open_streams 1") }
    };
    let sse = Sse::open(&srv, &sb, None).await;
    wait_until("the stream to open", Duration::from_secs(10), open_streams).await;
    drop(sse);
    let started = Instant::now();
    wait_until("the stream to end", Duration::from_secs(10), || async {
        api.get("/metrics").await.text().contains("chatbus_open_streams 0")
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    srv.stop().await;
}
