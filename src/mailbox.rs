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
//! - A reader never sees a torn or overwritten slot. A slot holds its message inline — its
//!   timestamp and where its JSON lies — written seqlock-style under a *stamp* naming the push
//!   that stored it (`2·pos + 2`; 0 when empty, odd while written), as the slots of tokio's
//!   `broadcast` channel carry their position. A reader loads the stamp, the fields, then the
//!   stamp again, and takes the fields only if both loads found the push it wants; a reader that
//!   wants push `p` and finds another stamp knows `p` was pushed out under it and stops there.
//! - When the mailbox holds its capacity a push overwrites the oldest message. A message that
//!   leaves — pushed out, or culled by TTL — raises the mailbox's *watermark*: the newest
//!   `created` that has left.
//!   A reader compares its cutoff with the watermark (loaded after its read) to report a `gap`.
//!   Writers raise the watermark *before* they overwrite or clear a slot, so a reader that saw a
//!   slot go also sees the watermark that covers it.
//!
//! # Memory that follows use
//!
//! A mailbox starts with no ring at all (an empty mailbox costs its 120-byte header; each
//! message then costs its 32-byte slot and its JSON). The first push allocates a ring of
//! [`MIN_RING`] slots; a push into a full ring that is still below the mailbox's capacity
//! replaces it with one twice as large (up to the capacity), and a cull that leaves the ring at
//! most a quarter full replaces it with one half as large — or with none when nothing is left.
//! The new ring holds copies of the live slots at their new places, and is published
//! (`Release`) before the push that needed it raises the head; a reader loads the head first and
//! the ring second (`Acquire` both), so the ring it reads from holds every push below the head it
//! saw, or newer ones whose stamp tells them apart. Retired rings go to the epoch (below).
//!
//! # Segments: answers that keep the mailbox's bytes
//!
//! A mailbox writes each message, after a comma, into its current *segment*: an append-only
//! buffer, shared by reference count, whose bytes are each written once, before the slot that
//! publishes them. The comma and the JSON are the message's *piece*, and the slot says where it
//! lies (segment, start, length), so pieces pushed one after another lie one after another in
//! memory. A read walks the slots it returns and joins the pieces of one segment into a [`Run`]
//! — a slice of the segment holding their JSON, comma-separated — taking one reference count per
//! run rather than per message. Its [`Append`] copies short runs and keeps long ones
//! (`Run::into_bytes`), so a 1024-message answer is the envelope and a few slices of the
//! mailbox's own memory, written with vectored I/O; what it costs follows the messages walked,
//! not the bytes (criterion: `poll_bytes`). A new segment is about as large as what the mailbox
//! holds (512 B to 64 KiB), so a quiet mailbox's segment stays small. The writer holds each
//! segment that has pieces in the ring, with their count; when the last of them leaves, it lets
//! go of the segment through the epoch, and the segment is freed once no answer holds a run of
//! it. A mailbox culled empty lets its last segment go too.
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
//! A reader pins the epoch (`crossbeam-epoch`) once per read and then loads the ring and its
//! slots with plain atomic loads. What a reader may reach is freed only through the epoch, after
//! every reader pinned at that time has unpinned: a ring a writer replaced (`defer_destroy`),
//! and a segment whose last piece has left — the writer empties or overwrites the slot first,
//! then drops its reference through `defer`; a reader that found the piece in place was pinned
//! before, so it can still take its own reference (`RawRun::take`), which keeps the segment for
//! as long as the answer needs it. Slots own nothing, so replacing or clearing one frees nothing.
//! A released segment is flushed to the epoch's global queue at once (it is up to 64 KiB; a
//! thread's local bag would hold dozens). What the `unsafe` code trusts — a run within its
//! segment, a piece's offsets within a `u32`, the segment counts agreeing with the slots — is
//! checked always, not only in debug builds: a broken invariant panics instead of reading freed
//! or foreign memory (a compare or two per run and per message that leaves).
//!
//! Two earlier designs, measured: `Arc<Entry>` in `arc-swap` slots (no `unsafe`) — in perf on
//! the 1024-message poll arc-swap's per-slot loads (a `SeqCst` debt-slot handshake) took about
//! 45 % of the server's CPU, criterion 29.7 µs for that read; then an epoch-managed boxed
//! `Entry` per message, with its piece as `Bytes` split off the segment (4.8 µs) — each push then
//! paid an allocation, a split and a deferred free. Slots inline (this design) took a push from
//! 57 to 34 ns and the whole 1024-message answer from 3.5 to 2.6 µs (criterion `ring_push`,
//! `poll_bytes/answer/1024`, old and new binaries side by side, 2026-12-08).
//!
//! The `unsafe` code, each with its `SAFETY` comment: the dereference of a loaded ring
//! (`Mailbox::ring`), the `defer_destroy` of a retired ring (`MailboxWriter::install`), the
//! reference taken on a segment from a slot's pointer (`RawRun::take`), the segment's buffer —
//! its `Send`/`Sync`, its writes past every published piece (`Segment::write`), its reads of
//! published pieces (`Segment::bytes`, [`Run::as_slice`]: pieces of one segment seen as one
//! slice) and its `Drop` — and the mailbox's `Drop`. The ring, its growth and its shrinking, and
//! reads through runs spanning segments, are model-checked with loom in `tests/loom/` (which
//! found a missed gap in the first version of the seqlock: a reader that saw a slot half written
//! must also see the watermark raised before it, so the odd stamp is stored `Release`), and
//! stress-tested in this module's tests (one reader keeping its runs while writers lap the ring,
//! and runs kept past the mailbox's own end). `.ci/run` also runs these tests under valgrind's
//! memcheck, which fails on any read of freed or unwritten memory: checked by taking a run's
//! reference away (`RawRun::take` without its increment) and by dropping a segment at once
//! instead of through the epoch — memcheck reported invalid reads for both.
//!
//! # Why one file
//!
//! The ring, its readers and its writers share one invariant and one `unsafe` story, and the
//! loom model (`tests/loom/`) compiles this file alone by path; so it stays whole (about 1,000
//! lines, a third of them documentation), with its tests beside it in `mailbox/tests.rs`.
//!
//! # Writers
//!
//! Writers (push and cull) are serialised by a small mutex per mailbox, taken through
//! [`Mailbox::lock`]. The engine holds that guard while it assigns a message its timestamp,
//! which is what keeps timestamp order and push order the same.

