//! Store faults, tried as a hostile client and as an unlucky operator would: input the store
//! cannot hold, a poison op in a batch, a full disk, a stop during an outage, a read-only database
//! file, and a duplicate create while the first is not yet in the store. Every test ends by
//! comparing the store's rows with what the API acknowledged: none lost, none twice, none that
//! was never acknowledged.

mod support;

use chatbus::metrics::Metrics;
use chatbus::store::postgres::PostgresStore;
use chatbus::store::{MessageRow, Op, Store, StoreOptions, UserRow};
use chatbus::writer::spill::{DeadLetter, DEAD_LETTERS};
use chatbus::writer::{Outcome, Writer, WriterConfig};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::binary::{one_line_error, Chatbus};
use support::client::{err, ok, Api};
use support::contract::uuid_of;
use support::pg::TestDb;
use support::server::{config, TestServer};
use support::store::{assert_exactly, TestStore};
use support::wait::{blocking, wait_until};

// ---- 1. input the store cannot hold ---------------------------------------------------------------

/// U+0000 cannot be stored in a PostgreSQL text column, so it is refused up front, on every store
/// alike, naming the field — and nothing of it reaches memory or the store. Inside `attachments`
/// it is fine: JSON text stores it escaped.
async fn nul_is_refused_before_it_reaches_the_store(store: TestStore) {
    let srv = TestServer::start(&config(store.url(), &[])).await;
    let api = srv.api();
    err(&api.post("/api/user", json!({"uuid": "a\u{0}b"})).await, 400, "uuid");
    err(&api.post("/api/users", json!({"uuid": "nul-name", "display_name": "x\u{0}"})).await, 400, "display_name");
    assert!(api.get("/api/user.uuid/nul-name").await.status == 404, "a refused create leaves no user");
    let a = api.user("alice").await;
    let b = api.user("bob").await;
    err(&api.put(&format!("/api/user/{a}"), json!({"display_name": "\u{0}"})).await, 400, "display_name");
    let s = api.session(a).await;
    let r = api.post(&format!("/api/message/{s}"), json!({"receiver_id": b, "body": "a\u{0}b"})).await;
    err(&r, 400, "body");
    assert!(r.message().contains("U+0000"), "{}", r.message());
    let with_nul = ok(&api
        .post(&format!("/api/message/{s}"), json!({"receiver_id": b, "body": "", "attachments": {"k\u{0}": "v\u{0}"}}))
        .await);
    assert_eq!(with_nul["attachments"], json!({"k\u{0}": "v\u{0}"}));
    let plain = api.send(&s, b, "after the refusals").await;
    assert_eq!(api.readyz().await.status, 200, "the store is not wedged");
    srv.stop().await;

    assert_eq!(store.users().await, vec![format!("{a} alice "), format!("{b} bob ")]);
    let acked: HashSet<String> = [&with_nul, &plain].into_iter().map(uuid_of).collect();
    assert_exactly(&store.messages().await, &acked, &format!("messages on {}", store.kind()));
    // The escaped NUL comes back from the store exactly.
    let srv = TestServer::start(&config(store.url(), &[])).await;
    let (_, msgs) = srv.api().poll(&format!("/api/messages/{s}")).await;
    assert_eq!(msgs, vec![with_nul, plain]);
    srv.stop().await;
}
support::both_stores!(nul_is_refused_before_it_reaches_the_store);

/// One character drawn from the cases that break stores and encoders.
fn edge_char(rng: &mut StdRng) -> char {
    if rng.gen_bool(0.004) {
        return '\u{0}'; // rare enough that most strings get through, common enough to be tried
    }
    const EDGES: &[char] = &[
        '\u{1}',
        '\u{8}',
        '\t',
        '\n',
        '\r',
        '\u{1f}',
        '"',
        '\\',
        '/',
        '\'',
        '%',
        '\u{7f}',
        '\u{80}',
        '\u{a0}',
        'é',
        'ß',
        '\u{301}',
        '\u{200b}',
        '\u{200d}',
        '\u{202e}',
        '\u{2028}',
        '\u{2029}',
        '\u{feff}',
        '\u{fffd}',
        '\u{ffff}',
        '中',
        'ア',
        '\u{1f600}',
        '\u{1f468}',
        '\u{10ffff}',
        '\u{e000}',
    ];
    if rng.gen_bool(0.5) {
        EDGES[rng.gen_range(0..EDGES.len())]
    } else {
        rng.gen_range(' '..='~')
    }
}

