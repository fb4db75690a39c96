//! The server on PostgreSQL in trouble, over real HTTP — the faults of issue 3: connections
//! killed mid-load and (deterministically) during `COMMIT`, PostgreSQL restarted and stopped
//! mid-load, `/readyz` while it is down, a full write queue while it is down, and PostgreSQL
//! unreachable at start. What does not depend on faults of PostgreSQL runs on both stores
//! (`scenarios.rs`).
//!
//! The fault tests all end the same way: after a graceful stop, the `messages` table is compared,
//! uuid by uuid, with the messages the clients got a `200` for — no more, no fewer, none twice
//! (`assert_exactly`).
//!
//! Tests that leave PostgreSQL alone get a database of their own on the shared server
//! (`support::pg`: `DATABASE_URL`, or the local one on 127.0.0.1:5432). Tests that stop or
//! restart PostgreSQL run a throwaway cluster of their own (`support::cluster`), so no other test
//! is disturbed. Nothing waits on a guess: every wait is for a condition, with a deadline.

mod support;

use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::binary::{one_line_error, Chatbus};
use support::client::{err, ok};
use support::cluster::{Cluster, Stop};
use support::contract::{uuid_of, BIG_MAILBOX};
use support::load::{assert_received_once, start_and_wait_ready, Load, Party, Poller, SetOnDrop};
use support::pg::TestDb;
use support::store::{assert_exactly, postgres_count, postgres_execute, postgres_messages, postgres_rows};
use support::timestamp::ts_of;
use support::wait::{blocking, wait_until};

// ---- connections killed mid-load -----------------------------------------------------------------

