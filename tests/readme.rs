//! The README's API example, run as a newcomer runs it: the first ```sh block after `## API`,
//! pasted into bash against a live `chatbus` (the real binary, on a fresh SQLite file).
//!
//! Every curl in the block must answer 200 and show its answer (a `# ->` comment under the
//! command, continued on `#` lines indented further), and the real answer must match it:
//! literally, except that `...` stands for any text, and uuids (32 hex digits), RFC 3339 times
//! and `{"unix":N,"nano":N}` cursors match any value of their kind — but the same value written
//! twice in the README must be the same value twice in the answers (and two different uuids two
//! different ones). Then the block runs a second time against the same server, as someone with
//! data from before would run it: every answer must still be 200.
//!
//! The answers are observed, not changed: the block runs after a bash function `curl` that calls
//! the real curl, appends the status and body to a log, and prints the body as curl would.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The block's first line: the base URL, overridable from the environment.
const BASE_LINE: &str = "B=${B:-http://127.0.0.1:8080}";

/// One command of the block and the answer the README shows for it.
#[derive(Debug)]
struct Step {
    /// 1-based line in the block.
    line: usize,
    command: String,
    expected: Option<String>,
}

/// The first ```sh block after the `## API` heading.
fn api_block(readme: &str) -> String {
    let api = readme.find("\n## API\n").expect("README has an `## API` section");
    let rest = &readme[api..];
    let open = rest.find("\n```sh\n").expect("`## API` has a ```sh block") + "\n```sh\n".len();
    let len = rest[open..].find("\n```").expect("the ```sh block is closed");
    rest[open..open + len].to_owned()
}

/// The commands that run curl, in order, each with its `# ->` answer if the README shows one.
fn steps(block: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = block.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim_start();
        assert!(!line.ends_with('\\'), "README block line {}: keep each command on one line", i + 1);
        if let Some(answer) = trimmed.strip_prefix("# -> ") {
            let step = steps.last_mut().filter(|s| s.expected.is_none() && s.line == i);
            let step = step.unwrap_or_else(|| panic!("README block line {}: `# ->` not right under a curl", i + 1));
            let mut expected = answer.trim().to_owned();
            // Continuation lines: `#` and more indentation than `# ->`'s text.
            while let Some((_, next)) = lines.peek() {
                match next.strip_prefix("#  ") {
                    Some(more) if !next.starts_with("# ->") => {
                        expected.push_str(more.trim());
                        lines.next();
                    }
                    _ => break,
                }
            }
            assert!(
                expected.starts_with("{\"meta\":"),
                "README block line {}: an answer starts with {{\"meta\":",
                i + 1
            );
            step.expected = Some(expected);
        } else if !trimmed.starts_with('#') && trimmed.contains("curl ") {
            assert_eq!(trimmed.matches("curl ").count(), 1, "README block line {}: one curl per line", i + 1);
            assert!(!trimmed.contains("# ->"), "README block line {}: put the answer on the next line", i + 1);
            steps.push(Step { line: i + 1, command: trimmed.to_owned(), expected: None });
        }
    }
    steps
}

/// Pieces of an expected answer.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// `...`
    Any,
    /// 32 lowercase hex digits; the README's value, for "same value twice".
    Uuid(String),
    /// An RFC 3339 time with up to 9 fractional digits.
    Time(String),
    /// `{"unix":N,"nano":N}`.
    Cursor(String),
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Length of a uuid at the start of `s`, if there is one (exactly 32 hex digits).
fn uuid_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (b.len() >= 32 && b[..32].iter().all(|&c| is_hex(c)) && b.get(32).is_none_or(|&c| !is_hex(c))).then_some(32)
}

/// Length of an RFC 3339 UTC time at the start of `s`: `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`.
fn time_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    if b.len() < shape.len() {
        return None;
    }
    for (&c, &want) in b.iter().zip(shape) {
        if !(if want == b'd' { c.is_ascii_digit() } else { c == want }) {
            return None;
        }
    }
    let mut n = shape.len();
    if b.get(n) == Some(&b'.') {
        let digits = b[n + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        n += 1 + digits;
    }
    (b.get(n) == Some(&b'Z')).then_some(n + 1)
}

/// Length of a cursor object at the start of `s`.
fn cursor_len(s: &str) -> Option<usize> {
    let rest = s.strip_prefix("{\"unix\":")?;
    let unix = rest.bytes().take_while(u8::is_ascii_digit).count();
    let rest = rest[unix..].strip_prefix(",\"nano\":")?;
    let nano = rest.bytes().take_while(u8::is_ascii_digit).count();
    (unix > 0 && nano > 0 && rest[nano..].starts_with('}')).then(|| s.len() - rest.len() + nano + 1)
}

