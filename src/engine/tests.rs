use super::*;
use crate::store::memory::MemoryStore;
use crate::store::{MessageRow, Op, SessionRow, Snapshot, UserRow};
use crate::writer::{Writer, WriterConfig};
use bytes::BytesMut;
use std::collections::HashMap;

fn engine(capacity: usize, shards: usize) -> (Writer, Arc<Engine>) {
    let metrics = Arc::new(Metrics::new(&["x"]));
    let writer = Writer::start(Box::new(MemoryStore), WriterConfig::new(1_000_000), metrics.clone()).unwrap();
    let e = Arc::new(Engine::new(EngineConfig::new(shards, capacity), writer.handle(), metrics));
    (writer, e)
}

/// Runs an engine mutation to completion from a plain thread (the memory store commits at once).
fn wait<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// Runs a write-behind send, which must complete without waiting for anything.
fn at_once<F: std::future::Future>(f: F) -> F::Output {
    futures_util::FutureExt::now_or_never(f).expect("a write-behind send does not wait")
}

fn user(e: &Engine, uuid: &str) -> i64 {
    wait(e.create_user(uuid, "")).unwrap().id
}

fn session(e: &Engine, user_id: i64) -> Arc<Session> {
    let view = wait(e.open_session(user_id)).unwrap();
    e.session(view.uuid.parse().unwrap()).unwrap()
}

/// The `created_utc` of a sent message's JSON, in ns.
fn created(json: &[u8]) -> i64 {
    ns(&serde_json::from_slice(json).unwrap())
}

/// Polls and returns the messages, oldest first, parsed.
fn poll(e: &Engine, s: &Session, cutoff: Option<Cursor>) -> (Vec<serde_json::Value>, Polled) {
    let mut out = BytesMut::new();
    let polled = e.poll(s, cutoff, &mut out);
    let mut array = b"[".to_vec();
    array.extend_from_slice(&out);
    array.push(b']');
    (serde_json::from_slice::<Vec<serde_json::Value>>(&array).unwrap(), polled)
}

fn ns(m: &serde_json::Value) -> i64 {
    let t =
        time::OffsetDateTime::parse(m["created_utc"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    t.unix_timestamp_nanos() as i64
}

/// The ordering invariant under contention: 8 senders in different shards write to one receiver
/// (and to each other) while a poller follows the receiver's mailbox with the cursor. Every
/// message must arrive exactly once, in strictly increasing timestamp order.
#[test]
fn concurrent_senders_exactly_once_with_cursor() {
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 5_000;
    let (_w, e) = engine(2 * PER_SENDER * SENDERS, 4);
    let receiver = user(&e, "rx");
    let rx_session = session(&e, receiver);
    let ids: Vec<i64> = (0..SENDERS).map(|i| user(&e, &format!("tx{i}"))).collect();
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let e = e.clone();
            let id = ids[i];
            let s = session(&e, id);
            std::thread::spawn(move || {
                for n in 0..PER_SENDER {
                    at_once(e.send(&s, receiver, &format!("{i}:{n}"), None)).unwrap();
                    // Also write to another sender, so mailbox pairs cross shards and lock orders.
                    if n % 10 == 0 {
                        let other = 2 + (id + 1 - 2) % SENDERS as i64;
                        at_once(e.send(&s, other, "side", None)).unwrap();
                    }
                }
            })
        })
        .collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cursor: Option<Cursor> = None;
    let mut last_created = i64::MIN;
    let expected = SENDERS * PER_SENDER;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < expected {
        assert!(std::time::Instant::now() < deadline, "only {} of {expected} delivered", seen.len());
        let (msgs, polled) = poll(&e, &rx_session, cursor);
        assert!(!polled.gap, "capacity is large enough: no gap may be reported");
        for v in msgs {
            assert!(ns(&v) > last_created, "timestamps not strictly increasing in the mailbox");
            last_created = ns(&v);
            if v["receiver_id"] == receiver {
                *seen.entry(v["body"].as_str().unwrap().to_owned()).or_default() += 1;
            }
        }
        cursor = Some(polled.cursor);
    }
    for s in senders {
        s.join().unwrap();
    }
    assert!(poll(&e, &rx_session, cursor).0.is_empty(), "nothing left after the cursor once all are seen");
    assert_eq!(seen.len(), expected);
    assert!(seen.values().all(|&n| n == 1), "a message was delivered twice");
}