use bytes::Bytes;
use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::Arc;
use sync::{fence, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};

/// The atomics and the writer mutex: std and parking_lot normally, loom's under `chatbus_loom`.
#[cfg(not(chatbus_loom))]
mod sync {
    pub(super) use parking_lot::{Mutex, MutexGuard};
    pub(super) use std::sync::atomic::{fence, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};
}

#[cfg(chatbus_loom)]
mod sync {
    pub(super) use loom::sync::atomic::{fence, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};
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

/// The smallest segment a mailbox allocates (tiny under loom, so that the model spans several).
#[cfg(not(chatbus_loom))]
const MIN_SEGMENT: usize = 512;
/// The smallest segment a mailbox allocates (tiny under loom, so that the model spans several).
#[cfg(chatbus_loom)]
const MIN_SEGMENT: usize = 4;
/// The largest segment a mailbox allocates for pieces that fit in one.
const MAX_SEGMENT: usize = 64 * 1024;

/// An append-only buffer that the pieces of consecutive pushes are written into, one after
/// another (see "Segments" in the module doc). Its bytes are written once each, by the mailbox's
/// writer, before the slot that publishes them; after that they are only read.
struct Segment {
    /// `cap` bytes from `Box::<[u8]>::new_uninit_slice`, freed in `Drop`.
    buf: *mut u8,
    cap: usize,
}

// SAFETY: a segment is its buffer. Writes go only to bytes past every published piece, by the
// one writer the mailbox's mutex lets in; readers read only published pieces, whose bytes were
// written before the Release store that published them and are never written again. So no byte
// is read and written concurrently, from whichever thread.
unsafe impl Send for Segment {}
// SAFETY: as for `Send`.
unsafe impl Sync for Segment {}

impl Segment {
    fn new(cap: usize) -> Self {
        let buf = Box::into_raw(Box::<[u8]>::new_uninit_slice(cap)).cast::<u8>();
        Self { buf, cap }
    }

