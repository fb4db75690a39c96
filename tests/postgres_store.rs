//! The PostgreSQL store against a real server, at the `Store` trait: every op round-trips, a
//! retried batch writes nothing twice, restore order, bounded culling, reconnecting after the
//! server kills the connection (also under load), concurrent migrations, and a clear error when
//! the server is unreachable. Each test gets a database of its own (see `support::pg`).

mod support;

use chatbus::store::postgres::PostgresStore;
use chatbus::store::sqlite::SqliteStore;
use chatbus::store::{migrations, LogPosition, MessageRow, Op, SessionRow, Snapshot, Store, StoreOptions, UserRow};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::pg::{self, TestDb};

fn open(db: &TestDb) -> PostgresStore {
    PostgresStore::open(db.url(), &StoreOptions::default()).expect("open the postgres store")
}

fn user(id: i64) -> UserRow {
    UserRow { id, uuid: format!("u{id}"), display_name: String::new(), left_ns: None }
}

fn message(created_ns: i64, sender_id: i64, receiver_id: i64) -> MessageRow {
    MessageRow {
        uuid: (created_ns as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
        created_ns,
        sender_id,
        receiver_id,
        body: format!("message {created_ns}"),
        attachments: None,
    }
}

/// Writes `ops` the way the writer thread does: retried, whole, until it commits.
fn write_until_committed(store: &mut dyn Store, ops: &[Op]) -> usize {
    let mut failures = 0;
    while let Err(e) = store.write(ops) {
        failures += 1;
        assert!(failures < 100, "write keeps failing: {e}");
        std::thread::sleep(Duration::from_millis(10));
    }
    failures
}

#[test]
fn every_op_round_trips() {
    let db = TestDb::create();
    let mut s = open(&db);
    assert_eq!(s.kind(), "postgres");
    assert_eq!(s.load().unwrap(), Snapshot::default());

    let alice = UserRow { id: 1, uuid: "alice".into(), display_name: "Alice ✓".into(), left_ns: None };
    let bob = UserRow { id: 2, uuid: "bob".into(), display_name: String::new(), left_ns: Some(-5) };
    let carol = user(i64::MAX);
    let s1 = SessionRow { uuid: u128::MAX, user_id: 1, created_ns: -1_000_000_123, last_active_ns: 7 };
    let s2 = SessionRow { uuid: 0, user_id: 2, created_ns: i64::MAX - 1, last_active_ns: i64::MAX - 1 };
    let s3 =
        SessionRow { uuid: 0x0123_4567_89ab_cdef_0011_2233_4455_6677, user_id: 2, created_ns: 3, last_active_ns: 3 };
    let m1 = MessageRow {
        uuid: 0xfedc_ba98_7654_3210_0f1e_2d3c_4b5a_6978,
        created_ns: i64::MIN,
        sender_id: 1,
        receiver_id: 2,
        body: "héllo 👋\n\"quoted\"\t\\".into(),
        attachments: Some(r#"{"z":1,"a":[true,null],"k":"v"}"#.into()),
    };
    let m2 =
        MessageRow { body: String::new(), attachments: Some("{}".into()), ..message(1_471_756_932_632_474_775, 2, 2) };
    let m3 = message(i64::MAX, 99, 1); // a sender that never existed: messages have no foreign keys
    s.write(&[
        Op::UpsertUser(alice.clone()),
        Op::UpsertUser(bob.clone()),
        Op::UpsertUser(carol.clone()),
        Op::InsertSession(s1.clone()),
        Op::InsertSession(s2.clone()),
        Op::InsertSession(s3.clone()),
        Op::AddContact { a: 1, b: 2 },
        Op::AddContact { a: 2, b: i64::MAX },
        Op::AddContact { a: 1, b: i64::MAX },
        Op::Message(m1.clone()),
        Op::Message(m2.clone()),
        Op::Message(m3.clone()),
        Op::Watermark { user_id: 1, left_ns: 42 },
        Op::TouchSessions(vec![(s1.uuid, 100), (s3.uuid, 50), (s3.uuid, 60), (s3.uuid, 55), (12345, 9)]),
    ])
    .unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.users, vec![UserRow { left_ns: Some(42), ..alice.clone() }, bob.clone(), carol.clone()]);
    assert_eq!(
        snap.sessions,
        vec![
            SessionRow { last_active_ns: 100, ..s1.clone() },
            SessionRow { last_active_ns: 60, ..s3.clone() },
            s2.clone(),
        ],
        "sessions by created_ns; a touch keeps the newest time"
    );
    assert_eq!(snap.contacts, vec![(1, 2), (1, i64::MAX), (2, i64::MAX)]);
    assert_eq!(snap.messages, vec![m1.clone(), m2.clone(), m3.clone()]);
    let hex = db.query_i64(
        "SELECT count(*) FROM sessions WHERE replace(uuid::text, '-', '') = 'ffffffffffffffffffffffffffffffff'",
    );
    assert_eq!(hex, vec![1], "a uuid's text form is the id's hex");

    // Updates and removals; none of them moves a time or a watermark back.
    s.write(&[
        Op::UpsertUser(UserRow { display_name: "Alice II".into(), left_ns: None, ..alice.clone() }),
        Op::Watermark { user_id: 1, left_ns: 41 },
        Op::Watermark { user_id: 2, left_ns: 10 },
        Op::TouchSessions(vec![(s1.uuid, 99)]),
        Op::DeleteSession { uuid: s3.uuid },
        Op::RemoveContact { a: 1, b: i64::MAX },
        Op::RemoveContact { a: 5, b: 6 },
        Op::DeleteSession { uuid: 777 },
        Op::TouchSessions(vec![]),
    ])
    .unwrap();
    let snap = s.load().unwrap();
    assert_eq!(
        snap.users[0],
        UserRow { id: 1, uuid: "alice".into(), display_name: "Alice II".into(), left_ns: Some(42) }
    );
    assert_eq!(snap.users[1].left_ns, Some(10));
    assert_eq!(snap.sessions, vec![SessionRow { last_active_ns: 100, ..s1.clone() }, s2.clone()]);
    assert_eq!(snap.contacts, vec![(1, 2), (2, i64::MAX)]);

    // Deleting a user cascades to its sessions and contacts, not to messages; sessions and
    // contacts naming a gone user are ignored, as in the SQLite store.
    s.write(&[
        Op::DeleteUser { id: 2 },
        Op::InsertSession(SessionRow { uuid: 5, user_id: 2, created_ns: 1, last_active_ns: 1 }),
        Op::AddContact { a: 1, b: 2 },
        Op::DeleteUser { id: 3 },
    ])
    .unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.users, vec![UserRow { display_name: "Alice II".into(), left_ns: Some(42), ..alice }, carol]);
    assert_eq!(snap.sessions, vec![SessionRow { last_active_ns: 100, ..s1 }]);
    assert!(snap.contacts.is_empty());
    assert_eq!(snap.messages, vec![m1, m2, m3], "messages outlive their users");

    // A reopened store sees the same thing.
    drop(s);
    assert_eq!(open(&db).load().unwrap(), snap);
}

