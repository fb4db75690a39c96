//! The push transports' receivers: a user's long-poll loop ([`long_poller`]), its Server-Sent
//! Events stream ([`sse_user`]) and its WebSocket ([`ws_user`], which also carries its sends).
//!
//! Each holds one connection of its own for as long as the run wants it: a held long-poll, a
//! stream, a socket. A stream or socket that ends before the run does is counted as a drop and
//! reopened from where it was (`Last-Event-ID`, `?cursor=`), so a drop costs latency, never a
//! message; the checks then tell whether the server resumed exactly.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use chatbus_loadtest::api::{Cursor, Message};
use chatbus_loadtest::client::Api;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::world::{parse_body, Outgoing, SendState, World};

/// Where the streams and sockets connect.
pub(crate) struct Target {
    /// `host:port`, for the TCP connect.
    authority: String,
    /// The `Host` header.
    host: String,
}

impl Target {
    /// Every URL of `--url` (`http://host[:port]`, comma-separated for a cluster's nodes).
    pub(crate) fn parse_all(urls: &str) -> Result<Vec<Target>> {
        urls.split(',').map(|u| Target::parse(u.trim())).collect()
    }

    /// From one URL of `--url` (`http://host[:port]`).
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("--url {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--url {url:?}: only http:// (the kit only targets loopback, without TLS)");
        }
        let authority = uri.authority().ok_or_else(|| anyhow!("--url {url:?}: no host"))?;
        Ok(Target {
            authority: format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80)),
            host: authority.as_str().to_owned(),
        })
    }
}

/// What every stream and socket task shares besides the world.
pub(crate) struct Dial {
    /// Where to connect: each connection goes to the next (a cluster's nodes in turn, so a
    /// reconnecting stream resumes on another node).
    pub(crate) targets: Vec<Target>,
    pub(crate) next: std::sync::atomic::AtomicUsize,
    /// Bounds the connects and handshakes in flight (`--connections`), so 10,000 users do not
    /// overflow the server's accept backlog at once.
    pub(crate) handshakes: Semaphore,
    /// Bound on one connect and handshake (`--timeout`).
    pub(crate) timeout: Duration,
}

impl Dial {
    /// The target the next connection goes to.
    fn pick(&self) -> &Target {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.targets[n % self.targets.len()]
    }