fn edge_string(rng: &mut StdRng, max_chars: usize) -> String {
    let len = match rng.gen_range(0..10) {
        0 => 0,
        1 => max_chars,
        2 => max_chars + 1,
        _ => rng.gen_range(1..=max_chars.min(40)),
    };
    (0..len).map(|_| edge_char(rng)).collect()
}

/// Random strings full of edge cases through the API into the store and back after a restart:
/// each is either refused with a 400 naming its field (too long, empty, or holding U+0000) or
/// comes back byte for byte, on both stores.
async fn random_strings_survive_the_store_and_a_restart(store: TestStore) {
    let mut rng = StdRng::seed_from_u64(0x00c4_a7b5);
    let cfg = config(store.url(), &["--mailbox-capacity", "4096"]);
    let srv = TestServer::start(&cfg).await;
    let api = srv.api();
    let receiver = api.user("receiver").await;
    let session = api.session(receiver).await;
    let mut users = Vec::new();
    let mut messages = Vec::new();
    let mut refused = 0;
    let mut with_nul = 0;
    for i in 0..150 {
        let uuid = edge_string(&mut rng, 64);
        let name = edge_string(&mut rng, 256);
        let r = api.post("/api/user", json!({"uuid": uuid, "display_name": name})).await;
        let uuid_ok = !uuid.is_empty() && uuid.chars().count() <= 64 && !uuid.contains('\0');
        let name_ok = name.chars().count() <= 256 && !name.contains('\0');
        if uuid_ok && name_ok {
            let u = ok(&r);
            if u["uuid"] == uuid.as_str() && u["display_name"] == name.as_str() {
                users.push(u);
            } // else: a uuid drawn twice comes back as the first one, unchanged
        } else {
            assert_eq!(r.status, 400, "{i}: {uuid:?} / {name:?}: {}", r.text());
            let field = if uuid_ok { "display_name" } else { "uuid" };
            assert!(r.message().starts_with(field), "{i}: names {field}: {}", r.message());
            refused += 1;
        }
        let body = edge_string(&mut rng, 1024);
        with_nul += [&uuid, &name, &body].iter().filter(|s| s.contains('\0')).count();
        let key = edge_string(&mut rng, 8);
        let attachments = json!({ key: edge_string(&mut rng, 30) });
        let r = api
            .post(
                &format!("/api/message/{session}"),
                json!({"receiver_id": receiver, "body": body, "attachments": attachments}),
            )
            .await;
        if body.chars().count() <= 1024 && !body.contains('\0') {
            let m = ok(&r);
            assert_eq!((&m["body"], &m["attachments"]), (&json!(body), &attachments), "{i}");
            messages.push(m);
        } else {
            err(&r, 400, "body");
            refused += 1;
        }
    }
    assert!(
        refused > 10 && with_nul > 5 && messages.len() > 100 && users.len() > 80,
        "the mix has both: {refused} refused, {with_nul} with U+0000"
    );
    let listed = ok(&api.get("/api/users").await);
    srv.stop().await;

    let srv = TestServer::start(&cfg).await;
    let api = srv.api();
    assert_eq!(ok(&api.get("/api/users").await), listed, "users after a restart on {}", store.kind());
    for u in &users {
        assert_eq!(&ok(&api.get(&format!("/api/user/{}", u["id"])).await), u);
    }
    let (_, msgs) = api.poll(&format!("/api/messages/{session}")).await;
    assert_eq!(msgs, messages, "messages after a restart on {}", store.kind());
    srv.stop().await;
    let acked: HashSet<String> = messages.iter().map(uuid_of).collect();
    assert_exactly(&store.messages().await, &acked, "random strings");
}
support::both_stores!(random_strings_survive_the_store_and_a_restart);

// ---- 2. a poison op in the middle of a batch --------------------------------------------------------

fn message(created_ns: i64, body: &str) -> Op {
    Op::Message(MessageRow {
        uuid: 0xabc0_0000 + created_ns as u128,
        created_ns,
        sender_id: 1,
        receiver_id: 1,
        body: body.into(),
        attachments: None,
    })
}

