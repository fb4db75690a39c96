//! The properties the fuzz targets assert, as plain functions of one input.
//!
//! Each target in `fuzz_targets/` is one line calling a function here, and
//! `tests/fuzz_regressions.rs` includes this same file (`#[path]`), so an input the fuzzer found
//! is replayed by `cargo test` through exactly the checks that failed. Every check panics with a
//! message naming the property; a panic is what libFuzzer reports as a crash.
//!
//! The checks compare the code under test with small reference models written here
//! independently (integers and the cutoff in `i128`, the route table as data, the JSON bodies
//! against `serde_json::Value`), not only "no panic".

use chatbus::clock::Cursor;
use chatbus::engine::{EngineError, SessionId};
use chatbus::http::input::{self, MAX_ATTACHMENTS_BYTES, MAX_BODY_CHARS, MAX_DISPLAY_NAME_CHARS, MAX_UUID_CHARS};
use chatbus::http::router::{self, NotRouted, Route, Seg};
use chatbus::http::ApiError;
use chatbus::mailbox::Mailbox;
use chatbus::render::{self, PollAnswer};
use hyper::{Method, StatusCode};
use serde_json::Value;
use std::borrow::Cow;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Every error must render as a JSON envelope carrying its status and message unchanged (error
/// messages quote client input, so this is rendering of arbitrary text).
pub fn check_error_renders(e: &ApiError) {
    let status = e.status();
    let message = e.message();
    let out = render::error(status.as_u16(), &message);
    let v: Value =
        serde_json::from_slice(&out).unwrap_or_else(|err| panic!("error envelope is not JSON ({err}): {out:?}"));
    assert_eq!(v["meta"]["http_code"], Value::from(status.as_u16()), "error envelope's http_code");
    assert_eq!(v["meta"]["message"].as_str(), Some(&*message), "error envelope's message");
}

/// A 400 whose message starts with one of `fields` (the contract: each mistake names its field).
fn check_bad_request(e: &ApiError, fields: &[&str], what: &str) {
    assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{what}: error {e:?} is not a 400");
    let m = e.message();
    assert!(
        fields.iter().any(|f| m.starts_with(&format!("{f}:"))),
        "{what}: error message {m:?} does not start with one of {fields:?}"
    );
    check_error_renders(e);
}

// ---------------------------------------------------------------------------------------------
// Integers and the cutoff.

/// Reference for a decimal `i64` path segment: optional sign, at least one ASCII digit, in range.
pub fn ref_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut acc: i128 = 0;
    for b in digits.bytes() {
        acc = acc * 10 + i128::from(b - b'0');
        if acc > i128::from(u64::MAX) {
            return None;
        }
    }
    i64::try_from(if text.starts_with('-') { -acc } else { acc }).ok()
}

/// An integer segment named `field`, as the router or a parser returned it for `text`.
fn check_int(seg: &Seg<i64>, text: &str, field: &str) {
    match (seg, ref_int(text)) {
        (Ok(v), Some(r)) => assert_eq!(*v, r, "{field} {text:?} parsed to a different integer"),
        (Ok(v), None) => panic!("{field} {text:?} is not a decimal i64, yet parsed to {v}"),
        (Err(e), Some(r)) => panic!("{field} {text:?} is the i64 {r}, yet refused: {e:?}"),
        (Err(e), None) => check_bad_request(e, &[field], field),
    }
}