#[test]
fn a_retried_batch_writes_nothing_twice() {
    let db = TestDb::create();
    let mut s = open(&db);
    let renamed = UserRow { display_name: "again".into(), ..user(1) };
    // Includes a user deleted and its uuid given to a new id within the batch: applying that
    // again must converge, not fail on the uuid.
    let batch = vec![
        Op::UpsertUser(user(1)),
        Op::UpsertUser(user(2)),
        Op::UpsertUser(UserRow { id: 3, uuid: "reused".into(), display_name: "first".into(), left_ns: None }),
        Op::InsertSession(SessionRow { uuid: 11, user_id: 1, created_ns: 1, last_active_ns: 1 }),
        Op::InsertSession(SessionRow { uuid: 33, user_id: 3, created_ns: 2, last_active_ns: 2 }),
        Op::AddContact { a: 1, b: 2 },
        Op::AddContact { a: 2, b: 3 },
        Op::Message(message(10, 1, 2)),
        Op::Message(message(11, 2, 1)),
        Op::DeleteUser { id: 3 },
        Op::UpsertUser(UserRow { id: 4, uuid: "reused".into(), display_name: "second".into(), left_ns: None }),
        Op::InsertSession(SessionRow { uuid: 44, user_id: 4, created_ns: 3, last_active_ns: 3 }),
        Op::UpsertUser(renamed.clone()),
        Op::TouchSessions(vec![(11, 5)]),
        Op::Watermark { user_id: 2, left_ns: 9 },
        Op::Message(message(12, 1, 1)),
        Op::RemoveContact { a: 1, b: 2 },
    ];
    s.write(&batch).unwrap();
    let once = s.load().unwrap();
    assert_eq!(once.users.iter().map(|u| u.id).collect::<Vec<_>>(), vec![1, 2, 4]);
    assert_eq!(once.users[0], renamed);
    assert_eq!(once.sessions.len(), 2);
    assert!(once.contacts.is_empty());
    assert_eq!(once.messages.len(), 3);
    assert_eq!(once.max_user_id, 4);

    for _ in 0..3 {
        s.write(&batch).unwrap();
        assert_eq!(s.load().unwrap(), once, "applying the batch again changed the store");
    }
    // Also when the retry comes on a fresh connection, and with a duplicate inside one batch.
    db.terminate_connections();
    let mut doubled = batch.clone();
    doubled.extend(batch.iter().cloned());
    s.write(&doubled).unwrap();
    assert_eq!(s.load().unwrap(), once);
    assert_eq!(db.query_one_i64("SELECT count(*) FROM messages"), 3);

    // The highest id stays remembered when its user is gone (ids are never reused).
    s.write(&[Op::DeleteUser { id: 4 }, Op::UpsertUser(user(3))]).unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.users.iter().map(|u| u.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(snap.max_user_id, 4);
}

/// Cluster mode: a log entry's writes reach the store once, however many nodes write it. An entry
/// at or below the stream's stored position was written already (by this node or another) and is
/// skipped whole; a later one is written and raises the position; writes outside entries go as
/// always. On both stores alike.
#[test]
fn logged_entries_are_written_once_and_positions_only_rise() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("positions.db");
    let mut lite = SqliteStore::open(path.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let mut pg = open(&db);
    let at = |stream: &str, seq: i64, ops: Vec<Op>| Op::Logged {
        stream: stream.into(),
        position: LogPosition { seq, created_ns: seq * 1000, user_id: seq / 10 },
        ops,
    };
    let ids = |snap: &Snapshot| snap.users.iter().map(|u| u.id).collect::<Vec<_>>();
    for store in [&mut pg as &mut dyn Store, &mut lite] {
        store
            .write(&[
                at("a", 5, vec![Op::UpsertUser(user(1))]),
                Op::UpsertUser(user(7)),
                at("a", 9, vec![Op::UpsertUser(user(2))]),
                at("b", 3, vec![]),
            ])
            .unwrap();
        // A node behind: its entries were written; nothing of them is written again.
        store.write(&[at("a", 7, vec![Op::UpsertUser(user(3))])]).unwrap();
        store.write(&[at("a", 9, vec![Op::DeleteUser { id: 1 }])]).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(ids(&snap), vec![1, 2, 7]);
        assert_eq!(
            snap.log_positions,
            vec![
                ("a".to_owned(), LogPosition { seq: 9, created_ns: 9000, user_id: 0 }),
                ("b".to_owned(), LogPosition { seq: 3, created_ns: 3000, user_id: 0 }),
            ]
        );
        // A batch across the stored position: the part past it is written.
        store
            .write(&[
                at("a", 8, vec![Op::UpsertUser(user(5))]),
                at("a", 10, vec![Op::UpsertUser(user(4)), Op::DeleteUser { id: 2 }]),
                at("b", 12, vec![]),
            ])
            .unwrap();
        let snap = store.load().unwrap();
        assert_eq!(ids(&snap), vec![1, 4, 7]);
        assert_eq!(snap.log_positions[0].1, LogPosition { seq: 10, created_ns: 10000, user_id: 1 });
        assert_eq!(snap.log_positions[1].1, LogPosition { seq: 12, created_ns: 12000, user_id: 1 });
    }
}

#[test]
fn restore_is_ordered() {
    let db = TestDb::create();
    let mut s = open(&db);
    let mut rng = StdRng::seed_from_u64(7);
    let mut ids: Vec<i64> = (1..=50).collect();
    let mut stamps: Vec<i64> =
        (0..3000).map(|i| 1_700_000_000_000_000_000 + i * 1000 + rng.gen_range(0..1000)).collect();
    // Written in a shuffled order over several batches.
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.gen_range(0..=i));
    }
    for i in (1..stamps.len()).rev() {
        stamps.swap(i, rng.gen_range(0..=i));
    }
    let users: Vec<Op> = ids.iter().map(|&id| Op::UpsertUser(user(id))).collect();
    s.write(&users).unwrap();
    let sessions: Vec<Op> = stamps[..200]
        .iter()
        .map(|&ns| {
            Op::InsertSession(SessionRow { uuid: ns as u128, user_id: 1 + ns % 50, created_ns: ns, last_active_ns: ns })
        })
        .collect();
    s.write(&sessions).unwrap();
    for chunk in stamps.chunks(700) {
        let ops: Vec<Op> = chunk.iter().map(|&ns| Op::Message(message(ns, 1 + ns % 50, 1 + (ns / 7) % 50))).collect();
        s.write(&ops).unwrap();
    }
    let snap = s.load().unwrap();
    assert_eq!(snap.users.iter().map(|u| u.id).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
    assert!(snap.sessions.windows(2).all(|w| w[0].created_ns < w[1].created_ns));
    assert_eq!(snap.messages.len(), stamps.len());
    assert!(snap.messages.windows(2).all(|w| w[0].created_ns < w[1].created_ns), "messages oldest first");
    stamps.sort_unstable();
    let expected: Vec<MessageRow> = stamps.iter().map(|&ns| message(ns, 1 + ns % 50, 1 + (ns / 7) % 50)).collect();
    assert_eq!(snap.messages, expected);
}

