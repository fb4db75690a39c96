//! loom model of the mailbox ring: under every interleaving loom explores (bounded preemption), a
//! lock-free reader never sees a torn, stale or overwritten slot, gets a contiguous run of pushes
//! oldest first, and reports a gap whenever it missed a message — while a writer pushes over the
//! ring and culls, and rings and segments are freed through the epoch. (It found the first seqlock
//! version missing a gap: see `src/mailbox.rs`, "Memory reclamation".)
#![cfg(chatbus_loom)]

use bytes::{Bytes, BytesMut};
use chatbus_loom::mailbox::Mailbox;
use loom::sync::Arc;

fn json(t: i64) -> Bytes {
    Bytes::from(format!("m{t}"))
}

fn parse(buf: &[u8]) -> Vec<i64> {
    let text = std::str::from_utf8(buf).expect("utf-8");
    if text.is_empty() {
        return Vec::new();
    }
    text.split(',').map(|m| m.strip_prefix('m').expect("entry json").parse().expect("number")).collect()
}

fn check(buf: &[u8], cutoff: i64, newest: Option<i64>, gap: bool) {
    let got = parse(buf);
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "not a contiguous run: {got:?}");
    assert!(got.iter().all(|&t| t > cutoff), "returned a message at or before the cutoff: {got:?}");
    assert_eq!(got.last().copied(), newest.filter(|_| !got.is_empty()), "newest is the last returned");
    if let Some(&first) = got.first() {
        if first != cutoff + 1 {
            assert!(gap, "missed {}..{first} without reporting a gap", cutoff + 1);
        }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn reader_during_overwrite() {
    model(|| {
        let mb = Arc::new(Mailbox::new(2));
        mb.lock().push(1, json(1));
        mb.lock().push(2, json(2));
        let writer = {
            let mb = mb.clone();
            loom::thread::spawn(move || {
                mb.lock().push(3, json(3)); // overwrites 1
                mb.lock().push(4, json(4)); // overwrites 2
            })
        };
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(1), &mut buf);
        check(&buf, 1, o.newest, o.gap);
        writer.join().unwrap();
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(2), &mut buf);
        assert_eq!(parse(&buf), vec![3, 4]);
        assert!(!o.gap, "cursor 2 saw everything that left");
    });
}

#[test]
fn reader_during_cull() {
    model(|| {
        let mb = Arc::new(Mailbox::new(3));
        for t in 1..=3 {
            mb.lock().push(t, json(t));
        }
        let culler = {
            let mb = mb.clone();
            loom::thread::spawn(move || {
                assert_eq!(mb.lock().cull_before(3), Some(2));
            })
        };
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(0), &mut buf);
        check(&buf, 0, o.newest, o.gap);
        culler.join().unwrap();
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(0), &mut buf);
        assert_eq!(parse(&buf), vec![3]);
        assert!(o.gap);
    });
}

#[test]
fn reader_during_growth() {
    // MIN_RING is 1 under loom: the ring grows 1 -> 2 -> 4 while the reader reads.
    model(|| {
        let mb = Arc::new(Mailbox::new(4));
        mb.lock().push(1, json(1));
        let writer = {
            let mb = mb.clone();
            loom::thread::spawn(move || {
                mb.lock().push(2, json(2)); // grows to 2
                mb.lock().push(3, json(3)); // grows to 4
            })
        };
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(0), &mut buf);
        check(&buf, 0, o.newest, o.gap);
        assert!(!parse(&buf).is_empty(), "message 1 never leaves: a read always finds it");
        assert!(!o.gap, "nothing left the mailbox");
        writer.join().unwrap();
        let mut buf = BytesMut::new();
        let o = mb.read_into(None, &mut buf);
        assert_eq!(parse(&buf), vec![1, 2, 3]);
        assert!(!o.gap);
    });
}

