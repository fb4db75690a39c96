//! What a client relies on whichever store chatbus runs on, each scenario written once and run on
//! SQLite and on PostgreSQL (`both_stores!` makes `<scenario>::sqlite` and
//! `<scenario>::postgres`): a pass over the whole contract ending with the tables holding exactly
//! what the API showed, identical state after a graceful restart, exactly-once delivery with the
//! cursor under concurrent senders, nothing acknowledged lost to SIGKILL (under `--durable-acks`,
//! and after the write-behind window without it), and culling that takes effect in memory and in
//! the store.
//!
//! Where a scenario compares the store with the API, it reads the rows back through
//! `support::store::TestStore`: the messages table must hold the acknowledged messages — none
//! missing, none extra, none twice ([`assert_exactly`]).

mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::binary::Chatbus;
use support::client::{err, not_found_path, ok, ok_plain, Api};
use support::contract::{is_hex32, uuid_of, uuids, BIG_MAILBOX, NO_SESSION, NO_USER};
use support::load::{Load, Party};
use support::server::{config, TestServer};
use support::store::{assert_exactly, TestStore};
use support::timestamp::{after, created, cursor, cursor_path, ts_of, unix_nano, NS};
use support::wait::wait_until;

// ---- the contract, end to end ------------------------------------------------------------------

support::both_stores!(http_contract_pass);