#[test]
fn culling_goes_in_bounded_steps() {
    let db = TestDb::create();
    let mut s = open(&db);
    let ops: Vec<Op> = (1..=25).map(|ns| Op::Message(message(ns * 10, 1, 2))).collect();
    s.write(&ops).unwrap();
    // Everything before 205: 20 messages, at most 7 per step, oldest first.
    assert_eq!(s.cull_messages(205, 7).unwrap(), 7);
    assert_eq!(s.load().unwrap().messages.first().map(|m| m.created_ns), Some(80));
    assert_eq!(s.cull_messages(205, 7).unwrap(), 7);
    assert_eq!(s.cull_messages(205, 7).unwrap(), 6);
    assert_eq!(s.cull_messages(205, 7).unwrap(), 0);
    let left: Vec<i64> = s.load().unwrap().messages.iter().map(|m| m.created_ns).collect();
    assert_eq!(left, vec![210, 220, 230, 240, 250]);
    assert_eq!(s.cull_messages(i64::MAX, usize::MAX).unwrap(), 5);
    assert!(s.load().unwrap().messages.is_empty());
}

#[test]
fn reconnects_after_the_server_kills_the_connection() {
    let db = TestDb::create();
    let mut s = open(&db);
    let a: Vec<Op> = (1..=100).map(|ns| Op::Message(message(ns, 1, 2))).collect();
    let b: Vec<Op> = (101..=200).map(|ns| Op::Message(message(ns, 2, 1))).collect();
    s.write(&a).unwrap();
    assert_eq!(db.terminate_connections(), 1, "the store holds one connection");
    // A dead idle connection costs no failed write: the store redials at once.
    s.write(&b).unwrap();
    assert_eq!(db.query_one_i64("SELECT count(*) FROM messages"), 200);
    // The writer retrying a batch whose commit it never saw writes nothing twice.
    db.terminate_connections();
    s.write(&a).unwrap();
    assert_eq!(db.query_one_i64("SELECT count(*) FROM messages"), 200);
    // Every other call reconnects too.
    db.terminate_connections();
    s.ping().unwrap();
    db.terminate_connections();
    assert_eq!(s.cull_messages(51, 1000).unwrap(), 50);
    db.terminate_connections();
    assert_eq!(s.load().unwrap().messages.len(), 150);
}

