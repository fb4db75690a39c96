//! Seeds a running chatbus with the data the wrk/oha scenarios need, through its HTTP API,
//! and writes the scenarios' paths to `OUT/targets.env` (shell) and `OUT/targets.json`.
//!
//! - a reader whose mailbox holds exactly `--messages` (1024) messages of realistic size from
//!   a few senders, and three cutoffs into it: one at the newest message (the empty poll), one
//!   at the 11th newest (a poll returning 10), one just before the oldest (a poll returning all
//!   1024, the original's 2016 benchmark, ~170 KB);
//! - a sender and a receiver for the send scenario, with the JSON body to POST;
//! - `--mix-users` users with sessions and ring contacts for the 90/10 mix, one line per session
//!   in `OUT/mix_sessions.txt`: `session_uuid user_id receiver_id`.
//!
//! Every cutoff is checked by polling it before it is written down.

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use chatbus_loadtest::api::{Cursor, Session, User};
use chatbus_loadtest::client::Api;
use clap::Parser;
use hyper::Method;
use tokio::task::JoinSet;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Seed chatbus for the load-test scenarios.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The running chatbus.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Where targets.env, targets.json and mix_sessions.txt go.
    #[arg(long, default_value = "loadtest/out")]
    out: PathBuf,
    /// Messages in the reader's mailbox: the big poll returns this many (keep it at or under
    /// the server's `--mailbox-capacity`).
    #[arg(long, default_value_t = 1024)]
    messages: usize,
    /// Users writing to the reader.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Users (each with a session) for the mix scenario.
    #[arg(long, default_value_t = 1000)]
    mix_users: usize,
    /// Contacts per mix user (a ring: each is a contact of its next `contacts/2` neighbours).
    #[arg(long, default_value_t = 4)]
    contacts: usize,
    /// Requests in flight while seeding.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Prefix of the users' external uuids (default: unique per run, so seeding twice into one
    /// server never reuses a user).
    #[arg(long)]
    tag: Option<String>,
}

