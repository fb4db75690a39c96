//! Parsing what clients send: path segments and JSON bodies, each mistake a 400 naming its field.

use super::error::ApiError;
use crate::clock::Cursor;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Longest `body`, in characters.
pub const MAX_BODY_CHARS: usize = 1024;
/// Longest user `uuid`, in characters.
pub const MAX_UUID_CHARS: usize = 64;
/// Longest `display_name`, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
/// Largest `attachments`, serialised compactly.
pub const MAX_ATTACHMENTS_BYTES: usize = 16 * 1024;

/// Most items one page of `GET /api/users` or `GET /api/sessions` holds, and most the
/// unpaginated form answers (more is a 400 that says how to page).
pub const MAX_PAGE: usize = 10_000;

/// A page asked for in a query string: `limit`, and where to start after (`after_id` or `after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// At most this many (1..=[`MAX_PAGE`]).
    pub limit: usize,
    /// Start after this one.
    pub after: Option<T>,
}

/// The query parameter `name`, percent-decoded; the last one wins.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    let (_, v) = query?.rsplit('&').map(|pair| pair.split_once('=').unwrap_or((pair, ""))).find(|(k, _)| *k == name)?;
    Some(percent_encoding::percent_decode_str(v).decode_utf8_lossy())
}

/// The page a query string asks for, with `after_name` parsed by `parse_after`; `None` when it
/// has neither `limit` nor `after_name` (the unpaginated form).
pub fn page<T>(
    query: Option<&str>,
    after_name: &'static str,
    parse_after: impl Fn(&str) -> Option<T>,
    what_after: &str,
) -> Result<Option<Page<T>>, ApiError> {
    let limit = query_param(query, "limit");
    let after = query_param(query, after_name);
    if limit.is_none() && after.is_none() {
        return Ok(None);
    }
    let limit = match limit {
        None => MAX_PAGE,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::BadQuery(format!("limit: not a whole number from 1 to {MAX_PAGE}: {l:?}").into()))
            }
        },
    };
    let after = match after {
        None => None,
        Some(a) => Some(
            parse_after(&a)
                .ok_or_else(|| ApiError::BadQuery(format!("{after_name}: not {what_after}: {a:?}").into()))?,
        ),
    };
    Ok(Some(Page { limit, after }))
}

/// The `?wait=` of a long-poll: `25s`, `500ms`, or whole seconds as a bare integer — exactly
/// the contract's grammar, `^[0-9]+(s|ms)?$` as `/openapi.json` states it (a general duration
/// parser also took `1m` or `2 h`, which no document promised); `0` (or none) means no
/// wait; more than `max` is a 400 naming `wait`.
pub fn wait(query: Option<&str>, max: std::time::Duration) -> Result<std::time::Duration, ApiError> {
    let Some(w) = query_param(query, "wait") else { return Ok(std::time::Duration::ZERO) };
    let (digits, unit): (&str, fn(u64) -> std::time::Duration) = match w.strip_suffix("ms") {
        Some(d) => (d, std::time::Duration::from_millis),
        None => (w.strip_suffix('s').unwrap_or(&w), std::time::Duration::from_secs),
    };
    let parsed = if digits.bytes().all(|b| b.is_ascii_digit()) { digits.parse::<u64>().ok().map(unit) } else { None };
    match parsed {
        Some(d) if d <= max => Ok(d),
        Some(_) => Err(ApiError::BadQuery(
            format!("wait: longer than --max-wait ({})", humantime::format_duration(max)).into(),
        )),
        None => Err(ApiError::BadQuery(format!("wait: not a duration (25s, 500ms, or whole seconds): {w:?}").into())),
    }
}

/// A stream position as SSE's `Last-Event-ID` spells it: `<unix>.<nano>` with 9 digits of nano.
pub fn event_id(value: &str) -> Result<Cursor, ApiError> {
    let bad = || ApiError::bad_request(format!("Last-Event-ID: not <unix>.<nano> (9 digits): {value:?}"));
    let (unix, nano) = value.split_once('.').ok_or_else(bad)?;
    if nano.len() != 9 || !nano.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let unix = unix.parse::<i64>().map_err(|_| bad())?;
    let nano = nano.parse::<u32>().map_err(|_| bad())?;
    Ok(Cursor { unix, nano })
}