/// A write PostgreSQL refuses for good (a NUL in a text column, which only a bug could let past
/// the API) in the middle of a batch: the writer finds it by bisection, sets it aside in the
/// dead-letter file, and commits everything else — the store is never wedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_op_mid_batch_is_set_aside_and_the_rest_commits() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let url = db.url().to_owned();
    let spill_dir = dir.path().to_path_buf();
    let (outcome, committed_after, stored) = blocking(move || {
        let mut store = PostgresStore::open(&url, &StoreOptions::default()).expect("open");
        store
            .write(&[Op::UpsertUser(UserRow { id: 1, uuid: "u".into(), display_name: String::new(), left_ns: None })])
            .expect("user");
        let metrics = Arc::new(Metrics::new(&["t"]));
        let config = WriterConfig { max_pending: 1_000_000, max_write_lag: Duration::from_secs(5), spill_dir };
        let writer = Writer::start(Box::new(store), config, metrics).expect("writer");
        let h = writer.handle();
        for t in 1..=1000 {
            h.submit(message(t, "fine"));
        }
        let poison = h.submit_durable(message(1001, "a\u{0}b"));
        for t in 1002..=2000 {
            h.submit(message(t, "fine"));
        }
        let after = h.submit_durable(message(2001, "fine"));
        let report = writer.stop(Duration::from_secs(30));
        assert_eq!(report.spilled, 0);
        let mut check = PostgresStore::open(&url, &StoreOptions::default()).expect("reopen");
        let stored: Vec<i64> = check.load().expect("load").messages.iter().map(|m| m.created_ns).collect();
        (poison.outcome(), after.outcome(), stored)
    })
    .await;
    assert_eq!(outcome, Some(Outcome::Refused));
    assert_eq!(committed_after, Some(Outcome::Committed));
    let expected: Vec<i64> = (1..=2001).filter(|&t| t != 1001).collect();
    assert_eq!(stored, expected, "every other op committed, once, in order");
    let letters = std::fs::read_to_string(dir.path().join(DEAD_LETTERS)).expect("the dead-letter file");
    let letters: Vec<DeadLetter> = letters.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].op, message(1001, "a\u{0}b"));
    assert!(letters[0].error.contains("0x00"), "the store's own reason: {}", letters[0].error);
}

// ---- 3. a full disk -----------------------------------------------------------------------------------