/// A compact pass over every route, then the tables after a graceful stop hold exactly what the
/// API showed.
async fn http_contract_pass(store: TestStore) {
    let srv = TestServer::on(store.url(), &["--mailbox-capacity", "3"]).await;

    // Service routes.
    assert_eq!(ok(&srv.get("/").await), json!({"app": "Chat Bus"}));
    assert_eq!(srv.get("/healthz").await.status, 200);
    assert_eq!(srv.readyz().await.status, 200, "ready on a reachable {} store", store.kind());

    // Users.
    assert_eq!(ok(&srv.get("/api/users").await), json!([]));
    let alice = srv.create_user("alice", Some("Alice")).await;
    let a = alice["id"].as_i64().expect("id");
    assert!(a > 0);
    assert_eq!(alice, json!({"id": a, "uuid": "alice", "display_name": "Alice"}));
    let bob = ok(&srv.post("/api/users", json!({"uuid": "bob"})).await);
    let b = bob["id"].as_i64().expect("id");
    assert_eq!(bob, json!({"id": b, "uuid": "bob", "display_name": ""}), "the alias; display_name defaults to \"\"");
    assert_eq!(
        ok(&srv.post("/api/user", json!({"uuid": "alice", "display_name": "Other"})).await),
        alice,
        "an existing uuid comes back unchanged"
    );
    assert_eq!(ok(&srv.get(&format!("/api/user/{a}")).await), alice);
    assert_eq!(ok(&srv.get("/api/user.uuid/bob").await), bob);
    let c = srv.user("carol").await;
    let d = srv.user("dave").await;
    let ids: Vec<i64> =
        ok(&srv.get("/api/users").await).as_array().unwrap().iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![a, b, c, d], "all users, by id");
    err(&srv.get("/api/user/abc").await, 400, "id");
    err(&srv.get(&format!("/api/user/{NO_USER}")).await, 404, "user");
    err(&srv.get("/api/user.uuid/nobody").await, 404, "uuid");
    err(&srv.post("/api/user", json!({})).await, 400, "uuid");
    let r = srv.put(&format!("/api/user/{a}"), json!({"display_name": "Alice A.", "uuid": "mallory"})).await;
    let alice = ok(&r);
    assert_eq!(alice, json!({"id": a, "uuid": "alice", "display_name": "Alice A."}));
    err(&srv.put(&format!("/api/user/{a}"), json!({})).await, 400, "display_name");
    err(&srv.put(&format!("/api/user/{NO_USER}"), json!({"display_name": "x"})).await, 404, "user");

    // Sessions.
    let session = srv.open_session(a).await;
    let sa = session["uuid"].as_str().unwrap().to_owned();
    assert!(is_hex32(&sa), "{session}");
    assert_eq!((&session["user_id"], &session["user"]), (&json!(a), &alice));
    assert!(ts_of(&session, "last_active_utc") >= created(&session), "{session}");
    let sb = srv.session(b).await;
    let sc = srv.session(c).await;
    let sd = srv.session(d).await;
    err(&srv.call("POST", &format!("/api/session/{NO_USER}"), None).await, 404, "user");
    let listed: HashSet<String> = srv.sessions().await.iter().map(uuid_of).collect();
    assert_eq!(listed, HashSet::from([sa.clone(), sb.clone(), sc.clone(), sd.clone()]));

    // Contacts: mutual, idempotent, with presence.
    ok_plain(&srv.call("POST", &format!("/api/contact/{sa}/{b}"), None).await);
    ok_plain(&srv.call("POST", &format!("/api/contact/{sa}/{b}"), None).await);
    ok_plain(&srv.call("POST", &format!("/api/contact/{sa}/{c}"), None).await);
    assert_eq!(srv.contacts(&sb).await, vec![json!({"user": alice, "is_online": true, "is_typing": false})]);
    ok_plain(&srv.delete(&format!("/api/contact/{sa}/{c}")).await);
    ok_plain(&srv.delete(&format!("/api/contact/{sa}/{c}")).await);
    assert_eq!(srv.contacts(&sa).await, vec![json!({"user": bob, "is_online": true, "is_typing": false})]);
    err(&srv.call("POST", &format!("/api/contact/{sa}/{a}"), None).await, 400, "user_id");
    err(&srv.call("POST", &format!("/api/contact/{sa}/{NO_USER}"), None).await, 404, "user");
    err(&srv.call("POST", &format!("/api/contact/{NO_SESSION}/{b}"), None).await, 404, "session");
    err(&srv.get(&format!("/api/contacts/{NO_SESSION}")).await, 404, "session");

    // Messages: both mailboxes, oldest first, the cursor, the alias, attachments, bad input.
    let m1 = srv.send(&sa, b, "hello ✓").await;
    assert!(is_hex32(&uuid_of(&m1)), "{m1}");
    assert_eq!(
        (&m1["sender_id"], &m1["receiver_id"], &m1["body"], &m1["attachments"]),
        (&json!(a), &json!(b), &json!("hello ✓"), &Value::Null)
    );
    let r = srv
        .post(
            &format!("/api/send/{sb}"),
            json!({"receiver_id": a, "body": "", "attachments": {"z": 1, "a": [true, null]}}),
        )
        .await;
    let m2 = ok(&r);
    assert_eq!(m2["attachments"], json!({"z": 1, "a": [true, null]}));
    assert!(created(&m2) > created(&m1), "server timestamps strictly increase");
    let message_to = |s: &str| format!("/api/message/{s}");
    err(&srv.post(&message_to(&sa), json!({"receiver_id": NO_USER, "body": "x"})).await, 400, "receiver_id");
    err(&srv.post(&message_to(&sa), json!({"receiver_id": b, "body": "x".repeat(1025)})).await, 400, "body");
    err(&srv.post(&message_to(NO_SESSION), json!({"receiver_id": b, "body": "x"})).await, 404, "session");
    for s in [&sa, &sb] {
        let (meta, msgs) = srv.poll(&format!("/api/messages/{s}")).await;
        assert_eq!(msgs, vec![m1.clone(), m2.clone()]);
        assert_eq!(meta, json!({"http_code": 200, "cursor": cursor(created(&m2)), "gap": false}));
    }
    let (meta, msgs) = srv.poll(&after(&sb, created(&m1))).await;
    assert_eq!((msgs, &meta["cursor"]), (vec![m2.clone()], &cursor(created(&m2))), "strictly after the cutoff");
    let (unix, _) = unix_nano(created(&m1));
    assert_eq!(srv.poll(&format!("/api/messages/{sb}/{}", unix - 1)).await.1.len(), 2, ":unix alone");
    let later = created(&m2).div_euclid(NS) as i64 + 1;
    let (meta, msgs) = srv.poll(&format!("/api/messages/{sb}/{later}")).await;
    assert_eq!((msgs.len(), &meta["cursor"]), (0, &json!({"unix": later, "nano": 0})), "none: the cutoff");

    // The gap (capacity 3): dave's 4 messages push the first out of carol's mailbox.
    let mut g = Vec::new();
    for i in 0..4 {
        g.push(srv.send(&sd, c, &format!("g{i}")).await);
    }
    let (meta, msgs) = srv.poll(&format!("/api/messages/{sc}")).await;
    assert_eq!((msgs, &meta["gap"]), (g[1..].to_vec(), &json!(true)), "no cutoff: older than what left");
    assert_eq!(srv.poll(&after(&sc, created(&g[0]))).await.0["gap"], false, "the client saw g0: no gap");
    assert_eq!(srv.poll(&after(&sc, created(&g[0]) - 1)).await.0["gap"], true, "g0 left after this cutoff");
    let carol_session = srv.session_by_uuid(&sc).await;
    assert!(
        ts_of(&carol_session, "last_active_utc") > created(&g[3]),
        "polling marks the session active: {carol_session}"
    );

    // Closing and deleting.
    ok_plain(&srv.delete(&format!("/api/session/{sd}")).await);
    err(&srv.delete(&format!("/api/session/{sd}")).await, 404, "session");
    err(&srv.get(&format!("/api/messages/{sd}")).await, 404, "session");
    ok_plain(&srv.delete(&format!("/api/user/{d}")).await);
    err(&srv.get(&format!("/api/user/{d}")).await, 404, "user");
    err(&srv.delete(&format!("/api/user/{d}")).await, 404, "user");
    assert_eq!(srv.poll(&format!("/api/messages/{sc}")).await.1, g[1..].to_vec(), "messages outlive their sender");

    // The rest of the envelope rules: unknown path, wrong method, preflight.
    not_found_path(&srv.get("/api/nothing").await);
    assert_eq!(srv.call("GET", &format!("/api/message/{sa}"), None).await.status, 405);
    let r = srv.call("OPTIONS", "/api/users", None).await;
    assert_eq!((r.status, r.raw.len()), (204, 0));
    let r = srv.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("chatbus_http_requests_total"), "{}", r.text());
    srv.stop().await;

    // The tables hold exactly that.
    assert_eq!(store.users().await, vec![format!("{a} alice Alice A."), format!("{b} bob "), format!("{c} carol ")]);
    let sessions: HashSet<String> = store.sessions().await.into_iter().collect();
    assert_eq!(sessions, HashSet::from([sa, sb, sc]));
    assert_eq!(store.contacts().await, vec![format!("{},{}", a.min(b), a.max(b))]);
    let all: HashSet<String> = [&m1, &m2].into_iter().chain(&g).map(uuid_of).collect();
    assert_exactly(&store.messages().await, &all, "messages after a graceful stop");
    assert_eq!(
        store.rows("SELECT attachments FROM messages WHERE attachments IS NOT NULL").await,
        vec![r#"{"z":1,"a":[true,null]}"#.to_owned()],
        "attachments byte for byte"
    );
}