#[test]
fn restore_rebuilds_mailboxes_and_watermarks() {
    let (_w, e) = engine(3, 2);
    let now = Clock::wall_ns();
    let snap = Snapshot {
        users: vec![
            UserRow { id: 1, uuid: "a".into(), display_name: "A".into(), left_ns: None },
            UserRow { id: 5, uuid: "b".into(), display_name: String::new(), left_ns: Some(now - 1000) },
        ],
        sessions: vec![SessionRow { uuid: 77, user_id: 1, created_ns: now - 50, last_active_ns: now - 10 }],
        contacts: vec![(1, 5)],
        messages: (0..5)
            .map(|i| MessageRow {
                uuid: i as u128,
                created_ns: now + i,
                sender_id: 1,
                receiver_id: 5,
                body: format!("m{i}"),
                attachments: None,
            })
            .collect(),
        max_user_id: 5,
        log_positions: Vec::new(),
    };
    e.restore(snap);
    assert_eq!(e.users().len(), 2);
    assert_eq!(e.user(1).unwrap().display_name, "A");
    let s = e.session(SessionId(77)).unwrap();
    assert_eq!(s.created, now - 50);
    assert_eq!(s.last_active(), now - 10);
    assert_eq!(e.contacts(&s).len(), 1);
    let (msgs, p) = poll(&e, &s, None);
    let bodies: Vec<_> = msgs.iter().map(|m| m["body"].as_str().unwrap().to_owned()).collect();
    assert_eq!(bodies, ["m2", "m3", "m4"], "capacity 3 keeps the newest three");
    assert!(p.gap, "two messages were pushed out");
    let (_, p) = poll(&e, &s, Some(Cursor::from_ns(now + 1)));
    assert!(!p.gap, "a client that saw m1 missed nothing");
    // The next user id and timestamps continue after the restored ones.
    assert_eq!(user(&e, "c"), 6);
    let sent = at_once(e.send(&s, 5, "new", None)).unwrap();
    assert!(created(sent.json()) > now + 4);
    // User 5's watermark: the stored one (now - 1000) is older than what capacity pushed out
    // on replay (m1), and the send above pushed out m2.
    let b = e.user_arc(5).unwrap();
    assert_eq!(b.mailbox.watermark(), Some(now + 2));
}

#[test]
fn culling_expires_sessions_and_messages_per_shard() {
    let (_w, e) = engine(16, 3);
    let a = user(&e, "a");
    let s = session(&e, a);
    let sent = created(at_once(e.send(&s, a, "self", None)).unwrap().json());
    // Not yet expired.
    e.cull_all(Clock::wall_ns(), true);
    assert!(e.session(s.uuid).is_ok());
    // Far in the future: both TTLs have run out.
    let later = sent + Duration::from_secs(301).as_nanos() as i64;
    e.cull_all(later, true);
    assert_eq!(e.session(s.uuid).unwrap_err(), EngineError::NoSuchSession);
    let u = e.user_arc(a).unwrap();
    assert!(u.mailbox.is_empty());
    assert_eq!(u.mailbox.watermark(), Some(sent));
    assert!(!u.is_online());
}

/// A store whose writes wait while its gate is closed, to hold the write queue full.
struct Gated(Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>);

