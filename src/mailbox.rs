//! A user's mailbox: a ring of the newest messages that grows with them, read without locks.
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
//! - When the mailbox holds its capacity a push overwrites the oldest message. A message that
//!   leaves — pushed out, or culled by TTL — raises the mailbox's *watermark*: the newest
//!   `created` that has left.
//!   A reader compares its cutoff with the watermark (loaded after its read) to report a `gap`.
//!   Writers raise the watermark *before* they overwrite or clear a slot, so a reader that saw a
//!   slot go also sees the watermark that covers it.
//!
//! # Memory that follows use
//!
//! A mailbox starts with no ring at all (an empty mailbox costs its 56-byte header). The first
//! push allocates a ring of [`MIN_RING`] slots; a push into a full ring that is still below the
//! mailbox's capacity replaces it with one twice as large (up to the capacity), and a cull that
//! leaves the ring at most a quarter full replaces it with one half as large — or with none when
//! nothing is left. The new ring holds the same entry pointers at their new slots, and is
//! published (`Release`) before the push that needed it raises the head; a reader loads the head
//! first and the ring second (`Acquire` both), so the ring it reads from holds every push below
//! the head it saw, or newer ones whose `pos` tells them apart. Retired rings go to the epoch
//! like entries do — without their entries, which live on in the new ring.
//!
//! # Segments: answers that keep the mailbox's bytes
//!
//! A mailbox writes each message, after a comma, into its current *segment*: an append-only
//! buffer (`BytesMut`) from which the message's *piece* is split off as `Bytes`, so pieces pushed
//! one after another lie one after another in memory. A read walks the entries it returns and
//! joins those of one segment into a [`Run`] — a slice of the segment holding their JSON,
//! comma-separated — taking one reference count per run rather than per message. Its
//! [`Append`] copies short runs and keeps long ones (`Run::into_bytes`), so a 1024-message
//! answer is the envelope and a few slices of the mailbox's own memory, written with vectored
//! I/O; what it costs follows the messages walked, not the bytes (criterion: `poll_bytes`).
//! A new segment is about as large as what the mailbox holds (512 B to 64 KiB), so a quiet
//! mailbox's segment stays small and a segment is freed once its last piece has left and no
//! answer holds it; a mailbox culled empty lets its segment go.
//!
//! # Waiting
//!
//! A reader that found nothing (a held poll, a stream) registers as a waiter
//! ([`Mailbox::register_waiter`]), checks [`Mailbox::newest`] once more, and sleeps until woken;
//! a push tells its caller whether anyone may be waiting. Registration is a counter increment
//! and a `SeqCst` fence; a push ends with a `SeqCst` fence and a load of the counter. Either the
//! waiter's check sees the push or the push sees the waiter — never neither, so no wake-up is
//! lost (model-checked with loom) — and with nobody waiting a push pays one fence and one load.
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
//! "Engine micro-benchmarks"). The `unsafe` blocks, each with its `SAFETY` comment, are: the
//! dereference of a loaded ring (`Mailbox::ring`) and of a loaded entry (`entry`), the writer's
//! dereference of the entry it replaces and its `defer_destroy` (`replace`), the `defer_destroy`
//! of a retired ring (`MailboxWriter::install`), `Drop`, and the slice of a run
//! ([`Run::as_slice`]: pieces of one segment seen as one slice — `bytes` cannot join adjacent
//! `Bytes`; it paid 0.64 → 0.96 of the floor's CPU on the 1024-message poll). The ring, its
//! growth and its shrinking, and reads through runs spanning segments, are model-checked with
//! loom in `tests/loom/` and stress-tested in this module's tests (one reader keeping its runs
//! while writers lap the ring, and runs kept past the mailbox's own end). `.ci/run` also runs
//! these tests under valgrind's memcheck, which fails on any read of freed memory (checked by
//! making `Run::into_bytes` drop its reference on the segment: memcheck then reports the
//! invalid reads).
//!
//! # Why one file
//!
//! The ring, its readers and its writers share one invariant and one `unsafe` story, and the
//! loom model (`tests/loom/`) compiles this file alone by path; so it stays whole (about 720
//! lines, a third of them documentation), with its tests beside it in `mailbox/tests.rs`.
//!
//! # Writers
//!
//! Writers (push and cull) are serialised by a small mutex per mailbox, taken through
//! [`Mailbox::lock`]. The engine holds that guard while it assigns a message its timestamp,
//! which is what keeps timestamp order and push order the same.