    /// A TCP connection to `target` with `TCP_NODELAY` (a chat message is one small write).
    async fn tcp(&self, target: &Target) -> Result<TcpStream> {
        let tcp = TcpStream::connect(&target.authority)
            .await
            .with_context(|| format!("connecting to {}", target.authority))?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

/// Waits `d`, or less if the run stops meanwhile; true when it stopped.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// The pause before reopening after the `n`th failure in a row: 100 ms doubling to 2 s.
fn backoff(n: u32) -> Duration {
    Duration::from_millis(100u64 << n.min(4)).min(Duration::from_secs(2))
}

/// What [`open_or_back_off`] gives: the opened stream or socket, or why not.
enum Opened<T> {
    Open(T),
    /// It failed (counted and reported); the pause is over: try again.
    Retry,
    /// The run stopped.
    Stop,
}

/// Opens an event stream or WebSocket with `open`, under a handshake permit and `--timeout`. A
/// failure is counted (`poll_errors`), reported (`what` names it, `no_answer` is the message for
/// a timeout) and followed by the backoff of the `failures`th failure in a row; `failures` is
/// reset by a success.
async fn open_or_back_off<T>(
    world: &World,
    dial: &Dial,
    stop: &mut watch::Receiver<bool>,
    failures: &mut u32,
    open: impl std::future::Future<Output = Result<T>>,
    what: &'static str,
    no_answer: impl FnOnce() -> String,
) -> Opened<T> {
    let opened = {
        let _permit = dial.handshakes.acquire().await.expect("never closed");
        tokio::select! {
            opened = tokio::time::timeout(dial.timeout, open) => opened,
            _ = stop.changed() => return Opened::Stop,
        }
    };
    match opened {
        Ok(Ok(opened)) => {
            *failures = 0;
            Opened::Open(opened)
        }
        failed => {
            world.c.poll_errors.fetch_add(1, Relaxed);
            world.error(match failed {
                Ok(Err(e)) => e.context(what),
                _ => anyhow!(no_answer()),
            });
            if pause(backoff(*failures), stop).await {
                return Opened::Stop;
            }
            *failures += 1;
            Opened::Retry
        }
    }
}

// --- long-poll ---------------------------------------------------------------------------------

/// User `me`'s long-poll loop: `GET .../:unix/:nano?wait=W` with the cursor, again as soon as
/// the answer came. `api` must allow one request in flight per user and time out after `wait`.
///
/// The first poll does not wait, and at most `--connections` of them are in flight at once:
/// it opens the connection the user's long-polls then keep using, so 10,000 users do not
/// connect at once (the server's accept backlog would overflow, and the connects wait for SYN
/// retries, a second or more, which the first deliveries would count as latency).
pub(crate) async fn long_poller(
    world: Arc<World>,
    api: Api,
    dial: Arc<Dial>,
    me: u32,
    wait: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let session = world.users[me as usize].session.clone();
    let mut cutoff = Cursor::ZERO;
    let mut last_seq = HashMap::new();
    let mut failures = 0;
    let mut connected = false;
    loop {
        let t = Instant::now();
        let answer = if connected {
            tokio::select! {
                answer = api.long_poll(&session, cutoff, Some(wait)) => answer,
                _ = stop.changed() => return,
            }
        } else {
            let _permit = dial.handshakes.acquire().await.expect("never closed");
            tokio::select! {
                answer = api.long_poll(&session, cutoff, None) => answer,
                _ = stop.changed() => return,
            }
        };
        // The connecting poll is checked, but neither counted nor timed with the long-polls: it
        // comes before the run, and is not held.
        let long = connected;
        if answer.is_ok() && !connected {
            connected = true;
            world.c.ready.fetch_add(1, Relaxed);
        }
        let now_ns = world.now_ns();
        match answer {
            Ok(poll) => {
                failures = 0;
                if long {
                    world.c.polls.fetch_add(1, Relaxed);
                    let _ = world.poll_us.lock().unwrap().record((t.elapsed().as_micros() as u64).max(1));
                }
                cutoff = world.check(me, cutoff, &poll, now_ns, &mut last_seq);
            }
            Err(e) => {
                world.c.poll_errors.fetch_add(1, Relaxed);
                world.error(e);
                if pause(backoff(failures), &mut stop).await {
                    return;
                }
                failures += 1;
            }
        }
    }
}

/// Counts a stream or socket just opened, and its user as ready the first time.
fn count_open(world: &World, once: &mut bool) {
    world.c.streams_opened.fetch_add(1, Relaxed);
    world.c.streams_open.fetch_add(1, Relaxed);
    if !std::mem::replace(once, true) {
        world.c.ready.fetch_add(1, Relaxed);
    }
}

// --- Server-Sent Events ------------------------------------------------------------------------

/// One event of a `text/event-stream`, as far as chatsim reads them.
#[derive(Debug, PartialEq)]
enum Event {
    /// An event with data: its `event:` name (`message` when absent), its `id:` (this event's
    /// own, not the last one seen), its data lines joined with `\n`.
    Data { name: String, id: Option<String>, data: String },
    /// A `:` comment line (the server's `: ping`).
    Comment,
}

/// An incremental `text/event-stream` parser: bytes in, whole events out (lines end with LF,
/// CRLF being taken as LF; a blank line ends an event).
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    name: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(n) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buf[start..start + n];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start += n + 1;
            self.line(&line, out);
        }
        self.buf.drain(..start);
    }

    fn line(&mut self, line: &str, out: &mut Vec<Event>) {
        if line.is_empty() {
            let (name, id, data) = (self.name.take(), self.id.take(), self.data.take());
            if let Some(data) = data {
                out.push(Event::Data { name: name.unwrap_or_else(|| "message".into()), id, data });
            }
            return;
        }
        if line.starts_with(':') {
            out.push(Event::Comment);
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.name = Some(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {} // retry, and fields the spec says to ignore
        }
    }
}