    /// Writes `bytes` at `at`. Callers: the mailbox's writer, past every published piece.
    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at <= self.cap && bytes.len() <= self.cap - at, "a piece within its segment");
        // SAFETY: in bounds (checked above); the range is past every published piece, so no
        // reader reads it (see the `Sync` impl), and writers are serialised by the mailbox's mutex.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.buf.add(at), bytes.len()) }
    }

    /// The bytes `start..end`.
    ///
    /// # Safety
    /// They must be published pieces (written, and published by a slot loaded with Acquire).
    unsafe fn bytes(&self, start: usize, end: usize) -> &[u8] {
        // Checked always (two compares per run): a wrong range here would read outside the buffer.
        assert!(start <= end && end <= self.cap, "a run within its segment");
        // SAFETY: in bounds (checked above); written, and never written again (the caller's).
        unsafe { std::slice::from_raw_parts(self.buf.add(start), end - start) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `buf` and `cap` are what `new` got from `Box::into_raw`, freed only here.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.buf.cast::<MaybeUninit<u8>>(), self.cap))
        });
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("cap", &self.cap).finish_non_exhaustive()
    }
}

/// One message as a slot holds it: its timestamp and where its piece lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    /// Server timestamp, nanoseconds since the epoch; strictly increasing along `pos`.
    created: i64,
    /// The segment holding the piece: a comma, then the message rendered as a JSON object.
    segment: *const Segment,
    /// Where the piece starts in its segment.
    start: u32,
    /// Its length, the comma included.
    len: u32,
}

impl Piece {
    fn end(&self) -> u32 {
        self.start + self.len
    }
}

/// The `seq` of a slot that holds push `pos`. Never 0 (empty) nor odd (being written), and
/// stored in a slot at most once: a reader that finds it twice around its loads read `pos`.
fn stamp(pos: u64) -> u64 {
    2 * pos + 2
}

/// A slot holds one message inline, written seqlock-style: `seq` is 0 while empty, odd while
/// its writer writes, and `stamp(pos)` while it holds push `pos`. A reader loads `seq`
/// (Acquire), the fields, then `seq` again (after an Acquire fence) and takes the fields only if
/// both loads found the stamp it wants — like the slots of tokio's `broadcast` channel, a reader
/// that wants push `p` and finds another stamp knows `p` was pushed out under it.
#[derive(Debug, Default)]
struct Slot {
    seq: AtomicU64,
    created: AtomicI64,
    segment: AtomicPtr<Segment>,
    start: AtomicU32,
    len: AtomicU32,
}

impl Slot {
    /// The piece of push `pos`, if this slot holds it.
    #[inline]
    fn read(&self, pos: u64) -> Option<Piece> {
        let want = stamp(pos);
        if self.seq.load(Ordering::Acquire) != want {
            return None;
        }
        let piece = self.fields();
        // Orders the field loads before the second `seq` load: had any of them seen a write
        // newer than `want`'s, that write's odd `seq` (stored before it, behind a Release
        // fence) is visible now. The load itself is Acquire, like the first: a reader that
        // finds the slot taken by a later write (odd or another stamp, both stored Release)
        // then also sees the watermark its writer raised before — which the reader loads last
        // to report the gap (loom found the gap missed with a Relaxed odd store).
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Acquire) == want).then_some(piece)
    }

    #[inline]
    fn fields(&self) -> Piece {
        Piece {
            created: self.created.load(Ordering::Relaxed),
            segment: self.segment.load(Ordering::Relaxed),
            start: self.start.load(Ordering::Relaxed),
            len: self.len.load(Ordering::Relaxed),
        }
    }

    /// What the slot holds, read by the writer (which alone stores to it): its push and piece.
    fn own(&self) -> Option<(u64, Piece)> {
        let seq = self.seq.load(Ordering::Relaxed);
        (seq != 0).then(|| ((seq - 2) / 2, self.fields()))
    }

    /// Stores push `pos`'s piece. Writers only (serialised by the mailbox's mutex).
    fn write(&self, pos: u64, piece: Piece) {
        // Release: what the writer did before (the watermark) is seen by a reader that sees this.
        self.seq.store(1, Ordering::Release);
        // Orders the odd `seq` before the field stores (see `read`).
        fence(Ordering::Release);
        self.created.store(piece.created, Ordering::Relaxed);
        self.segment.store(piece.segment.cast_mut(), Ordering::Relaxed);
        self.start.store(piece.start, Ordering::Relaxed);
        self.len.store(piece.len, Ordering::Relaxed);
        self.seq.store(stamp(pos), Ordering::Release);
    }

    /// Empties the slot. Writers only.
    fn clear(&self) {
        self.seq.store(0, Ordering::Release);
    }
}