// ---- graceful restart --------------------------------------------------------------------------

support::both_stores!(graceful_restart_restores_identical_state);

/// Everything a client can observe, in an order that does not disturb what it captures:
/// sessions first (polls move `last_active_utc`), then the rest.
async fn observe(api: &Api, sessions: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    out.insert("sessions".into(), api.get("/api/sessions").await.json);
    out.insert("users".into(), api.get("/api/users").await.json);
    for s in sessions {
        out.insert(format!("contacts {s}"), api.get(&format!("/api/contacts/{s}")).await.json);
    }
    for s in sessions {
        out.insert(format!("messages {s}"), api.get(&format!("/api/messages/{s}")).await.json);
        out.insert(format!("messages-cut {s}"), api.get(&format!("/api/messages/{s}/1/0")).await.json);
    }
    out
}

/// Users, sessions (with `last_active_utc`), contacts, messages and gap watermarks come back
/// identical; closed sessions and deleted users stay gone; ids and timestamps continue after the
/// restored ones (a deleted user's id is never reused, also after a second restart).
async fn graceful_restart_restores_identical_state(store: TestStore) {
    let cfg = config(store.url(), &["--mailbox-capacity", "5"]);
    let srv = TestServer::start(&cfg).await;
    let ids = [srv.user("alice").await, srv.user("bob").await, srv.user("carol").await];
    ok(&srv.put(&format!("/api/user/{}", ids[0]), r#"{"display_name":"Alice A."}"#).await);
    let mut sessions = Vec::new();
    for id in ids {
        sessions.push(srv.session(id).await);
    }
    sessions.push(srv.session(ids[0]).await);
    ok_plain(&srv.call("POST", &format!("/api/contact/{}/{}", sessions[0], ids[1]), None).await);
    ok_plain(&srv.call("POST", &format!("/api/contact/{}/{}", sessions[2], ids[0]), None).await);
    for n in 0..9 {
        // Mailboxes of capacity 5 overflow: the gap watermarks must survive too.
        srv.send(&sessions[n % 3], ids[(n + 1) % 3], &format!("message {n} ✓")).await;
    }
    ok(&srv
        .post(
            &format!("/api/message/{}", sessions[1]),
            json!({"receiver_id": ids[0], "body": "", "attachments": {"z": 1, "a": [true, null]}}),
        )
        .await);
    // A closed session stays closed; a deleted user (the newest id) stays deleted.
    let dave = srv.user("dave").await;
    let dave_session = srv.session(dave).await;
    ok_plain(&srv.delete(&format!("/api/session/{dave_session}")).await);
    ok_plain(&srv.delete(&format!("/api/user/{dave}")).await);
    // Polls move last_active; observe after them, as the restarted server will be observed.
    let mut before = observe(&srv, &sessions).await;
    // The polls inside `observe` moved last_active again: the state at stop is this one.
    before.insert("sessions".into(), srv.get("/api/sessions").await.json);
    let gaps: Vec<&Value> = sessions.iter().map(|s| &before[&format!("messages {s}")]["meta"]["gap"]).collect();
    assert!(gaps.iter().any(|g| **g == json!(true)), "some mailbox overflowed: {gaps:?}");
    srv.stop().await;

    let srv = TestServer::start(&cfg).await;
    let after = observe(&srv, &sessions).await;
    for (k, v) in &before {
        assert_eq!(Some(v), after.get(k), "{k} differs after restart");
    }
    assert_eq!(srv.get(&format!("/api/session/{dave_session}")).await.status, 405);
    err(&srv.delete(&format!("/api/session/{dave_session}")).await, 404, "session");
    err(&srv.get(&format!("/api/user/{dave}")).await, 404, "user");
    assert_eq!(srv.user("erin").await, dave + 1, "a deleted user's id is not handed out again");
    let m = srv.send(&sessions[0], ids[1], "after restart").await;
    let last_before = before[&format!("messages {}", sessions[1])]["response"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .expect("bob has messages");
    assert!(created(&m) > created(&last_before), "timestamps continue after the restored ones");
    srv.stop().await;

    // And once more, after a restart with nothing in between but the new user.
    let srv = TestServer::start(&cfg).await;
    assert_eq!(srv.user("frank").await, dave + 2);
    srv.stop().await;
}

// ---- exactly once under concurrent senders -----------------------------------------------------

support::both_stores!(concurrent_senders_one_receiver_exactly_once_in_order, worker_threads = 4);

/// Eight senders at once to one receiver who polls with the cursor all along: every message
/// arrives once, in strictly increasing timestamp order, with no gap; and after a graceful stop
/// the store holds exactly the acknowledged messages.
async fn concurrent_senders_one_receiver_exactly_once_in_order(store: TestStore) {
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 300;
    let srv = TestServer::on(store.url(), &["--mailbox-capacity", BIG_MAILBOX]).await;
    let party = Arc::new(Party::create(&srv, "concurrent", SENDERS).await);
    let mut sending = Some(tokio::spawn({
        let (api, party) = (srv.api(), party.clone());
        async move { party.send_all(&api, PER_SENDER).await }
    }));
    let rx_session = &party.receiver_session;
    // Poll with the cursor while the senders run, and until everything acknowledged was seen.
    let mut seen: Vec<String> = Vec::new();
    let mut path = format!("/api/messages/{rx_session}");
    let mut asked_after: Option<i128> = None;
    let mut acked: Option<HashSet<String>> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "timed out with {} of {} seen", seen.len(), SENDERS * PER_SENDER);
        let (meta, batch) = srv.poll(&path).await;
        assert_eq!(meta["gap"], false, "a client that keeps up never sees a gap");
        seen.extend(uuids(&batch));
        // Within an answer, timestamps strictly increase (compared as numbers, not as strings);
        // across answers, each starts after the cursor it was asked with.
        let times: Vec<i128> = batch.iter().map(created).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "not strictly increasing within an answer");
        if let (Some(first), Some(prev)) = (times.first(), asked_after) {
            assert!(*first > prev, "answer starts at or before the cursor");
        }
        let c = &meta["cursor"];
        asked_after = Some(i128::from(c["unix"].as_i64().unwrap()) * NS + i128::from(c["nano"].as_i64().unwrap()));
        path = cursor_path(rx_session, c);
        if acked.as_ref().is_some_and(|acked| seen.len() >= acked.len()) {
            break;
        }
        if sending.as_ref().is_some_and(|t| t.is_finished()) {
            acked = Some(sending.take().unwrap().await.expect("senders"));
        }
    }
    let acked = acked.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a message was delivered twice");
    assert_eq!(unique.len(), SENDERS * PER_SENDER);
    assert_eq!(unique, acked.iter().collect::<HashSet<_>>(), "delivered set differs from acknowledged set");
    let (_, rest) = srv.poll(&path).await;
    assert_eq!(rest.len(), 0, "nothing after the final cursor");
    srv.stop().await;
    assert_exactly(&store.messages().await, &acked, "the store after a graceful stop");
}

