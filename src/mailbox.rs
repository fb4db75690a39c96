//! A user's mailbox: a fixed-capacity ring of the newest messages, read without locks.
//!
//! # What a reader can rely on
//!
//! - Messages are held in push order, which the engine makes equal to timestamp order (see
//!   [`crate::engine`]). A read returns the messages created strictly after a cutoff, oldest
//!   first, as one contiguous run of pushes: never a message twice, never a hole in the middle.
//! - A read takes **no lock** and never waits for a writer. It seeks back from the head and stops
//!   at the first slot that is older than the cutoff, empty, or no longer holds the push it wants,
//!   so its cost follows the number of messages returned, not the capacity.
//! - A reader never sees a torn or overwritten slot: each slot holds an immutable
//!   `Arc<Entry>` swapped in whole ([`arc_swap`]), and each entry carries the position (`pos`) of
//!   the push that stored it, like the slots of tokio's `broadcast` channel. A reader that wants
//!   push `p` and finds another `pos` knows `p` was pushed out under it and stops there.
//! - When the ring is full a push overwrites the oldest message. A message that leaves — pushed
//!   out, or culled by TTL — raises the mailbox's *watermark*: the newest `created` that has left.
//!   A reader compares its cutoff with the watermark (loaded after its seek) to report a `gap`.
//!   Writers raise the watermark *before* they overwrite or clear a slot, so a reader that saw a
//!   slot go also sees the watermark that covers it.
//!
//! # Writers
//!
//! Writers (push and cull) are serialised by a small mutex per mailbox, taken through
//! [`Mailbox::lock`]. The engine holds that guard while it assigns a message its timestamp,
//! which is what keeps timestamp order and push order the same.

use arc_swap::ArcSwapOption;
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// "Nothing has left this mailbox yet."
const NO_WATERMARK: i64 = i64::MIN;

/// One message as a mailbox holds it: its timestamp and its pre-rendered JSON object.
#[derive(Debug)]
pub struct Entry {
    /// The position of the push that stored this entry (0 for the first push).
    pub pos: u64,
    /// Server timestamp, nanoseconds since the epoch; strictly increasing along `pos`.
    pub created: i64,
    /// The message rendered as a JSON object, once, when it was sent.
    pub json: Bytes,
}

/// A ring of the newest messages of one user. See the module doc.
#[derive(Debug)]
pub struct Mailbox {
    slots: Box<[ArcSwapOption<Entry>]>,
    /// Number of pushes so far, i.e. the `pos` the next push gets. Published with `Release`
    /// after the slot is written, so a reader that loads it sees every slot below it filled.
    head: AtomicU64,
    /// Newest `created` that has left the mailbox, or [`NO_WATERMARK`].
    left: AtomicI64,
    /// Serialises writers; holds the lowest `pos` that culling has not yet removed.
    writer: Mutex<u64>,
}

/// What a read found besides the entries themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The `created` of the newest entry returned, if any.
    pub newest: Option<i64>,
    /// Whether a message newer than the cutoff has left the mailbox (see module doc).
    pub gap: bool,
}

