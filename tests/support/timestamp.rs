//! Timestamps and cursors. One parser: the `time` crate reads RFC 3339, and [`parse_ts`] then
//! insists on the exact form chatbus writes (Go's `RFC3339Nano` in UTC), by writing the instant
//! back with that rule ([`format_ts`]) and comparing.

use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Nanoseconds per second.
pub const NS: i128 = 1_000_000_000;

/// Nanoseconds since the epoch of a timestamp as chatbus writes it — Go's `RFC3339Nano` in UTC:
/// `2016-08-21T05:22:12.632474775Z`, trailing zeros of the fraction trimmed, no fraction when it
/// is zero. Panics on anything else (another offset, `+00:00`, an untrimmed fraction, …).
#[track_caller]
pub fn parse_ts(s: &str) -> i128 {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .unwrap_or_else(|e| panic!("not an RFC 3339 timestamp as Go's RFC3339Nano writes it ({e}): {s:?}"));
    let ns = t.unix_timestamp_nanos();
    assert_eq!(
        format_ts(ns),
        s,
        "not in Go's RFC3339Nano form (UTC `Z`, trailing fractional zeros trimmed, no fraction when zero): {s:?}"
    );
    ns
}

/// Writes `ns` since the epoch as Go's `RFC3339Nano` in UTC (the server's rule).
pub fn format_ts(ns: i128) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or_else(|e| panic!("{ns} ns: {e}"));
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if t.nanosecond() != 0 {
        s.push('.');
        s.push_str(format!("{:09}", t.nanosecond()).trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// The timestamp in `v[field]`, parsed by [`parse_ts`].
#[track_caller]
pub fn ts_of(v: &Value, field: &str) -> i128 {
    parse_ts(v[field].as_str().unwrap_or_else(|| panic!("{field} in {v}")))
}

/// A message's (or session's) `created_utc`.
#[track_caller]
pub fn created(m: &Value) -> i128 {
    ts_of(m, "created_utc")
}

/// `(unix, nano)` of `ns` since the epoch, as a cursor splits it.
pub fn unix_nano(ns: i128) -> (i64, i64) {
    (i64::try_from(ns.div_euclid(NS)).expect("unix"), i64::try_from(ns.rem_euclid(NS)).expect("nano"))
}

/// The contract's cursor for a timestamp in ns.
pub fn cursor(ns: i128) -> Value {
    let (unix, nano) = unix_nano(ns);
    json!({"unix": unix, "nano": nano})
}

/// `/api/messages/{s}/{unix}/{nano}`: the messages strictly after `ns`.
pub fn after(session: &str, ns: i128) -> String {
    let (unix, nano) = unix_nano(ns);
    format!("/api/messages/{session}/{unix}/{nano}")
}

/// `/api/messages/{s}/{cursor.unix}/{cursor.nano}`: the next poll with the cursor an answer gave.
pub fn cursor_path(session: &str, cursor: &Value) -> String {
    format!("/api/messages/{session}/{}/{}", cursor["unix"], cursor["nano"])
}

/// The wall clock, in ns since the epoch.
pub fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after the epoch").as_nanos() as i128
}