// ---- crashes -----------------------------------------------------------------------------------

support::both_stores!(sigkill_with_durable_acks_loses_no_acknowledged_message);

/// The binary, killed with SIGKILL right after the last acknowledgement of several concurrent
/// clients, has every acknowledged message in the store (and nothing else); killed again in the
/// middle of the load, it has every acknowledged one plus at most the requests then in flight.
/// Each restart shows exactly what the table holds.
async fn sigkill_with_durable_acks_loses_no_acknowledged_message(store: TestStore) {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 150;
    let flags = ["--durable-acks", "--mailbox-capacity", BIG_MAILBOX];
    let mut bin = Chatbus::start(store.url(), &flags).await;
    let api = bin.api();
    let party = Party::create(&api, "kill", CLIENTS).await;

    // Everything answered, then SIGKILL at once.
    let mut acked = party.send_all(&api, PER_CLIENT).await;
    bin.kill();
    assert_eq!(acked.len(), CLIENTS * PER_CLIENT);
    assert_exactly(&store.messages().await, &acked, "SIGKILL right after the last ack");
    drop(bin);

    let mut bin = Chatbus::start(store.url(), &flags).await;
    let api = bin.api();
    let restored = api.mailbox(&party.receiver_session).await;
    assert_exactly(&restored, &acked, "the receiver's mailbox after the restart");

    // SIGKILL while the clients are still sending.
    let load = Load::start(&api, &party, Duration::from_millis(1));
    load.progress(600, "before the kill").await;
    bin.kill();
    let (more, failures) = load.stop_and_collect().await;
    // Each client's last send got no answer (the process died under it) or was refused.
    for failure in &failures {
        assert!(failure.starts_with("no answer"), "a send failed before the kill: {failure}");
    }
    let in_flight = failures.len();
    acked.extend(more);
    let stored = store.messages().await;
    let set: HashSet<&String> = stored.iter().collect();
    assert_eq!(set.len(), stored.len(), "a message stored twice");
    let missing = acked.iter().filter(|u| !set.contains(u)).count();
    assert_eq!(missing, 0, "{missing} acknowledged messages lost to SIGKILL under --durable-acks");
    let unacked = stored.len() - acked.len();
    assert!(unacked <= in_flight, "{unacked} stored messages were never sent ({in_flight} requests were in flight)");
    eprintln!("killed mid-load: {} acknowledged, {unacked} more stored, {in_flight} requests in flight", acked.len());
    drop(bin);

    let bin = Chatbus::start(store.url(), &flags).await;
    let restored = bin.api().mailbox(&party.receiver_session).await;
    assert_eq!(restored, stored, "the restart shows exactly what the table holds, in order");
    bin.stop().await;
}