/// Several clients send while another thread keeps killing every connection to the test's
/// database (`pg_terminate_backend`); after a graceful stop the table holds exactly the
/// acknowledged messages.
async fn connections_killed_mid_load(durable: bool) {
    const KILLS: usize = 20;
    const MESSAGES: usize = 1500;
    let db = Arc::new(TestDb::create());
    // A kill every 15 ms can keep every write from committing for seconds on a loaded machine;
    // this test is about what a retried batch writes, so it allows a long write-behind window
    // (the bound itself is tested in store_faults.rs).
    let mut flags = vec!["--mailbox-capacity", BIG_MAILBOX, "--max-write-lag", "120s"];
    if durable {
        flags.push("--durable-acks");
    }
    // The binary, not an in-process server: if the test fails, dropping it SIGKILLs it. An
    // in-process writer would keep retrying against the dropped database, and the test would hang
    // instead of failing.
    let bin = Chatbus::start(db.url(), &flags).await;
    let api = bin.api();
    let party = Party::create(&api, "victim", 6).await;

    let poller = Poller::start(&api, &party.receiver_session);
    let load = Load::start(&api, &party, Duration::from_millis(5));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_killer_on_panic = SetOnDrop(stop.clone());
    let killed = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (db, stop, killed, acked) = (db.clone(), stop.clone(), killed.clone(), load.acked_counter());
        // Every 15 ms — but only once a send was acknowledged since the last kill that hit a
        // connection. A writer whose reconnect takes longer than the killer's period (as on a busy
        // machine) would otherwise never commit again, and the test would time out on the
        // machine's speed instead of judging chatbus.
        std::thread::spawn(move || {
            let mut acked_at_last_kill = None;
            while !stop.load(Ordering::Relaxed) {
                let acked_now = acked.load(Ordering::Relaxed);
                if acked_at_last_kill != Some(acked_now) {
                    let n = db.terminate_connections();
                    if n > 0 {
                        killed.fetch_add(n, Ordering::Relaxed);
                        acked_at_last_kill = Some(acked_now);
                    }
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    wait_until(
        &format!("{KILLS} connections killed and {MESSAGES} messages acknowledged"),
        Duration::from_secs(60),
        || async { killed.load(Ordering::Relaxed) >= KILLS && load.acked() >= MESSAGES },
    )
    .await;
    let acked = load.finish().await;
    stop.store(true, Ordering::Relaxed);
    blocking(move || killer.join().expect("killer thread")).await;
    let killed = killed.load(Ordering::Relaxed);
    assert_received_once(&poller.finish().await, &acked);
    eprintln!("durable acks {durable}: {killed} connections killed while {} messages were sent", acked.len());
    bin.stop().await;
    let what = format!("{killed} connections killed mid-load (durable acks: {durable})");
    assert_exactly(&postgres_messages(db.url()).await, &acked, &what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_load_write_behind() {
    connections_killed_mid_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_load_durable_acks() {
    connections_killed_mid_load(true).await;
}

/// The case random kills almost never hit: the connection dies *during* `COMMIT`, after the
/// batch committed but before chatbus heard so. A throwaway cluster waits for a synchronous
/// standby that does not exist, so every commit hangs right after it is durable locally; killing
/// the waiting backend leaves the batch committed and chatbus without an answer. The writer must
/// write the batch again — idempotently — and answer every send once the commit goes through;
/// the table ends with each acknowledged message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_during_commit_is_retried_idempotently() {
    const SENDS: usize = 40;
    let cluster = Arc::new(blocking(Cluster::started).await);
    let url = cluster.url();
    // The binary: see `postgres_restart_and_outage_mid_load`.
    let bin = Chatbus::start(&url, &["--durable-acks"]).await;
    let api = bin.api();
    let party = Party::create(&api, "commit", 4).await;
    // No session activity left to write, so the first commit to wait holds messages only.
    wait_until("the sessions' last activity to be in the store", Duration::from_secs(10), || async {
        let listed: HashSet<String> =
            api.sessions().await.iter().map(|s| format!("{} {}", uuid_of(s), ts_of(s, "last_active_utc"))).collect();
        let stored: HashSet<String> =
            postgres_rows(&url, "SELECT replace(uuid::text, '-', '') || ' ' || last_active_ns FROM sessions")
                .await
                .into_iter()
                .collect();
        listed == stored
    })
    .await;

    postgres_execute(&url, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'").await;
    postgres_execute(&url, "SELECT pg_reload_conf()").await;
    wait_until("the synchronous standby setting to take effect", Duration::from_secs(10), || async {
        postgres_rows(&url, "SELECT current_setting('synchronous_standby_names')").await == ["nobody"]
    })
    .await;
    let waiting = "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'chatbus' \
                   AND wait_event = 'SyncRep'";
    let sends: Vec<_> = (0..SENDS)
        .map(|n| {
            let (api, session, rx) = (api.clone(), party.senders[n % party.senders.len()].clone(), party.receiver);
            tokio::spawn(async move { api.try_send(&session, rx, &format!("c{n}")).await.map_err(|e| e.to_string()) })
        })
        .collect();
    wait_until("chatbus's commit to wait for the standby", Duration::from_secs(10), || async {
        postgres_count(&url, waiting).await >= 1
    })
    .await;
    let killed = postgres_count(
        &url,
        "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity WHERE application_name = 'chatbus'",
    )
    .await;
    assert_eq!(killed, 1, "the store holds one connection");
    // Committed (locally) although chatbus never heard: the outcome it must treat as unknown.
    wait_until("the killed batch to be visible", Duration::from_secs(10), || async {
        postgres_count(&url, "SELECT count(*)::text FROM messages").await >= 1
    })
    .await;
    if sends.iter().any(|t| t.is_finished()) {
        let mut early = Vec::new();
        for t in sends.into_iter().filter(|t| t.is_finished()) {
            early.push(t.await.expect("send task"));
        }
        panic!("sends answered before their batch's commit was confirmed: {early:?}\n{}", bin.stderr());
    }
    // The writer reconnects and writes the batch again; that commit waits too. Then let go.
    wait_until("the retried batch's commit to wait for the standby", Duration::from_secs(20), || async {
        postgres_count(&url, waiting).await >= 1
    })
    .await;
    postgres_execute(&url, "ALTER SYSTEM RESET synchronous_standby_names").await;
    postgres_execute(&url, "SELECT pg_reload_conf()").await;
    let mut acked = HashSet::new();
    for t in sends {
        let answer = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap_or_else(|_| panic!("a send was never answered:\n{}", bin.stderr()))
            .expect("send task");
        match answer {
            Ok(r) if r.status == 200 => acked.insert(uuid_of(r.response())),
            other => panic!("a send after the commit was retried: {other:?}\n{}", bin.stderr()),
        };
    }
    assert_eq!(acked.len(), SENDS);
    bin.stop().await;
    assert_exactly(&postgres_messages(&url).await, &acked, "after a connection died during COMMIT");
}

// ---- PostgreSQL restarted and stopped mid-load ------------------------------------------------

/// On a cluster of its own, under a steady load with a poller: PostgreSQL restarts (fast), then
/// stays down for a while — chatbus keeps serving sends and polls from memory, `/readyz` says
/// 503 while it is down and 200 once it is back — and the table ends with exactly the
/// acknowledged messages. Then the same under `--durable-acks` with a crash restart (immediate):
/// sends wait for the store, then every one commits, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_and_outage_mid_load() {
    let cluster = Arc::new(blocking(Cluster::started).await);
    let url = cluster.url();
    let pace = Duration::from_millis(5);

    // The binary, not an in-process server: if the test fails while PostgreSQL is down, a
    // SIGKILL ends it (an in-process writer would keep retrying, and the test would hang).
    let bin = Chatbus::start(&url, &["--mailbox-capacity", BIG_MAILBOX]).await;
    let api = bin.api();
    let party = Party::create(&api, "load", 4).await;
    let load = Load::start(&api, &party, pace);
    let poller = Poller::start(&api, &party.receiver_session);
    load.progress(200, "before the restart").await;

    let c = cluster.clone();
    blocking(move || c.restart(Stop::Fast)).await;
    load.progress(200, "after PostgreSQL restarted").await;
    wait_until("/readyz 200 after the restart", Duration::from_secs(20), || async { api.readyz().await.status == 200 })
        .await;

    let c = cluster.clone();
    blocking(move || c.stop(Stop::Immediate)).await;
    let down = Instant::now();
    let (acked_at_stop, polls_at_stop) = (load.acked(), poller.polls());
    wait_until("/readyz 503 while PostgreSQL is down", Duration::from_secs(15), || async {
        api.readyz().await.status == 503
    })
    .await;
    // Down for at least 1.5 s, while sends and polls go on from memory.
    wait_until("sends and polls to go on while PostgreSQL is down", Duration::from_secs(20), || async {
        down.elapsed() >= Duration::from_millis(1500)
            && load.acked() >= acked_at_stop + 200
            && poller.polls() >= polls_at_stop + 20
    })
    .await;
    let r = api.readyz().await;
    err(&r, 503, "unreachable");
    assert_eq!(api.get("/healthz").await.status, 200);

    start_and_wait_ready(&cluster, &api).await;
    load.progress(200, "after PostgreSQL came back").await;
    let acked = load.finish().await;
    assert_received_once(&poller.finish().await, &acked);
    bin.stop().await;
    let stored = postgres_messages(&url).await;
    assert_exactly(&stored, &acked, "after a restart and an outage of PostgreSQL (write-behind)");

    // --durable-acks, and PostgreSQL crashes and restarts under the load.
    let bin = Chatbus::start(&url, &["--mailbox-capacity", BIG_MAILBOX, "--durable-acks"]).await;
    let api = bin.api();
    assert_eq!(api.mailbox(&party.receiver_session).await, stored, "restored from the restarted PostgreSQL");
    let load = Load::start(&api, &party, pace);
    load.progress(200, "before the crash").await;
    let c = cluster.clone();
    blocking(move || c.restart(Stop::Immediate)).await;
    load.progress(200, "after PostgreSQL crashed and restarted").await;
    wait_until("/readyz 200 after the crash restart", Duration::from_secs(20), || async {
        api.readyz().await.status == 200
    })
    .await;
    let mut all = acked;
    all.extend(load.finish().await);
    bin.stop().await;
    assert_exactly(&postgres_messages(&url).await, &all, "after a crash restart of PostgreSQL (durable acks)");
}

// ---- --max-pending while PostgreSQL is down ------------------------------------------------------

/// With PostgreSQL stopped, sends are acknowledged from memory until the queue reaches
/// `--max-pending`; past it they answer 503 with a clear message, store nothing, and `/readyz`
/// says 503, while polls still answer. Once PostgreSQL is back everything recovers and the table
/// holds exactly the acknowledged messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_max_pending_while_postgres_is_down_are_503_and_recover() {
    const MAX_PENDING: usize = 64;
    let cluster = Arc::new(blocking(Cluster::started).await);
    let url = cluster.url();
    // The binary: see `postgres_restart_and_outage_mid_load`.
    let bin = Chatbus::start(&url, &["--max-pending", &MAX_PENDING.to_string()]).await;
    let api = bin.api();
    let a = api.user("a").await;
    let b = api.user("b").await;
    let sa = api.session(a).await;
    let sb = api.session(b).await;
    let mut acked = HashSet::from([uuid_of(&api.send(&sa, b, "before").await)]);

    let c = cluster.clone();
    blocking(move || c.stop(Stop::Fast)).await;
    let refused = loop {
        let r = api.try_send(&sa, b, &format!("down {}", acked.len())).await.expect("an answer");
        match r.status {
            200 => {
                acked.insert(uuid_of(r.response()));
            }
            503 => break r,
            status => panic!("a send while PostgreSQL is down: {status} {}", r.text()),
        }
        assert!(acked.len() <= MAX_PENDING + 1, "more than --max-pending sends acknowledged while the store is down");
    };
    // The 503 says the write queue is full.
    err(&refused, 503, "max-pending");
    let ready = api.readyz().await;
    assert_eq!(ready.status, 503, "not ready while the store is down and the queue full: {}", ready.text());
    for _ in 0..3 {
        assert_eq!(api.try_send(&sa, b, "still down").await.expect("an answer").status, 503, "stays full while down");
    }
    let mailbox: HashSet<String> = api.mailbox(&sb).await.into_iter().collect();
    assert_eq!(mailbox, acked, "polls answer, and a refused send is in no mailbox");
    assert_eq!(api.get("/healthz").await.status, 200);

    start_and_wait_ready(&cluster, &api).await;
    for n in 0..20 {
        acked.insert(uuid_of(&api.send(&sa, b, &format!("after {n}")).await));
    }
    bin.stop().await;
    assert_exactly(&postgres_messages(&url).await, &acked, "after the queue filled and drained");
}

/// `/readyz` follows the store also when nothing is being written: PostgreSQL stopped under an
/// idle server is a 503 (the contract: ready = "the store is reachable"), and a 200 once it is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_an_unreachable_store_without_traffic() {
    let cluster = Arc::new(blocking(Cluster::started).await);
    // The binary: see `postgres_restart_and_outage_mid_load`.
    let bin = Chatbus::start(&cluster.url(), &[]).await;
    let api = bin.api();
    api.user("idle").await;
    assert_eq!(api.readyz().await.status, 200);
    let c = cluster.clone();
    blocking(move || c.stop(Stop::Fast)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = api.readyz().await;
        if r.status == 503 {
            break;
        }
        if Instant::now() >= deadline {
            let log = bin.stderr();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "/readyz still answers {} {} 10 s after PostgreSQL stopped under an idle server; \
                 chatbus logged {} lines, the last ones:\n{}",
                r.status,
                r.text(),
                lines.len(),
                lines[lines.len().saturating_sub(4)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While it is known to be down, changes that must be durable before they are answered are
    // refused at once instead of waiting for the outage; nothing changes in memory either.
    err(&api.post("/api/user", json!({"uuid": "during-outage"})).await, 503, "store is unreachable");
    assert_eq!(api.get("/api/user.uuid/during-outage").await.status, 404, "a refused user must not exist");
    start_and_wait_ready(&cluster, &api).await;
    let r = api.post("/api/user", json!({"uuid": "during-outage"})).await;
    assert_eq!(ok(&r)["uuid"], "during-outage", "accepted again once the store is back");
    bin.stop().await;
}

// ---- PostgreSQL unreachable at start ------------------------------------------------------------

/// Nothing listening: a one-line error naming the server (never the password) and a non-zero
/// exit — at once without `--connect-timeout`, after the wait with one. With `--connect-timeout
/// 10s` and PostgreSQL starting within that window, chatbus waits for it and comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_at_start() {
    let cluster = Arc::new(blocking(Cluster::init).await); // not started: nothing on its port
    let port = cluster.port();
    let url = format!("postgres://postgres:sekrit@127.0.0.1:{port}/postgres");

    let started = Instant::now();
    let (status, stderr) = Chatbus::spawn(&url, &[]).exit(Duration::from_secs(20)).await;
    let line = one_line_error(status, &stderr);
    assert!(line.starts_with("chatbus: cannot open store"), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "names the server: {line}");
    assert!(!line.contains("sekrit"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(10), "fails at once: {:?}", started.elapsed());

    let (status, stderr) = Chatbus::spawn(&url, &["--connect-timeout", "1s"]).exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "exit status {status}: {stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or("");
    assert!(last.starts_with("chatbus: cannot open store") && last.contains("attempts"), "{stderr}");
    assert!(!stderr.contains("sekrit") && !stderr.contains("panicked"), "{stderr}");

    let spawned = Instant::now();
    let mut bin = Chatbus::spawn(&url, &["--connect-timeout", "10s"]);
    wait_until("chatbus to say it waits for PostgreSQL", Duration::from_secs(8), || {
        let said = bin.stderr().contains("not reachable yet");
        async move { said }
    })
    .await;
    assert!(bin.is_running(), "still waiting:\n{}", bin.stderr());
    let c = cluster.clone();
    blocking(move || c.start()).await;
    bin.wait_up(Duration::from_secs(20)).await;
    assert!(spawned.elapsed() < Duration::from_secs(12), "up within the window: {:?}", spawned.elapsed());
    let api = bin.api();
    let id = api.user("patient").await;
    let s = api.session(id).await;
    let m = api.send(&s, id, "made it").await;
    assert_eq!(api.readyz().await.status, 200);
    bin.stop().await;
    assert_exactly(&postgres_messages(&cluster.url()).await, &HashSet::from([uuid_of(&m)]), "after the wait");
}

/// Cluster mode: every node must apply the log with the same TTLs, mailbox capacity and caps. The
/// first node to start records its settings in the database; a node that differs refuses to
/// start, in one line naming both. (No NATS is needed to see it: the check comes before joining
/// the log, which then fails here, on a port where nothing listens.)
#[test]
fn a_cluster_node_with_other_settings_refuses_to_start() {
    let db = TestDb::create();
    let args = |ttl: &'static str| {
        vec![
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            db.url(),
            "--nats-url",
            "nats://127.0.0.1:1",
            "--session-ttl",
            ttl,
        ]
    };
    // Gets past the check (the log's info lines come first), then cannot reach NATS.
    let past_the_check = |ttl| {
        let out = support::binary::run(&args(ttl));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        assert!(last.contains("cannot join the cluster log"), "{stderr}");
    };
    past_the_check("5m");
    let other = support::binary::run_to_error(&args("10m"));
    assert!(other.contains("settings differ"), "{other}");
    assert!(other.contains("--session-ttl 10m") && other.contains("--session-ttl 5m"), "{other}");
    past_the_check("5m");
}