/// An open stream: its body, and the task driving its connection (stopped when dropped).
struct Stream {
    body: Incoming,
    driver: JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// `GET /api/stream/:session` on a connection of its own, from `last_event_id` if any.
async fn open_stream(dial: &Dial, session: &str, last_event_id: Option<&str>) -> Result<Stream> {
    let path = format!("/api/stream/{session}");
    let target = dial.pick();
    let tcp = dial.tcp(target).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::get(&path).header(HOST, &target.host).header(ACCEPT, "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = send.send_request(req.body(Empty::<Bytes>::new())?).await.with_context(|| format!("GET {path}"))?;
    let status = res.status();
    if status != StatusCode::OK {
        let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        driver.abort();
        bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
    }
    Ok(Stream { body: res.into_body(), driver })
}

/// User `me`'s Server-Sent Events stream: opened once, read until the run stops; reopened with
/// `Last-Event-ID` (the last event id received) when it ends or breaks before that.
pub(crate) async fn sse_user(world: Arc<World>, dial: Arc<Dial>, me: u32, mut stop: watch::Receiver<bool>) {
    let session = world.users[me as usize].session.clone();
    let mut position: Option<Cursor> = None;
    let mut last_event_id: Option<String> = None;
    let mut last_seq = HashMap::new();
    let mut failures = 0;
    let mut opened_once = false;
    let mut events = Vec::new();
    loop {
        let open = open_stream(&dial, &session, last_event_id.as_deref());
        let no_answer = || format!("GET /api/stream/{session}: no answer within {:?}", dial.timeout);
        let mut stream = match open_or_back_off(
            &world,
            &dial,
            &mut stop,
            &mut failures,
            open,
            "opening the event stream",
            no_answer,
        )
        .await
        {
            Opened::Open(stream) => stream,
            Opened::Retry => continue,
            Opened::Stop => return,
        };
        count_open(&world, &mut opened_once);
        let opened_at = Instant::now();
        let mut parser = SseParser::default();
        let ended = loop {
            let frame = tokio::select! {
                frame = stream.body.frame() => frame,
                _ = stop.changed() => {
                    world.c.streams_open.fetch_sub(1, Relaxed);
                    return;
                }
            };
            let data = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers
                },
                Some(Err(e)) => break anyhow!(e).context("reading the event stream"),
                None => break anyhow!("the server ended the event stream"),
            };
            let now_ns = world.now_ns();
            world.c.poll_bytes.fetch_add(data.len() as u64, Relaxed);
            parser.feed(&data, &mut events);
            for event in events.drain(..) {
                match event {
                    Event::Comment => {
                        world.c.pings.fetch_add(1, Relaxed);
                    }
                    Event::Data { name, id, data } => {
                        if id.is_some() {
                            last_event_id.clone_from(&id);
                        }
                        match name.as_str() {
                            "message" => match serde_json::from_str::<Message>(&data) {
                                Ok(m) => {
                                    let id = id.as_deref().and_then(Cursor::parse_event_id);
                                    position = world.check_event(me, position, id, &m, now_ns, &mut last_seq);
                                }
                                Err(e) => {
                                    world.c.corrupt.fetch_add(1, Relaxed);
                                    world.error(anyhow!(
                                        "event stream: a message event that is not a Message ({e}): {data:.200}"
                                    ));
                                }
                            },
                            "gap" => {
                                world.c.gaps.fetch_add(1, Relaxed);
                            }
                            other => {
                                world.c.corrupt.fetch_add(1, Relaxed);
                                world.error(anyhow!("event stream: unknown event {other:?}: {data:.200}"));
                            }
                        }
                    }
                }
            }
        };
        world.c.streams_open.fetch_sub(1, Relaxed);
        if *stop.borrow() {
            return;
        }
        world.c.stream_drops.fetch_add(1, Relaxed);
        let age = opened_at.elapsed().as_secs_f64();
        world.error(ended.context(format!("user {me}'s stream dropped {age:.1} s after it opened; reopening")));
        if pause(backoff(0), &mut stop).await {
            return;
        }
    }
}

// --- WebSocket ---------------------------------------------------------------------------------

/// A frame the server sends on `/api/ws/:session`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame {
    Message {
        cursor: Cursor,
        message: Message,
    },
    Gap {
        #[allow(dead_code)] // counted, not read
        cursor: Cursor,
    },
    Sent {
        #[serde(rename = "ref")]
        reference: String,
        message: Message,
    },
    Error {
        #[serde(rename = "ref", default)]
        reference: Option<String>,
        http_code: u16,
        message: String,
    },
}

/// The `ref` of outbox entry `seq`, and back.
fn reference(seq: usize) -> String {
    format!("c-{seq}")
}

fn parse_reference(r: &str) -> Option<usize> {
    r.strip_prefix("c-")?.parse().ok()
}

/// A `send` frame, as `POST /api/message` takes the same fields.
fn send_frame(o: &Outgoing) -> String {
    serde_json::json!({
        "type": "send", "ref": reference(o.seq), "receiver_id": o.receiver_id, "body": o.body, "attachments": null,
    })
    .to_string()
}