use bytes::{BufMut, Bytes, BytesMut};
use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};
use smallvec::SmallVec;
use sync::{fence, AtomicI64, AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};

/// The atomics and the writer mutex: std and parking_lot normally, loom's under `chatbus_loom`.
#[cfg(not(chatbus_loom))]
mod sync {
    pub(super) use parking_lot::{Mutex, MutexGuard};
    pub(super) use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, Ordering};
}

#[cfg(chatbus_loom)]
mod sync {
    pub(super) use loom::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, Ordering};
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

/// The smallest ring a mailbox allocates (one slot under loom, so that the model grows it).
#[cfg(not(chatbus_loom))]
pub const MIN_RING: usize = 4;
/// The smallest ring a mailbox allocates (one slot under loom, so that the model grows it).
#[cfg(chatbus_loom)]
pub const MIN_RING: usize = 1;

/// One message as a mailbox holds it: its timestamp and its pre-rendered JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The position of the push that stored this entry (0 for the first push).
    pos: u64,
    /// Server timestamp, nanoseconds since the epoch; strictly increasing along `pos`.
    created: i64,
    /// Bytes pushed into this mailbox before this entry (the sum of the pieces' lengths).
    offset: u64,
    /// The number of the segment `piece` lies in (see "Segments" in the module doc).
    segment: u64,
    /// A comma, then the message rendered as a JSON object: a slice of its segment, right after
    /// the piece of the entry pushed before it when that is in the same segment.
    piece: Bytes,
}

impl Entry {
    /// The message's JSON object.
    fn json(&self) -> Bytes {
        self.piece.slice(1..)
    }
}

/// The slots: push `pos` lives in slot `pos % slots.len()`.
#[derive(Debug)]
struct Ring {
    slots: Box<[Atomic<Entry>]>,
}

impl Ring {
    fn new(len: usize) -> Self {
        Self { slots: (0..len.max(1)).map(|_| Atomic::null()).collect() }
    }

    fn slot(&self, pos: u64) -> &Atomic<Entry> {
        &self.slots[self.index(pos)]
    }

    /// The index of `pos`'s slot.
    fn index(&self, pos: u64) -> usize {
        // The cast cannot truncate: the remainder is below the slot count, a usize.
        (pos % self.slots.len() as u64) as usize
    }

    /// The index of the slot after slot `i`'s. Readers walking a run step the index along
    /// instead of computing `pos % len` (a 64-bit division) per push; with the run being built
    /// kept in a local, that made walking 1024 small messages a third faster (criterion
    /// `poll_bytes`, README "Hot path").
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// The entry in `pos`'s slot, if it still holds push `pos`; valid while `guard` is pinned.
    fn entry<'g>(&self, pos: u64, guard: &'g Guard) -> Option<&'g Entry> {
        self.entry_at(self.index(pos), pos, guard)
    }

    /// The entry in slot `i` (which must be `pos`'s), if it still holds push `pos`.
    fn entry_at<'g>(&self, i: usize, pos: u64, guard: &'g Guard) -> Option<&'g Entry> {
        let shared = self.slots.get(i)?.load(Ordering::Acquire, guard);
        // SAFETY: an entry is freed only (a) through `defer_destroy` after a writer unlinked it
        // from the current ring — and the epoch then keeps it alive until every guard pinned
        // before the unlink, such as `guard`, is dropped; a retired ring that still points at it
        // was retired before that unlink, so a reader that reached it through such a ring was
        // pinned before it too — or (b) in `Drop`, which has `&mut self` and so no reader. The
        // reference is tied to `guard`'s lifetime, so it cannot outlive the pin. Entries are
        // never mutated after they are published (Release store, Acquire load).
        let entry = unsafe { shared.as_ref() }?;
        (entry.pos == pos).then_some(entry)
    }
}