support::both_stores!(sigkill_after_the_write_behind_window_loses_nothing_acknowledged);

/// Without `--durable-acks` a send is answered before it is stored, and the contract promises
/// that it reaches the store within about 100 ms. Within 500 ms of the last acknowledgement the
/// store holds every acknowledged message; a SIGKILL then loses none, and the restart restores
/// every one.
async fn sigkill_after_the_write_behind_window_loses_nothing_acknowledged(store: TestStore) {
    let mut bin = Chatbus::start(store.url(), &[]).await;
    let api = bin.api();
    let u = api.user("a").await;
    let s = api.session(u).await;
    let mut acked = HashSet::new();
    for n in 0..400 {
        acked.insert(uuid_of(&api.send(&s, u, &format!("m{n}")).await));
    }
    wait_until(
        "every acknowledged message to be in the store (the write-behind window)",
        Duration::from_millis(500),
        || {
            let store = &store;
            let n = acked.len();
            async move { store.messages().await.len() >= n }
        },
    )
    .await;
    bin.kill(); // SIGKILL: no graceful stop
    assert_exactly(&store.messages().await, &acked, "SIGKILL after the write-behind window");
    drop(bin);

    let bin = Chatbus::start(store.url(), &[]).await;
    let restored = bin.api().mailbox(&s).await;
    assert_exactly(&restored, &acked, "the mailbox after the restart");
    assert_eq!(restored.len(), acked.len());
    bin.stop().await;
}