/// User `me`'s WebSocket: receives its `message` frames, writes the `send` frames its sender
/// task hands over, and settles each send by the `sent` or `error` frame with its `ref`. Opened
/// once, reopened with `?cursor=` (the last message frame's) when it ends or breaks before the
/// run does; sends written to a socket that broke before their answer count as failed.
pub(crate) async fn ws_user(
    world: Arc<World>,
    dial: Arc<Dial>,
    me: u32,
    mut outgoing: mpsc::Receiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
) {
    let session = world.users[me as usize].session.clone();
    let mut position: Option<Cursor> = None;
    let mut last_seq = HashMap::new();
    let mut failures = 0;
    let mut opened_once = false;
    let mut sending = true;
    let mut pending: HashSet<usize> = HashSet::new();
    loop {
        let path = match position {
            Some(p) => format!("/api/ws/{session}?cursor={}", p.event_id()),
            None => format!("/api/ws/{session}"),
        };
        let target = dial.pick();
        let url = format!("ws://{}{path}", target.host);
        let open = async {
            let tcp = dial.tcp(target).await?;
            let (ws, _) =
                tokio_tungstenite::client_async(url.as_str(), tcp).await.with_context(|| format!("GET {path}"))?;
            Ok::<_, anyhow::Error>(ws)
        };
        let no_answer = || format!("GET {path}: no upgrade within {:?}", dial.timeout);
        let mut ws =
            match open_or_back_off(&world, &dial, &mut stop, &mut failures, open, "opening the WebSocket", no_answer)
                .await
            {
                Opened::Open(ws) => ws,
                Opened::Retry => continue,
                Opened::Stop => return,
            };
        count_open(&world, &mut opened_once);
        let opened_at = Instant::now();
        let ended = loop {
            tokio::select! {
                _ = stop.changed() => {
                    world.c.streams_open.fetch_sub(1, Relaxed);
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return;
                }
                out = outgoing.recv(), if sending => match out {
                    Some(out) => {
                        pending.insert(out.seq);
                        if let Err(e) = ws.send(Frame::text(send_frame(&out))).await {
                            break anyhow!(e).context("writing a send frame");
                        }
                    }
                    None => sending = false,
                },
                frame = ws.next() => match frame {
                    Some(Ok(Frame::Text(text))) => {
                        let now_ns = world.now_ns();
                        world.c.poll_bytes.fetch_add(text.len() as u64, Relaxed);
                        on_frame(&world, me, text.as_str(), now_ns, &mut position, &mut pending, &mut last_seq);
                    }
                    Some(Ok(Frame::Ping(_))) => {
                        world.c.pings.fetch_add(1, Relaxed); // tungstenite answers it
                    }
                    Some(Ok(Frame::Close(close))) => break anyhow!("the server closed the socket: {close:?}"),
                    Some(Ok(other)) => {
                        if !matches!(other, Frame::Pong(_)) {
                            world.c.corrupt.fetch_add(1, Relaxed);
                            world.error(anyhow!("WebSocket: a frame that is not JSON text: {other:?}"));
                        }
                    }
                    Some(Err(e)) => break anyhow!(e).context("reading the WebSocket"),
                    None => break anyhow!("the socket ended"),
                },
            }
        };
        world.c.streams_open.fetch_sub(1, Relaxed);
        // Sends written to this socket and never answered: failed (a delivery still counts).
        for seq in pending.drain() {
            if world.settle(me, seq, SendState::Failed).is_some() {
                world.c.send_errors.fetch_add(1, Relaxed);
            }
        }
        if *stop.borrow() {
            return;
        }
        world.c.stream_drops.fetch_add(1, Relaxed);
        let age = opened_at.elapsed().as_secs_f64();
        world.error(ended.context(format!("user {me}'s socket dropped {age:.1} s after it opened; reopening")));
        if pause(backoff(0), &mut stop).await {
            return;
        }
    }
}