#[test]
fn killing_connections_under_load_loses_nothing_and_duplicates_nothing() {
    const BATCHES: i64 = 120;
    const PER_BATCH: i64 = 500;
    let db = TestDb::create();
    let mut s = open(&db);
    s.write(&[Op::UpsertUser(user(1)), Op::UpsertUser(user(2))]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        // Asks for a kill every 5–40 ms; the main loop carries it out during the next write.
        let (stop, kills) = (stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(1);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(rng.gen_range(5..40)));
                kills.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut failures = 0;
    let mut kills_done = 0;
    for batch in 0..BATCHES {
        let mut ops: Vec<Op> = (0..PER_BATCH).map(|i| Op::Message(message(batch * PER_BATCH + i + 1, 1, 2))).collect();
        ops.push(Op::TouchSessions(vec![]));
        ops.push(Op::Watermark { user_id: 1, left_ns: batch });
        // When asked, kill the store's connection from another thread while the write runs:
        // it dies before, during or after the COPY or the COMMIT.
        if kills.swap(0, Ordering::Relaxed) > 0 {
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    std::thread::sleep(Duration::from_millis(1));
                    kills_done += db.terminate_connections();
                });
                failures += write_until_committed(&mut s, &ops);
            });
        } else {
            failures += write_until_committed(&mut s, &ops);
        }
    }
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    assert!(kills_done > 5, "too few connections were killed ({kills_done}) for the test to mean anything");
    let total = BATCHES * PER_BATCH;
    assert_eq!(db.query_one_i64("SELECT count(*) FROM messages"), total);
    assert_eq!(db.query_one_i64("SELECT sum(created_ns)::bigint FROM messages"), total * (total + 1) / 2);
    assert_eq!(db.query_one_i64("SELECT left_ns FROM users WHERE id = 1"), BATCHES - 1);
    eprintln!("{kills_done} connections killed, {failures} writes failed and were retried");
}