/// `input::cutoff(unix, nano)` against Go's `time.Unix` computed in `i128`: `Ok(None)` without
/// `unix`; else both parse as `i64`, and the normalised seconds fit an `i64`, or it is an error
/// naming the field that is wrong. Never a panic.
pub fn check_cutoff(got: &Result<Option<Cursor>, ApiError>, unix: Option<&str>, nano: Option<&str>) {
    let what = format!("cutoff({unix:?}, {nano:?})");
    let Some(unix) = unix else {
        assert!(matches!(got, Ok(None)), "{what}: no unix must be no cutoff, got {got:?}");
        return;
    };
    let Some(u) = ref_int(unix) else {
        let e = got.as_ref().expect_err(&what);
        check_bad_request(e, &["unix"], &what);
        assert!(e.message().starts_with("unix: not an integer"), "{what}: {e:?}");
        return;
    };
    let n = match nano.map(ref_int) {
        None => 0,
        Some(Some(n)) => n,
        Some(None) => {
            let e = got.as_ref().expect_err(&what);
            check_bad_request(e, &["nano"], &what);
            return;
        }
    };
    let total = i128::from(u) * 1_000_000_000 + i128::from(n);
    let secs = total.div_euclid(1_000_000_000);
    match (got, i64::try_from(secs)) {
        (Ok(Some(c)), Ok(s)) => {
            assert!(c.nano < 1_000_000_000, "{what}: nano {} out of 0..1e9", c.nano);
            assert_eq!(c.unix, s, "{what}: seconds");
            assert_eq!(i128::from(c.nano), total.rem_euclid(1_000_000_000), "{what}: nanoseconds");
            assert_eq!(c.as_ns(), total, "{what}: as_ns");
            if let Ok(ns) = i64::try_from(total) {
                assert_eq!(Cursor::from_ns(ns), *c, "{what}: from_ns(as_ns) round trip");
            }
            check_poll_envelope(*c, &[]);
        }
        (Err(e), Err(_)) => {
            check_bad_request(e, &["unix"], &what);
        }
        (got, _) => panic!("{what}: expected seconds {secs} (fits i64: {}), got {got:?}", i64::try_from(secs).is_ok()),
    }
}

/// A cutoff fuzz input: `unix` or `unix/nano` (the text after the first `/` is all `nano`).
pub fn cutoff_input(text: &str) {
    let (unix, nano) = match text.split_once('/') {
        None => (text, None),
        Some((u, n)) => (u, Some(n)),
    };
    check_cutoff(&input::cutoff(Some(unix), nano), Some(unix), nano);
    check_cutoff(&input::cutoff(None, Some(text)), None, Some(text));
}

// ---------------------------------------------------------------------------------------------
// Session ids.

/// `SessionId::from_str`: exactly 32 lowercase hex digits, and `Display` gives them back; any other
/// text is `NoSuchSession` (a 404 naming `session_id`).
pub fn check_session_id(seg: &Result<SessionId, ApiError>, text: &str) {
    let valid = text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match seg {
        Ok(id) => {
            assert!(valid, "session id {text:?} is not 32 lowercase hex digits, yet parsed to {id:?}");
            assert_eq!(id.to_string(), text, "session id does not display as it was written");
        }
        Err(e) => {
            assert!(!valid, "session id {text:?} is valid, yet refused: {e:?}");
            assert_eq!(e, &ApiError::Engine(EngineError::NoSuchSession), "session id {text:?}");
            assert_eq!(e.status(), StatusCode::NOT_FOUND);
            assert!(e.message().starts_with("session_id:"), "{:?}", e.message());
            check_error_renders(e);
        }
    }
}

/// A session id fuzz input: the text itself, and (from its first 16 bytes) a `u128` whose
/// displayed id must parse back to itself.
pub fn session_id_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_session_id(&text.parse::<SessionId>().map_err(ApiError::from), &text);
    let mut raw = [0u8; 16];
    let n = data.len().min(16);
    raw[..n].copy_from_slice(&data[..n]);
    let id = SessionId(u128::from_le_bytes(raw));
    let shown = id.to_string();
    assert_eq!(shown.parse::<SessionId>(), Ok(id), "{id:?} displays as {shown:?}, which does not parse back");
}

// ---------------------------------------------------------------------------------------------
// The router.

/// What a path names, in the reference model of the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Root,
    Users,
    User,
    UserId,
    UserUuid,
    Sessions,
    Session,
    Contacts,
    Contact,
    Messages,
    Send,
    Stream,
    Socket,
    Healthz,
    Readyz,
    Metrics,
    Openapi,
    Demo,
}