/// A WebSocket's `?cursor=<unix>.<nano>` (nano as 9 digits); none: from the start.
pub fn query_cursor(query: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    match query_param(query, "cursor") {
        None => Ok(None),
        Some(c) => event_id(&c).map(Some).map_err(|_| {
            ApiError::BadQuery(format!("cursor: not <unix>.<nano> with nine digits of nano: {c:?}").into())
        }),
    }
}

/// An integer path segment named `field`.
pub fn int_segment(seg: &str, field: &'static str) -> Result<i64, ApiError> {
    seg.parse::<i64>().map_err(|_| ApiError::bad_request(format!("{field}: not an integer (or out of range): {seg:?}")))
}

/// A percent-decoded path segment (the external user id).
pub fn decoded_segment(seg: &str) -> Result<Cow<'_, str>, ApiError> {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("uuid: not valid UTF-8 after percent-decoding"))
}

/// The cutoff of `/api/messages/:session/:unix[/:nano]`, normalised like Go's `time.Unix`.
pub fn cutoff(unix: Option<&str>, nano: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    let Some(unix) = unix else { return Ok(None) };
    let unix = int_segment(unix, "unix")?;
    let nano = nano.map(|n| int_segment(n, "nano")).transpose()?.unwrap_or(0);
    cursor_of(unix, nano)
}

/// The cutoff `unix` seconds and `nano` nanoseconds name (see [`cutoff`]).
pub fn cursor_of(unix: i64, nano: i64) -> Result<Option<Cursor>, ApiError> {
    Cursor::normalise(unix, nano)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("unix: timestamp out of range after adding nano"))
}

fn object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("request body: not valid UTF-8"))?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("request body: empty; expected a JSON object"));
    }
    // serde's derived structs also accept arrays (fields by position); the contract wants objects.
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::bad_request("request body: expected a JSON object"));
    }
    serde_json::from_str(text).map_err(|e| {
        let msg = if e.is_data() && !e.to_string().contains("duplicate field") {
            "request body: expected a JSON object".to_owned()
        } else {
            format!("request body: invalid JSON ({e})")
        };
        ApiError::bad_request(msg)
    })
}

fn string<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<Option<Cow<'a, str>>, ApiError> {
    raw.map(|r| {
        let text = r.get();
        // A string without escapes is its text between the quotes: the parse that made `r`
        // already checked it (no raw control character); read it again only to unescape.
        if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            if !inner.contains('\\') {
                return Ok(Cow::Borrowed(inner));
            }
        }
        serde_json::from_str::<Cow<'a, str>>(text)
            .map_err(|_| ApiError::bad_request(format!("{field}: must be a string")))
    })
    .transpose()
}

/// A text field that will be stored: at most `max` characters, and no U+0000. PostgreSQL cannot
/// hold NUL in a text column, so a NUL is refused here, for every store alike, rather than let
/// into memory and then rejected by the store. (Inside `attachments` a NUL is fine: the JSON
/// text stores it escaped, as `\u0000`.)
fn check_text(s: &str, field: &'static str, max: usize) -> Result<(), ApiError> {
    // A string of at most `max` bytes has at most `max` characters: count only longer ones.
    if s.len() > max && s.chars().count() > max {
        return Err(ApiError::bad_request(format!("{field}: longer than {max} characters")));
    }
    if s.as_bytes().contains(&0) {
        return Err(ApiError::bad_request(format!("{field}: must not contain U+0000 (NUL)")));
    }
    Ok(())
}

#[derive(Deserialize)]
struct RawUser<'a> {
    #[serde(borrow, default)]
    uuid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    display_name: Option<&'a RawValue>,
}

/// `POST /api/user`'s body.
#[derive(Debug)]
pub struct NewUser<'a> {
    /// The external id, 1–64 characters.
    pub uuid: Cow<'a, str>,
    /// 0–256 characters, `""` when absent or null.
    pub display_name: Cow<'a, str>,
}

/// Parses `{"uuid", "display_name"?}`.
pub fn new_user(body: &[u8]) -> Result<NewUser<'_>, ApiError> {
    let raw: RawUser<'_> = object(body)?;
    let uuid = string(raw.uuid, "uuid")?.ok_or_else(|| ApiError::bad_request("uuid: required"))?;
    if uuid.is_empty() {
        return Err(ApiError::bad_request("uuid: must not be empty"));
    }
    check_text(&uuid, "uuid", MAX_UUID_CHARS)?;
    let display_name = string(raw.display_name, "display_name")?.unwrap_or_default();
    check_text(&display_name, "display_name", MAX_DISPLAY_NAME_CHARS)?;
    Ok(NewUser { uuid, display_name })
}