impl crate::store::Store for Gated {
    fn kind(&self) -> &'static str {
        "gated"
    }
    fn load(&mut self) -> Result<Snapshot, crate::store::StoreError> {
        Ok(Snapshot::default())
    }
    fn write(&mut self, _ops: &[Op]) -> Result<(), crate::store::StoreError> {
        let (open, cv) = &*self.0;
        let mut open = open.lock();
        while !*open {
            cv.wait(&mut open);
        }
        Ok(())
    }
    fn cull_messages(&mut self, _before_ns: i64, _limit: usize) -> Result<usize, crate::store::StoreError> {
        Ok(0)
    }
    fn ping(&mut self) -> Result<(), crate::store::StoreError> {
        Ok(())
    }
    fn probe(&mut self) -> Result<(), crate::store::StoreError> {
        Ok(())
    }
}

#[test]
fn send_rejects_when_queue_full_and_unknown_receiver() {
    let gate = Arc::new((parking_lot::Mutex::new(true), parking_lot::Condvar::new()));
    let set_gate = |open: bool| {
        *gate.0.lock() = open;
        gate.1.notify_all();
    };
    let metrics = Arc::new(Metrics::new(&["x"]));
    let writer = Writer::start(Box::new(Gated(gate.clone())), WriterConfig::new(2), metrics.clone()).unwrap();
    // Dropped before `writer` (reverse order): a failed assertion opens the gate, so stopping
    // the writer cannot hang the test.
    struct OpenOnDrop(Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>);
    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            *self.0 .0.lock() = true;
            self.0 .1.notify_all();
        }
    }
    let _open_on_drop = OpenOnDrop(gate.clone());
    let config = EngineConfig::new(1, 4);
    let e = Engine::new(config, writer.handle(), metrics);
    let a = user(&e, "a");
    let s = session(&e, a);
    assert_eq!(at_once(e.send(&s, 999, "x", None)).unwrap_err(), EngineError::NoSuchReceiver);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while writer.handle().pending() > 0 {
        assert!(std::time::Instant::now() < deadline, "writer never drained");
        std::thread::yield_now();
    }
    // Close the gate: the next two writes stay queued, which is --max-pending=2.
    set_gate(false);
    at_once(e.send(&s, a, "fills the queue", None)).unwrap();
    at_once(e.send(&s, a, "fills the queue", None)).unwrap();
    assert_eq!(e.readiness(), Err(NotReady::QueueFull), "/readyz tells");
    assert_eq!(at_once(e.send(&s, a, "one too many", None)).unwrap_err(), EngineError::QueueFull);
    assert_eq!(s.user.mailbox.len(), 2, "a refused send is in no mailbox");
    // The store catches up: sends are accepted again.
    set_gate(true);
    while e.readiness().is_err() {
        assert!(std::time::Instant::now() < deadline, "queue never drained");
        std::thread::yield_now();
    }
    at_once(e.send(&s, a, "accepted again", None)).unwrap();
}

#[test]
fn session_ids_are_32_lowercase_hex_digits_both_ways() {
    let id = SessionId(0x0123_4567_89ab_cdef_0000_0000_0000_00ff);
    assert_eq!(id.to_string(), "0123456789abcdef00000000000000ff");
    assert_eq!("0123456789abcdef00000000000000ff".parse::<SessionId>(), Ok(id));
    for bad in [
        "",
        "0123456789ABCDEF00000000000000ff",
        "0123456789abcdef00000000000000f",
        "+123456789abcdef00000000000000ff",
        "0123456789abcdef00000000000000fff",
    ] {
        assert_eq!(bad.parse::<SessionId>(), Err(EngineError::NoSuchSession), "{bad:?}");
    }
    let random = SessionId::random();
    assert_eq!(random.to_string().parse::<SessionId>(), Ok(random));
}