/// The reference route table: for a kind of path, its routes by method (`GET` also serves
/// `HEAD`), and the `Allow` header of a 405.
fn table(kind: Kind) -> (&'static [(&'static str, &'static str)], &'static str) {
    use Kind::*;
    const GHO: &str = "GET, HEAD, OPTIONS";
    match kind {
        Root => (&[("GET", "root")], GHO),
        Users => (&[("GET", "users_list"), ("POST", "user_create")], "GET, HEAD, POST, OPTIONS"),
        User => (&[("POST", "user_create")], "POST, OPTIONS"),
        UserId => (
            &[("GET", "user_get"), ("PUT", "user_update"), ("DELETE", "user_delete")],
            "GET, HEAD, PUT, DELETE, OPTIONS",
        ),
        UserUuid => (&[("GET", "user_get_by_uuid")], GHO),
        Sessions => (&[("GET", "sessions_list")], GHO),
        Session => (&[("POST", "session_open"), ("DELETE", "session_close")], "POST, DELETE, OPTIONS"),
        Contacts => (&[("GET", "contacts_list")], GHO),
        Contact => (&[("POST", "contact_add"), ("DELETE", "contact_remove")], "POST, DELETE, OPTIONS"),
        Messages => (&[("GET", "messages_poll")], GHO),
        Send => (&[("POST", "message_send")], "POST, OPTIONS"),
        Stream => (&[("GET", "messages_stream")], GHO),
        Socket => (&[("GET", "messages_socket")], GHO),
        Healthz => (&[("GET", "healthz")], GHO),
        Readyz => (&[("GET", "readyz")], GHO),
        Metrics => (&[("GET", "metrics")], GHO),
        Openapi => (&[("GET", "openapi")], GHO),
        Demo => (&[("GET", "demo")], GHO),
    }
}

/// The reference split of a path: its kind and its segments after the first (`api`), or `None`
/// for a 404. One trailing `/` is ignored; an empty segment anywhere is a 404.
fn ref_path(path: &str) -> Option<(Kind, Vec<&str>)> {
    if path.contains("//") {
        return None;
    }
    let path = if path.len() > 1 && path.ends_with('/') { &path[..path.len() - 1] } else { path };
    if path == "/" {
        return Some((Kind::Root, vec![]));
    }
    let segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let kind = match segs.as_slice() {
        ["healthz"] => Kind::Healthz,
        ["readyz"] => Kind::Readyz,
        ["metrics"] => Kind::Metrics,
        ["openapi.json"] => Kind::Openapi,
        ["demo"] | ["demo", _] => Kind::Demo,
        ["api", "users"] => Kind::Users,
        ["api", "user"] => Kind::User,
        ["api", "user", _] => Kind::UserId,
        ["api", "user.uuid", _] => Kind::UserUuid,
        ["api", "sessions"] => Kind::Sessions,
        ["api", "session", _] => Kind::Session,
        ["api", "contacts", _] => Kind::Contacts,
        ["api", "contact", _, _] => Kind::Contact,
        ["api", "messages", _] | ["api", "messages", _, _] | ["api", "messages", _, _, _] => Kind::Messages,
        ["api", "message" | "send", _] => Kind::Send,
        ["api", "stream", _] | ["api", "stream", _, _] | ["api", "stream", _, _, _] => Kind::Stream,
        ["api", "ws", _] => Kind::Socket,
        _ => return None,
    };
    Some((kind, segs))
}

/// The label the reference model gives `method path`, or the error it must answer.
fn ref_resolve(method: &Method, path: &str) -> Result<&'static str, NotRouted> {
    if method == Method::OPTIONS {
        return Ok("options");
    }
    let (kind, _) = ref_path(path).ok_or(NotRouted::NotFound)?;
    let (routes, allow) = table(kind);
    let name = if method == Method::HEAD { "GET" } else { method.as_str() };
    routes.iter().find(|(m, _)| *m == name).map(|(_, label)| *label).ok_or(NotRouted::MethodNotAllowed(allow))
}

fn check_uuid_segment(seg: &Seg<Cow<'_, str>>, text: &str) {
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(text).collect();
    match (seg, std::str::from_utf8(&decoded)) {
        (Ok(got), Ok(want)) => assert_eq!(got, want, "uuid segment {text:?} percent-decoded wrongly"),
        (Ok(got), Err(_)) => panic!("uuid segment {text:?} decodes to invalid UTF-8, yet gave {got:?}"),
        (Err(e), Ok(want)) => panic!("uuid segment {text:?} decodes to {want:?}, yet refused: {e:?}"),
        (Err(e), Err(_)) => check_bad_request(e, &["uuid"], "uuid segment"),
    }
}