/// A ring of the newest messages of one user. See the module doc.
#[derive(Debug)]
pub struct Mailbox {
    /// The current ring, or null while the mailbox holds nothing.
    ring: Atomic<Ring>,
    /// Number of pushes so far, i.e. the `pos` the next push gets. Published with `Release`
    /// after the slot (and any new ring) is written, so a reader that loads it sees every slot
    /// below it filled.
    head: AtomicU64,
    /// Newest `created` that has left the mailbox, or [`NO_WATERMARK`].
    left: AtomicI64,
    /// Serialises writers and holds their bookkeeping.
    writer: Mutex<WriterState>,
    /// Readers waiting for the next push (held polls, streams); see "Waiting" in the module doc.
    waiting: AtomicU32,
}

/// What only writers need, behind the writer mutex.
#[derive(Debug, Default)]
struct WriterState {
    /// The lowest `pos` that has not left (culled or pushed out).
    tail: u64,
    /// Bytes pushed so far (the next entry's `offset`).
    bytes: u64,
    /// The most messages the mailbox holds.
    capacity: u32,
    /// The unwritten rest of the current segment: pieces are appended here and split off.
    segment: BytesMut,
    /// The current segment's number; a new segment takes the next.
    segment_no: u64,
}

/// The smallest segment a mailbox allocates (tiny under loom, so that the model spans several).
#[cfg(not(chatbus_loom))]
const MIN_SEGMENT: usize = 512;
/// The smallest segment a mailbox allocates (tiny under loom, so that the model spans several).
#[cfg(chatbus_loom)]
const MIN_SEGMENT: usize = 4;
/// The largest segment a mailbox allocates for pieces that fit in one.
const MAX_SEGMENT: usize = 64 * 1024;

/// The JSON of consecutive messages, comma-separated, as one slice of a segment: what a read
/// hands to an [`Append`]. Holds a reference on the segment, so it stays valid whatever the
/// mailbox does meanwhile.
#[derive(Debug)]
pub struct Run {
    /// The piece of the run's first entry; its reference keeps the whole segment alive.
    first: Bytes,
    /// The segment `first` lies in.
    segment: u64,
    /// Bytes of the run from `first`'s start: its entries' pieces, which follow one another.
    len: usize,
    /// Whether the run starts a read's answer, and so leaves out its first piece's comma.
    leading: bool,
}

impl Run {
    /// The run's bytes.
    pub fn as_slice(&self) -> &[u8] {
        let skip = usize::from(self.leading);
        // SAFETY: a `Run` is made only by `Mailbox::read_into`, which starts it with an entry's
        // piece and extends it (`extends`) only by pieces of the same segment that begin exactly
        // where the run ends, so `len` bytes from `first`'s start are pieces of that segment,
        // one after another, in one allocation. `first` holds a reference on that allocation
        // (a `Bytes` split off the segment's `BytesMut`), so it lives as long as `self`. Those
        // bytes were written before their entries were published (Release store of the slot,
        // loaded with Acquire by the read) and a piece is never written again: a writer only
        // appends into the unsplit rest of the segment, past every piece. `skip` is 0 or 1 and
        // every piece holds at least its comma, so `skip <= len`.
        unsafe { std::slice::from_raw_parts(self.first.as_ptr().add(skip), self.len - skip) }
    }

    /// Whether `piece` of `segment` continues this run: same segment, starting where it ends.
    fn extends(&self, segment: u64, piece: &Bytes) -> bool {
        segment == self.segment && (self.first.as_ptr() as usize).wrapping_add(self.len) == piece.as_ptr() as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len - usize::from(self.leading)
    }