/// The slots: push `pos` lives in slot `pos % slots.len()`.
#[derive(Debug)]
struct Ring {
    slots: Box<[Slot]>,
}

impl Ring {
    fn new(len: usize) -> Self {
        Self { slots: (0..len.max(1)).map(|_| Slot::default()).collect() }
    }

    fn slot(&self, pos: u64) -> &Slot {
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

    /// The piece in `pos`'s slot, if it still holds push `pos`.
    #[inline]
    fn piece(&self, pos: u64) -> Option<Piece> {
        self.slot(pos).read(pos)
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
    /// The `created` of the newest push, or [`NO_WATERMARK`] before the first: a read whose
    /// cutoff is at or past it — the empty poll, a chat server's most common request — answers
    /// from this load alone, without pinning the epoch or touching the ring.
    last: AtomicI64,
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
    /// Bytes of the pieces held (those of [tail, head)).
    held: u64,
    /// The most messages the mailbox holds.
    capacity: u32,
    /// The segments holding pieces, oldest first, each with the number of its pieces held; the
    /// last is the one pushes append to. This is what keeps a segment alive for the slots.
    segments: VecDeque<(Arc<Segment>, u32)>,
    /// Bytes written into the last segment.
    fill: usize,
    /// Segments started so far.
    started: u64,
}

/// The JSON of consecutive messages, comma-separated, as one slice of a segment: what a read
/// hands to an [`Append`]. Holds a reference on the segment, so it stays valid whatever the
/// mailbox does meanwhile.
#[derive(Debug)]
pub struct Run {
    segment: Arc<Segment>,
    start: u32,
    end: u32,
}

impl Run {
    /// The run's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: a `Run` is made only by a read, from pieces of this segment that it found
        // published (`Slot::read`), one after another from `start` to `end` (`RawRun`).
        unsafe { self.segment.bytes(self.start as usize, self.end as usize) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether the run holds no byte (never, for a run a read made).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The run as `Bytes`, without copying: the segment stays alive while they do.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Run {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// A run as a read gathers it, before it takes its reference on the segment.
#[derive(Clone, Copy)]
struct RawRun {
    segment: *const Segment,
    start: u32,
    end: u32,
}

impl RawRun {
    /// The run with a reference on its segment.
    ///
    /// # Safety
    /// `segment` must be the segment of a piece found by `Slot::read` under `guard`, still
    /// pinned.
    unsafe fn take(self, _guard: &Guard) -> Run {
        // SAFETY: the segment is alive: the writer holds an `Arc` on it (in `segments`) while a
        // slot of the current ring holds one of its pieces, and lets go of it only through the
        // epoch (`leave`), after emptying or overwriting the last such slot — so after every
        // guard pinned before that, such as `_guard` (the read found the piece in place), is
        // dropped. `segment` came from `Arc::as_ptr`.
        let segment = unsafe {
            Arc::increment_strong_count(self.segment);
            Arc::from_raw(self.segment)
        };
        Run { segment, start: self.start, end: self.end }
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
impl Append for bytes::BytesMut {
    fn reserve(&mut self, copied: usize) {
        bytes::BytesMut::reserve(self, copied);
    }

    fn append(&mut self, run: Run) {
        self.extend_from_slice(run.as_slice());
    }
}

/// What a read found besides the messages themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The `created` of the newest message returned, if any.
    pub newest: Option<i64>,
    /// Whether a message newer than the cutoff has left the mailbox (see module doc).
    pub gap: bool,
}

/// One message as the tests' plain scan reads it.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    pos: u64,
    created: i64,
    json: Vec<u8>,
}

impl Mailbox {
    /// An empty mailbox (no ring yet) that will hold at most `capacity` (at least 1) messages.
    pub fn new(capacity: usize) -> Self {
        let capacity = u32::try_from(capacity.max(1)).unwrap_or(u32::MAX);
        Self {
            ring: Atomic::null(),
            head: AtomicU64::new(0),
            left: AtomicI64::new(NO_WATERMARK),
            last: AtomicI64::new(NO_WATERMARK),
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
        self.ring(&guard)?.piece(pos).map(|p| p.created)
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

    /// Copies the messages created strictly after `cutoff` (all when `None`) into `out`,
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
                match ring.piece(pos) {
                    Some(p) if cutoff.is_none_or(|c| i128::from(p.created) > c) => {
                        // SAFETY: a piece just found in place, `guard` still pinned.
                        let run =
                            unsafe { RawRun { segment: p.segment, start: p.start + 1, end: p.end() }.take(&guard) };
                        out.push(Entry { pos, created: p.created, json: run.as_slice().to_vec() });
                    }
                    _ => break, // older than the cutoff, culled, or pushed out under us
                }
            }
        }
        drop(guard);
        let newest = out.first().map(|e| e.created);
        // Loaded after the read: a slot we found gone had raised it before it went.
        ReadOutcome { newest, gap: self.gap_after(cutoff) }
    }

    /// Appends the JSON of the messages created strictly after `cutoff` (all when `None`) to
    /// `out`, **oldest first**, separated by commas — the inside of a poll answer's array — and
    /// reports the newest one and whether there is a gap. The poll's hot path.
    ///
    /// Lock-free, and it copies nothing. A cutoff at or past the newest push is answered from
    /// one load (`last`). Otherwise, pinned once, it loads the head and then the ring, finds
    /// the oldest message to return (`seek`: O(log k) loads for k messages returned), and walks forward gathering the pieces into [`Run`]s, one per segment
    /// spanned — a reference count taken per run, not per message. `out` then copies them or
    /// keeps them. If a message left during the walk (a writer lapped the ring), the runs before
    /// it are dropped, so the answer stays one contiguous run of the newest messages, and the
    /// watermark (loaded last) reports the gap.
    pub fn read_into<A: Append>(&self, cutoff: Option<i128>, out: &mut A) -> ReadOutcome {
        if self.nothing_after(cutoff) {
            return ReadOutcome { newest: None, gap: self.gap_after(cutoff) };
        }
        let guard = epoch::pin();
        let head = self.head.load(Ordering::Acquire);
        let Some(ring) = self.ring(&guard) else {
            drop(guard);
            return ReadOutcome { newest: None, gap: self.gap_after(cutoff) };
        };
        let start = seek(ring, head, cutoff);
        // The finished runs, each with its reference on its segment, and the one being extended.
        let mut runs: SmallVec<[Run; 4]> = SmallVec::new();
        let mut current: Option<RawRun> = None;
        let mut newest = None;
        let mut i = ring.index(start);
        for pos in start..head {
            let piece = ring.slots[i].read(pos);
            i = ring.next(i);
            let Some(p) = piece else {
                // Lapped under us: keep only what follows, so the answer stays contiguous.
                runs.clear();
                current = None;
                newest = None;
                continue;
            };
            newest = Some(p.created);
            if let Some(run) = &mut current {
                if run.segment == p.segment && run.end == p.start {
                    run.end = p.end();
                    continue;
                }
            }
            // The answer's first piece goes without its comma.
            let skip = u32::from(current.is_none() && runs.is_empty());
            if let Some(done) = current.replace(RawRun { segment: p.segment, start: p.start + skip, end: p.end() }) {
                // SAFETY: gathered from pieces found in place under `guard`, still pinned.
                runs.push(unsafe { done.take(&guard) });
            }
        }
        if let Some(last) = current {
            // SAFETY: as above.
            runs.push(unsafe { last.take(&guard) });
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
    /// taken per segment spanned (no copy).
    pub fn read_messages(&self, cutoff: Option<i128>, limit: usize, out: &mut Vec<(i64, Bytes)>) -> ReadOutcome {
        if self.nothing_after(cutoff) {
            return ReadOutcome { newest: None, gap: self.gap_after(cutoff) };
        }
        let guard = epoch::pin();
        let head = self.head.load(Ordering::Acquire);
        let Some(ring) = self.ring(&guard) else {
            drop(guard);
            return ReadOutcome { newest: None, gap: self.gap_after(cutoff) };
        };
        let start = seek(ring, head, cutoff);
        let end = head.min(start.saturating_add(limit as u64));
        let mut pieces: SmallVec<[Piece; 16]> = SmallVec::new();
        let mut i = ring.index(start);
        for pos in start..end {
            let piece = ring.slots[i].read(pos);
            i = ring.next(i);
            match piece {
                Some(p) => pieces.push(p),
                None => pieces.clear(), // lapped under us: keep the run contiguous
            }
        }
        // One run per segment spanned (its pieces follow one another), with its reference.
        let mut runs: SmallVec<[(Run, usize, usize); 2]> = SmallVec::new();
        let mut first = 0;
        for (n, p) in pieces.iter().enumerate() {
            if pieces.get(n + 1).is_none_or(|next| next.segment != p.segment || next.start != p.end()) {
                let raw = RawRun { segment: p.segment, start: pieces[first].start, end: p.end() };
                // SAFETY: gathered from pieces found in place under `guard`.
                runs.push((unsafe { raw.take(&guard) }, first, n + 1));
                first = n + 1;
            }
        }
        drop(guard);
        for (run, first, upto) in runs {
            let origin = run.start;
            let bytes = run.into_bytes();
            for p in &pieces[first..upto] {
                // Each message without its comma.
                let json = bytes.slice((p.start + 1 - origin) as usize..(p.end() - origin) as usize);
                out.push((p.created, json));
            }
        }
        let newest = pieces.last().map(|p| p.created);
        ReadOutcome { newest, gap: self.gap_after(cutoff) }
    }

    /// Whether nothing was pushed after `cutoff`: then a read returns nothing, whatever the ring
    /// holds. A push concurrent with the load is ordered after the read.
    fn nothing_after(&self, cutoff: Option<i128>) -> bool {
        cutoff.is_some_and(|c| i128::from(self.last.load(Ordering::Acquire)) <= c)
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

/// Where the run of messages created after `cutoff` that ends at `head` begins: galloping back
/// from the head (head-1, -2, -4, …), then bisecting, so it costs O(log k) loads for k messages.
///
/// Timestamps increase with `pos`, so with no writer active the slots not wanted (older than
/// the cutoff, or gone) form a prefix of [oldest, head) and this finds its end exactly. A cull or
/// a lapping writer running meanwhile can clear slots in the middle of the run; the seek may then
/// stop at any wanted slot, and the readers — which drop what they read before any slot they
/// find gone — still return a contiguous run ending at the head, while the watermark, raised
/// before each slot went, reports the gap.
fn seek(ring: &Ring, head: u64, cutoff: Option<i128>) -> u64 {
    let oldest = head.saturating_sub(ring.slots.len() as u64);
    let wanted =
        |pos: u64| -> bool { ring.piece(pos).is_some_and(|p| cutoff.is_none_or(|c| i128::from(p.created) > c)) };
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
        // SAFETY: `&mut self`: no reader or writer can hold this mailbox any more, and the
        // current ring was never handed to `defer_destroy` (writers unlink a ring before they
        // defer it). Its slots own nothing; the segments are the writer state's, dropped with it.
        unsafe {
            let ring = self.ring.load(Ordering::Relaxed, epoch::unprotected());
            if !ring.is_null() {
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

    /// Lets go of a piece that left (its slot already emptied or overwritten): the oldest held,
    /// so one of the oldest segment. A segment none of whose pieces is held any more, and that
    /// pushes no longer append to, goes to the epoch: freed once every reader pinned before
    /// now — which may have found one of its pieces in place — has unpinned, and every answer
    /// holding a run of it has dropped that.
    fn leave(&mut self, piece: Piece, guard: &Guard) {
        let state = &mut *self.state;
        state.held -= u64::from(piece.len);
        if let Some((segment, live)) = state.segments.front_mut() {
            // Checked always: counts that drifted from the slots would free a segment a slot still
            // names, or keep appending into one readers hold (a compare and a branch per leave).
            assert!(std::ptr::eq(Arc::as_ptr(segment), piece.segment) && *live > 0, "pieces leave oldest first");
            *live -= 1;
        }
        self.release_empty(guard);
    }

    /// Hands the oldest segments that hold no piece, but the one pushes append to, to the epoch.
    fn release_empty(&mut self, guard: &Guard) {
        let segments = &mut self.state.segments;
        while segments.len() > 1 && segments.front().is_some_and(|(_, live)| *live == 0) {
            if let Some((segment, _)) = segments.pop_front() {
                guard.defer(move || drop(segment));
                // Hand it to the global queue now: a segment is up to 64 KiB, and a thread's
                // local bag would otherwise hold dozens of them until it fills.
                guard.flush();
            }
        }
    }

    /// Replaces the current ring with one of `len` slots (none when 0) holding the same live
    /// messages [tail, head) at their new slots, published before any later push, and retires the
    /// old ring to the epoch.
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
                    if let Some((held, piece)) = old.slot(pos).own() {
                        debug_assert_eq!(held, pos, "[tail, head) is held");
                        ring.slot(pos).write(pos, piece);
                    }
                }
            }
            Owned::new(ring).into_shared(guard)
        };
        mb.ring.store(new, Ordering::Release);
        if !old.is_null() {
            // SAFETY: the old ring is unlinked from the mailbox, so no reader pinned from now on
            // can reach it; readers pinned before may still read through it, which the epoch
            // waits for. A ring's slots own nothing (the segments are the writer state's).
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
        let piece = self.append_piece(created, json, &guard);
        let slot = ring.slot(pos);
        let old = slot.own();
        if let Some((_, old)) = old {
            // Raised before the slot is overwritten (see the module doc).
            self.raise_watermark(old.created);
        }
        slot.write(pos, piece);
        if let Some((_, old)) = old {
            self.leave(old, &guard);
        }
        // Before the head: a reader that sees the push by the head (or is woken for it) sees it here.
        mb.last.store(created, Ordering::Release);
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
    /// not fit — and returns them as the new message's piece.
    ///
    /// A new segment is as large as the bytes the mailbox holds (at least [`MIN_SEGMENT`], at
    /// most [`MAX_SEGMENT`], and always room for this piece): a busy mailbox's answers span a
    /// few segments, while what a segment holds beyond its live pieces stays within about what
    /// the mailbox holds. The old segment is freed when its last piece leaves (and no answer
    /// holds it). A piece is at most a message's JSON, which the request limits keep far below
    /// the 4 GiB a `u32` offset spans.
    fn append_piece(&mut self, created: i64, json: &[u8], guard: &Guard) -> Piece {
        let need = json.len() + 1;
        let put = |segment: &Segment, at: usize| {
            segment.write(at, b",");
            segment.write(at + 1, json);
        };
        let state = &mut *self.state;
        let (segment, start) = match state.segments.back_mut() {
            Some((segment, live)) if segment.cap - state.fill >= need => {
                put(segment, state.fill);
                *live += 1;
                (Arc::as_ptr(segment), state.fill)
            }
            _ => {
                let held = usize::try_from(state.held).unwrap_or(MAX_SEGMENT);
                let segment = Arc::new(Segment::new(held.clamp(MIN_SEGMENT, MAX_SEGMENT).max(need)));
                put(&segment, 0);
                let ptr = Arc::as_ptr(&segment);
                state.segments.push_back((segment, 1));
                state.fill = 0;
                state.started += 1;
                self.release_empty(guard);
                (ptr, 0)
            }
        };
        let state = &mut *self.state;
        state.fill += need;
        state.held += need as u64;
        // Both fit: a segment is at most 64 KiB or one piece, and a piece at most a message's JSON,
        // which the request limits keep to kilobytes. Checked always, as readers trust them.
        let (Ok(start), Ok(len)) = (u32::try_from(start), u32::try_from(need)) else {
            panic!("a piece of {need} bytes at {start}: beyond a u32 offset");
        };
        Piece { created, segment, start, len }
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
            match ring.slot(end).own() {
                Some((pos, p)) if pos == end && p.created < before => newest = Some(p.created),
                _ => break,
            }
            end += 1;
        }
        let newest = newest?;
        // Newest first, so a reader seeking back meets an emptied slot before any culled one;
        // the watermark is raised before each slot goes.
        for pos in (start..end).rev() {
            let slot = ring.slot(pos);
            self.raise_watermark(slot.fields().created);
            slot.clear();
        }
        for pos in start..end {
            self.leave(ring.slot(pos).fields(), &guard);
        }
        self.state.tail = end;
        let held = usize::try_from(head - end).unwrap_or(usize::MAX);
        let len = ring.slots.len();
        if held == 0 {
            self.install(0, &guard);
            // Nothing left to share it with: let the last segment go too (runs still read keep it).
            for (segment, live) in self.state.segments.drain(..) {
                assert_eq!(live, 0, "a mailbox culled empty holds no piece");
                guard.defer(move || drop(segment));
            }
            guard.flush();
            self.state.fill = 0;
        } else if held <= len / 4 && len > MIN_RING {
            self.install((held * 2).max(MIN_RING), &guard);
        }
        Some(newest)
    }
}

#[cfg(all(test, not(chatbus_loom)))]
mod tests;
