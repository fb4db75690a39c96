//! A user's mailbox: a fixed-capacity ring of the newest messages, read without locks.
//!
//! # What a reader can rely on
//!
//! - Messages are held in push order, which the engine makes equal to timestamp order (see
//!   `crate::engine`). A read returns the messages created strictly after a cutoff, oldest
//!   first, as one contiguous run of pushes: never a message twice, never a hole in the middle.
//! - A read takes **no lock** and never waits for a writer. It seeks back from the head and stops
//!   at the first slot that is older than the cutoff, empty, or no longer holds the push it wants,
//!   so its cost follows the number of messages returned, not the capacity.
//! - A reader never sees a torn or overwritten slot: each slot is an atomic pointer to an
//!   immutable `Entry`, replaced whole, and each entry carries the position (`pos`) of the push
//!   that stored it, like the slots of tokio's `broadcast` channel. A reader that wants push `p`
//!   and finds another `pos` knows `p` was pushed out under it and stops there.
//! - When the ring is full a push overwrites the oldest message. A message that leaves — pushed
//!   out, or culled by TTL — raises the mailbox's *watermark*: the newest `created` that has left.
//!   A reader compares its cutoff with the watermark (loaded after its read) to report a `gap`.
//!   Writers raise the watermark *before* they overwrite or clear a slot, so a reader that saw a
//!   slot go also sees the watermark that covers it.
//!
//! # Memory reclamation: the one `unsafe` in chatbus
//!
//! Entries replaced or culled are freed through `crossbeam-epoch`: a reader pins the epoch once
//! per read and then loads slots with plain atomic loads, and a writer hands the entry it unlinked
//! to `defer_destroy`, which frees it only after every reader pinned at that time has unpinned.
//! An earlier version kept `Arc<Entry>` in `arc-swap` slots (no `unsafe`): in perf on the
//! 1024-message poll, arc-swap's per-slot loads (a `SeqCst` debt-slot handshake) and the read
//! around them took about 45 % of the server's CPU, and criterion measured that read of 1024
//! messages at 29.7 µs, against 4.8 µs now (epoch slots and the galloping seek together; README,
//! "Engine micro-benchmarks"). There are four `unsafe` blocks, each with its `SAFETY` comment: the
//! reader's dereference in [`Mailbox::read_into`]'s helper `entry`, the writer's dereference and
//! `defer_destroy` in `replace`, and `Drop`. The ring is model-checked with loom in `tests/loom/`
//! and stress-tested in this module's tests.
//!
//! # Writers
//!
//! Writers (push and cull) are serialised by a small mutex per mailbox, taken through
//! [`Mailbox::lock`]. The engine holds that guard while it assigns a message its timestamp,
//! which is what keeps timestamp order and push order the same.

use bytes::{BufMut, Bytes, BytesMut};
use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};
use sync::{AtomicI64, AtomicU64, Mutex, MutexGuard, Ordering};

/// The atomics and the writer mutex: std and parking_lot normally, loom's under `chatbus_loom`.
#[cfg(not(chatbus_loom))]
mod sync {
    pub(super) use parking_lot::{Mutex, MutexGuard};
    pub(super) use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
}

#[cfg(chatbus_loom)]
mod sync {
    pub(super) use loom::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    pub(super) use loom::sync::MutexGuard;

    /// loom's mutex with parking_lot's signature.
    #[derive(Debug)]
    pub(super) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(super) fn new(t: T) -> Self {
            Self(loom::sync::Mutex::new(t))
        }

        pub(super) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

/// "Nothing has left this mailbox yet."
const NO_WATERMARK: i64 = i64::MIN;

/// One message as a mailbox holds it: its timestamp and its pre-rendered JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The position of the push that stored this entry (0 for the first push).
    pos: u64,
    /// Server timestamp, nanoseconds since the epoch; strictly increasing along `pos`.
    created: i64,
    /// Bytes of JSON pushed into this mailbox before this entry, so a read can size its answer
    /// from its first and last entry alone.
    offset: u64,
    /// The message rendered as a JSON object, once, when it was sent.
    json: Bytes,
}

/// A ring of the newest messages of one user. See the module doc.
#[derive(Debug)]
pub struct Mailbox {
    slots: Box<[Atomic<Entry>]>,
    /// Number of pushes so far, i.e. the `pos` the next push gets. Published with `Release`
    /// after the slot is written, so a reader that loads it sees every slot below it filled.
    head: AtomicU64,
    /// Newest `created` that has left the mailbox, or [`NO_WATERMARK`].
    left: AtomicI64,
    /// Serialises writers and holds their bookkeeping.
    writer: Mutex<WriterState>,
}