impl Mailbox {
    /// An empty mailbox holding at most `capacity` (at least 1) messages.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            slots: (0..capacity).map(|_| ArcSwapOption::empty()).collect(),
            head: AtomicU64::new(0),
            left: AtomicI64::new(NO_WATERMARK),
            writer: Mutex::new(0),
        }
    }

    /// How many messages the mailbox can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Takes the writer lock. Reads never need it.
    pub fn lock(&self) -> MailboxWriter<'_> {
        MailboxWriter { mailbox: self, tail: self.writer.lock() }
    }

    /// The newest `created` that has left the mailbox, if any.
    pub fn watermark(&self) -> Option<i64> {
        match self.left.load(Ordering::Acquire) {
            NO_WATERMARK => None,
            ns => Some(ns),
        }
    }

    fn slot(&self, pos: u64) -> &ArcSwapOption<Entry> {
        // The cast cannot truncate: the remainder is below the slot count, a usize.
        &self.slots[(pos % self.slots.len() as u64) as usize]
    }

    /// Collects the entries created strictly after `cutoff` (all entries when `None`) into
    /// `out`, **newest first**, and reports the newest one and whether there is a gap.
    ///
    /// Lock-free; allocates only if `out` has to grow.
    pub fn read_after(&self, cutoff: Option<i128>, out: &mut Vec<Arc<Entry>>) -> ReadOutcome {
        let head = self.head.load(Ordering::Acquire);
        let oldest = head.saturating_sub(self.slots.len() as u64);
        let mut pos = head;
        while pos > oldest {
            pos -= 1;
            let Some(entry) = self.slot(pos).load_full() else {
                break; // culled
            };
            if entry.pos != pos {
                break; // pushed out under us: this push and all older ones have left
            }
            if cutoff.is_some_and(|c| i128::from(entry.created) <= c) {
                break;
            }
            out.push(entry);
        }
        let newest = out.first().map(|e| e.created);
        // Loaded after the seek: a slot we found gone had raised it before it went.
        ReadOutcome { newest, gap: self.gap_after(cutoff) }
    }

    /// Appends the JSON of the entries created strictly after `cutoff` (all when `None`) to
    /// `out`, **oldest first**, separated by commas — the inside of a poll answer's array — and
    /// reports the newest one and whether there is a gap. The poll's hot path.
    ///
    /// Lock-free and without reference counting: a first pass seeks back from the head to the
    /// oldest entry to return, summing sizes; a second copies forward. If an entry left between
    /// the passes (a writer lapped the ring), everything copied before it is dropped, so the
    /// answer stays one contiguous run of the newest entries, and the watermark (loaded last)
    /// reports the gap.
    pub fn write_after(&self, cutoff: Option<i128>, out: &mut BytesMut) -> ReadOutcome {
        let head = self.head.load(Ordering::Acquire);
        let oldest = head.saturating_sub(self.slots.len() as u64);
        let mut start = head;
        let mut bytes = 0;
        let mut newest = None;
        while start > oldest {
            let pos = start - 1;
            let guard = self.slot(pos).load();
            match guard.as_ref() {
                Some(e) if e.pos == pos && cutoff.is_none_or(|c| i128::from(e.created) > c) => {
                    newest = newest.or(Some(e.created));
                    bytes += e.json.len() + 1;
                    start = pos;
                }
                _ => break,
            }
        }
        out.reserve(bytes);
        let base = out.len();
        for pos in start..head {
            let guard = self.slot(pos).load();
            match guard.as_ref() {
                Some(e) if e.pos == pos => {
                    if out.len() > base {
                        out.put_u8(b',');
                    }
                    out.extend_from_slice(&e.json);
                }
                _ => out.truncate(base),
            }
        }
        ReadOutcome { newest, gap: self.gap_after(cutoff) }
    }

    /// Whether a message newer than `cutoff` has left (see the module doc).
    fn gap_after(&self, cutoff: Option<i128>) -> bool {
        match (self.watermark(), cutoff) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(left), Some(c)) => c < i128::from(left),
        }
    }

    /// Like [`Mailbox::read_after`] but only tells whether anything is newer than `cutoff`;
    /// the empty poll's fast path.
    pub fn newest(&self) -> Option<i64> {
        let head = self.head.load(Ordering::Acquire);
        let pos = head.checked_sub(1)?;
        let entry = self.slot(pos).load();
        entry.as_ref().filter(|e| e.pos == pos).map(|e| e.created)
    }

    /// Number of messages currently held (a snapshot; for metrics and tests).
    pub fn len(&self) -> usize {
        let mut out = Vec::new();
        self.read_after(None, &mut out);
        out.len()
    }

    /// Whether the mailbox holds no message.
    pub fn is_empty(&self) -> bool {
        self.newest().is_none()
    }
}

/// Exclusive write access to a mailbox; see [`Mailbox::lock`].
pub struct MailboxWriter<'a> {
    mailbox: &'a Mailbox,
    tail: MutexGuard<'a, u64>,
}

