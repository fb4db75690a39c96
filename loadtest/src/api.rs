//! The objects of the chatbus HTTP contract (`shared/spec/API.md`), as a client decodes them.
//!
//! Only the fields the kit reads are declared; serde ignores the rest, so the kit keeps working
//! when the server adds fields.

use serde::{Deserialize, Serialize};

/// `{"meta": {...}, "response": ...}`: every JSON answer of the server.
#[derive(Debug, Deserialize)]
pub struct Envelope<T> {
    /// Status, error message, and for messages answers the cursor and gap flag.
    pub meta: Meta,
    /// The value; absent on errors and plain successes.
    pub response: Option<T>,
}

/// The envelope's `meta`.
#[derive(Debug, Deserialize)]
pub struct Meta {
    /// Always equal to the HTTP status.
    pub http_code: u16,
    /// Present on errors and plain successes.
    pub message: Option<String>,
    /// Messages answers: the cutoff for the next poll.
    pub cursor: Option<Cursor>,
    /// Messages answers: messages after the requested cutoff have left the mailbox.
    pub gap: Option<bool>,
}

/// A user: `id` is the server's, `uuid` the client's own external id.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    /// Server-chosen positive id.
    pub id: i64,
    /// The client's external id.
    pub uuid: String,
}

/// An open session of a user.
#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    /// 32 lowercase hex digits; the `:session_id` of the routes.
    pub uuid: String,
    /// The session's user.
    pub user_id: i64,
}

/// A stored message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// 32 lowercase hex digits.
    pub uuid: String,
    /// Server time, RFC 3339 with nanoseconds; strictly increasing across the server.
    pub created_utc: String,
    /// The sending user's id.
    pub sender_id: i64,
    /// The receiving user's id.
    pub receiver_id: i64,
    /// The text.
    pub body: String,
}

/// A poll cutoff, `/api/messages/:session/:unix/:nano`: messages created strictly after it.
///
/// Field order makes the derived `Ord` the order of time (with `nano` normalised to
/// `0..1_000_000_000`, as the server's cursors and [`Cursor::parse_rfc3339`] always are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// Seconds since the Unix epoch.
    pub unix: i64,
    /// Nanoseconds within that second.
    pub nano: i64,
}

impl Cursor {
    /// The beginning of time as far as a poll goes: everything the mailbox holds is after it.
    pub const ZERO: Cursor = Cursor { unix: 0, nano: 0 };

    /// The path of a poll for `session` with this cutoff.
    pub fn poll_path(&self, session: &str) -> String {
        format!("/api/messages/{session}/{}/{}", self.unix, self.nano)
    }

    /// Parses a UTC RFC 3339 timestamp as Go's `RFC3339Nano` writes it
    /// (`2016-08-21T05:22:12.632474775Z`, 0–9 fractional digits; `+00:00` is accepted too).
    pub fn parse_rfc3339(s: &str) -> Option<Cursor> {
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<i64> {
            let part = s.get(from..to)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut rest = &s[19..];
        let mut nano = 0i64;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            nano = frac[..digits].parse::<i64>().ok()? * 10i64.pow(9 - digits as u32);
            rest = &frac[digits..];
        }
        if !matches!(rest, "Z" | "z" | "+00:00" | "-00:00") {
            return None;
        }
        let days = days_from_civil(year, month, day);
        Some(Cursor { unix: days * 86_400 + hour * 3600 + minute * 60 + second, nano })
    }

    /// The position as a stream spells it: SSE's event `id` and `Last-Event-ID`, and the
    /// WebSocket's `?cursor=`: `<unix>.<nano>` with nine digits of nano.
    pub fn event_id(&self) -> String {
        format!("{}.{:09}", self.unix, self.nano)
    }

    /// Parses [`Cursor::event_id`]'s form; anything else (fewer or more than nine digits of
    /// nano, a sign on the nano) is `None`.
    pub fn parse_event_id(s: &str) -> Option<Cursor> {
        let (unix, nano) = s.split_once('.')?;
        if nano.len() != 9 || !nano.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Cursor { unix: unix.parse().ok()?, nano: nano.parse().ok()? })
    }

    /// Nanoseconds since the epoch (fits an i128 for every i64 second).
    pub fn as_nanos(&self) -> i128 {
        self.unix as i128 * 1_000_000_000 + self.nano as i128
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn parses_the_originals_benchmark_cutoff() {
        // The original README polls /1471756932/632474775 for this very instant.
        let c = Cursor::parse_rfc3339("2016-08-21T05:22:12.632474775Z").unwrap();
        assert_eq!(c, Cursor { unix: 1_471_756_932, nano: 632_474_775 });
    }

    #[test]
    fn trimmed_fractions_scale_up() {
        let c = Cursor::parse_rfc3339("2016-08-21T05:22:12.5Z").unwrap();
        assert_eq!(c.nano, 500_000_000);
        let c = Cursor::parse_rfc3339("2016-08-21T05:22:12Z").unwrap();
        assert_eq!(c.nano, 0);
        assert_eq!(Cursor::parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), Cursor::ZERO);
        assert_eq!(Cursor::parse_rfc3339("2000-03-01T00:00:00.000000001Z").unwrap().unix, 951_868_800);
    }

    #[test]
    fn event_ids_round_trip_with_nine_digits() {
        let c = Cursor { unix: 1_471_756_932, nano: 5 };
        assert_eq!(c.event_id(), "1471756932.000000005");
        assert_eq!(Cursor::parse_event_id(&c.event_id()), Some(c));
        for bad in ["1471756932.5", "1471756932", "x.000000005", "1.0000000001", "1.-00000001", ""] {
            assert!(Cursor::parse_event_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn rejects_what_is_not_rfc3339_utc() {
        for bad in ["", "2016-08-21", "2016-08-21T05:22:12.Z", "2016-08-21T05:22:12+02:00", "2016-13-21T05:22:12Z"] {
            assert!(Cursor::parse_rfc3339(bad).is_none(), "{bad}");
        }
    }
}
