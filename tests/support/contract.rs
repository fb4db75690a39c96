//! What the contract (the README's API section) fixes about its objects, checked the same way
//! wherever a test meets one: the exact keys of a user, a session and a message, their types,
//! ids as 32 lowercase hex digits, timestamps in Go's `RFC3339Nano` form.

use super::timestamp::parse_ts;
use serde_json::Value;
use std::collections::BTreeSet;

/// The `Content-Type` of every JSON answer.
pub const JSON_CT: &str = "application/json; charset=utf-8";
/// A body over the 64 KiB limit.
pub const TOO_LARGE: usize = 64 * 1024 + 1;
/// A session id no server handed out (but well-formed).
pub const NO_SESSION: &str = "0123456789abcdef0123456789abcdef";
/// A user id no test creates.
pub const NO_USER: i64 = 987_654;
/// A mailbox big enough to hold every message a load test sends.
pub const BIG_MAILBOX: &str = "65536";

/// 32 lowercase hex digits: how session and message ids look.
pub fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The keys of a JSON object (panics on anything else).
pub fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("object: {v}")).keys().cloned().collect()
}

/// A set of key names, to compare with [`keys`].
pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// A message's (or session's) `uuid`.
pub fn uuid_of(m: &Value) -> String {
    m["uuid"].as_str().unwrap_or_else(|| panic!("uuid in {m}")).to_owned()
}

/// The uuids of `msgs`, in order.
pub fn uuids(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(uuid_of).collect()
}

/// A user: exactly `id` (positive), `uuid` (1–64 characters), `display_name`.
pub fn assert_user_shape(u: &Value) {
    assert_eq!(keys(u), set(&["id", "uuid", "display_name"]), "{u}");
    assert!(u["id"].as_i64().is_some_and(|id| id > 0), "positive integer id: {u}");
    let uuid = u["uuid"].as_str().expect("uuid string");
    assert!((1..=64).contains(&uuid.chars().count()), "{u}");
    assert!(u["display_name"].is_string(), "{u}");
}

/// A session: exactly `uuid`, `created_utc`, `last_active_utc` (not before `created_utc`),
/// `user_id` and the nested `user` with that id.
pub fn assert_session_shape(s: &Value) {
    assert_eq!(keys(s), set(&["uuid", "created_utc", "last_active_utc", "user_id", "user"]), "{s}");
    assert!(is_hex32(s["uuid"].as_str().expect("uuid")), "32 lowercase hex: {s}");
    let created = parse_ts(s["created_utc"].as_str().expect("created_utc"));
    let active = parse_ts(s["last_active_utc"].as_str().expect("last_active_utc"));
    assert!(active >= created, "{s}");
    assert_user_shape(&s["user"]);
    assert_eq!(s["user"]["id"], s["user_id"], "{s}");
}

/// A message: exactly `uuid`, `created_utc`, `sender_id`, `receiver_id`, `body` and
/// `attachments` (an object or null).
pub fn assert_message_shape(m: &Value) {
    assert_eq!(keys(m), set(&["uuid", "created_utc", "sender_id", "receiver_id", "body", "attachments"]), "{m}");
    assert!(is_hex32(m["uuid"].as_str().expect("uuid")), "32 lowercase hex: {m}");
    parse_ts(m["created_utc"].as_str().expect("created_utc"));
    assert!(m["sender_id"].as_i64().is_some_and(|i| i > 0), "{m}");
    assert!(m["receiver_id"].as_i64().is_some_and(|i| i > 0), "{m}");
    assert!(m["body"].is_string(), "{m}");
    assert!(m["attachments"].is_null() || m["attachments"].is_object(), "{m}");
}

/// A contact: exactly `user`, `is_online` (a boolean) and `is_typing` (always false).
pub fn assert_contact_shape(c: &Value) {
    assert_eq!(keys(c), set(&["user", "is_online", "is_typing"]), "{c}");
    assert_user_shape(&c["user"]);
    assert!(c["is_online"].is_boolean(), "{c}");
    assert_eq!(c["is_typing"], false, "{c}");
}