    /// Whether the run holds no byte (never, for a run a read made).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The run as `Bytes`, without copying: the segment stays alive while they do.
    pub fn into_bytes(self) -> Bytes {
        if self.len == self.first.len() {
            let skip = usize::from(self.leading);
            return self.first.slice(skip..);
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Run {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Where a read appends the runs it found, oldest first; their concatenation is the
/// comma-separated JSON of the messages (the inside of a poll answer's array).
pub trait Append {
    /// Runs at least this long are kept (see [`Run::into_bytes`]); shorter ones are copied.
    const KEEP_FROM: usize = usize::MAX;

    /// Makes room for `copied` bytes: what the runs about to be appended hold, but those kept.
    fn reserve(&mut self, copied: usize);

    /// Appends one run: copying it, or keeping it when it is at least `KEEP_FROM` long.
    fn append(&mut self, run: Run);
}

/// Copies.
impl Append for BytesMut {
    fn reserve(&mut self, copied: usize) {
        BytesMut::reserve(self, copied);
    }

    fn append(&mut self, run: Run) {
        self.extend_from_slice(run.as_slice());
    }
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
    /// An empty mailbox (no ring yet) that will hold at most `capacity` (at least 1) messages.
    pub fn new(capacity: usize) -> Self {
        let capacity = u32::try_from(capacity.max(1)).unwrap_or(u32::MAX);
        Self {
            ring: Atomic::null(),
            head: AtomicU64::new(0),
            left: AtomicI64::new(NO_WATERMARK),
            writer: Mutex::new(WriterState { capacity, ..WriterState::default() }),
            waiting: AtomicU32::new(0),
        }
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

    /// Registers a waiter: after this, a push either is seen by [`Mailbox::newest`] or reports
    /// (from [`MailboxWriter::push`]) that someone waits. Pair with [`Mailbox::unregister_waiter`].
    pub fn register_waiter(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence in `push`: of the waiter's count and the pusher's head, at least
        // one side sees the other's store (the store-buffer litmus test, forbidden by SeqCst).
        fence(Ordering::SeqCst);
    }

    /// Takes back one [`Mailbox::register_waiter`].
    pub fn unregister_waiter(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// The `created` of the newest message held, if any. Lock-free.
    pub fn newest(&self) -> Option<i64> {
        let guard = epoch::pin();
        let pos = self.head.load(Ordering::Acquire).checked_sub(1)?;
        self.ring(&guard)?.entry(pos, &guard).map(|e| e.created)
    }

    /// The current ring, if any; valid while `guard` is pinned.
    fn ring<'g>(&self, guard: &'g Guard) -> Option<&'g Ring> {
        let shared = self.ring.load(Ordering::Acquire, guard);
        // SAFETY: a ring is freed only through `defer_destroy` after a writer unlinked it (it
        // installed a new one), which waits for every guard pinned before, such as `guard`; or
        // in `Drop`, with no reader. Rings are never mutated after publication but through
        // their slots' atomics.
        unsafe { shared.as_ref() }
    }

    /// Slots allocated for this mailbox (0 while empty); for tests and the memory benchmark.
    pub fn ring_len(&self) -> usize {
        let guard = epoch::pin();
        self.ring(&guard).map_or(0, |r| r.slots.len())
    }

    /// Copies the entries created strictly after `cutoff` (all when `None`) into `out`,
    /// **newest first**, and reports the newest one and whether there is a gap: the plain
    /// backward scan that tests hold [`Mailbox::read_into`] against.
    #[cfg(test)]
    fn read_after(&self, cutoff: Option<i128>, out: &mut Vec<Entry>) -> ReadOutcome {
        let guard = epoch::pin();
        let head = self.head.load(Ordering::Acquire);
        if let Some(ring) = self.ring(&guard) {
            let oldest = head.saturating_sub(ring.slots.len() as u64);
            let mut pos = head;
            while pos > oldest {
                pos -= 1;
                match ring.entry(pos, &guard) {
                    Some(e) if cutoff.is_none_or(|c| i128::from(e.created) > c) => out.push(e.clone()),
                    _ => break, // older than the cutoff, culled, or pushed out under us
                }
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
    /// Lock-free, and it copies nothing: pinned once, it loads the head and then the ring, finds
    /// the oldest entry to return (`seek`: O(log k) loads for k messages returned, 1 for an
    /// empty poll), and walks forward gathering the entries into [`Run`]s, one per segment
    /// spanned — a reference count taken per run, not per message. `out` then copies them or
    /// keeps them. If an entry left during the walk (a writer lapped the ring), the runs before
    /// it are dropped, so the answer stays one contiguous run of the newest entries, and the
    /// watermark (loaded last) reports the gap.
    pub fn read_into<A: Append>(&self, cutoff: Option<i128>, out: &mut A) -> ReadOutcome {
        let guard = epoch::pin();
        let head = self.head.load(Ordering::Acquire);
        let Some(ring) = self.ring(&guard) else {
            drop(guard);
            return ReadOutcome { newest: None, gap: self.gap_after(cutoff) };
        };
        let start = seek(ring, head, cutoff, &guard);
        // The finished runs, and the one being extended.
        let mut runs: SmallVec<[Run; 4]> = SmallVec::new();
        let mut current: Option<Run> = None;
        let mut newest = None;
        let mut i = ring.index(start);
        for pos in start..head {
            let entry = ring.entry_at(i, pos, &guard);
            i = ring.next(i);
            let Some(e) = entry else {
                // Lapped under us: keep only what follows, so the answer stays contiguous.
                runs.clear();
                current = None;
                newest = None;
                continue;
            };
            newest = Some(e.created);
            if let Some(run) = &mut current {
                if run.extends(e.segment, &e.piece) {
                    run.len += e.piece.len();
                    continue;
                }
            }
            let leading = current.is_none() && runs.is_empty();
            let run = Run { first: e.piece.clone(), segment: e.segment, len: e.piece.len(), leading };
            if let Some(done) = current.replace(run) {
                runs.push(done);
            }
        }
        if let Some(last) = current {
            runs.push(last);
        }
        drop(guard);
        let copied = runs.iter().map(Run::len).filter(|&len| len < A::KEEP_FROM).sum();
        if copied > 0 {
            out.reserve(copied);
        }
        for run in runs {
            out.append(run);
        }
        ReadOutcome { newest, gap: self.gap_after(cutoff) }
    }

    /// The oldest of the messages created strictly after `cutoff` (all when `None`), at most
    /// `limit` of them, as `(created, json)` — for streams, which frame each message on its own.
    /// The same lock-free read as [`Mailbox::read_into`]: a contiguous run of pushes, oldest
    /// first, with the gap reported from the watermark loaded after it. A reference count is
    /// taken on each message's segment (no copy).
    pub fn read_messages(&self, cutoff: Option<i128>, limit: usize, out: &mut Vec<(i64, Bytes)>) -> ReadOutcome {
        let guard = epoch::pin();
        let head = self.head.load(Ordering::Acquire);
        let Some(ring) = self.ring(&guard) else {
            drop(guard);
            return ReadOutcome { newest: None, gap: self.gap_after(cutoff) };
        };
        let start = seek(ring, head, cutoff, &guard);
        let end = head.min(start.saturating_add(limit as u64));
        let base = out.len();
        let mut i = ring.index(start);
        for pos in start..end {
            let entry = ring.entry_at(i, pos, &guard);
            i = ring.next(i);
            match entry {
                Some(e) => out.push((e.created, e.json())),
                None => out.truncate(base), // lapped under us: keep the run contiguous
            }
        }
        drop(guard);
        let newest = out.get(base..).and_then(|run| run.last()).map(|(c, _)| *c);
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

/// Where the run of entries created after `cutoff` that ends at `head` begins: galloping back
/// from the head (head-1, -2, -4, …), then bisecting, so it costs O(log k) loads for k entries.
///
/// Timestamps increase with `pos`, so with no writer active the entries not wanted (older than
/// the cutoff, or gone) form a prefix of [oldest, head) and this finds its end exactly. A cull or
/// a lapping writer running meanwhile can clear slots in the middle of the run; the seek may then
/// stop at any wanted slot, and the readers — which drop what they read before any slot they
/// find gone — still return a contiguous run ending at the head, while the watermark, raised
/// before each slot went, reports the gap.
fn seek(ring: &Ring, head: u64, cutoff: Option<i128>, guard: &Guard) -> u64 {
    let oldest = head.saturating_sub(ring.slots.len() as u64);
    let wanted =
        |pos: u64| -> bool { ring.entry(pos, guard).is_some_and(|e| cutoff.is_none_or(|c| i128::from(e.created) > c)) };
    // `start` is the oldest position known wanted, `gone` one known not.
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
    start
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer can hold this mailbox any more. The current
        // ring and every entry still linked from it were never handed to `defer_destroy`
        // (writers unlink an entry or a ring before deferring it, and retired rings were
        // deferred without their entries, which live on here), so each is freed exactly once,
        // here.
        unsafe {
            let guard = epoch::unprotected();
            let ring = self.ring.load(Ordering::Relaxed, guard);
            if let Some(r) = ring.as_ref() {
                for slot in r.slots.iter() {
                    let shared = slot.load(Ordering::Relaxed, guard);
                    if !shared.is_null() {
                        drop(shared.into_owned());
                    }
                }
                drop(ring.into_owned());
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

    /// Replaces the entry in `pos`'s slot of `ring` with `new`, raising the watermark over what
    /// leaves first, and hands the old entry to the epoch to free.
    fn replace(&self, ring: &Ring, pos: u64, new: Shared<'_, Entry>, guard: &Guard) {
        let slot = ring.slot(pos);
        // Writers are serialised by the mutex we hold, so nothing else stores to this slot.
        let old = slot.load(Ordering::Acquire, guard);
        // SAFETY: as in `Ring::entry`; `guard` is pinned and only writers (us) unlink.
        if let Some(old) = unsafe { old.as_ref() } {
            self.raise_watermark(old.created);
        }
        slot.store(new, Ordering::Release);
        if !old.is_null() {
            // SAFETY: `old` is now unlinked from the current ring (the only ring writers store
            // to, and retired rings are never read by a reader pinned after their retirement), so
            // no new reader can load it; readers pinned before the store may still hold it,
            // which is exactly what the epoch waits for before freeing it.
            unsafe { guard.defer_destroy(old) };
        }
    }

    /// Replaces the current ring with one of `len` slots (none when 0) holding the same live
    /// entries [tail, head) at their new slots, published before any later push, and retires the
    /// old ring to the epoch (its entries stay, linked from the new ring).
    fn install<'g>(&self, len: usize, guard: &'g Guard) -> Option<&'g Ring> {
        let mb = self.mailbox;
        let head = mb.head.load(Ordering::Relaxed);
        let old = mb.ring.load(Ordering::Acquire, guard);
        let new = if len == 0 {
            Shared::null()
        } else {
            let ring = Ring::new(len);
            if let Some(old) = mb.ring(guard) {
                for pos in self.state.tail.max(head.saturating_sub(old.slots.len() as u64))..head {
                    ring.slot(pos).store(old.slot(pos).load(Ordering::Relaxed, guard), Ordering::Relaxed);
                }
            }
            Owned::new(ring).into_shared(guard)
        };
        mb.ring.store(new, Ordering::Release);
        if !old.is_null() {
            // SAFETY: the old ring is unlinked from the mailbox, so no reader pinned from now on
            // can reach it; readers pinned before may still read through it, which the epoch
            // waits for. Dropping a `Ring` frees its slot array only: `Atomic` slots do not own
            // what they point to, so the entries (now linked from the new ring) are untouched.
            unsafe { guard.defer_destroy(old) };
        }
        // SAFETY: as in `Mailbox::ring`: `new` was just published and only a later writer (not
        // while we hold the lock) can retire it.
        unsafe { new.as_ref() }
    }

    /// Appends a message. `created` must be greater than that of every message pushed before
    /// (the engine guarantees it by taking timestamps while holding this guard). Grows the ring
    /// when it is full and below the mailbox's capacity; otherwise overwrites the oldest.
    /// Returns whether a waiter may be waiting for it: then the caller wakes them (after letting
    /// go of this guard). With nobody waiting it costs a fence and one load.
    pub fn push(&mut self, created: i64, json: impl AsRef<[u8]>) -> bool {
        let json = json.as_ref();
        let mb = self.mailbox;
        let pos = mb.head.load(Ordering::Relaxed);
        let guard = epoch::pin();
        let capacity = self.state.capacity as usize;
        let len = mb.ring(&guard).map_or(0, |r| r.slots.len());
        let held = usize::try_from(pos - self.state.tail).unwrap_or(usize::MAX);
        let ring = if held >= len && len < capacity {
            let grown = (len * 2).clamp(MIN_RING.min(capacity), capacity);
            self.install(grown, &guard)
        } else {
            mb.ring(&guard)
        };
        let Some(ring) = ring else { return false }; // unreachable: a ring of at least one slot exists now
        let offset = self.state.bytes;
        let (segment, piece) = self.append_piece(ring, json, &guard);
        self.state.bytes += piece.len() as u64;
        let new = Owned::new(Entry { pos, created, offset, segment, piece }).into_shared(&guard);
        self.replace(ring, pos, new, &guard);
        mb.head.store(pos + 1, Ordering::Release);
        let oldest = (pos + 1).saturating_sub(ring.slots.len() as u64);
        if self.state.tail < oldest {
            self.state.tail = oldest;
        }
        // Pairs with the fence in `register_waiter` (see there).
        fence(Ordering::SeqCst);
        mb.waiting.load(Ordering::Relaxed) > 0
    }

    /// Writes a comma and `json` into the current segment — first starting a new one if they do
    /// not fit — and splits them off as the new entry's piece, with the segment's number.
    ///
    /// A new segment is as large as the bytes the ring holds (at least [`MIN_SEGMENT`], at most
    /// [`MAX_SEGMENT`], and always room for this piece): a busy mailbox's answers span a few
    /// segments, while what a segment holds beyond its live pieces stays within about what the
    /// mailbox holds. The old segment is freed when its last piece leaves (and no answer holds
    /// it). Appending within the capacity never reallocates, which keeps a segment's pieces in
    /// one allocation (see [`Run::as_slice`]).
    fn append_piece(&mut self, ring: &Ring, json: &[u8], guard: &Guard) -> (u64, Bytes) {
        let state = &mut *self.state;
        let need = json.len() + 1;
        if state.segment.capacity() - state.segment.len() < need {
            let held = ring.entry(state.tail, guard).map_or(0, |oldest| state.bytes - oldest.offset);
            let size = usize::try_from(held).unwrap_or(MAX_SEGMENT).clamp(MIN_SEGMENT, MAX_SEGMENT).max(need);
            state.segment = BytesMut::with_capacity(size);
            state.segment_no += 1;
        }
        state.segment.put_u8(b',');
        state.segment.extend_from_slice(json);
        (state.segment_no, state.segment.split().freeze())
    }

    /// Records that a message created at `ns` left without being pushed here (used by restore
    /// for messages already past their TTL).
    pub fn mark_left(&mut self, ns: i64) {
        self.raise_watermark(ns);
    }

    /// Removes every message created before `before`, oldest first, and returns the `created`
    /// of the newest one removed. Cost follows the number removed. A ring left at most a quarter
    /// full shrinks to twice what it holds (none when empty).
    pub fn cull_before(&mut self, before: i64) -> Option<i64> {
        let mb = self.mailbox;
        let guard = epoch::pin();
        let ring = mb.ring(&guard)?;
        let head = mb.head.load(Ordering::Relaxed);
        let start = self.state.tail.max(head.saturating_sub(ring.slots.len() as u64));
        let mut end = start;
        let mut newest = None;
        while end < head {
            match ring.entry(end, &guard) {
                Some(e) if e.created < before => newest = Some(e.created),
                _ => break,
            }
            end += 1;
        }
        let newest = newest?;
        // Newest first, so a reader seeking back meets a cleared slot before any culled entry;
        // `replace` raises the watermark before each slot goes.
        for pos in (start..end).rev() {
            self.replace(ring, pos, Shared::null(), &guard);
        }
        self.state.tail = end;
        let held = usize::try_from(head - end).unwrap_or(usize::MAX);
        let len = ring.slots.len();
        if held == 0 {
            self.install(0, &guard);
            // Nothing left to share it with: let the segment go (pieces still read keep it).
            self.state.segment = BytesMut::new();
        } else if held <= len / 4 && len > MIN_RING {
            self.install((held * 2).max(MIN_RING), &guard);
        }
        Some(newest)
    }
}

#[cfg(all(test, not(chatbus_loom)))]
mod tests;
