//! The binary as an operator meets it: flags, errors, and signals.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn chatbus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chatbus")).args(args).stdin(Stdio::null()).output().expect("run chatbus")
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a non-zero exit");
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "expected a one-line error, got:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

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
        let err = one_line_error(&chatbus(args));
        assert!(err.starts_with("chatbus: "), "{args:?}: {err}");
    }
}

#[test]
fn unopenable_store_is_a_one_line_error() {
    let err = one_line_error(&chatbus(&[
        "--database-url",
        "sqlite:/nonexistent-dir/x/chatbus.db",
        "--listen",
        "127.0.0.1:0",
    ]));
    assert!(err.contains("cannot open store"), "{err}");
    let err = one_line_error(&chatbus(&["--database-url", "mysql://x", "--listen", "127.0.0.1:0"]));
    assert!(err.contains("unsupported database url"), "{err}");
    let err = one_line_error(&chatbus(&["--listen", "not-an-address", "--database-url", "memory:"]));
    assert!(err.contains("cannot listen"), "{err}");
}

#[test]
fn help_and_version_exit_zero() {
    let out = chatbus(&["--help"]);
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
    assert!(chatbus(&["--version"]).status.success());
}

/// SIGTERM: stop accepting, finish, write everything acknowledged, exit 0 — and the next start
/// has every message. Flags come from environment variables here, as the contract allows.
#[test]
fn sigterm_drains_everything_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("c.db").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_chatbus"))
            .env("CHATBUS_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &url)
            .env("CHATBUS_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = reqwest::Client::new();
    let wait_up = |client: &reqwest::Client| {
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while client.get(format!("{base}/healthz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
                assert!(Instant::now() < deadline, "server did not come up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut child = start();
    wait_up(&client);
    let (session, sent) = rt.block_on(async {
        let post = |path: String, body: String| {
            let c = client.clone();
            async move {
                let v: serde_json::Value = c.post(path).body(body).send().await.unwrap().json().await.unwrap();
                assert_eq!(v["meta"]["http_code"], 200, "{v}");
                v["response"].clone()
            }
        };
        let id = post(format!("{base}/api/user"), r#"{"uuid":"u"}"#.into()).await["id"].as_i64().unwrap();
        let s = post(format!("{base}/api/session/{id}"), String::new()).await["uuid"].as_str().unwrap().to_owned();
        let mut sent = Vec::new();
        for n in 0..200 {
            let m = post(format!("{base}/api/message/{s}"), format!(r#"{{"receiver_id":{id},"body":"m{n}"}}"#)).await;
            sent.push(m["uuid"].as_str().unwrap().to_owned());
        }
        (s, sent)
    });
    // Immediately: no waiting for the write-behind window.
    unsafe_free_sigterm(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
    let mut child = start();
    wait_up(&client);
    let got: Vec<String> = rt.block_on(async {
        let v: serde_json::Value =
            client.get(format!("{base}/api/messages/{session}")).send().await.unwrap().json().await.unwrap();
        v["response"].as_array().unwrap().iter().map(|m| m["uuid"].as_str().unwrap().to_owned()).collect()
    });
    assert_eq!(got, sent, "every acknowledged message, in order, after a graceful stop");
    unsafe_free_sigterm(child.id());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Sends SIGTERM through the `kill` command (no unsafe libc call needed in tests).
fn unsafe_free_sigterm(pid: u32) {
    let ok = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM failed");
}