/// One text frame of user `me`'s socket.
fn on_frame(
    world: &World,
    me: u32,
    text: &str,
    now_ns: u64,
    position: &mut Option<Cursor>,
    pending: &mut HashSet<usize>,
    last_seq: &mut HashMap<u32, u64>,
) {
    let c = &world.c;
    let frame = match serde_json::from_str::<ServerFrame>(text) {
        Ok(frame) => frame,
        Err(e) => {
            c.corrupt.fetch_add(1, Relaxed);
            world.error(anyhow!("WebSocket: a frame chatsim does not know ({e}): {text:.200}"));
            return;
        }
    };
    match frame {
        ServerFrame::Message { cursor, message } => {
            *position = world.check_event(me, *position, Some(cursor), &message, now_ns, last_seq);
        }
        ServerFrame::Gap { .. } => {
            c.gaps.fetch_add(1, Relaxed);
        }
        ServerFrame::Sent { reference, message } => {
            let seq = parse_reference(&reference).filter(|seq| pending.remove(seq));
            // The stored message must be the one sent under that ref.
            let ours = seq.is_some_and(|seq| {
                message.sender_id == world.users[me as usize].id
                    && parse_body(&message.body).is_some_and(|(s, q, _)| s == me && q == seq as u64)
            });
            match seq.filter(|_| ours).and_then(|seq| world.settle(me, seq, SendState::Acked)) {
                Some(sent_ns) => {
                    c.sends_acked.fetch_add(1, Relaxed);
                    let _ = world.send_us.lock().unwrap().record((now_ns.saturating_sub(sent_ns) / 1000).max(1));
                }
                None => {
                    c.corrupt.fetch_add(1, Relaxed);
                    world.error(anyhow!("WebSocket: a sent frame that answers no send in flight: {text:.200}"));
                }
            }
        }
        ServerFrame::Error { reference, http_code, message } => {
            let seq = reference.as_deref().and_then(parse_reference).filter(|seq| pending.remove(seq));
            match seq {
                Some(seq) => {
                    c.send_errors.fetch_add(1, Relaxed);
                    world.settle(me, seq, SendState::Failed);
                }
                None => {
                    c.poll_errors.fetch_add(1, Relaxed);
                }
            }
            world.error(anyhow!("WebSocket: error frame (ref {reference:?}): {http_code} {message}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> Vec<Event> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk.as_bytes(), &mut out);
        }
        out
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream = "event: gap\ndata: {\"cursor\":{\"unix\":1,\"nano\":2}}\n\n: ping\n\n\
                      id: 1.000000005\nevent: message\ndata: {\"a\":1}\n\n";
        let want = vec![
            Event::Data { name: "gap".into(), id: None, data: "{\"cursor\":{\"unix\":1,\"nano\":2}}".into() },
            Event::Comment,
            Event::Data { name: "message".into(), id: Some("1.000000005".into()), data: "{\"a\":1}".into() },
        ];
        assert_eq!(parse(&[stream]), want);
        for cut in 1..stream.len() {
            assert_eq!(parse(&[&stream[..cut], &stream[cut..]]), want, "cut at {cut}");
        }
    }

    #[test]
    fn crlf_multi_line_data_and_unnamed_events() {
        let out = parse(&["data: a\r\ndata: b\r\n\r\nid: 7\n\nretry: 5\ndata:c\n\n"]);
        assert_eq!(
            out,
            vec![
                Event::Data { name: "message".into(), id: None, data: "a\nb".into() },
                Event::Data { name: "message".into(), id: None, data: "c".into() },
            ]
        );
    }

    #[test]
    fn frames_decode_as_the_contract_spells_them() {
        let m =
            r#"{"uuid":"u","created_utc":"2016-08-21T05:22:12.632474775Z","sender_id":1,"receiver_id":2,"body":"hi"}"#;
        let f: ServerFrame =
            serde_json::from_str(&format!(r#"{{"type":"message","cursor":{{"unix":1,"nano":2}},"message":{m}}}"#))
                .unwrap();
        assert!(matches!(f, ServerFrame::Message { cursor: Cursor { unix: 1, nano: 2 }, .. }));
        let f: ServerFrame = serde_json::from_str(&format!(r#"{{"type":"sent","ref":"c-17","message":{m}}}"#)).unwrap();
        assert!(matches!(f, ServerFrame::Sent { ref reference, .. } if parse_reference(reference) == Some(17)));
        let f: ServerFrame =
            serde_json::from_str(r#"{"type":"error","ref":"c-18","http_code":400,"message":"no"}"#).unwrap();
        assert!(matches!(f, ServerFrame::Error { http_code: 400, .. }));
        let f: ServerFrame = serde_json::from_str(r#"{"type":"gap","cursor":{"unix":1,"nano":2}}"#).unwrap();
        assert!(matches!(f, ServerFrame::Gap { .. }));
        let send: serde_json::Value =
            serde_json::from_str(&send_frame(&Outgoing { seq: 17, receiver_id: 2, body: "hi".into() })).unwrap();
        assert_eq!(
            send,
            serde_json::json!({"type":"send","ref":"c-17","receiver_id":2,"body":"hi","attachments":null})
        );
    }
}
