//! The chat client in the browser (`GET /demo`, contract: "Routes"): its files as served, and the
//! page itself driven in headless Chromium by `tests/browser/chat.mjs` (Node, `playwright-core`)
//! against the `chatbus` binary run with an admin token.
//!
//! The browser test needs Node.js (18 or later) and Debian's Chromium (`/usr/bin/chromium`, or `CHROMIUM`); it
//! fails, saying how to install them, when they are missing — it never skips. It runs `npm ci` in
//! `tests/browser` itself when `node_modules` is missing. The screenshot of both pages goes to
//! `target/browser/demo.png`; `UPDATE_SCREENSHOT=1` also copies it to `docs/demo.png` (the
//! README's picture), so that an ordinary test run leaves the working tree as it was.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::binary::Chatbus;
use support::client::not_found_path;
use support::server::TestServer;
use support::store::TestStore;
use support::wait::blocking;

const TOKEN: &str = "demo-admin-token";

/// The policy the page is served with: its own files only, no inline script or style.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   frame-ancestors 'none'";

/// Longest the Node script may run (it gives itself 50 s).
const NODE_LIMIT: Duration = Duration::from_secs(60);

/// `/demo` and its assets: 200 with their content types and the CSP, open although the server
/// has an admin token; an asset it does not have is the enveloped 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_files_are_served_with_their_types_and_policy() {
    let srv = TestServer::sqlite(&["--admin-token", TOKEN]).await;
    let api = srv.api();
    let http = reqwest::Client::new();
    for (path, content_type, needle) in [
        ("/demo", "text/html; charset=utf-8", "<script src=\"/demo/app.js\""),
        ("/demo/", "text/html; charset=utf-8", "<link rel=\"stylesheet\" href=\"/demo/style.css\">"),
        ("/demo/app.js", "text/javascript; charset=utf-8", "new EventSource("),
        ("/demo/style.css", "text/css; charset=utf-8", ".messages"),
    ] {
        // No Authorization header: the page must load before anyone has typed a token.
        let res = http.get(api.url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(res.status(), 200, "GET {path}");
        let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header("content-type").as_deref(), Some(content_type), "GET {path}");
        assert_eq!(header("content-security-policy").as_deref(), Some(CSP), "GET {path}");
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "GET {path}");
        assert_eq!(header("access-control-allow-origin").as_deref(), Some("*"), "GET {path}");
        let body = res.text().await.expect("body");
        assert!(body.contains(needle), "GET {path} lacks {needle:?}");
    }
    // The page keeps to its policy: no inline script, style block or style attribute.
    let page = http.get(api.url("/demo")).send().await.unwrap().text().await.unwrap();
    for inline in ["<style", "style=", "<script>", "onclick=", "javascript:"] {
        assert!(!page.contains(inline), "the page has {inline:?}, which its CSP refuses");
    }
    not_found_path(&api.get("/demo/nope").await);
    not_found_path(&api.get("/demo/app.js/x").await);
    // An admin route on the same server does want the token.
    assert_eq!(api.get("/api/users").await.status, 401);
    srv.stop().await;
}

/// Two users in two browser contexts: sign-in with the admin token, contacts by uuid, messages
/// both ways live over SSE, an attachment, presence; then the long-poll fallback and the gap
/// notice, sign-out, and a reload keeping the session. See `tests/browser/chat.mjs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node = which_node();
    assert!(
        Path::new(&chromium).exists(),
        "the browser test needs Chromium at {chromium} (or set CHROMIUM): apt-get install chromium"
    );
    ensure_node_modules(&dir);

    let store = TestStore::sqlite();
    let mut bin = Chatbus::spawn(store.url(), &["--admin-token", TOKEN, "--mailbox-capacity", "8"]);
    bin.wait_up(Duration::from_secs(30)).await;
    let screenshot = root.join("target/browser/demo.png");
    let _ = std::fs::remove_file(&screenshot);

    let mut cmd = Command::new(node);
    cmd.arg("chat.mjs")
        .current_dir(&dir)
        .env("CHATBUS_URL", format!("http://127.0.0.1:{}", bin.port()))
        .env("CHATBUS_TOKEN", TOKEN)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOT", &screenshot);
    let started = Instant::now();
    let (status, out) = blocking(move || run_with_limit(cmd, NODE_LIMIT)).await;
    let took = started.elapsed();
    assert!(
        status == Some(0),
        "tests/browser/chat.mjs failed (exit {status:?} after {took:.1?}):\n{out}\n--- chatbus stderr ---\n{}",
        bin.stderr()
    );
    println!("{out}chat.mjs took {took:.1?}");
    assert!(screenshot.exists(), "chat.mjs wrote no screenshot at {}", screenshot.display());
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let docs = root.join("docs/demo.png");
        std::fs::create_dir_all(root.join("docs")).expect("create docs/");
        std::fs::copy(&screenshot, &docs).expect("copy the screenshot to docs/demo.png");
    }
    bin.stop().await;
}

/// `node`, which must run and be 18 or later (what `playwright-core` 1.61 needs, and what
/// Debian 12's `nodejs` package is); fails saying how to install it.
fn which_node() -> &'static str {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(version) = version else {
        panic!("the browser test needs Node.js 18 or later and npm: apt-get install nodejs npm");
    };
    let major: u32 = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major >= 18, "the browser test needs Node.js 18 or later, found {version}: apt-get install nodejs npm");
    "node"
}

/// Installs `playwright-core` from the committed lock file when `node_modules` lacks it, so a
/// newcomer's `cargo test --workspace` works.
fn ensure_node_modules(dir: &Path) {
    if dir.join("node_modules/playwright-core/package.json").exists() {
        return;
    }
    let out =
        Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(dir).output().unwrap_or_else(|e| {
            panic!("the browser test runs `npm ci` in {} and needs npm ({e}): apt-get install npm", dir.display())
        });
    assert!(
        out.status.success(),
        "`npm ci` in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` with stdout and stderr together in one pipe; kills it when it outlives `limit`.
/// Returns its exit code (`None`: killed or ended by a signal) and everything it wrote.
fn run_with_limit(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    let log: PathBuf = std::env::temp_dir().join(format!("chatbus-browser-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).expect("create the log file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone the log file"))
        .stderr(file)
        .spawn()
        .expect("spawn node");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (status, out)
}