/// What only writers need, behind the writer mutex.
#[derive(Debug, Default)]
struct WriterState {
    /// The lowest `pos` that culling has not yet removed.
    tail: u64,
    /// Bytes of JSON pushed so far (the next entry's `offset`).
    bytes: u64,
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
            slots: (0..capacity).map(|_| Atomic::null()).collect(),
            head: AtomicU64::new(0),
            left: AtomicI64::new(NO_WATERMARK),
            writer: Mutex::new(WriterState::default()),
        }
    }

    /// How many messages the mailbox can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Takes the writer lock. Reads never need it.
    pub fn lock(&self) -> MailboxWriter<'_> {
        MailboxWriter { mailbox: self, state: self.writer.lock() }
    }

    /// The newest `created` that has left the mailbox, if any.
    pub fn watermark(&self) -> Option<i64> {
        match self.left.load(Ordering::Acquire) {
            NO_WATERMARK => None,
            ns => Some(ns),
        }
    }

    fn slot(&self, pos: u64) -> &Atomic<Entry> {
        // The cast cannot truncate: the remainder is below the slot count, a usize.
        &self.slots[(pos % self.slots.len() as u64) as usize]
    }

    /// The entry in `pos`'s slot, if it still holds push `pos`; valid while `guard` is pinned.
    fn entry<'g>(&self, pos: u64, guard: &'g Guard) -> Option<&'g Entry> {
        let shared = self.slot(pos).load(Ordering::Acquire, guard);
        // SAFETY: an entry is freed only (a) through `defer_destroy` after a writer unlinked it
        // from its slot — and the epoch then keeps it alive until every guard pinned before the
        // unlink, such as `guard`, is dropped — or (b) in `Drop`, which has `&mut self` and so no
        // reader. The reference is tied to `guard`'s lifetime, so it cannot outlive the pin.
        // Entries are never mutated after they are published (Release store, Acquire load).
        let entry = unsafe { shared.as_ref() }?;
        (entry.pos == pos).then_some(entry)
    }

    /// Copies the entries created strictly after `cutoff` (all when `None`) into `out`,
    /// **newest first**, and reports the newest one and whether there is a gap: the plain
    /// backward scan that tests hold [`Mailbox::read_into`] against.
    #[cfg(test)]
    fn read_after(&self, cutoff: Option<i128>, out: &mut Vec<Entry>) -> ReadOutcome {
        let guard = epoch::pin();
        let head = self.head.load(Ordering::Acquire);
        let oldest = head.saturating_sub(self.slots.len() as u64);
        let mut pos = head;
        while pos > oldest {
            pos -= 1;
            match self.entry(pos, &guard) {
                Some(e) if cutoff.is_none_or(|c| i128::from(e.created) > c) => out.push(e.clone()),
                _ => break, // older than the cutoff, culled, or pushed out under us
            }
        }
        drop(guard);
        let newest = out.first().map(|e| e.created);
        // Loaded after the read: a slot we found gone had raised it before it went.
        ReadOutcome { newest, gap: self.gap_after(cutoff) }
    }

    /// Appends the JSON of the entries created strictly after `cutoff` (all when `None`) to
    /// `out`, **oldest first**, separated by commas — the inside of a poll answer's array — and
    /// reports the newest one and whether there is a gap. The poll's hot path.
    ///
    /// Lock-free and without reference counting. Pinned once, it finds the oldest entry to
    /// return by galloping back from the head (head-1, -2, -4, …) and then bisecting, so the seek
    /// costs O(log k) loads for k messages returned (1 for an empty poll); sizes the answer from
    /// the first and last entry's `offset`; and copies forward. If an entry left during the copy
    /// (a writer lapped the ring), everything copied before it is dropped, so the answer stays
    /// one contiguous run of the newest entries, and the watermark (loaded last) reports the gap.
    pub fn read_into(&self, cutoff: Option<i128>, out: &mut BytesMut) -> ReadOutcome {
        let guard = epoch::pin();
        let head = self.head.load(Ordering::Acquire);
        let oldest = head.saturating_sub(self.slots.len() as u64);
        let wanted = |pos: u64| -> bool {
            self.entry(pos, &guard).is_some_and(|e| cutoff.is_none_or(|c| i128::from(e.created) > c))
        };
        // Find where the run of wanted entries that ends at the head begins. Timestamps increase
        // with `pos`, so with no writer active the entries not wanted (older than the cutoff, or
        // gone) form a prefix of [oldest, head) and this finds its end exactly. A cull or a
        // lapping writer running meanwhile can clear slots in the middle of the run; the seek
        // may then stop at any wanted slot, and the copy below — which drops what it copied
        // before any slot it finds gone — still returns a contiguous run ending at the head,
        // while the watermark, raised before each slot went, reports the gap. `start` is the
        // oldest position known wanted, `gone` one known not.
        let mut start = head;
        let mut gone = None;
        let mut step = 1;
        while start > oldest {
            let probe = start.saturating_sub(step).max(oldest);
            if !wanted(probe) {
                gone = Some(probe);
                break;
            }
            start = probe;
            step *= 2;
        }
        if let Some(mut gone) = gone {
            while start - gone > 1 {
                let mid = gone + (start - gone) / 2;
                if wanted(mid) {
                    start = mid;
                } else {
                    gone = mid;
                }
            }
        }
        if let (Some(first), Some(last)) = (self.entry(start, &guard), self.entry(head.wrapping_sub(1), &guard)) {
            let bytes = (last.offset + last.json.len() as u64).saturating_sub(first.offset) + (head - start);
            out.reserve(usize::try_from(bytes).unwrap_or(0));
        }
        let base = out.len();
        let mut newest = None;
        for pos in start..head {
            match self.entry(pos, &guard) {
                Some(e) => {
                    if out.len() > base {
                        out.put_u8(b',');
                    }
                    out.extend_from_slice(&e.json);
                    newest = Some(e.created);
                }
                None => {
                    out.truncate(base);
                    newest = None;
                }
            }
        }
        drop(guard);
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

    /// The `created` of the newest message held, if any.
    #[cfg(test)]
    fn newest(&self) -> Option<i64> {
        let guard = epoch::pin();
        let pos = self.head.load(Ordering::Acquire).checked_sub(1)?;
        self.entry(pos, &guard).map(|e| e.created)
    }

    /// Number of messages currently held (a snapshot).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let mut out = Vec::new();
        self.read_after(None, &mut out);
        out.len()
    }

    /// Whether the mailbox holds no message.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.newest().is_none()
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        for slot in self.slots.iter() {
            // SAFETY: `&mut self`: no reader or writer can hold this mailbox any more, and every
            // entry still linked from a slot was never handed to `defer_destroy` (writers unlink
            // an entry before deferring it), so each is freed exactly once, here.
            unsafe {
                let shared = slot.load(Ordering::Relaxed, epoch::unprotected());
                if !shared.is_null() {
                    drop(shared.into_owned());
                }
            }
        }
    }
}

