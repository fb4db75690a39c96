//! The HTTP contract (the README's API section) over real HTTP, against an in-process server
//! with a fresh SQLite store per test: every route's exact answer, the envelope and its headers on
//! every answer, the limits and bad input, the precedence of errors, the messages cursor and gap,
//! and HTTP/1.1 keep-alive (also pipelined, on a raw socket).
//!
//! Every answer goes through the one client of `support::client`, which checks what the contract
//! says of *every* answer: `Access-Control-Allow-Origin: *`; JSON with `Content-Type:
//! application/json; charset=utf-8` and `meta.http_code` equal to the status (except `/metrics`
//! and `204`); errors with exactly `http_code` and a non-empty `message` and no `response`; `405`
//! with an `Allow` header. What does not depend on the store runs on SQLite only; the scenarios
//! that do run on both stores (`scenarios.rs`).

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use support::client::{err, not_found_path, ok, ok_plain, Api};
use support::contract::{assert_message_shape, assert_user_shape, uuids, NO_SESSION, NO_USER, TOO_LARGE};
use support::raw::{chunked_post, padded_user_body, raw_get, raw_post, sized_post, usable_or_announced_close, RawConn};
use support::server::TestServer;
use support::timestamp::{after, created, cursor, now_ns, parse_ts, ts_of, NS};
use support::wait::{wait_until, wall_clock_past};

// ---- the timestamp parser itself ---------------------------------------------------------------

#[test]
fn the_timestamp_parser_reads_go_rfc3339nano() {
    assert_eq!(parse_ts("2016-08-21T05:22:12.632474775Z"), 1_471_756_932_632_474_775);
    assert_eq!(parse_ts("2016-08-21T05:22:12Z"), 1_471_756_932_000_000_000);
    assert_eq!(parse_ts("2016-08-21T05:22:12.5Z"), 1_471_756_932_500_000_000);
    assert_eq!(parse_ts("1970-01-01T00:00:00.000000001Z"), 1);
    assert_eq!(parse_ts("2000-03-01T00:00:00Z"), 951_868_800 * NS);
    for bad in ["2016-08-21T05:22:12.50Z", "2016-08-21T05:22:12.Z", "2016-08-21 05:22:12Z", "2016-08-21T05:22:12+00:00"]
    {
        assert!(std::panic::catch_unwind(|| parse_ts(bad)).is_err(), "{bad}");
    }
}