#[test]
fn two_instances_migrate_at_once() {
    let db = TestDb::create();
    let n = 4;
    let barrier = Arc::new(Barrier::new(n));
    let stores: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), db.url().to_owned());
            std::thread::spawn(move || {
                barrier.wait();
                PostgresStore::open(&url, &StoreOptions::default())
            })
        })
        .collect();
    let mut stores: Vec<PostgresStore> =
        stores.into_iter().map(|t| t.join().unwrap().expect("every instance opens")).collect();
    assert_eq!(db.query_one_i64("SELECT count(*) FROM schema_migrations"), migrations::POSTGRES.len() as i64);
    assert_eq!(
        db.query_i64("SELECT version FROM schema_migrations ORDER BY version"),
        migrations::POSTGRES.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    // All of them work, each on its own connection.
    for (i, s) in stores.iter_mut().enumerate() {
        s.write(&[Op::Message(message(i as i64 + 1, 1, 1))]).unwrap();
    }
    assert_eq!(db.query_one_i64("SELECT count(*) FROM messages"), n as i64);
    drop(stores);
    // A later start applies nothing again.
    let _again = open(&db);
    assert_eq!(db.query_one_i64("SELECT count(*) FROM schema_migrations"), migrations::POSTGRES.len() as i64);
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let url = "postgres://chatbus:secret@127.0.0.1:1/chatbus";
    let started = Instant::now();
    let err = PostgresStore::open(url, &StoreOptions::default()).unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(3), "connect_timeout 0 must fail at once");
    assert!(err.contains("127.0.0.1:1") && err.contains("chatbus"), "names the server: {err}");
    assert!(err.to_lowercase().contains("refused"), "says why: {err}");
    assert!(!err.contains("secret"), "never shows the password: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
    eprintln!("unreachable: {err}");

    // With a connect timeout, it keeps trying for about that long.
    let options = StoreOptions { connect_timeout: Duration::from_millis(800), ..StoreOptions::default() };
    let started = Instant::now();
    let err = PostgresStore::open(url, &options).unwrap_err().to_string();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(5), "waited {waited:?}");
    assert!(err.contains("attempts"), "{err}");
    eprintln!("after waiting: {err}");

    // A server that answers but refuses: no retrying, and the server's reason.
    let db = TestDb::create();
    let missing = pg::with_dbname(db.url(), "chatbus_no_such_database");
    let options = StoreOptions { connect_timeout: Duration::from_secs(30), ..StoreOptions::default() };
    let started = Instant::now();
    let err = PostgresStore::open(&missing, &options).unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "a missing database is not worth waiting for");
    assert!(err.contains("does not exist"), "{err}");
    eprintln!("missing database: {err}");
}