/// A small tmpfs, unmounted (lazily) when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` on a fresh directory. Mounting needs root: anyone else gets
    /// `None` and the test says loudly that it did not run.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(Self { dir });
        }
        let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        assert!(!is_root, "mount failed as root: {}", String::from_utf8_lossy(&out.stderr));
        eprintln!(
            "\n*** SKIPPED: mounting a small tmpfs needs root; the disk-full test did not run ({}).\n",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a file; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let small = vec![0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Sends `n` messages; every one must be acknowledged. Returns their uuids.
async fn send_n(api: &Api, session: &str, to: i64, n: usize, tag: &str) -> HashSet<String> {
    let mut acked = HashSet::new();
    for i in 0..n {
        acked.insert(uuid_of(&api.send(session, to, &format!("{tag} {i} {}", "x".repeat(900))).await));
    }
    acked
}

/// SQLite on a 3 MB tmpfs: fill the disk, send, free it — the server recovers by itself and every
/// acknowledged message is in the store. Fill it again and SIGTERM while it is full: the stop
/// ends within `--stop-timeout`, exits non-zero naming the spill file, and the next start replays
/// it. Prints the recovery time and the stop time for the issue's figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_recovers_by_itself_and_a_stop_while_full_spills() {
    let Some(disk) = SmallDisk::mount("3m") else { return };
    let spill = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", disk.path().join("chatbus.db").display());
    let spill_dir = spill.path().to_str().unwrap().to_owned();
    let flags =
        ["--spill-dir", &spill_dir, "--max-write-lag", "60s", "--stop-timeout", "2s", "--mailbox-capacity", "4096"];
    let mut bin = Chatbus::start(&url, &flags).await;
    let api = bin.api();
    let a = api.user("a").await;
    let s = api.session(a).await;
    let mut acked = send_n(&api, &s, a, 20, "before").await;

    let filler = disk.fill();
    acked.extend(send_n(&api, &s, a, 200, "while full").await);
    wait_until("/readyz to report the full disk", Duration::from_secs(20), || async {
        let r = api.readyz().await;
        r.status == 503 && r.message().contains("full")
    })
    .await;
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    wait_until("/readyz 200 once space is free", Duration::from_secs(30), || async {
        api.readyz().await.status == 200
    })
    .await;
    let recovered = freed.elapsed();
    acked.extend(send_n(&api, &s, a, 20, "after").await);

    let filler = disk.fill();
    acked.extend(send_n(&api, &s, a, 100, "full again").await);
    wait_until("the writer to find the disk full again", Duration::from_secs(20), || async {
        api.readyz().await.status == 503
    })
    .await;
    let term = Instant::now();
    let (status, stderr) = bin.terminate().await;
    let stopped = term.elapsed();
    assert_eq!(status.code(), Some(3), "a stop that spilled exits 3:\n{stderr}");
    assert!(stopped < Duration::from_secs(10), "the stop took {stopped:?}");
    assert!(stderr.contains("spill"), "the log says where the spill went:\n{stderr}");
    let files: Vec<_> = std::fs::read_dir(spill.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(files.iter().any(|f| f.to_string_lossy().contains("chatbus-spill-")), "{files:?}");
    eprintln!("disk full: recovered {recovered:?} after space was freed; a stop while full took {stopped:?}");

    std::fs::remove_file(&filler).unwrap();
    let bin = Chatbus::start(&url, &flags).await;
    let (_, msgs) = bin.api().poll(&format!("/api/messages/{s}")).await;
    let seen: HashSet<String> = msgs.iter().map(uuid_of).collect();
    assert_eq!(seen, acked, "after the replay, the mailbox holds exactly what was acknowledged");
    bin.stop().await;
    let files: Vec<_> = std::fs::read_dir(spill.path()).unwrap().flatten().collect();
    assert!(files.is_empty(), "the replayed spill file is gone: {files:?}");
    let rows = support::store::sqlite_messages(&disk.path().join("chatbus.db"));
    assert_exactly(&rows, &acked, "messages after a full disk, a spill and a replay");
}

// ---- 4. a read-only database file --------------------------------------------------------------------

/// A database file that cannot be written, in a directory that can: the start fails at once with
/// one line (before it would acknowledge writes it could never hold). As root, file permissions
/// do not stop writes, so the binary runs as `nobody` then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_file_fails_at_start() {
    let store = TestStore::sqlite();
    let srv = TestServer::start(&config(store.url(), &[])).await;
    srv.api().user("someone").await;
    srv.stop().await;
    let db = store.sqlite_path();
    let dir = db.parent().unwrap();
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        // No WAL or shared-memory file left over: the file alone decides.
        if f.path() != db {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    Command::new("chmod").arg("0444").arg(&db).status().unwrap();
    Command::new("chmod").arg("0777").arg(dir).status().unwrap();
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let url = store.url().to_owned();
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", support::binary::EXE]);
        c
    } else {
        Command::new(support::binary::EXE)
    };
    let out = blocking(move || {
        cmd.args(["--listen", "127.0.0.1:0", "--database-url", &url]).env_remove("RUST_LOG").output().unwrap()
    })
    .await;
    let line = one_line_error(out.status, &String::from_utf8_lossy(&out.stderr));
    assert!(line.contains("cannot be written") && line.contains("readonly"), "{line}");
}

// ---- 5. a duplicate create while the first is not in the store ---------------------------------------

/// `POST /api/user` twice with one uuid while the store cannot commit: neither is answered, the
/// user is not shown, and after a crash it does not exist — nothing answered that is not stored.
async fn duplicate_create_while_the_store_is_held(
    api: &Api,
) -> (tokio::task::JoinHandle<u16>, tokio::task::JoinHandle<u16>) {
    let create = |api: Api| {
        tokio::spawn(async move {
            match api.try_call("POST", "/api/user", Some(br#"{"uuid": "dup", "display_name": "D"}"#)).await {
                Ok(r) => r.status,
                Err(_) => 0, // no answer: the server was killed
            }
        })
    };
    let first = create(api.clone());
    wait_until("the first create to be queued", Duration::from_secs(10), || async {
        let m = api.get("/metrics").await.text();
        m.lines().any(|l| l.starts_with("chatbus_writer_queue_depth") && !l.ends_with(" 0"))
    })
    .await;
    let second = create(api.clone());
    // A server that answered duplicates from memory would do so within microseconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!first.is_finished() && !second.is_finished(), "nothing is answered before the store has it");
    assert_eq!(api.get("/api/user.uuid/dup").await.status, 404, "a user not yet stored is not shown");
    assert!(!api.get("/api/users").await.text().contains("\"dup\""), "nor listed");
    (first, second)
}

/// With SQLite held by another connection's write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_create_waits_for_the_first_commit_on_sqlite() {
    let store = TestStore::sqlite();
    let mut bin = Chatbus::start(store.url(), &[]).await;
    let api = bin.api();
    api.user("before").await;
    let lock = rusqlite::Connection::open(store.sqlite_path()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (first, second) = duplicate_create_while_the_store_is_held(&api).await;
    bin.kill();
    drop(lock);
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (0, 0), "neither create was answered");
    let bin = Chatbus::start(store.url(), &[]).await;
    assert_eq!(bin.api().get("/api/user.uuid/dup").await.status, 404, "the crash took the unanswered user");
    bin.stop().await;
    assert!(!store.users().await.iter().any(|u| u.contains(" dup ")));

    // And when the lock goes instead of the server: both answers are the one stored user.
    let bin = Chatbus::start(store.url(), &[]).await;
    let api = bin.api();
    let lock = rusqlite::Connection::open(store.sqlite_path()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (first, second) = duplicate_create_while_the_store_is_held(&api).await;
    lock.execute_batch("ROLLBACK").unwrap();
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (200, 200));
    let u = ok(&api.get("/api/user.uuid/dup").await);
    bin.stop().await;
    assert!(store.users().await.contains(&format!("{} dup D", u["id"])));
}

/// With the PostgreSQL backend serving chatbus's writer paused (SIGSTOP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_create_waits_for_the_first_commit_on_postgres() {
    let store = TestStore::postgres();
    let mut bin = Chatbus::start(store.url(), &[]).await;
    let api = bin.api();
    api.user("before").await;
    let TestStore::Postgres(db) = &store else { unreachable!() };
    let pids: Vec<String> = db
        .query_i64(&format!(
            "SELECT pid::bigint FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'chatbus'",
            db.name()
        ))
        .iter()
        .map(i64::to_string)
        .collect();
    assert!(!pids.is_empty(), "chatbus's connection");
    let signal = |sig: &str| {
        for pid in &pids {
            Command::new("kill").args([sig, pid]).status().unwrap();
        }
    };
    signal("-STOP");
    struct Resume<F: Fn()>(F);
    impl<F: Fn()> Drop for Resume<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let resume = Resume(|| signal("-CONT"));
    let (first, second) = duplicate_create_while_the_store_is_held(&api).await;
    bin.kill();
    drop(resume);
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (0, 0), "neither create was answered");
    let bin = Chatbus::start(store.url(), &[]).await;
    assert_eq!(bin.api().get("/api/user.uuid/dup").await.status, 404, "the crash took the unanswered user");
    bin.stop().await;
    assert!(!store.users().await.iter().any(|u| u.contains(" dup ")));
}