/// `router::resolve(method, path)`: never panics; agrees with the reference table (route, 404,
/// 405 and its `Allow`); every method a 405 allows does route; every typed segment agrees with
/// its reference parse; `metric_index` names the same label.
pub fn check_resolve(method: &Method, path: &str) {
    let got = router::resolve(method, path);
    let what = format!("{method} {path:?}");
    let labels = router::metric_labels();
    let index = router::metric_index(&got);
    assert!(index < labels.len(), "{what}: metric index {index} out of {} labels", labels.len());
    let label = labels[index];

    let want = ref_resolve(method, path);
    match (&got, &want) {
        (Ok(_), Ok(w)) => assert_eq!(label, *w, "{what}: routed to {got:?}, the table says {w}"),
        (Err(g), Err(w)) => {
            assert_eq!(g, w, "{what}");
            let expected = match g {
                NotRouted::NotFound => "not_found",
                NotRouted::MethodNotAllowed(_) => "method_not_allowed",
                _ => panic!("{what}: resolve gave {g:?}, which only the request limits give"),
            };
            assert_eq!(label, expected, "{what}: metric label");
            check_error_renders(&ApiError::from(*g));
        }
        _ => panic!("{what}: resolve gave {got:?}, the table says {want:?}"),
    }

    if let Err(NotRouted::MethodNotAllowed(allow)) = &got {
        for m in allow.split(", ") {
            let m = Method::from_bytes(m.as_bytes()).expect("Allow names methods");
            assert!(m != method, "{what}: 405 allows the method it refused: {allow}");
            assert!(router::resolve(&m, path).is_ok(), "{what}: 405 allows {m}, which does not route");
        }
    }

    let Ok(route) = &got else { return };
    let segs = match ref_path(path) {
        Some((_, segs)) => segs,
        None => return, // OPTIONS on a path that names nothing: no segments to check.
    };
    let seg = |i: usize| segs[i];
    match route {
        Route::UserGet(id) | Route::UserUpdate(id) | Route::UserDelete(id) | Route::SessionOpen(id) => {
            check_int(id, seg(2), "user_id")
        }
        Route::UserGetByUuid(u) => check_uuid_segment(u, seg(2)),
        Route::SessionClose(s) | Route::ContactsList(s) | Route::MessageSend(s) => check_session_id(s, seg(2)),
        Route::ContactAdd(s, u) | Route::ContactRemove(s, u) => {
            check_session_id(s, seg(2));
            check_int(u, seg(3), "user_id");
        }
        Route::MessagesPoll(s, c) | Route::MessagesStream(s, c) => {
            check_session_id(s, seg(2));
            check_cutoff(c, segs.get(3).copied(), segs.get(4).copied());
        }
        Route::MessagesSocket(s) => check_session_id(s, seg(2)),
        Route::Demo(asset) => assert_eq!(*asset, segs.get(1).copied().unwrap_or(""), "{what}: demo asset"),
        Route::Openapi
        | Route::Root
        | Route::UsersList
        | Route::UserCreate
        | Route::SessionsList
        | Route::Healthz
        | Route::Readyz
        | Route::Metrics
        | Route::Options => {}
    }
}

/// A router fuzz input: `METHOD PATH` (lossily UTF-8), split at the first space. Any token is a
/// method (`BREW` too); text that is no method token is skipped.
pub fn router_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Some((method, path)) = text.split_once(' ') else { return };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return };
    check_resolve(&method, path);
}

// ---------------------------------------------------------------------------------------------
// JSON bodies.

/// Prefixes of every error a body parser may answer.
const MESSAGE_FIELDS: [&str; 4] = ["receiver_id", "body", "attachments", "request body"];
const USER_FIELDS: [&str; 3] = ["uuid", "display_name", "request body"];

/// A stored text field: at most `max` characters and no U+0000.
fn check_text(s: &str, field: &str, max: usize) {
    let n = s.chars().count();
    assert!(n <= max, "{field}: accepted {n} characters, more than {max}");
    assert!(!s.contains('\0'), "{field}: accepted a U+0000: {s:?}");
}

/// An accepted body is a JSON object: its members by name (the last of a repeated name, as
/// `serde_json::Value` reads them), with the values of `fields` decoded. The other members'
/// values are only checked for syntax: serde_json lets a lone surrogate escape (`"\ud800"`)
/// through where it skips a value, as the parsers skip unknown members, but not where it decodes
/// one; RFC 8259's grammar allows such escapes, so that is no finding.
fn accepted_json(data: &[u8], what: &str, fields: &[&str]) -> serde_json::Map<String, Value> {
    let members: std::collections::HashMap<String, &serde_json::value::RawValue> = serde_json::from_slice(data)
        .unwrap_or_else(|e| panic!("{what} accepted a body that is not a JSON object ({e})"));
    let mut map = serde_json::Map::new();
    for f in fields {
        if let Some(raw) = members.get(*f) {
            let v = serde_json::from_str(raw.get()).unwrap_or_else(|e| panic!("{what}: {f} is {raw} ({e})"));
            map.insert((*f).to_owned(), v);
        }
    }
    map
}