/// Parses `PUT /api/user/:id`'s `{"display_name"}` (required).
pub fn display_name(body: &[u8]) -> Result<Cow<'_, str>, ApiError> {
    let raw: RawUser<'_> = object(body)?;
    let name =
        string(raw.display_name, "display_name")?.ok_or_else(|| ApiError::bad_request("display_name: required"))?;
    check_text(&name, "display_name", MAX_DISPLAY_NAME_CHARS)?;
    Ok(name)
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow, default)]
    receiver_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
    #[serde(borrow, default)]
    attachments: Option<&'a RawValue>,
}

/// `POST /api/message/:session`'s body, validated.
#[derive(Debug)]
pub struct NewMessage<'a> {
    /// The receiving user (not yet checked to exist).
    pub receiver_id: i64,
    /// 1–1024 characters, or empty with attachments.
    pub body: Cow<'a, str>,
    /// Compact JSON of an object, or `None` for null/absent.
    pub attachments: Option<String>,
}

/// `text` (valid JSON) without the whitespace between its tokens, strings, numbers and key order
/// exactly as written; and how many object members it holds (its `:` outside strings).
fn compact_json(text: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut members) = (false, false, 0);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            members += usize::from(c == ':');
            out.push(c);
        }
    }
    (out, members)
}

/// The object members in `v`, nested ones included.
fn members(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => m.len() + m.values().map(members).sum::<usize>(),
        serde_json::Value::Array(a) => a.iter().map(members).sum(),
        _ => 0,
    }
}

/// The common send, read by hand: exactly `{"receiver_id": <integer>, "body": "<text>"}` (the
/// two members in either order, JSON whitespace anywhere between tokens), where the text is 1 to
/// [`MAX_BODY_CHARS`] bytes with no escape and no control character. `None` for anything else —
/// attachments, escapes, an empty or long body, a number with a sign or leading zero it cannot
/// take for sure, any mistake — which [`new_message`] then reads through serde_json, so every
/// error message (and every accepted body) stays what that path decides; a test compares the two
/// on generated bodies. callgrind: serde_json into `RawValue`s took ~1,900 instructions of a send.
fn plain_message(body: &[u8]) -> Option<NewMessage<'_>> {
    fn ws(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }
    /// `i` past `token` (after whitespace), or `None`.
    fn expect(b: &[u8], i: usize, token: &[u8]) -> Option<usize> {
        let i = ws(b, i);
        b.get(i..i + token.len()).filter(|t| *t == token).map(|_| i + token.len())
    }
    /// An integer as JSON writes it, within `i64`: `-?(0|[1-9][0-9]*)`.
    fn integer(b: &[u8], i: usize) -> Option<(i64, usize)> {
        let mut i = ws(b, i);
        let negative = b.get(i) == Some(&b'-');
        i += usize::from(negative);
        let start = i;
        let mut n: i64 = 0;
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            let d = i64::from(d - b'0');
            n = n.checked_mul(10)?.checked_add(if negative { -d } else { d })?;
            i += 1;
        }
        let digits = i - start;
        // serde_json reads `-0` as a float, which is no integer: leave it to that path.
        if digits == 0 || (digits > 1 && b[start] == b'0') || (negative && n == 0) {
            return None;
        }
        Some((n, i))
    }
    /// The text of a string without escapes or control characters, 1..=MAX_BODY_CHARS bytes.
    /// The only part of the body that may be other than ASCII, so the only one checked for UTF-8.
    fn text(b: &[u8], i: usize) -> Option<(&str, usize)> {
        let start = expect(b, i, b"\"")?;
        let len = memchr::memchr(b'"', &b[start..])?;
        let t = &b[start..start + len];
        // A fold without an early exit, so that the compiler checks 16 bytes per step.
        let plain = t.iter().fold(true, |ok, &c| ok & (c >= 0x20) & (c != b'\\'));
        if !plain || len == 0 || len > MAX_BODY_CHARS {
            return None;
        }
        Some((std::str::from_utf8(t).ok()?, start + len + 1))
    }
    // Every byte outside the text is matched against ASCII tokens, digits or whitespace.
    let mut i = expect(body, 0, b"{")?;
    let (mut receiver_id, mut message) = (None, None);
    for member in 0..2 {
        if member == 1 {
            i = expect(body, i, b",")?;
        }
        // Each name once: a repeated one is serde_json's to refuse.
        match expect(body, i, b"\"receiver_id\"") {
            Some(j) if receiver_id.is_none() => {
                let (id, j) = integer(body, expect(body, j, b":")?)?;
                (receiver_id, i) = (Some(id), j);
            }
            _ if message.is_none() => {
                let j = expect(body, i, b"\"body\"")?;
                let (t, j) = text(body, expect(body, j, b":")?)?;
                (message, i) = (Some(t), j);
            }
            _ => return None,
        }
    }
    let end = expect(body, i, b"}")?;
    (ws(body, end) == body.len()).then_some(NewMessage {
        receiver_id: receiver_id?,
        body: Cow::Borrowed(message?),
        attachments: None,
    })
}

