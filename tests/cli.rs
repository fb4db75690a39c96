//! The binary as an operator meets it: flags, errors, and signals.

mod support;

use std::time::Duration;
use support::binary::{free_port, run, run_to_error, Chatbus};
use support::contract::uuid_of;
use support::store::TestStore;

#[test]
fn bad_flags_are_one_line_errors() {
    for args in [
        &["--bogus"][..],
        &["--mailbox-capacity", "0"],
        &["--mailbox-capacity", "lots"],
        &["--session-ttl", "soon"],
        &["--message-ttl", "0s"],
        &["--threads", "0"],
        &["--max-pending", "-1"],
    ] {
        let err = run_to_error(args);
        assert!(err.starts_with("chatbus: "), "{args:?}: {err}");
    }
}

#[test]
fn unopenable_store_is_a_one_line_error() {
    let err = run_to_error(&["--database-url", "sqlite:/nonexistent-dir/x/chatbus.db", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("cannot open store"), "{err}");
    let err = run_to_error(&["--database-url", "mysql://x", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("unsupported database url"), "{err}");
    let err = run_to_error(&["--listen", "not-an-address", "--database-url", "memory:"]);
    assert!(err.contains("cannot listen"), "{err}");
}

#[test]
fn help_and_version_exit_zero() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--database-url",
        "--session-ttl",
        "--message-ttl",
        "--mailbox-capacity",
        "--threads",
        "--shards",
        "--durable-acks",
        "--max-pending",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    for env in ["CHATBUS_LISTEN", "DATABASE_URL", "CHATBUS_SESSION_TTL", "CHATBUS_MAX_PENDING"] {
        assert!(help.contains(env), "--help lacks {env}");
    }
    assert!(run(&["--version"]).status.success());
}

/// SIGTERM: stop accepting, finish, write everything acknowledged, exit 0 — and the next start
/// has every message. Flags come from environment variables here, as the contract allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_everything_and_exits_zero() {
    let store = TestStore::sqlite();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("CHATBUS_LISTEN", listen.as_str()), ("DATABASE_URL", store.url()), ("CHATBUS_THREADS", "1")];
    let mut bin = Chatbus::spawn_on(port, &[], &env);
    bin.wait_up(Duration::from_secs(20)).await;
    let api = bin.api();
    let id = api.user("u").await;
    let session = api.session(id).await;
    let mut sent = Vec::new();
    for n in 0..200 {
        sent.push(uuid_of(&api.send(&session, id, &format!("m{n}")).await));
    }
    // Immediately: no waiting for the write-behind window.
    let (status, stderr) = bin.terminate().await;
    assert_eq!(status.code(), Some(0), "graceful stop exits 0:\n{stderr}");
    drop(bin);

    let mut bin = Chatbus::spawn_on(port, &[], &env);
    bin.wait_up(Duration::from_secs(20)).await;
    let got = bin.api().mailbox(&session).await;
    assert_eq!(got, sent, "every acknowledged message, in order, after a graceful stop");
    bin.stop().await;
}

/// A SIGTERM the moment the port first answers is a graceful stop (exit 0), never the default
/// action of a signal nobody handles yet: a service manager may stop a service that just started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_as_soon_as_it_answers_is_a_graceful_stop() {
    for _ in 0..5 {
        let store = TestStore::sqlite();
        let mut bin = Chatbus::spawn(store.url(), &[]);
        bin.wait_up(Duration::from_secs(20)).await;
        let (status, stderr) = bin.terminate().await;
        assert_eq!(status.code(), Some(0), "graceful stop exits 0:\n{stderr}");
        assert!(stderr.contains("stopping"), "{stderr}");
    }
}

/// A SIGTERM while chatbus still waits for its store (`--connect-timeout`) ends it at once with a
/// one-line error, rather than killing it unhandled or making it wait out the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_starting_ends_the_start() {
    // Nothing listens on a fresh free port: PostgreSQL "not reachable yet".
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let mut bin = Chatbus::spawn(&url, &["--connect-timeout", "60s"]);
    support::wait::wait_until("chatbus to say it waits for PostgreSQL", Duration::from_secs(15), || {
        let said = bin.stderr().contains("not reachable yet");
        async move { said }
    })
    .await;
    let asked = std::time::Instant::now();
    let (status, stderr) = bin.terminate().await;
    assert_eq!(status.code(), Some(1), "a handled stop with an error exit:\n{stderr}");
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
    let last = stderr.trim_end().lines().last().unwrap_or("");
    assert_eq!(last, "chatbus: stopped while starting, before it served a request", "{stderr}");
}
