//! The server's clock: wall time, made strictly increasing.
//!
//! Every timestamp chatbus hands out (message `created_utc`, session times) comes from
//! [`Clock::next`], which returns the wall clock in nanoseconds since the Unix epoch unless that
//! would not be greater than the last value handed out, in which case it returns the last value
//! plus one nanosecond. So no two calls ever return the same value, even when the wall clock
//! stands still (coarse clocks) or steps backwards (NTP), and a restarted server that is told the
//! newest timestamp in its store ([`Clock::advance_past`]) never reuses one.
//!
//! A timestamp as clients see it — the messages `meta.cursor` and the `:unix/:nano` path of a
//! poll — is a [`Cursor`].

use serde::Serialize;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A strictly increasing source of nanosecond timestamps. See the module doc.
#[derive(Debug, Default)]
pub struct Clock {
    last: AtomicI64,
}

impl Clock {
    /// A clock that has handed out nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The wall clock in nanoseconds since the epoch (not made unique).
    pub fn wall_ns() -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }

    /// The next timestamp: greater than every timestamp this clock returned before.
    pub fn next(&self) -> i64 {
        let now = Self::wall_ns();
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = if now > prev { now } else { prev + 1 };
            match self.last.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => prev = seen,
            }
        }
    }

    /// Makes every later [`Clock::next`] return more than `ns` (used after a restore).
    pub fn advance_past(&self, ns: i64) {
        self.last.fetch_max(ns, Ordering::AcqRel);
    }
}

/// A timestamp split the way the contract's cursor and `:unix/:nano` paths spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Cursor {
    /// Seconds since the epoch (may be negative).
    pub unix: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nano: u32,
}

impl Cursor {
    /// The cursor of a server timestamp in nanoseconds.
    pub fn from_ns(ns: i64) -> Self {
        Self {
            unix: ns.div_euclid(1_000_000_000),
            // In 0..1e9 by construction.
            nano: ns.rem_euclid(1_000_000_000) as u32,
        }
    }

    /// Normalises `unix` seconds plus `nano` nanoseconds (any sign or size) as Go's
    /// `time.Unix(sec, nsec)` does. `None` when the seconds overflow an `i64`.
    pub fn normalise(unix: i64, nano: i64) -> Option<Self> {
        let unix = unix.checked_add(nano.div_euclid(1_000_000_000))?;
        Some(Self { unix, nano: nano.rem_euclid(1_000_000_000) as u32 })
    }

    /// Nanoseconds since the epoch, widened so that no cursor overflows.
    pub fn as_ns(self) -> i128 {
        i128::from(self.unix) * 1_000_000_000 + i128::from(self.nano)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn strictly_increasing_across_threads() {
        let clock = Arc::new(Clock::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..20_000).map(|_| clock.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let v = h.join().unwrap();
            assert!(v.windows(2).all(|w| w[0] < w[1]), "per-thread order broken");
            all.extend(v);
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "two calls returned the same timestamp");
    }

    #[test]
    fn advance_past_is_respected_even_if_wall_clock_is_behind() {
        let clock = Clock::new();
        let future = Clock::wall_ns() + 3_600_000_000_000;
        clock.advance_past(future);
        assert!(clock.next() > future);
    }

    #[test]
    fn cursor_normalises_like_go() {
        assert_eq!(Cursor::normalise(10, 1_500_000_000), Some(Cursor { unix: 11, nano: 500_000_000 }));
        assert_eq!(Cursor::normalise(10, -1), Some(Cursor { unix: 9, nano: 999_999_999 }));
        assert_eq!(Cursor::normalise(-1, 0), Some(Cursor { unix: -1, nano: 0 }));
        assert_eq!(Cursor::normalise(i64::MAX, 1_000_000_000), None);
        assert_eq!(Cursor::normalise(i64::MIN, -1), None);
        assert_eq!(Cursor::from_ns(1_471_756_932_632_474_775), Cursor { unix: 1_471_756_932, nano: 632_474_775 });
    }
}