/// The eight-at-a-time parse agrees with a plain one on every byte value in every position of
/// an id (the rest of it valid), and on random ids.
#[test]
fn session_id_parse_agrees_with_a_plain_parse_on_every_byte_everywhere() {
    let plain = |s: &[u8]| -> Option<u128> {
        (s.len() == 32 && s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| u128::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap())
    };
    let parse = |s: &[u8]| std::str::from_utf8(s).ok().and_then(|s| s.parse::<SessionId>().ok()).map(|id| id.0);
    for _ in 0..200 {
        let base = SessionId::random().to_string().into_bytes();
        assert_eq!(parse(&base), plain(&base));
        for at in 0..32 {
            for byte in 0..=255u8 {
                let mut s = base.clone();
                s[at] = byte;
                assert_eq!(parse(&s), plain(&s), "{s:?}");
            }
        }
    }
    for s in
        ["00000000000000000000000000000000", "ffffffffffffffffffffffffffffffff", "0123456789abcdef0123456789abcdef"]
    {
        assert_eq!(parse(s.as_bytes()), plain(s.as_bytes()), "{s}");
    }
    // Characters of two, three and four bytes, anywhere in 32 bytes: never an id, never a panic
    // (the test build checks arithmetic overflow).
    for wide in ["é", "ÿ", "€", "\u{fff}", "𝄞", "\u{10ffff}"] {
        for at in 0..=32 - wide.len() {
            let s = format!("{}{wide}{}", &"0123456789abcdef0123456789abcdef"[..at], "f".repeat(32 - at - wide.len()));
            assert_eq!(s.len(), 32);
            assert_eq!(s.parse::<SessionId>(), Err(EngineError::NoSuchSession), "{s}");
        }
    }
    let all_wide = "éééééééééééééééé";
    assert_eq!(all_wide.len(), 32);
    assert_eq!(all_wide.parse::<SessionId>(), Err(EngineError::NoSuchSession));
}

/// A waiter ends when its session closes, when a message arrives in its mailbox (not another's),
/// when its deadline passes, and when the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_end_on_close_message_deadline_and_stop() {
    let (_w, e) = engine(16, 2);
    let a = e.create_user("a", "").await.unwrap().id;
    let b = e.create_user("b", "").await.unwrap().id;
    let open = |user| {
        let e = e.clone();
        async move {
            let view = e.open_session(user).await.unwrap();
            e.session(view.uuid.parse().unwrap()).unwrap()
        }
    };
    let sa = open(a).await;
    let sb = open(b).await;
    let far = Some(tokio::time::Instant::now() + Duration::from_secs(60));
    // Closed.
    let waiter = tokio::spawn({
        let (e, s) = (e.clone(), sa.clone());
        async move { e.wait_for_message(&Hold::new(s), None, far).await }
    });
    while sa.holds() == 0 {
        tokio::task::yield_now().await;
    }
    e.close_session(sa.uuid).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap(), Woken::SessionClosed);
    // A message into its mailbox, not into another's.
    let sa = open(a).await;
    let waiter = tokio::spawn({
        let (e, s) = (e.clone(), sa.clone());
        async move { e.wait_for_message(&Hold::new(s), None, far).await }
    });
    while sa.holds() == 0 {
        tokio::task::yield_now().await;
    }
    at_once(e.send(&sb, b, "to b only", None)).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "woken by a push into another mailbox");
    at_once(e.send(&sb, a, "to a", None)).unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap(), Woken::Message);
    // The deadline, then the stop.
    let cutoff = Some(Cursor::from_ns(Clock::wall_ns() + 1_000_000_000_000));
    let soon = Some(tokio::time::Instant::now() + Duration::from_millis(50));
    assert_eq!(e.wait_for_message(&Hold::new(sa.clone()), cutoff, soon).await, Woken::TimedOut);
    let waiter = tokio::spawn({
        let (e, s) = (e.clone(), sa.clone());
        async move { e.wait_for_message(&Hold::new(s), cutoff, far).await }
    });
    while sa.holds() == 0 {
        tokio::task::yield_now().await;
    }
    e.stop_waiting();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap(), Woken::Stopping);
    assert_eq!(sa.holds(), 0, "every hold released");
}