impl MailboxWriter<'_> {
    fn raise_watermark(&self, ns: i64) {
        // Only writers store, under the lock, so load-then-store cannot lose an update.
        let left = &self.mailbox.left;
        if ns > left.load(Ordering::Relaxed) {
            left.store(ns, Ordering::Release);
        }
    }

    /// Appends a message. `created` must be greater than that of every message pushed before
    /// (the engine guarantees it by taking timestamps while holding this guard).
    pub fn push(&mut self, created: i64, json: Bytes) {
        let mb = self.mailbox;
        let pos = mb.head.load(Ordering::Relaxed);
        let slot = mb.slot(pos);
        if let Some(old) = slot.load().as_ref() {
            // Raise the watermark before the old entry becomes unreachable.
            self.raise_watermark(old.created);
        }
        slot.store(Some(Arc::new(Entry { pos, created, json })));
        mb.head.store(pos + 1, Ordering::Release);
        let oldest = (pos + 1).saturating_sub(mb.slots.len() as u64);
        if *self.tail < oldest {
            *self.tail = oldest;
        }
    }

    /// Records that a message created at `ns` left without being pushed here (used by restore
    /// for messages already past their TTL).
    pub fn mark_left(&mut self, ns: i64) {
        self.raise_watermark(ns);
    }

    /// Removes every message created before `before`, oldest first, and returns the `created`
    /// of the newest one removed. Cost follows the number removed.
    pub fn cull_before(&mut self, before: i64) -> Option<i64> {
        let mb = self.mailbox;
        let head = mb.head.load(Ordering::Relaxed);
        let start = (*self.tail).max(head.saturating_sub(mb.slots.len() as u64));
        let mut end = start;
        let mut newest = None;
        while end < head {
            match mb.slot(end).load().as_ref() {
                Some(e) if e.pos == end && e.created < before => newest = Some(e.created),
                _ => break,
            }
            end += 1;
        }
        let newest = newest?;
        self.raise_watermark(newest);
        // Newest first, so a reader seeking back meets a cleared slot before any culled entry.
        for pos in (start..end).rev() {
            mb.slot(pos).store(None);
        }
        *self.tail = end;
        Some(newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(mb: &Mailbox, created: i64) {
        mb.lock().push(created, Bytes::from(created.to_string()));
    }

    fn read(mb: &Mailbox, cutoff: Option<i128>) -> (Vec<i64>, ReadOutcome) {
        let mut out = Vec::new();
        let o = mb.read_after(cutoff, &mut out);
        (out.iter().rev().map(|e| e.created).collect(), o)
    }

    #[test]
    fn returns_messages_after_cutoff_oldest_first() {
        let mb = Mailbox::new(8);
        for t in 1..=5 {
            push(&mb, t * 10);
        }
        assert_eq!(read(&mb, None).0, vec![10, 20, 30, 40, 50]);
        assert_eq!(read(&mb, Some(30)).0, vec![40, 50]);
        assert_eq!(read(&mb, Some(29)).0, vec![30, 40, 50]);
        let (v, o) = read(&mb, Some(50));
        assert!(v.is_empty());
        assert_eq!(o, ReadOutcome { newest: None, gap: false });
        assert_eq!(mb.newest(), Some(50));
        let mut buf = BytesMut::new();
        let o = mb.write_after(Some(29), &mut buf);
        assert_eq!(&buf[..], b"30,40,50");
        assert_eq!(o, ReadOutcome { newest: Some(50), gap: false });
        buf.clear();
        assert_eq!(mb.write_after(Some(50), &mut buf), ReadOutcome { newest: None, gap: false });
        assert!(buf.is_empty());
    }

    #[test]
    fn overwrite_keeps_newest_and_reports_gap() {
        let mb = Mailbox::new(3);
        for t in 1..=5 {
            push(&mb, t);
        }
        let (v, o) = read(&mb, None);
        assert_eq!(v, vec![3, 4, 5]);
        assert!(o.gap, "messages 1 and 2 left; a poll from the beginning has a gap");
        assert_eq!(mb.watermark(), Some(2));
        assert!(read(&mb, Some(1)).1.gap, "cursor 1 is older than message 2 which left");
        assert!(!read(&mb, Some(2)).1.gap, "cursor 2 saw everything that left");
        assert_eq!(read(&mb, Some(2)).0, vec![3, 4, 5]);
    }

    #[test]
    fn cull_removes_oldest_and_raises_watermark() {
        let mb = Mailbox::new(4);
        for t in 1..=6 {
            push(&mb, t);
        }
        assert_eq!(mb.lock().cull_before(5), Some(4));
        assert_eq!(read(&mb, None).0, vec![5, 6]);
        assert_eq!(mb.watermark(), Some(4));
        assert_eq!(mb.lock().cull_before(5), None, "nothing more to cull");
        push(&mb, 7);
        push(&mb, 8);
        push(&mb, 9);
        assert_eq!(read(&mb, None).0, vec![6, 7, 8, 9]);
        assert_eq!(mb.watermark(), Some(5), "pushing over a culled slot moves nothing");
        assert_eq!(mb.lock().cull_before(100), Some(9));
        assert!(mb.is_empty());
        assert!(read(&mb, None).0.is_empty());
        push(&mb, 10);
        assert_eq!(read(&mb, Some(9)).0, vec![10]);
        assert!(!read(&mb, Some(9)).1.gap);
    }

    /// Hard stress test of the lock-free read: writers push (and a culler culls) as fast as they
    /// can while readers check every answer is a contiguous run of pushes in order, with each
    /// entry's JSON exactly as written for its `created` — no torn, stale or overwritten slot.
    #[test]
    fn concurrent_readers_never_see_torn_or_overwritten_slots() {
        use std::sync::atomic::AtomicBool;
        let mb = Arc::new(Mailbox::new(16));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let mb = mb.clone();
            std::thread::spawn(move || {
                for t in 1..=200_000i64 {
                    let mut w = mb.lock();
                    w.push(t, Bytes::from(format!("m{t}")));
                    if t % 97 == 0 {
                        w.cull_before(t - 5);
                    }
                }
            })
        };
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let mb = mb.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    let mut reads = 0u64;
                    let mut cursor: i128 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        out.clear();
                        let cutoff = if r == 0 { Some(cursor) } else { None };
                        if r == 2 {
                            // The copying read: a comma-separated run of consecutive messages.
                            let mut buf = BytesMut::new();
                            let o = mb.write_after(None, &mut buf);
                            let text = std::str::from_utf8(&buf).unwrap();
                            let ts: Vec<i64> = if text.is_empty() {
                                Vec::new()
                            } else {
                                text.split(',').map(|m| m.strip_prefix('m').unwrap().parse().unwrap()).collect()
                            };
                            assert!(ts.windows(2).all(|w| w[1] == w[0] + 1), "not a contiguous run: {text}");
                            if let (Some(last), Some(newest)) = (ts.last(), o.newest) {
                                assert_eq!(*last, newest, "newest is the last copied");
                            }
                            reads += 1;
                            continue;
                        }
                        let o = mb.read_after(cutoff, &mut out);
                        for w in out.windows(2) {
                            assert_eq!(w[0].pos, w[1].pos + 1, "hole in the run");
                            assert_eq!(w[0].created, w[1].created + 1, "not contiguous");
                        }
                        for e in &out {
                            assert_eq!(e.json, format!("m{}", e.created).as_bytes(), "torn");
                            assert_eq!(e.pos as i64 + 1, e.created, "wrong slot");
                        }
                        if let Some(c) = cutoff {
                            if let Some(oldest) = out.last() {
                                // The reader keeps up with a cursor: the only way it may miss
                                // messages is a gap that the answer reports.
                                if i128::from(oldest.created) != c + 1 {
                                    assert!(o.gap, "missed messages without a gap");
                                }
                            }
                        }
                        if let Some(n) = o.newest {
                            cursor = i128::from(n);
                        }
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        writer.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }
}
