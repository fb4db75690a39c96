//! JSON rendering: the original's envelope, its objects, and Go's `RFC3339Nano` timestamps.
//!
//! Messages are rendered once, when they are sent ([`message`]); a poll answer is the envelope
//! written around those pre-rendered bytes ([`PollAnswer`]). Everything else is rare and goes
//! through `serde_json`.

use crate::clock::Cursor;
use crate::mailbox::{Append, Run};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Appends `ns` as Go's `RFC3339Nano` writes it: UTC, `Z`, fraction with trailing zeros trimmed.
pub fn write_timestamp(out: &mut Vec<u8>, ns: i64) {
    let start = out.len();
    // Straight into `out` (`format` would allocate a `String` per message).
    let written = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .is_some_and(|t| t.format_into(out, &Rfc3339).is_ok());
    if !written {
        // Unreachable for an i64 of nanoseconds (years 1677..2262), but never panic.
        out.truncate(start);
        out.extend_from_slice(b"1970-01-01T00:00:00Z");
    }
}

/// A timestamp as a `String` (rare paths).
pub fn timestamp(ns: i64) -> String {
    let mut v = Vec::with_capacity(32);
    write_timestamp(&mut v, ns);
    String::from_utf8(v).unwrap_or_default()
}

/// Appends `s` as a JSON string literal, exactly as serde_json writes it.
///
/// Most chat lines need no escape at all: those are copied between quotes after one scan
/// (callgrind: serde_json's escaping took ~600 instructions of a send with a 60-character body,
/// byte by byte through its escape table); the rest go through serde_json.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes `"`, `\` and the control characters below U+0020, nothing else. A fold
    // without an early exit, so that the compiler checks 16 bytes per step (SSE2).
    let escape = s.bytes().fold(false, |escape, b| escape | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !escape {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends a cursor as the contract writes it: `{"unix":…,"nano":…}` (SSE gap events, WebSocket
/// frames).
pub fn put_cursor(out: &mut BytesMut, cursor: Cursor) {
    out.put_slice(b"{\"unix\":");
    out.put_slice(itoa::Buffer::new().format(cursor.unix).as_bytes());
    out.put_slice(b",\"nano\":");
    out.put_slice(itoa::Buffer::new().format(cursor.nano).as_bytes());
    out.put_u8(b'}');
}

/// `v` as 32 lowercase hex digits. Every send renders one (the message's uuid): a table look-up
/// per digit costs a quarter of `write!(.., "{v:032x}")` through `core::fmt` (callgrind, see
/// `loadtest/callgrind`).
pub fn hex128(v: u128) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[(v >> (124 - 4 * i)) as usize & 0xf];
    }
    out
}

/// A message as the JSON object clients receive, rendered once at send time.
pub fn message(
    uuid: u128,
    created: i64,
    sender_id: i64,
    receiver_id: i64,
    body: &str,
    attachments: Option<&str>,
) -> Bytes {
    let mut out = Vec::with_capacity(150 + body.len() + attachments.map_or(4, str::len));
    out.extend_from_slice(b"{\"uuid\":\"");
    out.extend_from_slice(&hex128(uuid));
    out.extend_from_slice(b"\",\"created_utc\":\"");
    write_timestamp(&mut out, created);
    out.extend_from_slice(b"\",\"sender_id\":");
    out.extend_from_slice(itoa::Buffer::new().format(sender_id).as_bytes());
    out.extend_from_slice(b",\"receiver_id\":");
    out.extend_from_slice(itoa::Buffer::new().format(receiver_id).as_bytes());
    out.extend_from_slice(b",\"body\":");
    write_json_str(&mut out, body);
    out.extend_from_slice(b",\"attachments\":");
    out.extend_from_slice(attachments.unwrap_or("null").as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

/// `{"meta":{"http_code":200},"response":VALUE}` around an already-rendered value.
pub fn ok_raw(value: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(40 + value.len());
    out.put_slice(b"{\"meta\":{\"http_code\":200},\"response\":");
    out.put_slice(value);
    out.put_u8(b'}');
    out.freeze()
}

/// `{"meta":{"http_code":200},"response":VALUE}` for any serialisable value.
pub fn ok_value<T: Serialize + ?Sized>(value: &T) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"meta\":{\"http_code\":200},\"response\":");
    let _ = serde_json::to_writer(&mut out, value);
    out.push(b'}');
    Bytes::from(out)
}

/// `{"meta":{"http_code":200,"message":"OK!"}}`: plain success.
pub fn ok_plain() -> Bytes {
    Bytes::from_static(b"{\"meta\":{\"http_code\":200,\"message\":\"OK!\"}}")
}

/// `{"meta":{"http_code":CODE,"message":MESSAGE}}`: an error.
pub fn error(code: u16, message: &str) -> Bytes {
    let mut out = Vec::with_capacity(48 + message.len());
    out.extend_from_slice(b"{\"meta\":{\"http_code\":");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.extend_from_slice(b",\"message\":");
    write_json_str(&mut out, message);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// Room kept in front of a [`PollAnswer`] for its envelope, which is only known once the
/// messages are in: at most 106 bytes (`{"meta":{"http_code":200,"cursor":{"unix":<i64>,"nano":
/// <9 digits>},"gap":false},"response":[`).
const HEAD_ROOM: usize = 128;

/// Runs of messages at least this long are kept as the mailbox holds them (a reference on its
/// segment, written out with the rest by vectored I/O); shorter ones are copied, which costs less
/// than the reference and the extra piece.
pub const KEEP_FROM: usize = 4096;

/// What closes a messages answer.
const SUFFIX: &[u8] = b"]}";

/// A messages answer being built: the mailbox appends the messages' runs (see
/// [`crate::mailbox::Mailbox::read_into`]), then the envelope is written into the room left in
/// front of them. Short runs are copied into one buffer; long runs are kept as they are, so a
/// large answer is the envelope plus a few slices of the mailbox's own memory — its size does
/// not change what building it costs.
#[derive(Debug)]
pub struct PollAnswer {
    /// [`HEAD_ROOM`], then the messages copied before any run was kept; not allocated until the
    /// first run or [`PollAnswer::finish`], which then know its size.
    head: BytesMut,
    /// After `head`: the runs kept and the copies between them, in order.
    kept: Vec<Bytes>,
    /// Messages copied after the last run kept.
    tail: BytesMut,
}

impl Default for PollAnswer {
    fn default() -> Self {
        Self::new()
    }
}

impl Append for PollAnswer {
    const KEEP_FROM: usize = KEEP_FROM;

    /// Allocates the answer's first buffer at its size: the envelope's room, what will be
    /// copied, and the suffix. (Short runs after a kept one go to a buffer of their own, so
    /// this may leave a little unused.)
    fn reserve(&mut self, copied: usize) {
        if self.head.is_empty() {
            self.head = BytesMut::with_capacity(HEAD_ROOM + copied + SUFFIX.len());
            self.head.resize(HEAD_ROOM, 0);
        }
    }

    fn append(&mut self, run: Run) {
        if run.len() >= KEEP_FROM {
            if !self.tail.is_empty() {
                self.kept.push(self.tail.split().freeze());
            }
            self.kept.push(run.into_bytes());
        } else {
            if self.kept.is_empty() {
                self.reserve(run.len());
                self.head.extend_from_slice(run.as_slice());
            } else {
                // Room for the suffix too, should this be the last run.
                self.tail.reserve(run.len() + SUFFIX.len());
                self.tail.extend_from_slice(run.as_slice());
            }
        }
    }
}

/// A finished answer: `first`, then each of `rest`, written one after another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces {
    /// The first piece (the whole answer, when `rest` is empty).
    pub first: Bytes,
    /// The pieces that follow.
    pub rest: Vec<Bytes>,
}

impl Pieces {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.first.len() + self.rest.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether the answer holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer in one buffer (a copy, unless it is in one piece already).
    pub fn concat(&self) -> Bytes {
        if self.rest.is_empty() {
            return self.first.clone();
        }
        let mut out = BytesMut::with_capacity(self.len());
        out.extend_from_slice(&self.first);
        for piece in &self.rest {
            out.extend_from_slice(piece);
        }
        out.freeze()
    }
}

impl PollAnswer {
    /// An empty answer (nothing allocated yet).
    pub fn new() -> Self {
        Self { head: BytesMut::new(), kept: Vec::new(), tail: BytesMut::new() }
    }

    /// Whether no message went in.
    pub fn is_empty(&self) -> bool {
        self.head.len() <= HEAD_ROOM && self.kept.is_empty()
    }

    /// Writes the envelope around the messages.
    pub fn finish(mut self, cursor: Cursor, gap: bool) -> Pieces {
        if self.head.is_empty() {
            self.head = BytesMut::with_capacity(HEAD_ROOM + SUFFIX.len());
            self.head.resize(HEAD_ROOM, 0);
        }
        let mut head = [0u8; HEAD_ROOM];
        let mut w = &mut head[..];
        let mut unix = itoa::Buffer::new();
        let mut nano = itoa::Buffer::new();
        for part in [
            &b"{\"meta\":{\"http_code\":200,\"cursor\":{\"unix\":"[..],
            unix.format(cursor.unix).as_bytes(),
            b",\"nano\":",
            nano.format(cursor.nano).as_bytes(),
            if gap { b"},\"gap\":true},\"response\":[" } else { b"},\"gap\":false},\"response\":[" },
        ] {
            w.put_slice(part);
        }
        let len = HEAD_ROOM - w.len();
        self.head[HEAD_ROOM - len..HEAD_ROOM].copy_from_slice(&head[..len]);
        if self.kept.is_empty() {
            self.head.put_slice(SUFFIX);
        } else {
            self.tail.put_slice(SUFFIX);
            self.kept.push(self.tail.freeze());
        }
        // `advance`, not `split_to`: a vector-backed buffer just moves its start (splitting would
        // allocate a shared header for the part thrown away).
        self.head.advance(HEAD_ROOM - len);
        Pieces { first: self.head.freeze(), rest: self.kept }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward renderer the one-buffer [`PollAnswer`] must agree with: the envelope
    /// with `cursor` and `gap` in `meta` around messages given newest first.
    fn poll_answer<E: AsRef<[u8]>>(cursor: Cursor, gap: bool, newest_first: &[E]) -> Bytes {
        let len: usize = newest_first.iter().map(|e| e.as_ref().len() + 1).sum();
        let mut out = BytesMut::with_capacity(96 + len);
        out.put_slice(b"{\"meta\":{\"http_code\":200,\"cursor\":{\"unix\":");
        out.put_slice(itoa::Buffer::new().format(cursor.unix).as_bytes());
        out.put_slice(b",\"nano\":");
        out.put_slice(itoa::Buffer::new().format(cursor.nano).as_bytes());
        out.put_slice(if gap { b"},\"gap\":true},\"response\":[" } else { b"},\"gap\":false},\"response\":[" });
        for (i, e) in newest_first.iter().rev().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(e.as_ref());
        }
        out.put_slice(b"]}");
        out.freeze()
    }

    #[test]
    fn timestamps_match_go_rfc3339nano() {
        // 2016-08-21T05:22:12.632474775Z, the original README's cursor.
        let ns = 1_471_756_932_632_474_775;
        assert_eq!(timestamp(ns), "2016-08-21T05:22:12.632474775Z");
        assert_eq!(timestamp(1_471_756_932_000_000_000), "2016-08-21T05:22:12Z");
        assert_eq!(timestamp(1_471_756_932_500_000_000), "2016-08-21T05:22:12.5Z");
        assert_eq!(timestamp(1_471_756_932_000_000_100), "2016-08-21T05:22:12.0000001Z");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
    }

    /// The fast path writes exactly what serde_json writes: every character that it escapes or
    /// not, alone and inside text, and random strings.
    #[test]
    fn json_strings_match_serde_json() {
        let json = |s: &str| {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            String::from_utf8(out).unwrap()
        };
        let mut samples: Vec<String> = (0u32..0x300).filter_map(char::from_u32).map(String::from).collect();
        samples.extend(
            (0u32..0x80).filter_map(char::from_u32).map(|c| format!("a typical line {c} with é, 𝄞 and \u{2028}")),
        );
        samples.extend(["", "plain", "\u{7f}", "\u{fffd}\u{10ffff}"].map(String::from));
        for _ in 0..2000 {
            let len = rand::random::<usize>() % 40;
            samples.push(
                (0..len).map(|_| char::from_u32(rand::random::<u32>() % 0x11_0000).unwrap_or('\u{1b}')).collect(),
            );
        }
        for s in &samples {
            assert_eq!(json(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn hex128_is_format_032x() {
        for v in [0, 1, 0xf, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, rand::random(), rand::random()] {
            assert_eq!(std::str::from_utf8(&hex128(v)).unwrap(), format!("{v:032x}"));
        }
    }

    #[test]
    fn message_json_is_valid_and_ordered() {
        let m = message(0xab, 1_471_756_932_632_474_775, 7, 9, "hi \"there\"\n", None);
        let s = std::str::from_utf8(&m).unwrap();
        assert_eq!(
            s,
            r#"{"uuid":"000000000000000000000000000000ab","created_utc":"2016-08-21T05:22:12.632474775Z","sender_id":7,"receiver_id":9,"body":"hi \"there\"\n","attachments":null}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["body"], "hi \"there\"\n");
    }

    #[test]
    fn poll_answer_is_oldest_first_in_envelope() {
        let a = poll_answer(Cursor { unix: 1, nano: 2 }, true, &[b"3".as_slice(), b"2", b"1"]);
        assert_eq!(&a[..], br#"{"meta":{"http_code":200,"cursor":{"unix":1,"nano":2},"gap":true},"response":[1,2,3]}"#);
        let empty = poll_answer::<&[u8]>(Cursor { unix: 0, nano: 0 }, false, &[]);
        let v: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["response"], serde_json::json!([]));
        assert_eq!(v["meta"]["gap"], false);
    }

    /// The answer built from a mailbox's runs — copied when short, kept when long, across
    /// several segments — is byte for byte the simple renderer's, and a long answer really is
    /// made of pieces.
    #[test]
    fn poll_answer_builder_matches_the_simple_renderer() {
        use crate::mailbox::Mailbox;
        for (count, size) in [(0usize, 1usize), (1, 10), (3, 1), (10, 200), (200, 100), (1024, 180), (40, 3000)] {
            let mailbox = Mailbox::new(1024);
            let msgs: Vec<Vec<u8>> = (0..count).map(|i| format!("{i:0size$}").into_bytes()).collect();
            for (i, m) in msgs.iter().enumerate() {
                mailbox.lock().push(i as i64 + 1, m);
            }
            for (cursor, gap) in
                [(Cursor { unix: 0, nano: 0 }, false), (Cursor { unix: i64::MIN, nano: 999_999_999 }, true)]
            {
                let mut a = PollAnswer::new();
                let read = mailbox.read_into(None, &mut a);
                assert_eq!(read.newest, count.checked_sub(1).map(|n| n as i64 + 1));
                let pieces = a.finish(cursor, gap);
                let newest_first: Vec<&[u8]> = msgs.iter().rev().map(Vec::as_slice).collect();
                assert_eq!(pieces.concat(), poll_answer(cursor, gap, &newest_first), "{count} messages of {size} B");
                assert_eq!(pieces.len(), pieces.concat().len());
                let total = count * (size + 1);
                if total < KEEP_FROM {
                    assert!(pieces.rest.is_empty(), "a short answer is one piece: {count} × {size} B");
                }
                if total >= 64 * 1024 {
                    assert!(!pieces.rest.is_empty(), "a long answer keeps runs: {count} × {size} B");
                }
            }
        }
    }

    #[test]
    fn error_envelope() {
        let e = error(404, "session_id: no such session");
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v, serde_json::json!({"meta": {"http_code": 404, "message": "session_id: no such session"}}));
    }
}
