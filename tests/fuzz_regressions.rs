//! Inputs from the fuzz targets (`fuzz/`, see `fuzz/README.md`), replayed as plain tests.
//!
//! The checks are the ones the targets assert: `fuzz/src/checks.rs`, included here as a module.
//! Every seed in `fuzz/corpus/<target>/` goes through them, and so does each input written out
//! below: edge cases worth keeping in view, and the fuzzer's findings. A finding that is not
//! fixed yet is `#[ignore = "fuzz finding: ..."]`, so the suite stays green: fix the code, remove
//! the `ignore`, and do what the test's comment says about the checks.

#[allow(dead_code)]
#[path = "../fuzz/src/checks.rs"]
mod checks;

use chatbus::http::input;
use chatbus::http::router::{self, NotRouted, Route};
use hyper::Method;

const S: &str = "0123456789abcdef0123456789abcdef";

/// The seeds of one target, by file name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// A target's checks, on its raw input.
type Check = fn(&[u8]);

#[test]
fn every_seed_holds_its_targets_properties() {
    let targets: [(&str, Check); 5] = [
        ("router", checks::router_input),
        ("cutoff", |d| checks::cutoff_input(&String::from_utf8_lossy(d))),
        ("session_id", checks::session_id_input),
        ("new_message", checks::check_new_message),
        ("user_body", checks::check_user_body),
    ];
    for (target, check) in targets {
        for (name, data) in seeds(target) {
            eprintln!("{target}/{name}");
            check(&data);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edge cases, each through its target's checks and then pinned down.

#[test]
fn router_edges() {
    for path in [
        format!("/api/messages/{S}/-9223372036854775808/-1"),
        format!("/api/messages/{S}/9223372036854775807/999999999/"),
        format!("/api/messages/{S}//"),
        format!("/api/messages/{S}/1/2/3"),
        "/api/user.uuid/%ff".to_owned(),
        "/api/user.uuid/%".to_owned(),
        "/api/user/+7".to_owned(),
        "/api/user/-0".to_owned(),
        "/api/user/9223372036854775808".to_owned(),
        "/healthz//".to_owned(),
        "/".to_owned(),
        String::new(),
        "api/users".to_owned(),
        "/api/contact/é/ü".to_owned(),
    ] {
        for method in [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            checks::check_resolve(&method, &path);
        }
    }
    // Seconds that overflow once the nanoseconds carry: a 400 on unix, not a panic.
    match router::resolve(&Method::GET, &format!("/api/messages/{S}/-9223372036854775808/-1")) {
        Ok(Route::MessagesPoll(Ok(_), Err(e))) => assert!(e.message().starts_with("unix: timestamp out of range")),
        other => panic!("{other:?}"),
    }
    // A percent-escape that decodes to invalid UTF-8: a 400 on uuid.
    match router::resolve(&Method::GET, "/api/user.uuid/%ff") {
        Ok(Route::UserGetByUuid(Err(e))) => assert!(e.message().starts_with("uuid:")),
        other => panic!("{other:?}"),
    }
    assert_eq!(router::resolve(&Method::GET, "/healthz//").unwrap_err(), NotRouted::NotFound);
}

#[test]
fn cutoff_edges() {
    for (unix, nano) in [
        ("9223372036854775807", Some("999999999")),
        ("9223372036854775807", Some("1000000000")),
        ("-9223372036854775808", Some("-1")),
        ("-9223372036854775808", Some("999999999")),
        ("-9223372036854775808", Some("-9223372036854775808")),
        ("9223372036854775807", Some("9223372036854775807")),
        ("0", Some("-1")),
        ("+5", Some("-0")),
        ("5", Some("")),
        ("", None),
        ("1", Some("1/2")),
    ] {
        checks::check_cutoff(&input::cutoff(Some(unix), nano), Some(unix), nano);
    }
    let c = input::cutoff(Some("0"), Some("-1")).unwrap().unwrap();
    assert_eq!((c.unix, c.nano), (-1, 999_999_999), "like Go's time.Unix(0, -1)");
    assert!(input::cutoff(Some("9223372036854775807"), Some("1000000000")).is_err());
}

#[test]
fn session_id_edges() {
    for text in [S, &S.to_uppercase(), "+123456789abcdef0123456789abcdef", "-123456789abcdef0123456789abcdef", "0123"] {
        checks::session_id_input(text.as_bytes());
    }
    // u128::from_str_radix takes a leading '+'; a session id does not.
    assert!("+123456789abcdef0123456789abcdef".parse::<chatbus::engine::SessionId>().is_err());
}

#[test]
fn body_edges() {
    let long_body = format!(r#"{{"receiver_id": 9, "body": "{}"}}"#, "é".repeat(1024));
    let too_long = format!(r#"{{"receiver_id": 9, "body": "{}"}}"#, "a".repeat(1025));
    for body in [
        long_body.as_str(),
        too_long.as_str(),
        // A lone surrogate escape where the parsers skip a value (an unknown member) passes, as
        // in serde_json; where they read one it is refused. Either way a 400 or a clean accept.
        r#"{"receiver_id": 9, "body": "x", "other": "\ud800"}"#,
        r#"{"receiver_id": 9, "body": "\ud800"}"#,
        r#"{"receiver_id": 9, "body": "x", "attachments": {"n": 1e400}}"#,
        r#"{"receiver_id": 9, "body": "", "attachments": {"a": 1, "b": 2, "a": 3}}"#,
        r#"{"receiver_id": -0, "body": "x"}"#,
        r#"{"receiver_id": 9, "body": "x", "receiver_id": 9}"#,
        "\u{feff}{\"receiver_id\": 9, \"body\": \"x\"}",
        "\u{a0}{\"receiver_id\": 9, \"body\": \"x\"}",
    ] {
        checks::check_new_message(body.as_bytes());
        checks::check_user_body(body.as_bytes());
    }
    assert!(input::new_message(long_body.as_bytes()).is_ok());
    // Kept as sent, a repeated name would mean different things to different readers: refused.
    for body in [
        r#"{"receiver_id": 9, "body": "", "attachments": {"a": 1, "b": 2, "a": 3}}"#,
        r#"{"receiver_id": 9, "body": "", "attachments": {"x": [{"k": 1, "k": 1}]}}"#,
    ] {
        let e = input::new_message(body.as_bytes()).unwrap_err();
        assert_eq!(e.message(), "attachments: a name appears twice in one object", "{body}");
    }
    let m = input::new_message(br#"{"receiver_id": 9, "body": "", "attachments": {"a": {"a": ":"}, "b": [{"a": 1}]}}"#)
        .unwrap();
    assert_eq!(m.attachments.as_deref(), Some(r#"{"a":{"a":":"},"b":[{"a":1}]}"#), "the same name in other objects");
}

// ---------------------------------------------------------------------------------------------
// Findings, fixed.

/// The `new_message` target's first finding (input below, minimised by hand from
/// `{"n": 1844674437184467440737951606153709551615}`): `attachments` are kept as
/// `serde_json::Value::to_string`, and serde_json (built without its `float_roundtrip` feature)
/// reads some doubles one ulp off. So a double written in its shortest form, as JavaScript's
/// `JSON.stringify` writes it, comes back as another double: `123456789.12345679` is kept as
/// `123456789.1234568`. About one double in ten drawn at random from [0, 1) is changed so. The
/// kept text is also not stable: read and written again, it changes again.
///
/// Fixed: attachments are kept as the text sent, compacted, never read into a `Value`.
#[test]
fn attachments_keep_doubles_exactly() {
    for (sent, kept) in [
        (r#"{"x": 123456789.12345679}"#, r#"{"x":123456789.12345679}"#),
        (r#"{"lat": 1.8446744371844673e+39}"#, r#"{"lat":1.8446744371844673e+39}"#),
    ] {
        let body = format!(r#"{{"receiver_id": 9, "body": "", "attachments": {sent}}}"#);
        let m = input::new_message(body.as_bytes()).unwrap();
        assert_eq!(m.attachments.as_deref(), Some(kept), "attachments {sent}");
    }
    // What the fuzzer found: the kept text, sent again, must be kept as itself.
    let m = input::new_message(
        br#"{"receiver_id": 9, "body": "", "attachments": {"n": 1844674437184467440737951606153709551615}}"#,
    )
    .unwrap();
    let kept = m.attachments.unwrap();
    let body = format!(r#"{{"receiver_id": 9, "body": "", "attachments": {kept}}}"#);
    let again = input::new_message(body.as_bytes()).unwrap().attachments.unwrap();
    assert_eq!(again, kept, "attachments sent back are kept as they were");
}

/// Also from the `new_message` target: an integer beyond `u64` in `attachments` is kept as a
/// double, so the client gets back other digits than it sent:
/// `{"n": 1844674437184467440737951606153709551615}` comes back as `{"n":1.8446744371844673e+39}`
/// (and `12345678901234567890123` as `1.2345678901234568e+22`). Whether that is a bug is the
/// contract's call; if it is, keeping numbers as written (serde_json's `arbitrary_precision`, or
/// compacting the raw text without reading it into a `Value`) fixes it. Once both this and
/// `attachments_keep_doubles_exactly` pass, set `STRICT_NUMBERS` in `fuzz/src/checks.rs` to
/// `true`, so the fuzzer holds attachments to their exact text.
#[test]
fn attachments_keep_big_integers_exactly() {
    for n in ["1844674437184467440737951606153709551615", "12345678901234567890123", "-9223372036854775809"] {
        let body = format!(r#"{{"receiver_id": 9, "body": "", "attachments": {{"n": {n}}}}}"#);
        let m = input::new_message(body.as_bytes()).unwrap();
        assert_eq!(m.attachments, Some(format!(r#"{{"n":{n}}}"#)), "attachments with {n}");
    }
}
