//! JSON rendering: the original's envelope, its objects, and Go's `RFC3339Nano` timestamps.
//!
//! Messages are rendered once, when they are sent ([`message`]); a poll answer is the envelope
//! written around those pre-rendered bytes ([`PollAnswer`]). Everything else is rare and goes
//! through `serde_json`.

use crate::clock::Cursor;
use crate::mailbox::{Append, Run};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;

/// Appends `ns` as Go's `RFC3339Nano` writes it: UTC, `Z`, fraction with trailing zeros trimmed.
///
/// Every send renders one, so it is hand-written: the civil date by Howard Hinnant's
/// `civil_from_days`, the digits straight into a fixed buffer (callgrind: the `time` crate's
/// formatter took ~400 instructions per timestamp). The `time` crate remains the reference its
/// test holds it to, over the whole `i64` range.
pub fn write_timestamp(out: &mut Vec<u8>, ns: i64) {
    const DAY_NS: i64 = 86_400 * 1_000_000_000;
    let (days, in_day) = (ns.div_euclid(DAY_NS), ns.rem_euclid(DAY_NS));
    let (secs, frac) = (in_day / 1_000_000_000, (in_day % 1_000_000_000) as u32);
    // civil_from_days (http://howardhinnant.github.io/date_algorithms.html): for an i64 of
    // nanoseconds the year is 1677..=2262, always four digits.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    let (hour, minute, second) = ((secs / 3600) as u32, (secs / 60 % 60) as u32, (secs % 60) as u32);
    // Two digits at a time, from a table of "00".."99".
    const PAIRS: [u8; 200] = {
        let mut t = [0u8; 200];
        let mut i = 0;
        while i < 100 {
            t[2 * i] = b'0' + (i / 10) as u8;
            t[2 * i + 1] = b'0' + (i % 10) as u8;
            i += 1;
        }
        t
    };
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, v: u32| {
        let i = 2 * (v as usize % 100);
        b[at] = PAIRS[i];
        b[at + 1] = PAIRS[i + 1];
    };
    put(0, year / 100);
    put(2, year);
    put(5, month);
    put(8, day);
    put(11, hour);
    put(14, minute);
    put(17, second);
    if frac == 0 {
        out.extend_from_slice(&b[..19]);
    } else {
        put(20, frac / 10_000_000);
        put(22, frac / 100_000);
        put(24, frac / 1_000);
        put(26, frac / 10);
        b[28] = b'0' + (frac % 10) as u8;
        let mut end = 29;
        while b[end - 1] == b'0' {
            end -= 1;
        }
        out.extend_from_slice(&b[..end]);
    }
    out.push(b'Z');
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

/// `v` as 32 lowercase hex digits. Every send renders one (the message's uuid), so eight digits
/// are made at a time in a `u64`: the nibbles spread one per byte, then each turned into its
/// ASCII digit without a branch or a table (callgrind: a table look-up per digit cost ~155
/// instructions per uuid, this ~75).
pub fn hex128(v: u128) -> [u8; 32] {
    /// Eight digits of `x`, most significant first.
    fn hex32(x: u32) -> [u8; 8] {
        let mut n = u64::from(x);
        n = (n | n << 16) & 0x0000_ffff_0000_ffff;
        n = (n | n << 8) & 0x00ff_00ff_00ff_00ff;
        // One nibble per byte, the first in the top byte.
        n = (n | n << 4) & 0x0f0f_0f0f_0f0f_0f0f;
        // 1 in each byte whose nibble is 10..=15 (adding 6 carries into bit 4 just for those).
        let letter = ((n + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        (n + 0x3030_3030_3030_3030 + letter * (b'a' - b'0' - 10) as u64).to_be_bytes()
    }
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&hex32((v >> (96 - 32 * i)) as u32));
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
) -> Sent {
    let mut out = Vec::with_capacity(OK_PREFIX.len() + 151 + body.len() + attachments.map_or(4, str::len));
    out.extend_from_slice(OK_PREFIX);
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
    out.extend_from_slice(b"}}");
    Sent(Bytes::from(out))
}

/// What a success envelope with a value starts with.
const OK_PREFIX: &[u8] = b"{\"meta\":{\"http_code\":200},\"response\":";

/// A message as [`message`] renders it: its JSON, already inside the success envelope
/// `{"meta":{"http_code":200},"response":…}` — one buffer, so that the mailboxes copy the JSON
/// out of it and a send answers with the buffer as it is (callgrind: rendering the envelope
/// around the JSON afterwards cost a second allocation and copy per send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent(Bytes);

impl Sent {
    /// The message's JSON.
    pub fn json(&self) -> &[u8] {
        &self.0[OK_PREFIX.len()..self.0.len() - 1]
    }

    /// The answer to its send: the envelope around the JSON.
    pub fn into_envelope(self) -> Bytes {
        self.0
    }
}

/// `{"meta":{"http_code":200},"response":VALUE}` for any serialisable value.
pub fn ok_value<T: Serialize + ?Sized>(value: &T) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(OK_PREFIX);
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
        let mut unix = itoa::Buffer::new();
        let mut nano = itoa::Buffer::new();
        let parts = [
            &b"{\"meta\":{\"http_code\":200,\"cursor\":{\"unix\":"[..],
            unix.format(cursor.unix).as_bytes(),
            b",\"nano\":",
            nano.format(cursor.nano).as_bytes(),
            if gap { b"},\"gap\":true},\"response\":[" } else { b"},\"gap\":false},\"response\":[" },
        ];
        if self.head.is_empty() && self.kept.is_empty() {
            // No message (every empty poll): the envelope alone, in a buffer of exactly its
            // size, which `Bytes` takes over without allocating a shared header for it.
            let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + SUFFIX.len());
            for part in parts {
                out.extend_from_slice(part);
            }
            out.extend_from_slice(SUFFIX);
            return Pieces { first: Bytes::from(out), rest: Vec::new() };
        }
        if self.head.is_empty() {
            self.head = BytesMut::with_capacity(HEAD_ROOM + SUFFIX.len());
            self.head.resize(HEAD_ROOM, 0);
        }
        let mut head = [0u8; HEAD_ROOM];
        let mut w = &mut head[..];
        for part in parts {
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

    /// The hand-written timestamp writes what the `time` crate's RFC 3339 formatter writes (Go's
    /// `RFC3339Nano`), over the whole range of an `i64` of nanoseconds: its ends, the epoch, leap
    /// days and year ends, every fraction length, and random instants.
    #[test]
    fn timestamps_agree_with_the_time_crate_everywhere() {
        use rand::{Rng, SeedableRng};
        use time::format_description::well_known::Rfc3339;
        let reference = |ns: i64| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap().format(&Rfc3339).unwrap()
        };
        let mut cases = vec![i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1, 0, 1, -1, 999_999_999, -999_999_999];
        const D: i64 = 86_400 * 1_000_000_000;
        // 2000-02-29, 2100-03-01 (no leap day), 1900-02-28, 2024-12-31T23:59:59.999999999
        for day in [11_016i64, 47_541, -25_509, 20_088] {
            cases.extend([day * D, day * D - 1, day * D + 1, (day + 1) * D - 1]);
        }
        for digits in 0..=9 {
            cases.push(1_471_756_932_000_000_000 + 10i64.pow(digits));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        cases.extend((0..100_000).map(|_| rng.gen::<i64>()));
        // Whole seconds and round fractions, which the trimming must get right.
        cases.extend((0..10_000).map(|_| rng.gen_range(-9_000_000_000i64..9_000_000_000) * 1_000_000_000));
        cases.extend((0..10_000).map(|_| rng.gen_range(-9_000_000_000_000i64..9_000_000_000_000) * 1_000_000));
        for ns in cases {
            assert_eq!(timestamp(ns), reference(ns), "{ns}");
        }
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
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut values = vec![0, 1, 0x9, 0xa, 0xf, 0x10, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210];
        // Every digit value in every position, and random ones.
        values.extend((0..32).flat_map(|i| (0..16u128).map(move |d| d << (4 * i))));
        values.extend((0..10_000).map(|_| rng.gen::<u128>()));
        for v in values {
            assert_eq!(std::str::from_utf8(&hex128(v)).unwrap(), format!("{v:032x}"));
        }
    }

    #[test]
    fn message_json_is_valid_and_ordered() {
        let m = message(0xab, 1_471_756_932_632_474_775, 7, 9, "hi \"there\"\n", None);
        let s = std::str::from_utf8(m.json()).unwrap();
        assert_eq!(
            s,
            r#"{"uuid":"000000000000000000000000000000ab","created_utc":"2016-08-21T05:22:12.632474775Z","sender_id":7,"receiver_id":9,"body":"hi \"there\"\n","attachments":null}"#
        );
        let v: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
        assert_eq!(v["body"], "hi \"there\"\n");
        // The send's answer is the same JSON in the success envelope, byte for byte.
        assert_eq!(
            &m.clone().into_envelope()[..],
            format!(r#"{{"meta":{{"http_code":200}},"response":{s}}}"#).as_bytes()
        );
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
