//! The ring against a plain scan, its overwrite and cull rules, and a stress test of the
//! lock-free read against concurrent writers.

use super::*;
use bytes::BytesMut;

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
    let o = mb.read_into(Some(29), &mut buf);
    assert_eq!(&buf[..], b"30,40,50");
    assert_eq!(o, ReadOutcome { newest: Some(50), gap: false });
    buf.clear();
    assert_eq!(mb.read_into(Some(50), &mut buf), ReadOutcome { newest: None, gap: false });
    assert!(buf.is_empty());
}

/// The galloping seek agrees with the plain backward scan for every cutoff, on mailboxes
/// with overwritten and culled entries, for every answer size.
#[test]
fn read_into_agrees_with_a_plain_scan_for_every_cutoff() {
    for (cap, pushes, cull_before) in [(1, 3, 0), (7, 5, 0), (7, 20, 0), (16, 40, 30), (64, 64, 10), (5, 9, 100)] {
        let mb = Mailbox::new(cap);
        for t in 1..=pushes {
            push(&mb, t * 2); // even timestamps: odd cutoffs fall between messages
        }
        mb.lock().cull_before(cull_before);
        for c in -1..=(pushes * 2 + 1) {
            for cutoff in [Some(i128::from(c)), None] {
                let (expected, expected_outcome) = read(&mb, cutoff);
                let mut buf = BytesMut::new();
                let o = mb.read_into(cutoff, &mut buf);
                let text = std::str::from_utf8(&buf).unwrap();
                let got: Vec<i64> =
                    if text.is_empty() { Vec::new() } else { text.split(',').map(|t| t.parse().unwrap()).collect() };
                assert_eq!(got, expected, "cap {cap}, {pushes} pushes, cutoff {cutoff:?}");
                assert_eq!(o, expected_outcome, "cap {cap}, {pushes} pushes, cutoff {cutoff:?}");
                assert!(buf.capacity() >= buf.len());
            }
        }
    }
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
    use std::sync::Arc;
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
                        let o = mb.read_into(None, &mut buf);
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

/// The ring follows use: none while empty, grown by doubling up to the capacity as messages
/// arrive, and shrunk back when culling leaves it mostly empty — with every read right throughout.
#[test]
fn the_ring_grows_with_messages_and_shrinks_when_culled() {
    let mb = Mailbox::new(100);
    assert_eq!(mb.ring_len(), 0, "an empty mailbox has no ring");
    assert_eq!(read(&mb, None), (vec![], ReadOutcome { newest: None, gap: false }));
    let mut lens = Vec::new();
    for t in 1..=150 {
        push(&mb, t);
        if lens.last() != Some(&mb.ring_len()) {
            lens.push(mb.ring_len());
        }
        let (all, o) = read(&mb, None);
        let first = (t - 99).max(1);
        assert_eq!(all, (first..=t).collect::<Vec<_>>(), "after push {t}");
        assert_eq!(o.gap, t > 100, "after push {t}");
    }
    assert_eq!(lens, vec![4, 8, 16, 32, 64, 100], "doubling, capped at the capacity");
    assert_eq!(mb.lock().cull_before(148), Some(147));
    assert_eq!(read(&mb, None).0, vec![148, 149, 150]);
    assert_eq!(mb.ring_len(), 6, "three left of 100: twice what is held");
    assert_eq!(read(&mb, Some(147)), (vec![148, 149, 150], ReadOutcome { newest: Some(150), gap: false }));
    for t in 151..=160 {
        push(&mb, t);
    }
    assert_eq!(read(&mb, Some(147)).0, (148..=160).collect::<Vec<_>>(), "grown again, nothing lost");
    assert_eq!(mb.lock().cull_before(1000), Some(160));
    assert_eq!(mb.ring_len(), 0, "nothing held, no ring");
    assert_eq!(read(&mb, Some(160)), (vec![], ReadOutcome { newest: None, gap: false }));
    assert!(read(&mb, Some(159)).1.gap);
    push(&mb, 161);
    assert_eq!(read(&mb, Some(160)), (vec![161], ReadOutcome { newest: Some(161), gap: false }));
}

/// Readers against a writer that keeps growing and shrinking the ring (culls leave one or two
/// messages, so every cull shrinks and the next pushes grow): every answer is still a contiguous
/// run with each entry exactly as written, and a reader that keeps up misses nothing unreported.
#[test]
fn concurrent_readers_while_the_ring_grows_and_shrinks() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let mb = Arc::new(Mailbox::new(64));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mb = mb.clone();
        std::thread::spawn(move || {
            for t in 1..=200_000i64 {
                let mut w = mb.lock();
                w.push(t, Bytes::from(format!("m{t}")));
                if t % 37 == 0 {
                    w.cull_before(t - 1);
                }
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let mb = mb.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut cursor: i128 = 0;
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let cutoff = if r == 0 { Some(cursor) } else { None };
                    // Reader 2 keeps the runs (no copy), the others copy them.
                    let mut buf = BytesMut::new();
                    let o = if r == 2 {
                        let mut kept = Kept::default();
                        let o = mb.read_into(cutoff, &mut kept);
                        buf = kept.concat();
                        o
                    } else {
                        mb.read_into(cutoff, &mut buf)
                    };
                    let text = std::str::from_utf8(&buf).unwrap();
                    let ts: Vec<i64> = if text.is_empty() {
                        Vec::new()
                    } else {
                        text.split(',').map(|m| m.strip_prefix('m').unwrap().parse().unwrap()).collect()
                    };
                    assert!(ts.windows(2).all(|w| w[1] == w[0] + 1), "not a contiguous run: {text}");
                    assert_eq!(ts.last().copied(), o.newest, "newest is the last copied");
                    if let (Some(c), Some(&first)) = (cutoff, ts.first()) {
                        assert!(i128::from(first) > c, "returned a message at or before the cutoff");
                        if i128::from(first) != c + 1 {
                            assert!(o.gap, "missed {}..{first} without a gap", c + 1);
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

/// Keeps every run as `Bytes` (a reference on its segment, no copy).
#[derive(Default)]
struct Kept(Vec<Bytes>);

impl Append for Kept {
    const KEEP_FROM: usize = 0;

    fn reserve(&mut self, _copied: usize) {}

    fn append(&mut self, run: Run) {
        self.0.push(run.into_bytes());
    }
}

impl Kept {
    fn concat(&self) -> BytesMut {
        self.0.iter().fold(BytesMut::new(), |mut out, b| {
            out.extend_from_slice(b);
            out
        })
    }
}

/// Runs kept by a reader stay exactly as read while the mailbox overwrites, culls and is
/// dropped: they hold their segments, not the mailbox's slots.
#[test]
fn kept_runs_outlive_what_the_mailbox_does_after() {
    let mb = Mailbox::new(64);
    let body = |t: i64| format!("{{\"n\":{t},\"pad\":\"{}\"}}", "x".repeat((t as usize * 37) % 300));
    for t in 1..=64 {
        mb.lock().push(t, body(t));
    }
    let mut kept = Kept::default();
    let o = mb.read_into(None, &mut kept);
    assert_eq!(o.newest, Some(64));
    assert!(kept.0.len() > 1, "64 messages span several segments: {} runs", kept.0.len());
    let expected = (1..=64).map(body).collect::<Vec<_>>().join(",");
    for t in 65..=1000 {
        mb.lock().push(t, body(t));
    }
    mb.lock().cull_before(i64::MAX);
    drop(mb);
    assert_eq!(std::str::from_utf8(&kept.concat()).unwrap(), expected);
}

/// Segments follow what the mailbox holds: a small mailbox writes small segments however many
/// messages pass through it, a full large one large ones, and one culled empty lets its
/// segment go.
#[test]
fn segments_follow_what_the_mailbox_holds() {
    let segment = |mb: &Mailbox| mb.lock().state.segments.iter().map(|(s, _)| s.cap).sum::<usize>();
    let small = Mailbox::new(4);
    let mut largest = 0;
    for t in 1..=10_000 {
        small.lock().push(t, [b'x'; 100]);
        largest = largest.max(segment(&small));
    }
    assert!(
        largest <= 2 * MIN_SEGMENT,
        "4 messages of 101 B need no more than two segments of {MIN_SEGMENT} B: {largest}"
    );
    assert!(small.lock().state.started > 1000, "segments were replaced as they filled");
    let large = Mailbox::new(1024);
    for t in 1..=2048 {
        large.lock().push(t, [b'y'; 180]);
    }
    let mut kept = Kept::default();
    large.read_into(None, &mut kept);
    assert!(kept.0.len() <= 6, "1024 × 181 B in a few segments of up to {MAX_SEGMENT} B: {} runs", kept.0.len());
    assert_eq!(kept.concat().len(), 1024 * 181 - 1);
    large.lock().cull_before(i64::MAX);
    assert_eq!(segment(&large), 0, "an empty mailbox holds no segment");
}

/// The streams' read (`read_messages`, one `Bytes` per message) and the poll's, against a writer
/// that culls the mailbox empty every 13 pushes — its ring and segments let go, then made anew —
/// and culls part of it every 5: every message is exactly as written, runs stay contiguous, a
/// reader that keeps up misses nothing unreported, and messages kept past all that still read
/// back as written (they hold their segments).
#[test]
fn streams_read_while_the_mailbox_is_culled_empty_and_refilled() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let body = |t: i64| format!("m{t}{}", "x".repeat((t % 7) as usize * 20));
    let mb = Arc::new(Mailbox::new(8));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mb = mb.clone();
        std::thread::spawn(move || {
            for t in 1..=100_000i64 {
                let mut w = mb.lock();
                w.push(t, body(t));
                if t % 13 == 0 {
                    w.cull_before(t + 1); // everything
                } else if t % 5 == 0 {
                    w.cull_before(t - 2);
                }
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let mb = mb.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut kept: Vec<(i64, Bytes)> = Vec::new();
                let mut cursor: i128 = 0;
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let cutoff = if r == 0 { Some(cursor) } else { None };
                    let mut out = Vec::new();
                    let o = mb.read_messages(cutoff, 5, &mut out);
                    for (c, b) in &out {
                        assert_eq!(&b[..], body(*c).as_bytes(), "torn");
                    }
                    assert!(out.windows(2).all(|w| w[1].0 == w[0].0 + 1), "not a contiguous run");
                    assert_eq!(out.last().map(|(c, _)| *c), o.newest, "newest is the last returned");
                    if let (Some(c), Some((first, _))) = (cutoff, out.first()) {
                        assert!(i128::from(*first) > c, "returned a message at or before the cutoff");
                        if i128::from(*first) != c + 1 {
                            assert!(o.gap, "missed {}..{first} without a gap", c + 1);
                        }
                    }
                    if let Some(n) = o.newest {
                        cursor = i128::from(n);
                    }
                    let mut buf = BytesMut::new();
                    mb.read_into(None, &mut buf);
                    if kept.len() < 4096 {
                        kept.extend(out);
                    }
                    reads += 1;
                }
                for (c, b) in &kept {
                    assert_eq!(&b[..], body(*c).as_bytes(), "a kept message changed");
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