fn pieces(expected: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut s = expected;
    while let Some(c) = s.chars().next() {
        let value = |n: usize, piece: fn(String) -> Piece| (piece(s[..n].to_owned()), n);
        let special = s
            .starts_with("...")
            .then_some((Piece::Any, 3))
            .or_else(|| cursor_len(s).map(|n| value(n, Piece::Cursor)))
            .or_else(|| time_len(s).map(|n| value(n, Piece::Time)))
            .or_else(|| uuid_len(s).filter(|_| text.ends_with('"')).map(|n| value(n, Piece::Uuid)));
        match special {
            Some((piece, n)) => {
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(piece);
                s = &s[n..];
            }
            None => {
                text.push(c);
                s = &s[c.len_utf8()..];
            }
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// What the README's placeholder values stand for in the real answers, across the whole run.
#[derive(Default, Clone)]
struct Bindings {
    /// README value → real value.
    forward: HashMap<String, String>,
    /// Real uuid → README value: two README uuids are two different real ones.
    uuids_back: HashMap<String, String>,
}

impl Bindings {
    fn bind(&mut self, piece: &Piece, readme: &str, real: &str) -> bool {
        if let Some(bound) = self.forward.get(readme) {
            return bound == real;
        }
        if matches!(piece, Piece::Uuid(_)) {
            if self.uuids_back.get(real).is_some_and(|r| r != readme) {
                return false;
            }
            self.uuids_back.insert(real.to_owned(), readme.to_owned());
        }
        self.forward.insert(readme.to_owned(), real.to_owned());
        true
    }
}

/// Whether `actual` matches `pieces`; on success `b` holds the new bindings.
fn matches(pieces: &[Piece], actual: &str, b: &mut Bindings) -> bool {
    let Some((first, rest)) = pieces.split_first() else { return actual.is_empty() };
    match first {
        Piece::Text(t) => actual.strip_prefix(t.as_str()).is_some_and(|a| matches(rest, a, b)),
        Piece::Any => (0..=actual.len()).filter(|&i| actual.is_char_boundary(i)).any(|i| {
            let mut trial = b.clone();
            let ok = matches(rest, &actual[i..], &mut trial);
            if ok {
                *b = trial;
            }
            ok
        }),
        Piece::Uuid(v) | Piece::Time(v) | Piece::Cursor(v) => {
            let len = match first {
                Piece::Uuid(_) => uuid_len(actual),
                Piece::Time(_) => time_len(actual),
                _ => cursor_len(actual),
            };
            let Some(n) = len else { return false };
            let mut trial = b.clone();
            let ok = trial.bind(first, v, &actual[..n]) && matches(rest, &actual[n..], &mut trial);
            if ok {
                *b = trial;
            }
            ok
        }
    }
}

/// The `chatbus` binary on a free port with a fresh SQLite file; killed on drop.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthz(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    s.write_all(req.as_bytes()).is_ok() && s.read_to_string(&mut answer).is_ok() && answer.starts_with("HTTP/1.1 200")
}

impl Server {
    fn start(dir: &Path) -> Server {
        let db = format!("sqlite:{}", dir.join("x.db").display());
        let log = dir.join("chatbus.log");
        // A port another process takes between our probe and chatbus's bind makes chatbus exit:
        // then try another one.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = format!("127.0.0.1:{port}");
            let child = Command::new(env!("CARGO_BIN_EXE_chatbus"))
                .args(["--listen", &addr, "--database-url", &db, "--threads", "1"])
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start chatbus");
            let mut server = Server { child, base: format!("http://{addr}"), log: log.clone() };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if healthz(&addr) {
                    return server;
                }
                if server.child.try_wait().unwrap().is_some() {
                    break; // exited: most likely the port was taken
                }
                assert!(Instant::now() < deadline, "chatbus did not answer /healthz within 30 s:\n{}", server.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("chatbus did not start on any free port:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Observes every curl of the block: status and body to `$CURL_LOG`, body to stdout as curl would.
const PRELUDE: &str = r#"set -euo pipefail
shopt -s inherit_errexit
curl() {
  local out rc=0
  out=$(command curl -w '\n%{http_code}' "$@") || rc=$?
  printf '%s\t%s\n' "${out##*$'\n'}" "${out%$'\n'*}" >> "$CURL_LOG"
  printf '%s' "${out%$'\n'*}"
  return $rc
}
"#;

/// Runs the block in bash against `base`; returns each curl's (status, body) in order.
fn run_block(block: &str, base: &str, dir: &Path, name: &str) -> Vec<(u16, String)> {
    let script = dir.join(format!("{name}.sh"));
    let log = dir.join(format!("{name}.log"));
    std::fs::write(&script, format!("{PRELUDE}{block}\n")).unwrap();
    std::fs::write(&log, "").unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .env("B", base)
        .env("CURL_LOG", &log)
        .stdin(Stdio::null())
        .output()
        .expect("this test needs bash (and curl and sed) on PATH, as the README's block does");
    let answers: Vec<(u16, String)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let (status, body) = l.split_once('\t').expect("status<TAB>body");
            (status.parse().unwrap_or(0), body.to_owned())
        })
        .collect();
    assert!(
        out.status.success(),
        "the README's block stopped ({}) after {} curls\nstderr:\n{}\nanswers:\n{}",
        out.status,
        answers.len(),
        String::from_utf8_lossy(&out.stderr),
        answers.iter().map(|(s, b)| format!("{s} {b}\n")).collect::<String>()
    );
    answers
}

/// Every curl ran once and answered 200 with a 200 envelope.
fn assert_all_ok(steps: &[Step], answers: &[(u16, String)], run: &str) {
    for (step, (status, body)) in steps.iter().zip(answers) {
        assert!(
            *status == 200 && body.starts_with("{\"meta\":{\"http_code\":200"),
            "{run}: README block line {}: `{}` answered {status} {body}",
            step.line,
            step.command
        );
    }
    assert_eq!(answers.len(), steps.len(), "{run}: as many answers as curls in the block");
}

#[test]
fn readme_api_block_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = api_block(&readme);
    assert_eq!(
        block.lines().next(),
        Some(BASE_LINE),
        "the block starts by setting B, so this test can point it elsewhere"
    );
    let steps = steps(&block);
    assert!(steps.len() >= 20, "the block shows the whole API: {} curls", steps.len());
    for step in &steps {
        assert!(step.expected.is_some(), "README block line {}: show the answer under `{}`", step.line, step.command);
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());

    // On a fresh server: every answer is the one the README shows.
    let answers = run_block(&block, &server.base, dir.path(), "first");
    assert_all_ok(&steps, &answers, "first run");
    let mut bindings = Bindings::default();
    for (step, (_, body)) in steps.iter().zip(&answers) {
        if let Some(expected) = &step.expected {
            assert!(
                matches(&pieces(expected), body, &mut bindings),
                "README block line {}: `{}`\n  README shows: {expected}\n  real answer:  {body}",
                step.line,
                step.command
            );
        }
    }

    // Again on the same server, as with data from before: new ids, same success.
    let again = run_block(&block, &server.base, dir.path(), "second");
    assert_all_ok(&steps, &again, "second run");
    drop(server);
}

#[test]
fn matcher_binds_placeholders() {
    let p = pieces(
        r#"{"uuid":"214af9b59907ef61a3d7af5b15fe39d4","t":"2026-12-01T09:20:07.3496Z",...,"c":{"unix":1,"nano":2}}"#,
    );
    assert_eq!(p.len(), 9, "{p:?}");
    let mut b = Bindings::default();
    let real =
        r#"{"uuid":"00000000000000000000000000000001","t":"2027-01-01T00:00:00.5Z","x":1,"c":{"unix":5,"nano":6}}"#;
    assert!(matches(&p, real, &mut b));
    // The same README uuid must be the same real one; a different README uuid a different one.
    assert!(matches(&pieces(r#""214af9b59907ef61a3d7af5b15fe39d4""#), r#""00000000000000000000000000000001""#, &mut b));
    assert!(!matches(
        &pieces(r#""214af9b59907ef61a3d7af5b15fe39d4""#),
        r#""00000000000000000000000000000002""#,
        &mut b
    ));
    assert!(!matches(
        &pieces(r#""ffffffffffffffffffffffffffffffff""#),
        r#""00000000000000000000000000000001""#,
        &mut b
    ));
    assert!(!matches(&pieces(r#"{"id":1}"#), r#"{"id":2}"#, &mut b));
    assert!(!matches(&pieces(r#"{"a":1,...}"#), r#"{"a":1"#, &mut b));
}