/// Whether numbers in `attachments` must survive exactly. They do since attachments are kept as
/// the text sent (the `attachments_*` findings in `tests/fuzz_regressions.rs`); with `false`,
/// numbers would be compared as doubles within a few ulps.
const STRICT_NUMBERS: bool = true;

/// `a` and `b` are the same JSON; numbers equal exactly under [`STRICT_NUMBERS`], else as
/// doubles within 4 ulps (or both integers equal).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if !STRICT_NUMBERS => {
            if x.is_f64() || y.is_f64() {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
            } else {
                x == y
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((kx, vx), (ky, vy))| kx == ky && same_json(vx, vy))
        }
        _ => a == b,
    }
}

/// A cheap, deterministic spread of the input, for the values the renderer takes that the body
/// does not carry (message uuid, timestamps, ids).
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `input::new_message(body)`: on `Ok`, the fields are what the JSON says and within the
/// contract's bounds, and the message renders as valid JSON with the same fields, alone and in
/// a poll answer; on `Err`, a 400 naming a field.
pub fn check_new_message(data: &[u8]) {
    let m = match input::new_message(data) {
        Err(e) => return check_bad_request(&e, &MESSAGE_FIELDS, "new_message"),
        Ok(m) => m,
    };
    check_text(&m.body, "body", MAX_BODY_CHARS);
    let doc = accepted_json(data, "new_message", &["receiver_id", "body", "attachments"]);
    assert_eq!(doc.get("receiver_id").and_then(Value::as_i64), Some(m.receiver_id), "receiver_id");
    assert_eq!(doc.get("body").and_then(Value::as_str), Some(&*m.body), "body");
    let attachments = match &m.attachments {
        None => {
            assert!(!m.body.is_empty(), "an empty body without attachments was accepted");
            assert!(doc.get("attachments").is_none_or(Value::is_null), "attachments dropped: {doc:?}");
            Value::Null
        }
        Some(a) => {
            assert!(a.len() <= MAX_ATTACHMENTS_BYTES, "attachments: {} bytes accepted", a.len());
            let v: Value =
                serde_json::from_str(a).unwrap_or_else(|e| panic!("attachments kept as invalid JSON ({e}): {a}"));
            assert!(v.is_object(), "attachments kept as a non-object: {a}");
            if STRICT_NUMBERS {
                // Kept as the text sent, compacted: sent again, it is kept as itself.
                let body = format!(r#"{{"receiver_id":1,"body":"","attachments":{a}}}"#);
                let again = input::new_message(body.as_bytes()).expect("kept attachments are accepted again");
                assert_eq!(again.attachments.as_deref(), Some(a.as_str()), "attachments not kept as sent");
            } else {
                let again = serde_json::to_string(&v).unwrap();
                let back: Value = serde_json::from_str(&again).unwrap();
                assert!(same_json(&back, &v), "attachments change when read again: {a} became {again}");
            }
            let sent = doc.get("attachments").expect("attachments were sent");
            assert!(same_json(sent, &v), "attachments differ from the body's: sent {sent}, kept {a}");
            v
        }
    };

    let h = fnv(data);
    let uuid = u128::from(h) << 64 | u128::from(h.rotate_left(17));
    let created = h as i64;
    let sender = h.rotate_left(29) as i64;
    let sent = render::message(uuid, created, sender, m.receiver_id, &m.body, m.attachments.as_deref());
    let out = sent.json();
    let v: Value =
        serde_json::from_slice(out).unwrap_or_else(|e| panic!("rendered message is not JSON ({e}): {out:?}"));
    let obj = v.as_object().expect("rendered message is an object");
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(keys, ["uuid", "created_utc", "sender_id", "receiver_id", "body", "attachments"], "rendered keys");
    assert_eq!(obj["uuid"].as_str(), Some(&*format!("{uuid:032x}")), "rendered uuid");
    check_timestamp(obj["created_utc"].as_str().expect("created_utc is a string"), created);
    assert_eq!(obj["sender_id"].as_i64(), Some(sender), "rendered sender_id");
    assert_eq!(obj["receiver_id"].as_i64(), Some(m.receiver_id), "rendered receiver_id");
    assert_eq!(obj["body"].as_str(), Some(&*m.body), "rendered body");
    assert!(same_json(&obj["attachments"], &attachments), "rendered attachments: {}", obj["attachments"]);

    check_poll_envelope(Cursor::from_ns(created), &[out, out]);
}

/// A rendered `created_utc`: Go's `RFC3339Nano` (UTC, `Z`, no trailing zeros in the fraction)
/// of exactly `ns`.
fn check_timestamp(s: &str, ns: i64) {
    let t = OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("created_utc {s:?} is not RFC 3339 ({e})"));
    assert_eq!(t.unix_timestamp_nanos(), i128::from(ns), "created_utc {s:?} is not {ns} ns");
    assert!(s.ends_with('Z'), "created_utc {s:?} is not in UTC");
    if let Some((_, frac)) = s.trim_end_matches('Z').split_once('.') {
        assert!(!frac.ends_with('0') && !frac.is_empty(), "created_utc {s:?} keeps trailing zeros");
    }
    assert_eq!(render::timestamp(ns), s, "timestamp() and write_timestamp() differ");
}