/// Short chat lines, ~17 characters on average, which makes a stored message ~170 bytes of
/// JSON: 1024 of them are the ~174 KB answer of the original's benchmark.
const LINES: &[&str] = &[
    "hey",
    "ok!",
    "on my way",
    "lol",
    "see you at 6?",
    "sounds good",
    "can you call me?",
    "running 5 min late",
    "did you see the game last night",
    "yes",
    "no worries",
    "what time works for you?",
    "thanks :)",
    "brb",
    "I'll send the file in a bit",
    "where are you?",
    "just landed",
    "happy birthday!!",
    "lunch tomorrow?",
    "sure, 12:30 at the usual place",
    "haha",
    "meeting moved to 3pm",
    "got it",
    "can't talk now, in a meeting",
    "ok see you then",
    "good night",
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let api = Api::new(&args.url, args.concurrency, Duration::from_secs(10));
    api.check_identity().await?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let tag = args.tag.clone().unwrap_or_else(|| format!("lt{}-{}", now.as_secs(), std::process::id()));
    let t0 = std::time::Instant::now();

    // Users and sessions: reader, its senders, the send pair, and the mix users.
    let names: Vec<String> = ["reader".to_string(), "send-from".into(), "send-to".into()]
        .into_iter()
        .chain((0..args.senders.max(1)).map(|i| format!("writer{i}")))
        .chain((0..args.mix_users).map(|i| format!("mix{i}")))
        .collect();
    let users: Vec<User> = all(names.iter().map(|name| {
        let api = api.clone();
        let uuid = format!("{tag}-{name}");
        let display = name.clone();
        async move { api.create_user(&uuid, &display).await }
    }))
    .await?;
    let sessions: Vec<Session> = all(users.iter().map(|u| {
        let (api, id) = (api.clone(), u.id);
        async move { api.open_session(id).await }
    }))
    .await?;
    let (reader, send_from, send_to) = (0, 1, 2);
    let writers: Vec<usize> = (3..3 + args.senders.max(1)).collect();
    let mix: Vec<usize> = (3 + args.senders.max(1)..users.len()).collect();

    // Contacts: the reader with its writers, the send pair, and the mix ring.
    let mut pairs: Vec<(usize, usize)> = writers.iter().map(|&w| (reader, w)).collect();
    pairs.push((send_from, send_to));
    let n = mix.len();
    for (i, &u) in mix.iter().enumerate() {
        for step in 1..=(args.contacts / 2).min(n.saturating_sub(1) / 2).max(usize::from(n > 1)) {
            pairs.push((u, mix[(i + step) % n]));
        }
    }
    all(pairs.iter().map(|&(a, b)| {
        let (api, session, user) = (api.clone(), sessions[a].uuid.clone(), users[b].id);
        async move { api.add_contact(&session, user).await }
    }))
    .await?;

    // The marker: a message created just before the reader's, so `created_utc` of the marker
    // is a cutoff that returns the reader's whole mailbox and nothing it does not hold.
    let marker = api.send(&sessions[send_from].uuid, users[send_to].id, "marker").await?;
    let before_all = Cursor::parse_rfc3339(&marker.created_utc)
        .with_context(|| format!("marker created_utc {:?} is not RFC 3339", marker.created_utc))?;
    all((0..args.messages).map(|i| {
        let w = writers[i % writers.len()];
        let (api, session, to) = (api.clone(), sessions[w].uuid.clone(), users[reader].id);
        async move { api.send(&session, to, LINES[i % LINES.len()]).await }
    }))
    .await?;

    // Read the mailbox back and derive the cutoffs from it.
    let reader_session = &sessions[reader].uuid;
    let full = api.poll(reader_session, before_all).await?;
    ensure!(
        full.messages.len() == args.messages,
        "the reader's poll after the marker returned {} messages, want {} (is --mailbox-capacity below --messages?)",
        full.messages.len(),
        args.messages
    );
    if full.gap {
        eprintln!("seed: warning: the full poll reports meta.gap = true");
    }
    let at = |k_newest: usize| -> Result<Cursor> {
        let m = &full.messages[full.messages.len() - k_newest];
        Cursor::parse_rfc3339(&m.created_utc).with_context(|| format!("created_utc {:?}", m.created_utc))
    };
    let newest = at(1)?;
    if full.cursor != Some(newest) {
        eprintln!(
            "seed: warning: meta.cursor {:?} is not the newest message's created_utc {:?} ({})",
            full.cursor,
            newest,
            full.messages.last().map(|m| m.created_utc.as_str()).unwrap_or("")
        );
    }
    let ten = if args.messages > 10 { at(11)? } else { before_all };
    let mut checks = vec![
        ("EMPTY_POLL", newest.poll_path(reader_session), 0usize),
        ("POLL10", ten.poll_path(reader_session), args.messages.min(10)),
        ("POLL1024", before_all.poll_path(reader_session), args.messages),
    ];
    let mut sizes = Vec::new();
    for (name, path, want) in &mut checks {
        let answer = api.request(Method::GET, path, None).await?;
        let poll = api.poll(reader_session, cursor_of(path)?).await?;
        if poll.messages.len() != *want {
            bail!("{name} {path}: {} messages, want {want}", poll.messages.len());
        }
        sizes.push(answer.body.len());
    }

    // The send scenario's request, and the mix's sessions.
    let send_path = format!("/api/message/{}", sessions[send_from].uuid);
    let send_body =
        serde_json::json!({ "receiver_id": users[send_to].id, "body": "hey, are we still on for lunch tomorrow?" })
            .to_string();
    let mut mix_lines = String::new();
    for (i, &u) in mix.iter().enumerate() {
        let to = if n > 1 { mix[(i + 1) % n] } else { send_to };
        writeln!(mix_lines, "{} {} {}", sessions[u].uuid, users[u].id, users[to].id)?;
    }
    let mix_file = out.join("mix_sessions.txt");
    std::fs::write(&mix_file, mix_lines)?;

    let mut env = String::new();
    let mut json = serde_json::Map::new();
    let mut put = |key: &str, value: String| {
        writeln!(env, "{key}='{value}'").expect("writing to a String");
        json.insert(key.to_lowercase(), value.into());
    };
    put("CHATBUS_URL", api.base().to_string());
    for ((name, path, count), size) in checks.iter().zip(&sizes) {
        put(&format!("{name}_PATH"), path.clone());
        put(&format!("{name}_MESSAGES"), count.to_string());
        put(&format!("{name}_BYTES"), size.to_string());
    }
    put("SEND_PATH", send_path.clone());
    put("SEND_BODY", send_body.clone());
    put("MIX_SESSIONS", mix_file.display().to_string());
    put("MIX_USERS", mix.len().to_string());
    put("SEED_TAG", tag.clone());
    std::fs::write(out.join("targets.env"), &env)?;
    std::fs::write(out.join("targets.json"), serde_json::to_string_pretty(&json)? + "\n")?;

    println!(
        "seeded {} users, {} contact pairs, {} messages in {:.1?} (tag {tag})",
        users.len(),
        pairs.len(),
        args.messages + 1,
        t0.elapsed()
    );
    for ((name, path, count), size) in checks.iter().zip(&sizes) {
        println!("{name:<10} GET  {}{path}  -> {count} messages, {size} bytes", api.base());
    }
    println!("{:<10} POST {}{send_path}  body {send_body}", "SEND", api.base());
    println!("{:<10} {} sessions in {}", "MIX", mix.len(), mix_file.display());
    println!("wrote {}", out.join("targets.env").display());
    Ok(())
}

/// The cutoff at the end of a poll path `/api/messages/:session/:unix/:nano`.
fn cursor_of(path: &str) -> Result<Cursor> {
    let mut parts = path.rsplit('/');
    let nano = parts.next().context("no nano")?.parse()?;
    let unix = parts.next().context("no unix")?.parse()?;
    Ok(Cursor { unix, nano })
}

/// Runs the futures concurrently (the client's in-flight cap bounds them) and returns their
/// values in order, or the first error.
async fn all<T, F>(futures: impl IntoIterator<Item = F>) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut count = 0;
    for (i, f) in futures.into_iter().enumerate() {
        set.spawn(async move { f.await.map(|v| (i, v)) });
        count += 1;
    }
    let mut out: Vec<Option<T>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, v) = joined??;
        out[i] = Some(v);
    }
    Ok(out.into_iter().map(|v| v.expect("every task answered")).collect())
}