// ---- culling -----------------------------------------------------------------------------------

support::both_stores!(short_ttls_cull_memory_and_store_and_stay_culled_after_restart);

/// With 2 s TTLs, an idle session and an old message are culled from memory between the TTL and
/// about a second after it, and from the store; a client that saw the message misses nothing,
/// one that did not sees the gap; after a restart both stay culled and the gap stays.
async fn short_ttls_cull_memory_and_store_and_stay_culled_after_restart(store: TestStore) {
    let cfg = config(store.url(), &["--session-ttl", "2s", "--message-ttl", "2s"]);
    let srv = TestServer::start(&cfg).await;
    let a = srv.user("a").await;
    let b = srv.user("b").await;
    let idle = srv.session(a).await;
    let busy = srv.session(b).await;
    let sent = srv.send(&busy, a, "short-lived").await;
    let sent_at = Instant::now();
    assert_eq!(store.count("sessions").await, 2);
    // Keep `busy` alive by polling; `idle` is never used again.
    let mut idle_gone = None;
    let mut message_gone = None;
    let mut store_clean = None;
    let deadline = sent_at + Duration::from_secs(8);
    while idle_gone.is_none() || message_gone.is_none() || store_clean.is_none() {
        assert!(
            Instant::now() < deadline,
            "culling did not happen in time: {idle_gone:?} {message_gone:?} {store_clean:?}"
        );
        let r = srv.get(&format!("/api/messages/{busy}")).await;
        assert_eq!(r.status, 200, "a session in use is never culled: {}", r.text());
        if message_gone.is_none() && r.response().as_array().unwrap().is_empty() {
            message_gone = Some(sent_at.elapsed());
            assert_eq!(r.json["meta"]["gap"], true, "a poll from the start sees that a message left");
        }
        if idle_gone.is_none() && srv.get(&format!("/api/contacts/{idle}")).await.status == 404 {
            idle_gone = Some(sent_at.elapsed());
        }
        if store_clean.is_none() && store.count("messages").await == 0 && store.count("sessions").await == 1 {
            store_clean = Some(sent_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not before the TTL, and within about a second after it.
    for (what, t) in [("message", message_gone), ("session", idle_gone)] {
        let t = t.unwrap();
        assert!(t >= Duration::from_millis(1900), "{what} culled too early: {t:?}");
        assert!(t <= Duration::from_millis(3500), "{what} culled too late: {t:?}");
    }
    let at_sent = after(&busy, created(&sent));
    let (meta, _) = srv.poll(&at_sent).await;
    assert_eq!(meta["gap"], false, "the client that saw the culled message missed nothing");
    srv.stop().await;

    let srv = TestServer::start(&cfg).await;
    assert_eq!(srv.get(&format!("/api/contacts/{idle}")).await.status, 404, "culled session came back");
    let (meta, msgs) = srv.poll(&format!("/api/messages/{busy}")).await;
    assert_eq!(msgs.len(), 0, "culled message came back");
    assert_eq!(meta["gap"], true, "the culled-message watermark survives the restart");
    let (meta, _) = srv.poll(&at_sent).await;
    assert_eq!(meta["gap"], false, "and still hides nothing and invents nothing for a cursor at it");
    srv.stop().await;
}