/// A poll answer around pre-rendered messages (oldest first) is the envelope with the cursor and
/// the messages in order.
fn check_poll_envelope(cursor: Cursor, messages: &[&[u8]]) {
    for gap in [false, true] {
        let mailbox = Mailbox::new(messages.len());
        for (i, m) in messages.iter().enumerate() {
            mailbox.lock().push(i as i64, m);
        }
        let mut a = PollAnswer::new();
        mailbox.read_into(None, &mut a);
        let out = a.finish(cursor, gap).concat();
        let v: Value =
            serde_json::from_slice(&out).unwrap_or_else(|e| panic!("poll answer is not JSON ({e}): {out:?}"));
        assert_eq!(v["meta"]["http_code"], 200);
        assert_eq!(v["meta"]["cursor"]["unix"].as_i64(), Some(cursor.unix), "poll cursor unix");
        assert_eq!(v["meta"]["cursor"]["nano"].as_u64(), Some(u64::from(cursor.nano)), "poll cursor nano");
        assert_eq!(v["meta"]["gap"], gap);
        let response = v["response"].as_array().expect("response is an array");
        assert_eq!(response.len(), messages.len(), "poll answer's messages");
        for (got, m) in response.iter().zip(messages) {
            assert_eq!(*got, serde_json::from_slice::<Value>(m).unwrap(), "poll answer changed a message");
        }
    }
}

/// `input::new_user(body)` and `input::display_name(body)` on the same bytes: on `Ok`, the
/// fields are what the JSON says and within bounds; on `Err`, a 400 naming a field; and the two
/// agree wherever they read the same thing.
pub fn check_user_body(data: &[u8]) {
    let user = input::new_user(data);
    let name = input::display_name(data);
    match &user {
        Ok(u) => {
            assert!(!u.uuid.is_empty(), "uuid: empty accepted");
            check_text(&u.uuid, "uuid", MAX_UUID_CHARS);
            check_text(&u.display_name, "display_name", MAX_DISPLAY_NAME_CHARS);
            let doc = accepted_json(data, "new_user", &["uuid", "display_name"]);
            assert_eq!(doc.get("uuid").and_then(Value::as_str), Some(&*u.uuid), "uuid");
            match doc.get("display_name") {
                None | Some(Value::Null) => assert_eq!(u.display_name, "", "display_name absent or null"),
                Some(v) => assert_eq!(v.as_str(), Some(&*u.display_name), "display_name"),
            }
        }
        Err(e) => check_bad_request(e, &USER_FIELDS, "new_user"),
    }
    match &name {
        Ok(n) => {
            check_text(n, "display_name", MAX_DISPLAY_NAME_CHARS);
            let doc = accepted_json(data, "display_name", &["display_name"]);
            assert_eq!(doc.get("display_name").and_then(Value::as_str), Some(&**n), "display_name");
        }
        Err(e) => check_bad_request(e, &["display_name", "request body"], "display_name"),
    }
    // Both read the body with the same parser: they refuse a body alike, and read one name.
    let body_error =
        |e: Option<&ApiError>| e.map(|e| e.message().into_owned()).filter(|m| m.starts_with("request body"));
    assert_eq!(
        body_error(user.as_ref().err()),
        body_error(name.as_ref().err()),
        "new_user and display_name disagree about the body"
    );
    if let (Ok(u), Ok(n)) = (&user, &name) {
        assert_eq!(u.display_name, *n, "new_user and display_name read different names");
    }
}
