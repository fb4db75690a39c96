//! `GET /api/stream/:session_id[/:unix[/:nano]]`: Server-Sent Events.
//!
//! The stream starts after the cutoff given by `Last-Event-ID` if present, else by the path,
//! else from the start of the mailbox, and sends every message after it, in order, as it
//! arrives — each as `id: <unix>.<nano>` (so a browser's `EventSource` resumes exactly),
//! `event: message`, `data: <the message's JSON>`. When messages after the stream's position
//! have left the mailbox (the rule of `meta.gap`, which also catches a reader too slow to keep
//! up with the ring) an `event: gap` with `{"cursor": …}` — the position when the loss was
//! found — comes before the messages that follow. A `: ping` comment goes out every
//! `--heartbeat` when there is nothing else. The stream ends when its session closes or the
//! server stops.
//!
//! One task per stream reads the mailbox through the lock-free path and waits in the engine (see
//! [`crate::engine::Engine::wait_for_message`]) — no thread, and no lock a sender could wait for.
//! Its chunks go to hyper through a small bounded channel: a slow client makes the task wait,
//! never a sender or the ring; when it catches up it reads on from its position, and whatever
//! the ring overwrote meanwhile is reported as a gap.

use super::error::ApiError;
use super::input;
use super::response::{respond, Body, HttpResponse};
use super::router::Seg;
use crate::clock::Cursor;
use crate::engine::{Engine, Hold, SessionId, Woken};
use crate::metrics::{Counted, Metrics};
use crate::render;
use bytes::{BufMut, Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Chunks queued for a slow client before the stream's task waits for it.
const QUEUED_CHUNKS: usize = 4;
/// Most messages framed into one chunk.
const MESSAGES_PER_CHUNK: usize = 256;

/// Answers the request: an enveloped error before the stream starts (unknown session, a bad
/// cutoff or `Last-Event-ID`), else `200 text/event-stream` fed by a task of its own.
pub fn open(
    engine: &Arc<Engine>,
    session: Seg<SessionId>,
    cutoff: Seg<Option<Cursor>>,
    headers: &HeaderMap,
    heartbeat: Duration,
    metrics: &Metrics,
) -> Result<HttpResponse, ApiError> {
    let session = engine.session(session?)?;
    let cutoff = cutoff?;
    let engine = engine.clone();
    let start = match headers.get("last-event-id") {
        Some(v) => Some(input::event_id(v.to_str().unwrap_or("(not visible ASCII)"))?),
        None => cutoff,
    };
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    // Held from now: the session does not expire while the stream is open.
    let hold = Hold::new(session);
    let counted = Counted::new(&metrics.open_streams);
    tokio::spawn(async move {
        run(engine, hold, start, tx, heartbeat).await;
        drop(counted);
    });
    let mut res = respond(StatusCode::OK, HeaderValue::from_static("text/event-stream"), Bytes::new());
    *res.body_mut() = Body::stream(rx);
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// The stream's task: read, frame, send, wait; until the session closes, the server stops, or
/// the client goes.
async fn run(engine: Arc<Engine>, hold: Hold, start: Option<Cursor>, tx: mpsc::Sender<Bytes>, heartbeat: Duration) {
    let mut position = start;
    loop {
        // A fresh vector each round, grown only as far as this read needs: a stream waits holding
        // none (room for a full read is 10 KiB, and there may be 100,000 streams).
        let mut read = Vec::new();
        let mailbox = &hold.session().user.mailbox;
        let outcome = mailbox.read_messages(position.map(Cursor::as_ns), MESSAGES_PER_CHUNK, &mut read);
        let mut chunk = BytesMut::new();
        if outcome.gap {
            frame_gap(&mut chunk, position.unwrap_or(Cursor { unix: 0, nano: 0 }));
            // The loss is reported once: from here on, the stream's position is past what left.
            if let Some(left) = mailbox.watermark() {
                position = Some(position.map_or(Cursor::from_ns(left), |p| p.max(Cursor::from_ns(left))));
            }
        }
        for (created, json) in &read {
            frame_message(&mut chunk, *created, json);
        }
        if let Some(newest) = outcome.newest {
            position = Some(Cursor::from_ns(newest));
        }
        if !chunk.is_empty() {
            if tx.send(chunk.freeze()).await.is_err() {
                return; // the client went away
            }
            if read.len() == MESSAGES_PER_CHUNK {
                continue; // more to read at once
            }
        }
        let deadline = tokio::time::Instant::now() + heartbeat;
        let woken = tokio::select! {
            woken = engine.wait_for_message(&hold, position, Some(deadline)) => woken,
            // The client went away (hyper dropped the body): end now, not at the next heartbeat,
            // so the session's hold goes with it.
            () = tx.closed() => return,
        };
        match woken {
            Woken::Message => {}
            Woken::TimedOut => {
                if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                    return;
                }
            }
            Woken::SessionClosed | Woken::Stopping => return,
        }
    }
}

/// `id: <unix>.<nano>` with nine digits of nano.
fn put_id(out: &mut BytesMut, cursor: Cursor) {
    out.put_slice(itoa::Buffer::new().format(cursor.unix).as_bytes());
    let nano = itoa::Buffer::new().format(cursor.nano).to_owned();
    out.put_u8(b'.');
    out.put_bytes(b'0', 9 - nano.len());
    out.put_slice(nano.as_bytes());
}

fn frame_message(out: &mut BytesMut, created: i64, json: &[u8]) {
    out.put_slice(b"id: ");
    put_id(out, Cursor::from_ns(created));
    out.put_slice(b"\nevent: message\ndata: ");
    out.put_slice(json);
    out.put_slice(b"\n\n");
}

fn frame_gap(out: &mut BytesMut, cursor: Cursor) {
    out.put_slice(b"event: gap\ndata: {\"cursor\":");
    render::put_cursor(out, cursor);
    out.put_slice(b"}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_as_the_contract_spells_them() {
        let mut out = BytesMut::new();
        frame_gap(&mut out, Cursor { unix: -3, nano: 5 });
        frame_message(&mut out, 1_471_756_932_000_000_005, b"{\"a\":1}");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "event: gap\ndata: {\"cursor\":{\"unix\":-3,\"nano\":5}}\n\n\
             id: 1471756932.000000005\nevent: message\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(input::event_id("1471756932.000000005").unwrap(), Cursor { unix: 1_471_756_932, nano: 5 });
        for bad in ["1471756932.5", "x.000000005", "1471756932", "1.0000000001", "1.-00000001"] {
            assert!(input::event_id(bad).is_err(), "{bad}");
        }
    }
}