#[test]
fn reader_during_shrink_and_regrowth() {
    model(|| {
        let mb = Arc::new(Mailbox::new(4));
        for t in 1..=4 {
            mb.lock().push(t, json(t));
        }
        let writer = {
            let mb = mb.clone();
            loom::thread::spawn(move || {
                assert_eq!(mb.lock().cull_before(4), Some(3)); // one left of 4: shrinks to 2
                mb.lock().push(5, json(5));
                mb.lock().push(6, json(6)); // full at 2: grows again
            })
        };
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(3), &mut buf);
        check(&buf, 3, o.newest, o.gap);
        assert!(parse(&buf).first() == Some(&4), "message 4 is never culled: {:?}", parse(&buf));
        writer.join().unwrap();
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(3), &mut buf);
        assert_eq!(parse(&buf), vec![4, 5, 6]);
        assert!(!o.gap, "a reader at 3 saw everything that left");
    });
}

/// The empty-poll fast path (a cutoff at the newest push answers from one load) while the writer
/// pushes and overwrites: whatever the read returns is a contiguous run after the cutoff, its
/// newest the last, with a gap when it starts later.
#[test]
fn fast_path_during_push() {
    model(|| {
        let mb = Arc::new(Mailbox::new(1));
        mb.lock().push(1, json(1));
        let writer = {
            let mb = mb.clone();
            loom::thread::spawn(move || {
                mb.lock().push(2, json(2));
                mb.lock().push(3, json(3)); // overwrites 2
            })
        };
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(1), &mut buf);
        check(&buf, 1, o.newest, o.gap);
        writer.join().unwrap();
    });
}

/// The streams' read, one `Bytes` per message, while the writer overwrites: each message as
/// written, a contiguous run, a gap when one is missed.
#[test]
fn read_messages_during_overwrite() {
    model(|| {
        let mb = Arc::new(Mailbox::new(2));
        mb.lock().push(1, json(1));
        mb.lock().push(2, json(2));
        let writer = {
            let mb = mb.clone();
            loom::thread::spawn(move || {
                mb.lock().push(3, json(3));
                mb.lock().push(4, json(4));
            })
        };
        let mut out = Vec::new();
        let o = mb.read_messages(Some(0), 8, &mut out);
        let joined = out.iter().map(|(_, b)| std::str::from_utf8(b).expect("utf-8")).collect::<Vec<_>>().join(",");
        for (created, b) in &out {
            assert_eq!(&b[..], json(*created), "each message as written");
        }
        check(joined.as_bytes(), 0, o.newest, o.gap);
        writer.join().unwrap();
    });
}

/// A cull that empties the mailbox (its ring and segment let go), then a push into a new one,
/// while a reader reads.
#[test]
fn reader_during_cull_to_empty_and_push() {
    model(|| {
        let mb = Arc::new(Mailbox::new(2));
        mb.lock().push(1, json(1));
        mb.lock().push(2, json(2));
        let writer = {
            let mb = mb.clone();
            loom::thread::spawn(move || {
                assert_eq!(mb.lock().cull_before(3), Some(2));
                mb.lock().push(3, json(3));
            })
        };
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(0), &mut buf);
        check(&buf, 0, o.newest, o.gap);
        writer.join().unwrap();
        let mut buf = BytesMut::new();
        let o = mb.read_into(Some(0), &mut buf);
        assert_eq!(parse(&buf), vec![3]);
        assert!(o.gap, "1 and 2 were culled");
    });
}

/// The waiter's registration against a push: either the waiter's look after registering sees
/// the message, or the push sees the waiter (and wakes it) — never neither, under every
/// interleaving. A lost wake-up would leave a held poll asleep with its message in the mailbox.
#[test]
fn no_lost_wake_up() {
    model(|| {
        let mb = Arc::new(Mailbox::new(4));
        let pusher = {
            let mb = mb.clone();
            loom::thread::spawn(move || mb.lock().push(1, json(1)))
        };
        mb.register_waiter();
        let saw_message = mb.newest().is_some();
        let push_saw_waiter = pusher.join().unwrap();
        assert!(saw_message || push_saw_waiter, "a lost wake-up");
        mb.unregister_waiter();
    });
}