/// Exclusive write access to a mailbox; see [`Mailbox::lock`].
pub struct MailboxWriter<'a> {
    mailbox: &'a Mailbox,
    state: MutexGuard<'a, WriterState>,
}

impl MailboxWriter<'_> {
    fn raise_watermark(&self, ns: i64) {
        // Only writers store, under the lock, so load-then-store cannot lose an update.
        let left = &self.mailbox.left;
        if ns > left.load(Ordering::Relaxed) {
            left.store(ns, Ordering::Release);
        }
    }

    /// Replaces the entry in `pos`'s slot with `new`, raising the watermark over what leaves
    /// first, and hands the old entry to the epoch to free.
    fn replace(&self, pos: u64, new: Shared<'_, Entry>, guard: &Guard) {
        let slot = self.mailbox.slot(pos);
        // Writers are serialised by the mutex we hold, so nothing else stores to this slot.
        let old = slot.load(Ordering::Acquire, guard);
        // SAFETY: as in `Mailbox::entry`; `guard` is pinned and only writers (us) unlink.
        if let Some(old) = unsafe { old.as_ref() } {
            self.raise_watermark(old.created);
        }
        slot.store(new, Ordering::Release);
        if !old.is_null() {
            // SAFETY: `old` is now unlinked from its slot (the only place it was reachable from),
            // so no new reader can load it; readers pinned before the store may still hold it,
            // which is exactly what the epoch waits for before freeing it.
            unsafe { guard.defer_destroy(old) };
        }
    }

    /// Appends a message. `created` must be greater than that of every message pushed before
    /// (the engine guarantees it by taking timestamps while holding this guard).
    pub fn push(&mut self, created: i64, json: Bytes) {
        let mb = self.mailbox;
        let pos = mb.head.load(Ordering::Relaxed);
        let guard = epoch::pin();
        let offset = self.state.bytes;
        self.state.bytes += json.len() as u64;
        let new = Owned::new(Entry { pos, created, offset, json }).into_shared(&guard);
        self.replace(pos, new, &guard);
        mb.head.store(pos + 1, Ordering::Release);
        let oldest = (pos + 1).saturating_sub(mb.slots.len() as u64);
        if self.state.tail < oldest {
            self.state.tail = oldest;
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
        let guard = epoch::pin();
        let head = mb.head.load(Ordering::Relaxed);
        let start = self.state.tail.max(head.saturating_sub(mb.slots.len() as u64));
        let mut end = start;
        let mut newest = None;
        while end < head {
            match mb.entry(end, &guard) {
                Some(e) if e.created < before => newest = Some(e.created),
                _ => break,
            }
            end += 1;
        }
        let newest = newest?;
        // Newest first, so a reader seeking back meets a cleared slot before any culled entry;
        // `replace` raises the watermark before each slot goes.
        for pos in (start..end).rev() {
            self.replace(pos, Shared::null(), &guard);
        }
        self.state.tail = end;
        Some(newest)
    }
}

#[cfg(all(test, not(chatbus_loom)))]
mod tests;