/// Parses `{"receiver_id", "body", "attachments"?}`.
pub fn new_message(body: &[u8]) -> Result<NewMessage<'_>, ApiError> {
    match plain_message(body) {
        Some(m) => Ok(m),
        None => read_message(body),
    }
}

/// [`new_message`] through serde_json: any body.
fn read_message(body: &[u8]) -> Result<NewMessage<'_>, ApiError> {
    let raw: RawMessage<'_> = object(body)?;
    let receiver_id = match raw.receiver_id {
        None => return Err(ApiError::bad_request("receiver_id: required")),
        Some(r) => serde_json::from_str::<i64>(r.get())
            .map_err(|_| ApiError::bad_request("receiver_id: must be an integer"))?,
    };
    let text = string(raw.body, "body")?.ok_or_else(|| ApiError::bad_request("body: required"))?;
    check_text(&text, "body", MAX_BODY_CHARS)?;
    let attachments = match raw.attachments {
        None => None,
        Some(r) if r.get().trim_start().starts_with('{') => {
            // Read through once to refuse what a client could not read back (a lone surrogate
            // escape, say), but keep the text as sent: a `Value` would turn numbers into other
            // numbers (integers beyond 64 bits, some doubles).
            let value = serde_json::from_str::<serde_json::Value>(r.get())
                .map_err(|e| ApiError::bad_request(format!("attachments: invalid JSON ({e})")))?;
            let (compact, written) = compact_json(r.get());
            // A name twice in one object reads differently in different readers (RFC 8259 4):
            // the reader kept one member of the two, so it holds fewer than were written.
            if written != members(&value) {
                return Err(ApiError::bad_request("attachments: a name appears twice in one object"));
            }
            if compact.len() > MAX_ATTACHMENTS_BYTES {
                return Err(ApiError::bad_request("attachments: larger than 16 KiB serialised"));
            }
            Some(compact)
        }
        Some(_) => return Err(ApiError::bad_request("attachments: must be a JSON object or null")),
    };
    if text.is_empty() && attachments.is_none() {
        return Err(ApiError::bad_request("body: must not be empty (unless attachments is an object)"));
    }
    Ok(NewMessage { receiver_id, body: text, attachments })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_takes_the_contract_grammar_only() {
        let max = std::time::Duration::from_secs(60);
        let w = |v: &str| wait(Some(&format!("wait={v}")), max);
        for (v, ms) in [("0", 0), ("25", 25_000), ("25s", 25_000), ("500ms", 500), ("60s", 60_000), ("0ms", 0)] {
            assert_eq!(w(v), Ok(std::time::Duration::from_millis(ms)), "{v}");
        }
        for v in ["", "s", "ms", "1m", "2 s", "1.5s", "-1", "+1", "1h", "61", "99999999999999999999s", "1S"] {
            assert!(w(v).unwrap_err().message().starts_with("wait:"), "{v}");
        }
        assert_eq!(wait(None, max), Ok(std::time::Duration::ZERO));
    }

    /// A body string reads exactly as sent, whether it came with escapes or without (the fast
    /// path takes the text between the quotes), and anything but a string is refused.
    #[test]
    fn body_strings_read_as_sent_with_escapes_or_without() {
        let read = |json: &str| {
            new_message(format!(r#"{{"receiver_id": 1, "body": {json}}}"#).as_bytes()).map(|m| m.body.into_owned())
        };
        for body in ["hi", "a \"quoted\" word", "tab\tand\\slash", "été 𝄞", "line\u{2028}sep", " spaced "] {
            // As serde_json writes it: escapes only where needed.
            let plain = serde_json::to_string(body).unwrap();
            assert_eq!(read(&plain).as_deref(), Ok(body), "{plain}");
            // Every character escaped (surrogate pairs past the BMP).
            let escaped: String = body.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
            assert_eq!(read(&format!("\"{escaped}\"")).as_deref(), Ok(body), "{escaped}");
        }
        for not_a_string in ["1", "true", "[\"a\"]", "{\"a\": \"b\"}", "1.5"] {
            assert_eq!(msg_err(&format!(r#"{{"receiver_id": 1, "body": {not_a_string}}}"#)), "body: must be a string");
        }
        // A raw control character inside the quotes is not JSON: refused before the fast path.
        assert!(msg_err("{\"receiver_id\": 1, \"body\": \"a\tb\"}").starts_with("request body: invalid JSON"));
    }

    /// The hand-read common send takes exactly what the serde_json path takes, and reads it the
    /// same: thousands of generated bodies near the common shape (member order, whitespace,
    /// numbers JSON spells oddly, escapes, control characters, lengths around the limit, extra
    /// members, trailing bytes), each read both ways.
    #[test]
    fn the_hand_read_send_agrees_with_serde_json() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0x5e4d);
        let pick = |rng: &mut StdRng, xs: &[&str]| xs[rng.gen_range(0..xs.len())].to_owned();
        let (mut fast, mut total) = (0, 0);
        for _ in 0..20_000 {
            // Mostly what JSON allows, sometimes what it does not.
            let either = |rng: &mut StdRng, good: &[&str], odd: &[&str]| {
                if rng.gen_range(0..30) == 0 {
                    pick(rng, odd)
                } else {
                    pick(rng, good)
                }
            };
            let ws =
                |rng: &mut StdRng| either(rng, &["", "", "", " ", "\n  ", "\t", "\r\n"], &["\u{a0}", "\u{b}", "\u{c}"]);
            let id = if rng.gen_bool(0.7) {
                pick(&mut rng, &["7", "0", "42", "-3", "9223372036854775807", "-9223372036854775808"])
            } else {
                pick(
                    &mut rng,
                    &[
                        "-0",
                        "00",
                        "07",
                        "1.0",
                        "1e2",
                        "-",
                        "+1",
                        "9223372036854775808",
                        "-9223372036854775809",
                        "99999999999999999999",
                        "\"7\"",
                        "null",
                        "true",
                        "0x1",
                        "1 2",
                    ],
                )
            };
            let text = match rng.gen_range(0..20) {
                0 => String::new(),
                1 => "a\\\"b".to_owned(),
                2 => "tab\tin".to_owned(),
                3 => "x".repeat(rng.gen_range(1020..1030)),
                4 => "é".repeat(rng.gen_range(510..515)),
                5 => "nul\u{0}".to_owned(),
                6 => "\\u00e9".to_owned(),
                7 => "ctl\u{1f}".to_owned(),
                _ => pick(&mut rng, &["hi", "été 𝄞", "a b c", "}", "{\"x\":1}", " ", "'"]),
            };
            let key = |rng: &mut StdRng, k: &str| {
                if rng.gen_range(0..40) == 0 {
                    pick(rng, &["\"Body\"", "\"body \"", "\"receiver\\u005fid\""])
                } else {
                    format!("\"{k}\"")
                }
            };
            let member = |rng: &mut StdRng, name: &str, value: &str| {
                let (a, k, b, c, d) = (ws(rng), key(rng, name), ws(rng), ws(rng), ws(rng));
                format!("{a}{k}{b}:{c}{value}{d}")
            };
            let rid = member(&mut rng, "receiver_id", &id);
            let bod = member(&mut rng, "body", &format!("\"{text}\""));
            let mut members = if rng.gen_bool(0.5) { vec![rid, bod] } else { vec![bod, rid] };
            match rng.gen_range(0..30) {
                0 => members.push("\"attachments\":{\"a\":1}".to_owned()),
                1 => members.push("\"attachments\":null".to_owned()),
                2 => members.push("\"other\":1".to_owned()),
                3 => members.push("\"body\":\"again\"".to_owned()),
                4 => members.truncate(1),
                5 => members.push(String::new()),
                _ => {}
            }
            let tail = either(&mut rng, &["", " ", "\n"], &["x", "}", ",", "\u{0}"]);
            let json = format!("{}{{{}}}{tail}", ws(&mut rng), members.join(","));
            total += 1;
            fast += usize::from(plain_message(json.as_bytes()).is_some());
            // What a client gets (the hand reader when it takes the body) against serde_json's
            // reading of every body: the same message, or the same 400.
            let fields = |m: NewMessage<'_>| (m.receiver_id, m.body.into_owned(), m.attachments);
            assert_eq!(new_message(json.as_bytes()).map(fields), read_message(json.as_bytes()).map(fields), "{json:?}");
        }
        // A byte that is no UTF-8, anywhere: both refuse it.
        let good = r#"{"receiver_id": 7, "body": "été"}"#.as_bytes();
        for at in 0..=good.len() {
            for bad in [0xff, 0xc3, 0x80] {
                let mut b = good.to_vec();
                b.insert(at, bad);
                assert!(plain_message(&b).is_none() && read_message(&b).is_err(), "{b:?}");
            }
        }
        // The shapes clients send are the ones the hand reader takes.
        for json in [r#"{"receiver_id":7,"body":"hi"}"#, "{ \"body\" : \"été\" ,\n\"receiver_id\" : -12 }\n"] {
            assert!(plain_message(json.as_bytes()).is_some(), "{json}");
        }
        assert!(fast * 8 > total, "only {fast} of {total} generated bodies were read by hand");
    }

    fn msg_err(body: &str) -> String {
        new_message(body.as_bytes()).unwrap_err().message().into_owned()
    }

    #[test]
    fn message_bodies() {
        let m = new_message(br#"{"receiver_id": 9, "body": "hi", "attachments": {"b": 1, "a": [1, 2]}}"#).unwrap();
        assert_eq!((m.receiver_id, &*m.body), (9, "hi"));
        assert_eq!(m.attachments.as_deref(), Some(r#"{"b":1,"a":[1,2]}"#), "key order kept, compacted");
        let m = new_message(
            br#"{"receiver_id": 9, "body": "", "attachments": { "s" : "a \" b\\", "n": 1.50, "e": 1E+2, "big": 123456789012345678901234567890 }}"#,
        )
        .unwrap();
        assert_eq!(
            m.attachments.as_deref(),
            Some(r#"{"s":"a \" b\\","n":1.50,"e":1E+2,"big":123456789012345678901234567890}"#),
            "strings and numbers exactly as sent"
        );
        // What a client's JSON reader could not read back is refused: a number beyond a double,
        // a lone surrogate.
        assert!(msg_err(r#"{"receiver_id": 9, "body": "", "attachments": {"n": 1e400}}"#).starts_with("attachments"));
        assert!(msg_err(r#"{"receiver_id": 9, "body": "", "attachments": {"s": "\ud800"}}"#).starts_with("attachments"));
        let m = new_message(br#"{"receiver_id": 9, "body": "", "attachments": {}}"#).unwrap();
        assert_eq!(m.body, "");
        assert!(new_message(br#"{"receiver_id": 9, "body": "x", "attachments": null}"#).unwrap().attachments.is_none());
        assert!(msg_err(r#"{"body": "x"}"#).starts_with("receiver_id"));
        assert!(msg_err(r#"{"receiver_id": "9", "body": "x"}"#).starts_with("receiver_id"));
        assert!(msg_err(r#"{"receiver_id": 1.5, "body": "x"}"#).starts_with("receiver_id"));
        assert!(msg_err(r#"{"receiver_id": 99999999999999999999, "body": "x"}"#).starts_with("receiver_id"));
        assert!(msg_err(r#"{"receiver_id": 9}"#).starts_with("body: required"));
        assert!(msg_err(r#"{"receiver_id": 9, "body": 5}"#).starts_with("body: must be a string"));
        assert!(msg_err(r#"{"receiver_id": 9, "body": ""}"#).starts_with("body: must not be empty"));
        assert_eq!(
            msg_err(&format!(r#"{{"receiver_id": 9, "body": "{}"}}"#, "é".repeat(1025))),
            "body: longer than 1024 characters"
        );
        assert!(
            new_message(format!(r#"{{"receiver_id": 9, "body": "{}"}}"#, "é".repeat(1024)).as_bytes()).is_ok(),
            "characters, not bytes"
        );
        assert!(msg_err(r#"{"receiver_id": 9, "body": "x", "attachments": [1]}"#).starts_with("attachments"));
        assert!(msg_err(r#"{"receiver_id": 9, "body": "x", "attachments": "s"}"#).starts_with("attachments"));
        let big = format!(r#"{{"receiver_id": 9, "body": "x", "attachments": {{"k": "{}"}}}}"#, "a".repeat(16 * 1024));
        assert!(msg_err(&big).starts_with("attachments: larger"));
        assert!(msg_err("[1]").starts_with("request body"));
        assert!(msg_err("{").starts_with("request body"));
        assert!(msg_err("").starts_with("request body"));
        assert!(new_message(b"{\"receiver_id\": 9, \"body\": \"\xff\"}").unwrap_err().message().contains("UTF-8"));
        assert!(msg_err(r#"{"receiver_id": 9, "body": "\ud800"}"#).starts_with("body"), "lone surrogate");
        assert_eq!(msg_err(r#"{"receiver_id": 9, "body": "a\u0000b"}"#), "body: must not contain U+0000 (NUL)");
        let m = new_message(br#"{"receiver_id": 9, "body": "", "attachments": {"k\u0000": "v\u0000"}}"#).unwrap();
        assert_eq!(m.attachments.as_deref(), Some(r#"{"k\u0000":"v\u0000"}"#), "stored escaped, as JSON text");
    }

    #[test]
    fn user_bodies() {
        let u = new_user(br#"{"uuid": "alice", "display_name": "Alice"}"#).unwrap();
        assert_eq!((&*u.uuid, &*u.display_name), ("alice", "Alice"));
        assert_eq!(new_user(br#"{"uuid": "bob"}"#).unwrap().display_name, "");
        assert_eq!(new_user(br#"{"uuid": "bob", "display_name": null}"#).unwrap().display_name, "");
        let err = |b: &str| new_user(b.as_bytes()).unwrap_err().message().into_owned();
        assert!(err(r#"{"uuid": ""}"#).starts_with("uuid"));
        assert!(err(r#"{}"#).starts_with("uuid: required"));
        assert!(err(r#"{"uuid": 5}"#).starts_with("uuid: must be a string"));
        assert!(err(&format!(r#"{{"uuid": "{}"}}"#, "u".repeat(65))).starts_with("uuid: longer"));
        assert!(new_user(format!(r#"{{"uuid": "{}"}}"#, "ü".repeat(64)).as_bytes()).is_ok());
        assert!(err(&format!(r#"{{"uuid": "a", "display_name": "{}"}}"#, "n".repeat(257))).starts_with("display_name"));
        assert!(err(r#"{"uuid": "a", "display_name": 1}"#).starts_with("display_name"));
        assert!(display_name(br#"{}"#).unwrap_err().message().starts_with("display_name: required"));
        assert_eq!(err(r#"{"uuid": "a\u0000"}"#), "uuid: must not contain U+0000 (NUL)");
        assert_eq!(err(r#"{"uuid": "a", "display_name": "\u0000"}"#), "display_name: must not contain U+0000 (NUL)");
        assert!(display_name(br#"{"display_name": "x\u0000"}"#).unwrap_err().message().contains("NUL"));
    }

    #[test]
    fn cutoffs() {
        assert_eq!(cutoff(None, None).unwrap(), None);
        assert_eq!(cutoff(Some("5"), None).unwrap(), Some(Cursor { unix: 5, nano: 0 }));
        assert_eq!(cutoff(Some("-5"), Some("2000000001")).unwrap(), Some(Cursor { unix: -3, nano: 1 }));
        assert!(cutoff(Some("x"), None).unwrap_err().message().starts_with("unix"));
        assert!(cutoff(Some("1"), Some("1.5")).unwrap_err().message().starts_with("nano"));
        assert!(cutoff(Some("99999999999999999999"), None).is_err());
        assert!(cutoff(Some(&i64::MAX.to_string()), Some("1000000000")).is_err());
    }
}