// ---- identity, health, envelope, CORS, 404/405 --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_health_and_readiness() {
    let srv = TestServer::sqlite(&[]).await;
    let r = srv.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json, json!({"meta": {"http_code": 200}, "response": {"app": "Chat Bus"}}));
    for path in ["/healthz", "/readyz"] {
        let r = srv.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_in_the_envelope() {
    let srv = TestServer::sqlite(&[]).await;
    let u = srv.user("alice").await;
    let s = srv.session(u).await;
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/api"),
        ("GET", "/api/"),
        ("GET", "/api/nope"),
        ("POST", "/api/nope"),
        ("GET", "/api/messages"),
        ("GET", &format!("/api/messages/{s}/1/2/3")),
        ("GET", "/api/messages//1"),
        ("GET", "/api/user/1/2"),
        ("POST", "/api/contact/x"),
        ("DELETE", "/api/contact/x/1/2"),
        ("POST", "/api/message"),
        ("POST", &format!("/api/message/{s}/x")),
        ("GET", "/healthz/x"),
        ("GET", "/metricsx"),
        ("PUT", "/api/userz/1"),
        ("GET", "/API/users"),
    ] {
        let r = srv.call(method, path, None).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        not_found_path(&r);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405_with_an_allow_header() {
    let srv = TestServer::sqlite(&[]).await;
    let cases: &[(&str, &str, &[&str])] = &[
        ("POST", "/", &["GET"]),
        ("DELETE", "/api/users", &["GET", "POST"]),
        ("GET", "/api/user", &["POST"]),
        ("POST", "/api/user/1", &["GET", "PUT", "DELETE"]),
        ("PUT", "/api/user.uuid/alice", &["GET"]),
        ("POST", "/api/sessions", &["GET"]),
        ("GET", "/api/session/1", &["POST", "DELETE"]),
        ("POST", "/api/contacts/x", &["GET"]),
        ("GET", "/api/contact/x/1", &["POST", "DELETE"]),
        ("POST", "/api/messages/x", &["GET"]),
        ("DELETE", "/api/messages/x/1/2", &["GET"]),
        ("GET", "/api/message/x", &["POST"]),
        ("PUT", "/api/send/x", &["POST"]),
        ("POST", "/healthz", &["GET"]),
        ("POST", "/readyz", &["GET"]),
        ("POST", "/metrics", &["GET"]),
    ];
    for (method, path, allowed) in cases {
        let r = srv.call(method, path, None).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        let allow: BTreeSet<String> =
            r.header("allow").unwrap().split(',').map(|m| m.trim().to_ascii_uppercase()).collect();
        for m in *allowed {
            assert!(allow.contains(*m), "{method} {path}: Allow {allow:?} lacks {m}");
        }
        assert!(!allow.contains(*method), "{method} {path}: Allow {allow:?} lists the refused method");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_preflight_is_204_and_reflects_the_request() {
    let srv = TestServer::sqlite(&[]).await;
    for path in ["/", "/api/message/x", "/api/user/1", "/nope/at/all", "/metrics"] {
        let r = srv
            .request(
                "OPTIONS",
                path,
                None,
                &[
                    ("Origin", "https://example.com"),
                    ("Access-Control-Request-Method", "PUT"),
                    ("Access-Control-Request-Headers", "content-type, x-chat-token"),
                ],
            )
            .await;
        assert_eq!(r.status, 204, "OPTIONS {path}");
        assert!(r.raw.is_empty(), "OPTIONS {path} has no body");
        assert_eq!(r.header("access-control-allow-methods"), Some("PUT"), "OPTIONS {path}");
        assert_eq!(r.header("access-control-allow-headers"), Some("content-type, x-chat-token"), "OPTIONS {path}");
    }
    let r = srv.call("OPTIONS", "/api/users", None).await;
    assert_eq!(r.status, 204);
    assert!(r.raw.is_empty());
    srv.stop().await;
}

// ---- users ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_create_get_list_and_update() {
    let srv = TestServer::sqlite(&[]).await;
    assert_eq!(ok(&srv.get("/api/users").await), json!([]));
    let alice = srv.create_user("alice", Some("Alice")).await;
    let bob = srv.create_user("bob", None).await;
    assert_eq!(bob["display_name"], "", "display_name defaults to \"\"");
    assert_ne!(alice["id"], bob["id"]);

    // The alias, and creating an existing uuid returns it unchanged.
    let carol = ok(&srv.post("/api/users", r#"{"uuid": "carol", "display_name": "Carol"}"#).await);
    assert_user_shape(&carol);
    assert_eq!((&carol["uuid"], &carol["display_name"]), (&json!("carol"), &json!("Carol")));
    for path in ["/api/user", "/api/users"] {
        let again = ok(&srv.post(path, r#"{"uuid": "alice", "display_name": "Someone else"}"#).await);
        assert_eq!(again, alice, "POST {path} with an existing uuid");
        assert_eq!(ok(&srv.post(path, r#"{"uuid": "bob"}"#).await), bob);
    }

    // Lookups.
    let a = alice["id"].as_i64().unwrap();
    assert_eq!(ok(&srv.get(&format!("/api/user/{a}")).await), alice);
    assert_eq!(ok(&srv.get("/api/user.uuid/alice").await), alice);
    let odd = srv.create_user("al ice/ü%", Some("Odd")).await;
    assert_eq!(ok(&srv.get("/api/user.uuid/al%20ice%2F%C3%BC%25").await), odd, "percent-decoded external id");
    err(&srv.get("/api/user.uuid/nobody").await, 404, "uuid");
    err(&srv.get(&format!("/api/user/{NO_USER}")).await, 404, "user");
    err(&srv.get("/api/user/abc").await, 400, "id");
    err(&srv.get("/api/user/1.0").await, 400, "id");
    err(&srv.get("/api/user/9223372036854775808").await, 400, "id");

    // All users, by id.
    let mut expected = vec![alice.clone(), bob.clone(), carol.clone(), odd.clone()];
    expected.sort_by_key(|u| u["id"].as_i64().unwrap());
    assert_eq!(ok(&srv.get("/api/users").await), Value::Array(expected));

    // PUT changes only display_name.
    let r = srv.put(&format!("/api/user/{a}"), r#"{"display_name": "Alice B.", "uuid": "mallory", "id": 999}"#).await;
    let updated = ok(&r);
    assert_eq!(updated, json!({"id": a, "uuid": "alice", "display_name": "Alice B."}));
    assert_eq!(ok(&srv.get(&format!("/api/user/{a}")).await), updated);
    assert_eq!(ok(&srv.get("/api/user.uuid/alice").await), updated);
    err(&srv.get("/api/user.uuid/mallory").await, 404, "uuid");
    let r = srv.put(&format!("/api/user/{a}"), r#"{"display_name": ""}"#).await;
    assert_eq!(ok(&r), json!({"id": a, "uuid": "alice", "display_name": ""}));
    let r = srv.put(&format!("/api/user/{a}"), &json!({"display_name": "é".repeat(256)}).to_string()).await;
    assert_eq!(ok(&r)["display_name"], "é".repeat(256));
    err(&srv.put(&format!("/api/user/{NO_USER}"), r#"{"display_name": "x"}"#).await, 404, "user");
    err(&srv.put("/api/user/x", r#"{"display_name": "x"}"#).await, 400, "id");
    err(&srv.put(&format!("/api/user/{a}"), r#"{}"#).await, 400, "display_name");
    err(&srv.put(&format!("/api/user/{a}"), r#"{"display_name": 5}"#).await, 400, "display_name");
    err(
        &srv.put(&format!("/api/user/{a}"), &json!({"display_name": "n".repeat(257)}).to_string()).await,
        400,
        "display_name",
    );
    assert_eq!(
        ok(&srv.get(&format!("/api/user/{a}")).await)["display_name"],
        "é".repeat(256),
        "failed PUTs change nothing"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_bodies_are_validated() {
    let srv = TestServer::sqlite(&[]).await;
    let cases: &[(&str, &str)] = &[
        (r#"{}"#, "uuid"),
        (r#"{"display_name": "x"}"#, "uuid"),
        (r#"{"uuid": ""}"#, "uuid"),
        (r#"{"uuid": 5}"#, "uuid"),
        (r#"{"uuid": ["a"]}"#, "uuid"),
        (r#"{"uuid": "a", "display_name": 5}"#, "display_name"),
        (r#"{"uuid": "a", "display_name": {"x": 1}}"#, "display_name"),
    ];
    for (body, field) in cases {
        err(&srv.post("/api/user", *body).await, 400, field);
    }
    err(&srv.post("/api/user", &json!({"uuid": "u".repeat(65)}).to_string()).await, 400, "uuid");
    err(
        &srv.post("/api/user", &json!({"uuid": "a", "display_name": "n".repeat(257)}).to_string()).await,
        400,
        "display_name",
    );
    // Not JSON, not an object, not UTF-8, empty.
    for body in ["not json", "{\"uuid\": \"a\"", "[1]", "\"alice\"", "null", "{\"uuid\": \"a\"} trailing"] {
        let r = srv.post("/api/user", body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    let r = srv.call("POST", "/api/user", Some(b"{\"uuid\": \"\xff\xfe\"}")).await;
    err(&r, 400, "UTF-8");
    let r = srv.call("POST", "/api/user", Some(b"\xff")).await;
    err(&r, 400, "UTF-8");
    let r = srv.call("POST", "/api/user", None).await;
    assert_eq!(r.status, 400, "no body: {}", r.text());
    assert_eq!(ok(&srv.get("/api/users").await), json!([]), "nothing was created");

    // Characters, not bytes: 64 four-byte characters and 256 two-byte ones are fine.
    let long = "𝄞".repeat(64);
    let u = ok(&srv.post("/api/user", &json!({"uuid": long, "display_name": "é".repeat(256)}).to_string()).await);
    assert_eq!((&u["uuid"], &u["display_name"]), (&json!(long), &json!("é".repeat(256))));
    let one = ok(&srv.post("/api/user", r#"{"uuid": "x", "display_name": null}"#).await);
    assert_eq!(one["display_name"], "");
    srv.stop().await;
}

// ---- sessions ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_open_list_and_close() {
    let srv = TestServer::sqlite(&[]).await;
    let alice = srv.create_user("alice", Some("Alice")).await;
    let a = alice["id"].as_i64().unwrap();
    let b = srv.user("bob").await;
    assert_eq!(ok(&srv.get("/api/sessions").await), json!([]));

    let t0 = now_ns();
    let s1 = srv.open_session(a).await;
    let t1 = now_ns();
    assert_eq!(s1["user"], alice, "the session nests its user");
    let created = ts_of(&s1, "created_utc");
    assert!((t0..=t1).contains(&created), "created_utc is the server's time now: {s1}");
    assert!((created..=t1).contains(&ts_of(&s1, "last_active_utc")), "{s1}");
    let s2 = srv.open_session(a).await;
    let s3 = srv.open_session(b).await;
    let uuids: BTreeSet<&str> = [&s1, &s2, &s3].iter().map(|s| s["uuid"].as_str().unwrap()).collect();
    assert_eq!(uuids.len(), 3, "session uuids are distinct");

    let listed = srv.sessions().await;
    let listed_ids: BTreeSet<&str> = listed.iter().map(|s| s["uuid"].as_str().unwrap()).collect();
    assert_eq!(listed_ids, uuids);
    let l1 = listed.iter().find(|s| s["uuid"] == s1["uuid"]).unwrap();
    assert_eq!(l1, &s1, "listed exactly as opened (nothing touched it)");

    let id1 = s1["uuid"].as_str().unwrap();
    ok_plain(&srv.delete(&format!("/api/session/{id1}")).await);
    err(&srv.delete(&format!("/api/session/{id1}")).await, 404, "session");
    err(&srv.get(&format!("/api/messages/{id1}")).await, 404, "session");
    err(&srv.get(&format!("/api/contacts/{id1}")).await, 404, "session");
    let listed: BTreeSet<String> =
        srv.sessions().await.iter().map(|s| s["uuid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        listed,
        BTreeSet::from([s2["uuid"].as_str().unwrap().to_owned(), s3["uuid"].as_str().unwrap().to_owned()])
    );

    err(&srv.call("POST", &format!("/api/session/{NO_USER}"), None).await, 404, "user");
    err(&srv.call("POST", "/api/session/alice", None).await, 400, "user_id");
    err(&srv.call("POST", "/api/session/99999999999999999999", None).await, 400, "user_id");
    for bad in [NO_SESSION, "not-a-session", "0123456789ABCDEF0123456789ABCDEF0", "1"] {
        err(&srv.delete(&format!("/api/session/{bad}")).await, 404, "session");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_and_sending_mark_the_session_active() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let b = srv.user("bob").await;
    let s = srv.open_session(a).await;
    let sid = s["uuid"].as_str().unwrap().to_owned();
    let opened = ts_of(&s, "created_utc");

    wall_clock_past(ts_of(&s, "last_active_utc")).await;
    let t0 = now_ns();
    srv.poll(&format!("/api/messages/{sid}")).await;
    let t1 = now_ns();
    let after_poll = srv.session_by_uuid(&sid).await;
    let active = ts_of(&after_poll, "last_active_utc");
    assert!((t0..=t1).contains(&active), "a poll marks last_active_utc with the server time: {after_poll}");
    assert_eq!(ts_of(&after_poll, "created_utc"), opened, "created_utc never moves");

    wall_clock_past(active).await;
    let t0 = now_ns();
    let m = srv.send(&sid, b, "hi").await;
    let t1 = now_ns();
    assert!((t0..=t1).contains(&created(&m)), "created_utc is the server's time of the send: {m}");
    let after_send = srv.session_by_uuid(&sid).await;
    assert!((t0..=t1).contains(&ts_of(&after_send, "last_active_utc")), "a send marks last_active_utc: {after_send}");

    // With a cutoff too (the wrk URL shape).
    let active = ts_of(&after_send, "last_active_utc");
    wall_clock_past(active).await;
    let t0 = now_ns();
    srv.poll(&format!("/api/messages/{sid}/1471756932/632474775")).await;
    let t1 = now_ns();
    assert!((t0..=t1).contains(&ts_of(&srv.session_by_uuid(&sid).await, "last_active_utc")));
    srv.stop().await;
}

// ---- contacts ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_are_mutual_idempotent_and_show_presence() {
    let srv = TestServer::sqlite(&[]).await;
    let alice = srv.create_user("alice", Some("Alice")).await;
    let bob = srv.create_user("bob", Some("Bob")).await;
    let carol = srv.create_user("carol", None).await;
    let (a, b, c) = (alice["id"].as_i64().unwrap(), bob["id"].as_i64().unwrap(), carol["id"].as_i64().unwrap());
    let sa = srv.session(a).await;
    assert_eq!(srv.contacts(&sa).await, Vec::<Value>::new());

    ok_plain(&srv.call("POST", &format!("/api/contact/{sa}/{b}"), None).await);
    ok_plain(&srv.call("POST", &format!("/api/contact/{sa}/{b}"), None).await);
    ok_plain(&srv.call("POST", &format!("/api/contact/{sa}/{c}"), None).await);
    let contact = |u: &Value, online: bool| json!({"user": u, "is_online": online, "is_typing": false});
    let by_id = |mut v: Vec<Value>| {
        v.sort_by_key(|c| c["user"]["id"].as_i64().unwrap());
        v
    };
    assert_eq!(by_id(srv.contacts(&sa).await), vec![contact(&bob, false), contact(&carol, false)], "no live sessions");

    // Both ways: bob sees alice, who is online.
    let sb = srv.session(b).await;
    assert_eq!(srv.contacts(&sb).await, vec![contact(&alice, true)]);
    assert_eq!(by_id(srv.contacts(&sa).await), vec![contact(&bob, true), contact(&carol, false)]);
    ok_plain(&srv.call("POST", &format!("/api/contact/{sb}/{a}"), None).await);
    assert_eq!(srv.contacts(&sb).await, vec![contact(&alice, true)], "adding from the other side changes nothing");

    // Presence follows live sessions.
    let sb2 = srv.session(b).await;
    ok_plain(&srv.delete(&format!("/api/session/{sb}")).await);
    assert_eq!(by_id(srv.contacts(&sa).await)[0], contact(&bob, true), "bob still has a live session");
    ok_plain(&srv.delete(&format!("/api/session/{sb2}")).await);
    assert_eq!(by_id(srv.contacts(&sa).await)[0], contact(&bob, false), "bob has no live session");

    // A display name change shows in contacts.
    let bob2 = ok(&srv.put(&format!("/api/user/{b}"), r#"{"display_name": "Robert"}"#).await);
    assert_eq!(by_id(srv.contacts(&sa).await)[0], contact(&bob2, false));

    // Removing works both ways and is idempotent.
    let sb = srv.session(b).await;
    ok_plain(&srv.delete(&format!("/api/contact/{sb}/{a}")).await);
    assert_eq!(srv.contacts(&sb).await, Vec::<Value>::new());
    assert_eq!(srv.contacts(&sa).await, vec![contact(&carol, false)]);
    ok_plain(&srv.delete(&format!("/api/contact/{sb}/{a}")).await);
    ok_plain(&srv.delete(&format!("/api/contact/{sa}/{b}")).await);
    assert_eq!(srv.contacts(&sa).await, vec![contact(&carol, false)]);

    // Oneself, unknown users and sessions, non-integers.
    err(&srv.call("POST", &format!("/api/contact/{sa}/{a}"), None).await, 400, "user_id");
    ok_plain(&srv.delete(&format!("/api/contact/{sa}/{a}")).await); // never contacts: idempotent OK
    assert_eq!(srv.contacts(&sa).await, vec![contact(&carol, false)]);
    for method in ["POST", "DELETE"] {
        err(&srv.call(method, &format!("/api/contact/{sa}/{NO_USER}"), None).await, 404, "user_id");
        err(&srv.call(method, &format!("/api/contact/{NO_SESSION}/{b}"), None).await, 404, "session");
        err(&srv.call(method, &format!("/api/contact/{sa}/bob"), None).await, 400, "user_id");
        err(&srv.call(method, &format!("/api/contact/{sa}/99999999999999999999"), None).await, 400, "user_id");
    }
    err(&srv.get(&format!("/api/contacts/{NO_SESSION}")).await, 404, "session");
    err(&srv.get("/api/contacts/xyz").await, 404, "session");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_removes_sessions_and_contacts_but_not_exchanged_messages() {
    let srv = TestServer::sqlite(&[]).await;
    let alice = srv.create_user("alice", Some("Alice")).await;
    let a = alice["id"].as_i64().unwrap();
    let b = srv.user("bob").await;
    let c = srv.user("carol").await;
    let sa = srv.session(a).await;
    let sb = srv.session(b).await;
    let sb2 = srv.session(b).await;
    let sc = srv.session(c).await;
    ok_plain(&srv.call("POST", &format!("/api/contact/{sb}/{a}"), None).await);
    ok_plain(&srv.call("POST", &format!("/api/contact/{sb}/{c}"), None).await);
    ok_plain(&srv.call("POST", &format!("/api/contact/{sa}/{c}"), None).await);
    let to_a = srv.send(&sb, a, "from bob").await;
    let from_a = srv.send(&sa, b, "to bob").await;
    let to_c = srv.send(&sb, c, "bob to carol").await;

    ok_plain(&srv.delete(&format!("/api/user/{b}")).await);

    err(&srv.get(&format!("/api/user/{b}")).await, 404, "user");
    err(&srv.get("/api/user.uuid/bob").await, 404, "uuid");
    let users: Vec<i64> =
        ok(&srv.get("/api/users").await).as_array().unwrap().iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert_eq!(users, vec![a, c]);
    for s in [&sb, &sb2] {
        err(&srv.get(&format!("/api/messages/{s}")).await, 404, "session");
        err(&srv.delete(&format!("/api/session/{s}")).await, 404, "session");
    }
    let live: BTreeSet<String> = srv.sessions().await.iter().map(|s| s["uuid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(live, BTreeSet::from([sa.clone(), sc.clone()]));
    let contact_ids = |v: Vec<Value>| -> Vec<i64> { v.iter().map(|c| c["user"]["id"].as_i64().unwrap()).collect() };
    assert_eq!(contact_ids(srv.contacts(&sa).await), vec![c], "bob left alice's contacts");
    assert_eq!(contact_ids(srv.contacts(&sc).await), vec![a], "bob left carol's contacts");

    // The messages they exchanged stay in the others' mailboxes, unchanged.
    let (_, in_a) = srv.poll(&format!("/api/messages/{sa}")).await;
    assert_eq!(in_a, vec![to_a.clone(), from_a.clone()]);
    let (_, in_c) = srv.poll(&format!("/api/messages/{sc}")).await;
    assert_eq!(in_c, vec![to_c]);

    // Gone means gone.
    err(&srv.delete(&format!("/api/user/{b}")).await, 404, "user");
    err(&srv.put(&format!("/api/user/{b}"), r#"{"display_name": "x"}"#).await, 404, "user");
    err(&srv.call("POST", &format!("/api/session/{b}"), None).await, 404, "user");
    err(&srv.call("POST", &format!("/api/contact/{sa}/{b}"), None).await, 404, "user_id");
    err(
        &srv.post(&format!("/api/message/{sa}"), &json!({"receiver_id": b, "body": "x"}).to_string()).await,
        400,
        "receiver_id",
    );
    err(&srv.delete("/api/user/x").await, 400, "id");

    // The uuid is free again, for a new user with an empty mailbox.
    let bob_again = srv.create_user("bob", None).await;
    assert_ne!(bob_again["id"], json!(b), "a new user, not the deleted one");
    let s = srv.session(bob_again["id"].as_i64().unwrap()).await;
    let (_, msgs) = srv.poll(&format!("/api/messages/{s}")).await;
    assert!(msgs.is_empty(), "the deleted user's mailbox went with them: {msgs:?}");
    assert_eq!(srv.contacts(&s).await, Vec::<Value>::new());
    srv.stop().await;
}

// ---- messages ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_both_mailboxes_in_order() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let b = srv.user("bob").await;
    let c = srv.user("carol").await; // never opens a session before the messages arrive
    let sa = srv.session(a).await;
    let sb = srv.session(b).await;

    let (meta, msgs) = srv.poll(&format!("/api/messages/{sa}")).await;
    assert_eq!(meta, json!({"http_code": 200, "cursor": {"unix": 0, "nano": 0}, "gap": false}));
    assert!(msgs.is_empty());

    let t0 = now_ns();
    let m1 = srv.send(&sa, b, "hello bob").await;
    let m2 =
        ok(&srv.post(&format!("/api/send/{sb}"), &json!({"receiver_id": a, "body": "hi alice"}).to_string()).await);
    assert_message_shape(&m2);
    let m3 = srv.send(&sa, a, "a note to self").await;
    let m4 = srv.send(&sa, c, "carol, are you there?").await;
    let t1 = now_ns();
    assert_eq!((&m1["sender_id"], &m1["receiver_id"]), (&json!(a), &json!(b)));
    assert_eq!((&m2["sender_id"], &m2["receiver_id"], &m2["body"]), (&json!(b), &json!(a), &json!("hi alice")));
    assert_eq!((&m3["sender_id"], &m3["receiver_id"]), (&json!(a), &json!(a)));
    let all = [&m1, &m2, &m3, &m4];
    let uuids: BTreeSet<&str> = all.iter().map(|m| m["uuid"].as_str().unwrap()).collect();
    assert_eq!(uuids.len(), 4, "message uuids are distinct");
    for w in all.windows(2) {
        assert!(created(w[0]) < created(w[1]), "created_utc strictly increases: {} {}", w[0], w[1]);
    }
    for m in all {
        assert!((t0..=t1).contains(&created(m)), "server time: {m}");
    }

    let (meta, in_a) = srv.poll(&format!("/api/messages/{sa}")).await;
    assert_eq!(
        in_a,
        vec![m1.clone(), m2.clone(), m3.clone(), m4.clone()],
        "sent and received, self-send once, oldest first"
    );
    assert_eq!(meta, json!({"http_code": 200, "cursor": cursor(created(&m4)), "gap": false}));
    let (meta, in_b) = srv.poll(&format!("/api/messages/{sb}")).await;
    assert_eq!(in_b, vec![m1.clone(), m2.clone()]);
    assert_eq!(meta["cursor"], cursor(created(&m2)));
    // A user without a live session still receives.
    let sc = srv.session(c).await;
    let (_, in_c) = srv.poll(&format!("/api/messages/{sc}")).await;
    assert_eq!(in_c, vec![m4.clone()]);
    // Polling does not consume.
    let (_, again) = srv.poll(&format!("/api/messages/{sa}")).await;
    assert_eq!(again, in_a);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_bodies_and_attachments() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let b = srv.user("bob").await;
    let sa = srv.session(a).await;
    let send = |body: String| {
        let srv = &srv;
        let sa = sa.clone();
        async move { srv.post(&format!("/api/message/{sa}"), &body).await }
    };

    let att = json!({"file": {"name": "a.png", "size": 12}, "tags": ["x", "y"], "n": null});
    let m = ok(&send(json!({"receiver_id": b, "body": "see attached", "attachments": att}).to_string()).await);
    assert_eq!(m["attachments"], att);
    let m = ok(&send(json!({"receiver_id": b, "body": "", "attachments": {}}).to_string()).await);
    assert_eq!((&m["body"], &m["attachments"]), (&json!(""), &json!({})));
    let m = ok(&send(json!({"receiver_id": b, "body": "x", "attachments": null}).to_string()).await);
    assert_eq!(m["attachments"], Value::Null);
    let escaped = "quote \" backslash \\ newline \n tab \t unicode é 𝄞 \u{1}";
    let m = ok(&send(json!({"receiver_id": b, "body": escaped}).to_string()).await);
    assert_eq!(m["body"], escaped);

    // Characters, not bytes.
    for ch in ["a", "é", "€", "𝄞"] {
        let body = ch.repeat(1024);
        let m = ok(&send(json!({"receiver_id": b, "body": body}).to_string()).await);
        assert_eq!(m["body"], body, "1024 × {ch:?}");
        err(&send(json!({"receiver_id": b, "body": ch.repeat(1025)}).to_string()).await, 400, "body");
    }
    let r = send(json!({"receiver_id": b, "body": "é".repeat(1025)}).to_string()).await;
    assert_eq!(r.message(), "body: longer than 1024 characters");

    // Attachments up to 16 KiB serialised (compactly).
    let fits = json!({"k": "a".repeat(16 * 1024 - 8)});
    assert_eq!(fits.to_string().len(), 16 * 1024);
    let m = ok(&send(json!({"receiver_id": b, "body": "big", "attachments": fits}).to_string()).await);
    assert_eq!(m["attachments"], fits);
    let over = json!({"k": "a".repeat(16 * 1024 - 7)});
    err(&send(json!({"receiver_id": b, "body": "big", "attachments": over}).to_string()).await, 400, "attachments");

    let before = srv.poll(&format!("/api/messages/{sa}")).await.1.len();
    let cases: Vec<(String, &str)> = vec![
        (json!({"body": "x"}).to_string(), "receiver_id"),
        (json!({"receiver_id": NO_USER, "body": "x"}).to_string(), "receiver_id"),
        (json!({"receiver_id": b.to_string(), "body": "x"}).to_string(), "receiver_id"),
        (json!({"receiver_id": 1.5, "body": "x"}).to_string(), "receiver_id"),
        (json!({"receiver_id": null, "body": "x"}).to_string(), "receiver_id"),
        (r#"{"receiver_id": 99999999999999999999, "body": "x"}"#.to_owned(), "receiver_id"),
        (r#"{"receiver_id": -99999999999999999999, "body": "x"}"#.to_owned(), "receiver_id"),
        (json!({"receiver_id": b}).to_string(), "body"),
        (json!({"receiver_id": b, "body": ""}).to_string(), "body"),
        (json!({"receiver_id": b, "body": "", "attachments": null}).to_string(), "body"),
        (json!({"receiver_id": b, "body": 5}).to_string(), "body"),
        (json!({"receiver_id": b, "body": ["x"]}).to_string(), "body"),
        (json!({"receiver_id": b, "body": "x", "attachments": [1, 2]}).to_string(), "attachments"),
        (json!({"receiver_id": b, "body": "x", "attachments": "file"}).to_string(), "attachments"),
        (json!({"receiver_id": b, "body": "x", "attachments": 5}).to_string(), "attachments"),
        (json!({"receiver_id": b, "body": "x", "attachments": true}).to_string(), "attachments"),
        (json!({"receiver_id": b, "body": "", "attachments": []}).to_string(), "attachments"),
    ];
    for (body, field) in &cases {
        err(&send(body.clone()).await, 400, field);
    }
    let r = send(json!({"receiver_id": NO_USER, "body": "x"}).to_string()).await;
    assert_eq!(r.message(), "receiver_id: no such user");
    for body in
        ["", "   ", "not json", "{\"receiver_id\": 1", "[]", "null", "42", r#"{"receiver_id": 1, "body": "\ud800"}"#]
    {
        let r = send(body.to_owned()).await;
        assert_eq!(r.status, 400, "{body:?}: {}", r.text());
    }
    for bytes in [&b"\xff\xfe"[..], &b"{\"receiver_id\": 1, \"body\": \"\xc3\x28\"}"[..]] {
        let r = srv.call("POST", &format!("/api/message/{sa}"), Some(bytes)).await;
        err(&r, 400, "UTF-8");
    }
    // Deeply nested JSON is a 400, not a crash.
    let deep = format!(
        r#"{{"receiver_id": {b}, "body": "x", "attachments": {{"a": {}{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert_eq!(send(deep).await.status, 400);
    let r = srv.call("POST", &format!("/api/message/{sa}"), None).await;
    assert_eq!(r.status, 400, "no body at all: {}", r.text());
    assert_eq!(srv.poll(&format!("/api/messages/{sa}")).await.1.len(), before, "no rejected message was stored");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_cutoffs_are_strictly_after_and_the_cursor_follows() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let b = srv.user("bob").await;
    let sa = srv.session(a).await;
    let sb = srv.session(b).await;
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(srv.send(&sa, b, &format!("m{i}")).await);
    }
    let times: Vec<i128> = sent.iter().map(created).collect();
    for w in times.windows(2) {
        assert!(w[0] < w[1], "strictly increasing");
    }
    let base = format!("/api/messages/{sb}");
    let (meta, all) = srv.poll(&base).await;
    assert_eq!(all, sent);
    assert_eq!(meta["cursor"], cursor(times[29]));

    // /:unix/:nano, exactly at, one ns before, and at the newest.
    for k in [0usize, 9, 28] {
        let (meta, msgs) = srv.poll(&after(&sb, times[k])).await;
        assert_eq!(msgs, sent[k + 1..].to_vec(), "strictly after message {k}");
        assert_eq!(meta, json!({"http_code": 200, "cursor": cursor(times[29]), "gap": false}));
        let (_, msgs) = srv.poll(&after(&sb, times[k] - 1)).await;
        assert_eq!(msgs, sent[k..].to_vec(), "one ns before message {k}");
    }
    let (meta, msgs) = srv.poll(&after(&sb, times[29])).await;
    assert!(msgs.is_empty());
    assert_eq!(
        meta,
        json!({"http_code": 200, "cursor": cursor(times[29]), "gap": false}),
        "the cutoff when none returned"
    );

    // Normalisation of :nano like Go's time.Unix: the same instant spelled differently.
    let (u, n) = (times[9].div_euclid(NS) as i64, times[9].rem_euclid(NS) as i64);
    for (uu, nn) in
        [(u - 1, n + 1_000_000_000), (u - 3, n + 3_000_000_000), (u + 1, n - 1_000_000_000), (u + 2, n - 2_000_000_000)]
    {
        let (meta, msgs) = srv.poll(&format!("{base}/{uu}/{nn}")).await;
        assert_eq!(msgs, sent[10..].to_vec(), "{uu}/{nn}");
        assert_eq!(meta["cursor"], cursor(times[29]));
    }

    // /:unix: strictly after the whole second.
    let second = times[15].div_euclid(NS);
    let expected: Vec<Value> = sent.iter().filter(|m| created(m) > second * NS).cloned().collect();
    let (_, msgs) = srv.poll(&format!("{base}/{second}")).await;
    assert_eq!(msgs, expected);
    let (_, msgs) = srv.poll(&format!("{base}/{second}/0")).await;
    assert_eq!(msgs, expected);
    let (_, msgs) = srv.poll(&format!("{base}/0")).await;
    assert_eq!(msgs, sent, "everything is after the epoch");
    let (_, msgs) = srv.poll(&format!("{base}/-1/-1")).await;
    assert_eq!(msgs, sent, "negative cutoffs");
    let (meta, msgs) = srv.poll(&format!("{base}/{}", times[29].div_euclid(NS) + 1)).await;
    assert!(msgs.is_empty());
    assert_eq!(meta["cursor"], json!({"unix": times[29].div_euclid(NS) as i64 + 1, "nano": 0}));

    // A client that polls with its cursor gets everything exactly once.
    let mut cur = json!({"unix": 0, "nano": 0});
    let mut got = Vec::new();
    for i in 0..5 {
        let m = srv.send(&sb, a, &format!("reply {i}")).await;
        let (meta, msgs) = srv.poll(&format!("/api/messages/{sa}/{}/{}", cur["unix"], cur["nano"])).await;
        assert_eq!(meta["gap"], false);
        assert_eq!(msgs.last(), Some(&m));
        cur = meta["cursor"].clone();
        assert_eq!(cur, cursor(created(&m)));
        got.extend(msgs);
    }
    let mut expected = sent.clone();
    expected.extend(srv.poll(&base).await.1.into_iter().skip(30));
    assert_eq!(uuids(&got), uuids(&expected), "every message once, in order");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutoffs_are_normalised_and_overflow_is_rejected() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let s = srv.session(a).await; // an empty mailbox: every cursor is the normalised cutoff
    let cases: &[(&str, i64, i64)] = &[
        ("", 0, 0),
        ("/5", 5, 0),
        ("/5/0", 5, 0),
        ("/5/7", 5, 7),
        ("/5/-1", 4, 999_999_999),
        ("/5/1500000000", 6, 500_000_000),
        ("/5/-1500000000", 3, 500_000_000),
        ("/-5/2000000001", -3, 1),
        ("/-1/-1", -2, 999_999_999),
        ("/-1", -1, 0),
        ("/0/-9223372036854775808", -9_223_372_037, 145_224_192),
        ("/0/9223372036854775807", 9_223_372_036, 854_775_807),
        ("/9223372036854775807/999999999", i64::MAX, 999_999_999),
        ("/-9223372036854775808", i64::MIN, 0),
        ("/-9223372036854775808/1", i64::MIN, 1),
        ("/+5/+7", 5, 7),
        ("/1471756932/632474775", 1_471_756_932, 632_474_775),
    ];
    for (suffix, unix, nano) in cases {
        let (meta, msgs) = srv.poll(&format!("/api/messages/{s}{suffix}")).await;
        assert!(msgs.is_empty());
        assert_eq!(meta, json!({"http_code": 200, "cursor": {"unix": unix, "nano": nano}, "gap": false}), "{suffix}");
    }
    let bad: &[(&str, &str)] = &[
        ("/9223372036854775807/1000000000", "unix"),
        ("/-9223372036854775808/-1", "unix"),
        ("/9223372036854775808", "unix"),
        ("/-9223372036854775809", "unix"),
        ("/1/9223372036854775808", "nano"),
        ("/99999999999999999999/0", "unix"),
        ("/x", "unix"),
        ("/1.5", "unix"),
        ("/1e3", "unix"),
        ("/0x10", "unix"),
        ("/%201", "unix"),
        ("/1/x", "nano"),
        ("/1/2.0", "nano"),
        ("/1/-", "nano"),
        ("/x/x", "unix"),
    ];
    for (suffix, field) in bad {
        err(&srv.get(&format!("/api/messages/{s}{suffix}")).await, 400, field);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_reports_messages_that_left_the_mailbox() {
    let srv = TestServer::sqlite(&["--mailbox-capacity", "4"]).await;
    let a = srv.user("alice").await;
    let b = srv.user("bob").await;
    let sa = srv.session(a).await;
    let sb = srv.session(b).await;

    // A client that keeps up never sees a gap, even while old messages are pushed out.
    let (meta, _) = srv.poll(&format!("/api/messages/{sb}")).await;
    assert_eq!(meta["gap"], false);
    let mut cur = meta["cursor"].clone();
    let mut sent = Vec::new();
    for i in 0..6 {
        let m = srv.send(&sa, b, &format!("m{i}")).await;
        let (meta, msgs) = srv.poll(&format!("/api/messages/{sb}/{}/{}", cur["unix"], cur["nano"])).await;
        assert_eq!(msgs, vec![m.clone()]);
        assert_eq!(
            meta,
            json!({"http_code": 200, "cursor": cursor(created(&m)), "gap": false}),
            "keeping up, message {i}"
        );
        cur = meta["cursor"].clone();
        sent.push(m);
    }
    let t: Vec<i128> = sent.iter().map(created).collect();

    // m0 and m1 were pushed out of both mailboxes (capacity 4).
    for s in [&sb, &sa] {
        let (meta, msgs) = srv.poll(&format!("/api/messages/{s}")).await;
        assert_eq!(msgs, sent[2..].to_vec(), "the newest 4");
        assert_eq!(
            meta,
            json!({"http_code": 200, "cursor": cursor(t[5]), "gap": true}),
            "no cutoff: older than everything"
        );
        let (meta, msgs) = srv.poll(&format!("/api/messages/{s}/0")).await;
        assert_eq!((meta["gap"].clone(), msgs.len()), (json!(true), 4));
        let (meta, msgs) = srv.poll(&after(s, t[0])).await;
        assert_eq!(msgs, sent[2..].to_vec());
        assert_eq!(meta["gap"], true, "m1 left after the cutoff m0");
        let (meta, _) = srv.poll(&after(s, t[1] - 1)).await;
        assert_eq!(meta["gap"], true, "m1 left after the cutoff");
        let (meta, msgs) = srv.poll(&after(s, t[1])).await;
        assert_eq!(msgs, sent[2..].to_vec());
        assert_eq!(meta["gap"], false, "the client saw m1: nothing after its cursor left");
        let (meta, msgs) = srv.poll(&after(s, t[3])).await;
        assert_eq!(msgs, sent[4..].to_vec());
        assert_eq!(meta["gap"], false);
        let (meta, msgs) = srv.poll(&after(s, t[5])).await;
        assert!(msgs.is_empty());
        assert_eq!(meta, json!({"http_code": 200, "cursor": cursor(t[5]), "gap": false}));
    }
    // A user whose mailbox lost nothing has no gap.
    let c = srv.user("carol").await;
    let sc = srv.session(c).await;
    let m = srv.send(&sa, c, "hi carol").await;
    let (meta, msgs) = srv.poll(&format!("/api/messages/{sc}")).await;
    assert_eq!((msgs, meta["gap"].clone()), (vec![m], json!(false)));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_are_rfc3339_nano_with_trailing_zeros_trimmed() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let s = srv.session(a).await;
    // With nanosecond clocks about one timestamp in ten ends in a zero digit; 60 of them make
    // it all but certain that trimming is exercised. `parse_ts` rejects untrimmed fractions.
    let mut stamps = Vec::new();
    for i in 0..60 {
        let m = srv.send(&s, a, &format!("{i}")).await;
        stamps.push(m["created_utc"].as_str().unwrap().to_owned());
    }
    let (meta, msgs) = srv.poll(&format!("/api/messages/{s}")).await;
    assert_eq!(msgs.iter().map(|m| m["created_utc"].as_str().unwrap().to_owned()).collect::<Vec<_>>(), stamps);
    assert_eq!(meta["cursor"], cursor(parse_ts(stamps.last().unwrap())));
    for st in srv.sessions().await {
        ts_of(&st, "created_utc");
        ts_of(&st, "last_active_utc");
    }
    srv.stop().await;
}

// ---- size limits, precedence, the write queue ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_are_413() {
    let srv = TestServer::sqlite(&[]).await;
    let fresh = srv.fresh();
    // Exactly 64 KiB is accepted; one byte more is not.
    let r = srv.call("POST", "/api/user", Some(&padded_user_body("exact", 64 * 1024))).await;
    assert_eq!(ok(&r)["uuid"], "exact");
    let r = fresh.request("POST", "/api/user", Some(padded_user_body("over", TOO_LARGE)), &[]).await;
    err(&r, 413, "body");
    let r = fresh.request("POST", "/api/user", Some(vec![b'x'; 1024 * 1024]), &[]).await;
    err(&r, 413, "body");
    let r = fresh.request("PUT", "/api/user/1", Some(vec![b' '; TOO_LARGE]), &[]).await;
    err(&r, 413, "body");
    err(&srv.get("/api/user.uuid/over").await, 404, "uuid");
    // A new client carries on.
    let r = Api::new(srv.base()).get("/api/user.uuid/exact").await;
    assert_eq!(ok(&r)["uuid"], "exact");

    // A chunked body that grows over the limit (no Content-Length to judge it by).
    let mut conn = RawConn::connect(srv.addr()).await;
    conn.write(&chunked_post("/api/user", &vec![b' '; TOO_LARGE + 8192])).await.expect("write");
    let r = conn.must_read().await;
    assert_eq!(r.status, 413);
    assert!(r.json()["meta"]["message"].as_str().is_some_and(|m| m.contains("body")));

    // A small chunked body is read like any other.
    let mut conn = RawConn::connect(srv.addr()).await;
    conn.write(&chunked_post("/api/user", br#"{"uuid": "chunky"}"#)).await.expect("write");
    let r = conn.must_read().await;
    assert_eq!((r.status, r.json()["response"]["uuid"].clone()), (200, json!("chunky")));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_early_answer_the_connection_stays_usable_or_is_closed_cleanly() {
    let srv = TestServer::sqlite(&[]).await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("413, chunked, 9 KiB over", chunked_post("/api/user", &vec![b' '; TOO_LARGE + 8192]), 413),
        ("413, chunked, 1 MiB", chunked_post("/api/user", &vec![b' '; 1024 * 1024]), 413),
        ("413, Content-Length 1 byte over", sized_post("/api/user", &padded_user_body("raw", TOO_LARGE)), 413),
        ("413, Content-Length 1 MiB", sized_post("/api/user", &vec![b' '; 1024 * 1024]), 413),
        ("405 with a small body", sized_post("/api/sessions", b"{\"a\": 1}"), 405),
        ("404 with a small body", sized_post("/nope", b"{\"a\": 1}"), 404),
        ("405 with a body over 64 KiB", sized_post("/api/sessions", &vec![b' '; TOO_LARGE]), 405),
        ("404 with a body over 64 KiB", sized_post("/nope", &vec![b' '; TOO_LARGE]), 404),
    ];
    let mut failures = Vec::new();
    for (what, req, status) in cases {
        let mut conn = RawConn::connect(srv.addr()).await;
        conn.write(&req).await.expect("write");
        let r = conn.read_response().await.unwrap_or_else(|e| panic!("{what}: the answer itself is lost: {e}"));
        let r = r.unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(r.status, status, "{what}");
        r.json();
        failures.extend(usable_or_announced_close(&mut conn, &r, what).await);
    }
    srv.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A body that arrives in pieces (after the head, split mid-text, or as several chunks of a
/// chunked body, each written on its own) is read whole: the stored message is the full text.
/// (A body that arrived with its head is taken without waiting; these take the waiting path.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_arriving_in_pieces_is_read_whole() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let sa = srv.session(a).await;
    let text = "é".repeat(300) + " the end";
    let body = json!({"receiver_id": a, "body": text}).to_string().into_bytes();
    let path = format!("/api/message/{sa}");
    let head = format!("POST {path} HTTP/1.1\r\nHost: chatbus\r\nContent-Length: {}\r\n\r\n", body.len());
    let chunked = chunked_post(&path, &body);
    let chunked_head_len = chunked.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    // Where each request is cut, and written piece by piece with a pause between.
    let cases: Vec<(&str, Vec<u8>, Vec<usize>)> = vec![
        ("Content-Length, body after the head", [head.as_bytes(), &body].concat(), vec![head.len()]),
        (
            "Content-Length, body in three pieces",
            [head.as_bytes(), &body].concat(),
            vec![head.len() + 7, head.len() + 301, head.len() + body.len() - 3],
        ),
        ("chunked, chunks written one by one", chunked.clone(), vec![chunked_head_len, chunked_head_len + 40]),
    ];
    for (what, req, cuts) in cases {
        let mut conn = RawConn::connect(srv.addr()).await;
        let mut from = 0;
        for cut in cuts.into_iter().chain([req.len()]) {
            conn.write(&req[from..cut]).await.expect("write");
            from = cut;
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let r = conn.must_read().await;
        assert_eq!(r.status, 200, "{what}: {:?}", r.json());
        assert_eq!(r.json()["response"]["body"], text.as_str(), "{what}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_take_precedence_in_the_documented_order() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let s = srv.session(a).await;
    let big = vec![b'{'; TOO_LARGE];
    let junk = b"this is not json".to_vec();
    // A new connection per request: that the server may close one after a body it did not read
    // is the subject of `after_an_early_answer_...`, not of this test.
    let fresh = srv.fresh();
    let call = |method: &'static str, path: String, body: Option<Vec<u8>>| {
        let fresh = &fresh;
        async move { fresh.request(method, &path, body, &[]).await }
    };

    // 1. An unknown path beats everything (method, size, segments, body).
    for (method, path) in [
        ("DELETE", "/api/nope".to_owned()),
        ("POST", format!("/api/messages/{NO_SESSION}/x/y/z")),
        ("PUT", "/api/contact/x".to_owned()),
        ("PATCH", "/nowhere".to_owned()),
    ] {
        not_found_path(&call(method, path.clone(), Some(big.clone())).await);
        not_found_path(&call(method, path, Some(junk.clone())).await);
    }

    // 2. A wrong method beats a too-large body and bad segments.
    for (method, path) in [
        ("PUT", format!("/api/message/{NO_SESSION}")),
        ("DELETE", "/api/sessions".to_owned()),
        ("POST", "/api/user/notanint".to_owned()),
        ("GET", "/api/contact/x/y".to_owned()),
    ] {
        let r = call(method, path.clone(), Some(big.clone())).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
    }

    // 3. Too large beats the path's segments and the body.
    for (method, path) in [
        ("POST", format!("/api/message/{NO_SESSION}")),
        ("POST", format!("/api/message/{s}")),
        ("POST", "/api/session/notanint".to_owned()),
        ("POST", format!("/api/session/{NO_USER}")),
        ("PUT", "/api/user/notanint".to_owned()),
        ("PUT", format!("/api/user/{NO_USER}")),
        ("POST", "/api/contact/x/y".to_owned()),
        ("DELETE", format!("/api/contact/{s}/y")),
        ("GET", format!("/api/messages/{NO_SESSION}/x")),
        ("POST", "/api/user".to_owned()),
    ] {
        err(&call(method, path, Some(big.clone())).await, 413, "body");
    }

    // 4. Segments left to right: an unknown session before a non-integer after it...
    err(&srv.get(&format!("/api/messages/{NO_SESSION}/notanint")).await, 404, "session");
    err(&srv.get(&format!("/api/messages/{NO_SESSION}/1/notanint")).await, 404, "session");
    err(&srv.get("/api/messages/garbage/notanint/x").await, 404, "session");
    err(&srv.get(&format!("/api/messages/{s}/notanint")).await, 400, "unix");
    err(&srv.get(&format!("/api/messages/{s}/notanint/x")).await, 400, "unix");
    err(&srv.get(&format!("/api/messages/{s}/1/notanint")).await, 400, "nano");
    for method in ["POST", "DELETE"] {
        err(&call(method, format!("/api/contact/{NO_SESSION}/x"), None).await, 404, "session");
        err(&call(method, format!("/api/contact/{NO_SESSION}/{NO_USER}"), None).await, 404, "session");
        err(&call(method, format!("/api/contact/{s}/x"), None).await, 400, "user_id");
        err(&call(method, format!("/api/contact/{s}/{NO_USER}"), None).await, 404, "user_id");
    }

    // 5. ...and the body after the path.
    err(&call("POST", format!("/api/message/{NO_SESSION}"), Some(junk.clone())).await, 404, "session");
    err(
        &call("POST", "/api/message/nothex".to_owned(), Some(b"{\"receiver_id\": \"x\"}".to_vec())).await,
        404,
        "session",
    );
    let r = call("POST", format!("/api/message/{s}"), Some(junk.clone())).await;
    assert_eq!(r.status, 400);
    err(&call("PUT", "/api/user/notanint".to_owned(), Some(junk.clone())).await, 400, "id");
    err(&call("PUT", "/api/user/notanint".to_owned(), Some(b"{}".to_vec())).await, 400, "id");
    err(&call("PUT", format!("/api/user/{NO_USER}"), Some(junk.clone())).await, 404, "user");
    err(&call("PUT", format!("/api/user/{NO_USER}"), Some(b"{}".to_vec())).await, 404, "user");
    let r = call("PUT", format!("/api/user/{a}"), Some(junk.clone())).await;
    assert_eq!(r.status, 400);
    err(&call("POST", format!("/api/session/{NO_USER}"), Some(junk.clone())).await, 404, "user");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_is_503_and_comes_last() {
    // `--max-pending 1` and a store held locked by this test: once a write is queued and cannot
    // commit, the queue stays full until the lock is released — deterministic, no timing.
    let srv = TestServer::sqlite(&["--max-pending", "1"]).await;
    let a = srv.user("alice").await;
    let b = srv.user("bob").await;
    let s = srv.session(a).await;

    let lock = rusqlite::Connection::open(srv.store().sqlite_path()).expect("open the store file");
    lock.busy_timeout(Duration::from_secs(5)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let stuck = tokio::spawn({
        let api = srv.api();
        async move { api.post("/api/user", r#"{"uuid": "stuck"}"#).await }
    });
    // Its write is queued (and cannot commit while we hold the lock): the queue is at 1.
    wait_until("the stuck write to be queued", Duration::from_secs(10), || async {
        srv.get("/readyz").await.status == 503
    })
    .await;
    assert!(!stuck.is_finished(), "a user is acknowledged only once it is in the store");
    assert_eq!(srv.get("/api/user.uuid/stuck").await.status, 404, "nor shown before it is");

    let good = json!({"receiver_id": b, "body": "hi"}).to_string();
    let r = srv.post(&format!("/api/message/{s}"), &good).await;
    assert_eq!(r.status, 503, "a full write queue: {}", r.text());
    assert_eq!(srv.get("/readyz").await.status, 503, "not ready while the queue is at --max-pending");
    // Everything else wins over 503.
    err(&srv.post(&format!("/api/message/{s}"), r#"{"receiver_id": 1}"#).await, 400, "body");
    err(
        &srv.post(&format!("/api/message/{s}"), &json!({"receiver_id": NO_USER, "body": "x"}).to_string()).await,
        400,
        "receiver_id",
    );
    err(&srv.post(&format!("/api/message/{NO_SESSION}"), &good).await, 404, "session");
    let big = Some(vec![b' '; TOO_LARGE]);
    err(&srv.fresh().request("POST", &format!("/api/message/{s}"), big, &[]).await, 413, "body");
    assert_eq!(srv.call("GET", &format!("/api/message/{s}"), None).await.status, 405);
    not_found_path(&srv.post(&format!("/api/message/{s}/x"), &good).await);
    let (_, msgs) = srv.poll(&format!("/api/messages/{s}")).await;
    assert!(msgs.is_empty(), "polls still answer, and the refused send stored nothing");
    assert_eq!(srv.get("/healthz").await.status, 200, "the process is up");

    lock.execute_batch("ROLLBACK").expect("release the write lock");
    drop(lock);
    let answer = stuck.await.expect("join");
    assert_eq!(ok(&answer)["uuid"], "stuck");
    // The queue drains (the culler's own writes can fill a queue of 1 for an instant: retry).
    wait_until("readyz to be 200", Duration::from_secs(10), || async { srv.readyz().await.status == 200 }).await;
    wait_until("a send to be accepted", Duration::from_secs(10), || async {
        srv.post(&format!("/api/message/{s}"), &good).await.status == 200
    })
    .await;
    srv.stop().await;
}

// ---- keep-alive and the original's benchmark URLs ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelining_on_one_connection() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let s = srv.session(a).await;
    let m = srv.send(&s, a, "hi").await;

    // Many requests over one connection, errors included.
    let mut conn = RawConn::connect(srv.addr()).await;
    for i in 0..60 {
        let (path, status) = match i % 3 {
            0 => (format!("/api/messages/{s}"), 200),
            1 => (format!("/api/messages/{NO_SESSION}"), 404),
            _ => ("/no/such/path".to_owned(), 404),
        };
        conn.write(raw_get(&path).as_bytes()).await.expect("write");
        let r = conn.must_read().await;
        assert_eq!(r.status, status, "request {i} on one connection");
        let v = r.json();
        if status == 200 {
            assert_eq!(v["response"], json!([m]));
        }
        assert!(!r.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")), "kept alive");
    }

    // Pipelined: several requests in one write, answered in order.
    let send_body = json!({"receiver_id": a, "body": "pipelined"}).to_string();
    let batch = [
        raw_get(&format!("/api/messages/{s}")),
        raw_post(&format!("/api/message/{s}"), &send_body),
        raw_get("/"),
        raw_post(&format!("/api/message/{s}"), "not json"),
        raw_get(&format!("/api/messages/{s}")),
    ]
    .concat();
    conn.write(batch.as_bytes()).await.expect("write");
    let r1 = conn.must_read().await;
    assert_eq!((r1.status, r1.json()["response"].clone()), (200, json!([m])));
    let r2 = conn.must_read().await;
    let sent = r2.json()["response"].clone();
    assert_eq!((r2.status, &sent["body"]), (200, &json!("pipelined")));
    let r3 = conn.must_read().await;
    assert_eq!(r3.json()["response"], json!({"app": "Chat Bus"}));
    let r4 = conn.must_read().await;
    assert_eq!(r4.status, 400);
    r4.json();
    let r5 = conn.must_read().await;
    assert_eq!(r5.json()["response"], json!([m, sent]));

    // Two pipelined requests on a fresh connection.
    let mut conn = RawConn::connect(srv.addr()).await;
    conn.write([raw_get("/healthz"), raw_get(&format!("/api/messages/{s}"))].concat().as_bytes()).await.expect("write");
    assert_eq!(conn.must_read().await.status, 200);
    let r = conn.must_read().await;
    assert_eq!(r.json()["response"], json!([m, sent]));

    // reqwest reuses its connections: many requests in a row.
    for _ in 0..200 {
        let (meta, msgs) = srv.poll(&format!("/api/messages/{s}")).await;
        assert_eq!((meta["gap"].clone(), msgs.len()), (json!(false), 2));
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_wrk_url_shape_works() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let b = srv.user("bob").await;
    let sa = srv.session(a).await;
    let sb = srv.session(b).await;
    let m = srv.send(&sa, b, "benchmark").await;
    // The original README's wrk command polls with a fixed cutoff in 2016.
    let (meta, msgs) = srv.poll(&format!("/api/messages/{sb}/1471756932/632474775")).await;
    assert_eq!(msgs, vec![m.clone()]);
    assert_eq!(meta, json!({"http_code": 200, "cursor": cursor(created(&m)), "gap": false}));
    // A cutoff in the future: nothing, and the cursor is the cutoff.
    let (meta, msgs) = srv.poll(&format!("/api/messages/{sb}/4102444800/1")).await;
    assert!(msgs.is_empty());
    assert_eq!(meta["cursor"], json!({"unix": 4_102_444_800i64, "nano": 1}));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_with_histograms() {
    let srv = TestServer::sqlite(&[]).await;
    let a = srv.user("alice").await;
    let s = srv.session(a).await;
    for _ in 0..3 {
        srv.poll(&format!("/api/messages/{s}")).await;
    }
    err(&srv.get(&format!("/api/messages/{NO_SESSION}")).await, 404, "session");
    srv.send(&s, a, "one").await;
    srv.send(&s, a, "two").await;
    not_found_path(&srv.get("/nope").await);
    assert_eq!(srv.post("/healthz", "").await.status, 405);
    assert_eq!(srv.call("OPTIONS", "/", None).await.status, 204);

    let r = srv.get("/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let value = |series: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    };
    for (series, expected) in [
        (r#"chatbus_http_requests_total{route="messages_poll",status="200"}"#, 3.0),
        (r#"chatbus_http_requests_total{route="messages_poll",status="404"}"#, 1.0),
        (r#"chatbus_http_requests_total{route="message_send",status="200"}"#, 2.0),
        (r#"chatbus_http_requests_total{route="user_create",status="200"}"#, 1.0),
        (r#"chatbus_http_requests_total{route="session_open",status="200"}"#, 1.0),
        (r#"chatbus_http_requests_total{route="not_found",status="404"}"#, 1.0),
        (r#"chatbus_http_requests_total{route="method_not_allowed",status="405"}"#, 1.0),
        (r#"chatbus_http_requests_total{route="options",status="204"}"#, 1.0),
        (r#"chatbus_http_request_duration_seconds_count{route="messages_poll"}"#, 4.0),
        (r#"chatbus_http_request_duration_seconds_bucket{route="messages_poll",le="+Inf"}"#, 4.0),
        (r#"chatbus_http_request_duration_seconds_count{route="message_send"}"#, 2.0),
        ("chatbus_messages_sent_total", 2.0),
    ] {
        assert_eq!(value(series), Some(expected), "{series} in\n{text}");
    }
    assert!(text.contains("# TYPE chatbus_http_request_duration_seconds histogram"), "{text}");
    assert!(text.contains("# TYPE chatbus_http_requests_total counter"), "{text}");
    assert!(value(r#"chatbus_http_request_duration_seconds_sum{route="messages_poll"}"#).is_some_and(|v| v > 0.0));
    srv.stop().await;
}

/// A poll answer large enough to be written as several pieces (the envelope, runs of the
/// mailbox's own memory kept without copying, the closing bytes) arrives whole over HTTP: its
/// Content-Length is its length, it is JSON, and it holds every message in order, each as
/// answered to its send — also from a cursor in the middle, and as the long-poll's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_poll_answer_arrives_whole() {
    let srv = TestServer::sqlite(&[]).await;
    let api = srv.api();
    let (a, b) = (api.user("a").await, api.user("b").await);
    let (sa, sb) = (api.session(a).await, api.session(b).await);
    let mut sent = Vec::new();
    for i in 0..300 {
        // ~1 KB each, with characters that need escaping now and then: ~300 KB in all.
        let body = format!("{i:04} {}{}", "é ".repeat(400), if i % 7 == 0 { "\"quoted\"\n" } else { "" });
        sent.push(api.send(&sa, b, &body).await);
    }
    for (path, expect) in [
        (format!("/api/messages/{sb}"), &sent[..]),
        (after(&sb, created(&sent[99])), &sent[100..]),
        (format!("{}?wait=5s", after(&sb, created(&sent[10]))), &sent[11..]),
    ] {
        let r = api.get(&path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-length"), Some(r.raw.len().to_string().as_str()), "{path}");
        assert!(r.raw.len() > 100_000, "{path}: {} bytes", r.raw.len());
        let msgs = r.json["response"].as_array().expect("an array").clone();
        assert_eq!(msgs.len(), expect.len(), "{path}");
        assert!(
            msgs.iter().zip(expect).all(|(got, want)| got == want),
            "{path}: the messages differ from the sends' answers"
        );
    }
    srv.stop().await;
}