// ---- 6. a stop that ends ------------------------------------------------------------------------------

/// The time bound on what is acknowledged without the store: with PostgreSQL gone, sends are
/// acknowledged from memory for `--max-write-lag`, then refused with a 503 naming the flag; a
/// SIGTERM then ends within `--stop-timeout` with a spill, and the next start (PostgreSQL back)
/// replays it: every acknowledged message is in the store once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_bounds_what_is_acknowledged_and_a_stop_spills() {
    use support::cluster::{Cluster, Stop};
    let cluster = Arc::new(blocking(Cluster::started).await);
    let url = cluster.url();
    let spill = tempfile::tempdir().unwrap();
    let spill_dir = spill.path().to_str().unwrap().to_owned();
    let flags = ["--spill-dir", &spill_dir, "--max-write-lag", "1s", "--stop-timeout", "1s"];
    let mut bin = Chatbus::start(&url, &flags).await;
    let api = bin.api();
    let a = api.user("a").await;
    let s = api.session(a).await;
    let mut acked = send_n(&api, &s, a, 10, "before").await;
    let c = cluster.clone();
    blocking(move || c.stop(Stop::Immediate)).await;
    // Acknowledged from memory until the store has failed for longer than --max-write-lag.
    let started = Instant::now();
    let refused = loop {
        let r = api.try_send(&s, a, "during the outage").await.expect("an answer");
        match r.status {
            200 => {
                acked.insert(uuid_of(r.response()));
            }
            503 => break r,
            other => panic!("{other}: {}", r.text()),
        }
        assert!(started.elapsed() < Duration::from_secs(20), "sends were never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused.message().contains("--max-write-lag"), "{}", refused.message());
    let readyz = api.readyz().await;
    assert!(readyz.status == 503 && readyz.message().contains("unreachable"), "{}", readyz.text());
    let term = Instant::now();
    let (status, stderr) = bin.terminate().await;
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(term.elapsed() < Duration::from_secs(8), "the stop took {:?}", term.elapsed());

    let c = cluster.clone();
    blocking(move || c.start()).await;
    let bin = Chatbus::start(&url, &flags).await;
    bin.stop().await;
    let rows = support::store::postgres_messages(&url).await;
    assert_exactly(&rows, &acked, "messages after an outage, a spill and a replay");
}