#[test]
fn durable_and_from_inside_a_runtime() {
    let db = TestDb::create();
    let options = StoreOptions { durable: true, ..StoreOptions::default() };
    // As an async main would: open and load inside a runtime, then write from a plain thread.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (mut s, snap) = rt.block_on(async {
        let mut s = PostgresStore::open(db.url(), &options).unwrap();
        let snap = s.load().unwrap();
        (s, snap)
    });
    assert_eq!(snap, Snapshot::default());
    std::thread::spawn(move || {
        s.write(&[Op::UpsertUser(user(1)), Op::Message(message(1, 1, 1))]).unwrap();
        rt.block_on(async move { drop(s) });
    })
    .join()
    .unwrap();
    assert_eq!(db.query_one_i64("SELECT count(*) FROM messages"), 1);
}

/// The same random op stream into both stores ends in the same snapshot.
#[test]
fn matches_the_sqlite_store() {
    let db = TestDb::create();
    let mut pg = open(&db);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirror.db");
    let mut lite = SqliteStore::open(path.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    let mut ns = 1_700_000_000_000_000_000i64;
    let mut sessions: Vec<(u128, i64)> = Vec::new();
    for _ in 0..40 {
        let mut ops = Vec::new();
        for _ in 0..rng.gen_range(1..200) {
            ns += rng.gen_range(1..1_000_000);
            let id = rng.gen_range(1..30i64);
            let other = rng.gen_range(1..30i64);
            let op = match rng.gen_range(0..100) {
                0..=9 => Op::UpsertUser(UserRow {
                    id,
                    uuid: format!("user-{id}"),
                    display_name: format!("name {}", rng.gen_range(0..3)),
                    left_ns: None,
                }),
                10..=12 => Op::DeleteUser { id },
                13..=20 => {
                    let uuid: u128 = rng.gen();
                    sessions.push((uuid, id));
                    Op::InsertSession(SessionRow { uuid, user_id: id, created_ns: ns, last_active_ns: ns })
                }
                21..=23 if !sessions.is_empty() => {
                    Op::DeleteSession { uuid: sessions[rng.gen_range(0..sessions.len())].0 }
                }
                24..=29 if !sessions.is_empty() => Op::TouchSessions(
                    (0..rng.gen_range(1..5))
                        .map(|_| (sessions[rng.gen_range(0..sessions.len())].0, ns - rng.gen_range(0..2_000_000)))
                        .collect(),
                ),
                30..=36 if id != other => Op::AddContact { a: id.min(other), b: id.max(other) },
                37..=40 if id != other => Op::RemoveContact { a: id.min(other), b: id.max(other) },
                41..=44 => Op::Watermark { user_id: id, left_ns: ns - rng.gen_range(0..10_000_000) },
                45..=48 => Op::Logged {
                    stream: format!("s{}", rng.gen_range(0..2)),
                    position: LogPosition { seq: rng.gen_range(0..1000), created_ns: ns, user_id: id },
                    ops: vec![Op::Watermark { user_id: id, left_ns: ns }],
                },
                _ => Op::Message(MessageRow {
                    uuid: rng.gen(),
                    created_ns: ns,
                    sender_id: id,
                    receiver_id: other,
                    body: "x".repeat(rng.gen_range(0..50)),
                    attachments: rng.gen_bool(0.2).then(|| format!("{{\"n\":{}}}", rng.gen_range(0..9))),
                }),
            };
            ops.push(op);
        }
        pg.write(&ops).unwrap();
        lite.write(&ops).unwrap();
        if rng.gen_bool(0.2) {
            let before = ns - rng.gen_range(0..500_000_000);
            assert_eq!(pg.cull_messages(before, 50).unwrap(), lite.cull_messages(before, 50).unwrap());
        }
    }
    let (p, l) = (pg.load().unwrap(), lite.load().unwrap());
    assert!(p.users.len() > 5 && p.sessions.len() > 5 && !p.contacts.is_empty() && p.messages.len() > 100);
    assert_eq!(p.log_positions.len(), 2, "{:?}", p.log_positions);
    assert_eq!(p.log_positions, l.log_positions);
    assert_eq!(p.users, l.users);
    assert_eq!(p.sessions, l.sessions);
    assert_eq!(p.contacts, l.contacts);
    assert_eq!(p.messages.len(), l.messages.len());
    for (a, b) in p.messages.iter().zip(&l.messages) {
        assert_eq!(a, b);
    }
    assert_eq!(p.max_user_id, l.max_user_id);
    assert_eq!(p, l, "and whatever else a snapshot holds");
}
