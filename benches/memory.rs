//! Memory per idle user and per stored message: the engine's resident set (RSS, from
//! `/proc/self/statm`) as users with a session each are added, then as messages are stored.
//! Not a timed benchmark: it prints figures for the README.
//!
//! `cargo bench --bench memory` (`CHATBUS_MEMORY_USERS=1000000` by default; lower it to try
//! it quickly).

use chatbus::engine::{Engine, EngineConfig};
use chatbus::metrics::Metrics;
use chatbus::store::memory::MemoryStore;
use chatbus::writer::{Writer, WriterConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident set size in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let total: usize = std::env::var("CHATBUS_MEMORY_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let metrics = Arc::new(Metrics::new(&["memory"]));
    let writer = Writer::start(Box::new(MemoryStore), WriterConfig::new(usize::MAX), metrics.clone()).expect("writer");
    let engine = Engine::new(
        EngineConfig {
            session_ttl: Duration::from_secs(3600),
            message_ttl: Duration::from_secs(3600),
            ..EngineConfig::new(2, 1024)
        },
        writer.handle(),
        metrics,
    );
    let base = rss();
    println!("memory: engine started, RSS {:.1} MiB", mib(base));
    // Idle users first (uuids of 16 characters, names empty: what the target counts beyond them),
    // then a session each.
    println!("| users (a session each) | RSS | per user (idle, empty mailbox) | per session |");
    println!("|--:|--:|--:|--:|");
    let mut last = base;
    let started = Instant::now();
    let mut sessions = Vec::new();
    let mut made = 0usize;
    let mut ids = Vec::new();
    for checkpoint in [10_000usize, 100_000, 1_000_000].into_iter().filter(|&c| c <= total) {
        let from = made;
        while made < checkpoint {
            let user = rt.block_on(engine.create_user(&format!("user-{made:011}"), "")).expect("user");
            ids.push(user.id);
            made += 1;
        }
        let users_only = rss();
        for &id in &ids[from..] {
            let session = rt.block_on(engine.open_session(id)).expect("session");
            if sessions.len() < 1000 {
                sessions.push((id, session.uuid));
            }
        }
        let with_sessions = rss();
        let n = (checkpoint - from) as f64;
        println!(
            "| {checkpoint} | {:.1} MiB | {:.0} B | {:.0} B |",
            mib(with_sessions),
            users_only.saturating_sub(last) as f64 / n,
            with_sessions.saturating_sub(users_only) as f64 / n
        );
        last = with_sessions;
    }
    println!("({made} users and sessions in {:.1} s)", started.elapsed().as_secs_f64());

    // Messages: 1000 senders, each to the next user, 100 each, 60-character bodies.
    let before = rss();
    let n = sessions.len();
    let mut stored = 0u64;
    for round in 0..100 {
        for (i, (_, s)) in sessions.iter().enumerate() {
            let session = engine.session(s.parse().expect("id")).expect("live");
            let to = sessions[(i + 1) % n].0;
            let body = format!("round {round:03}: a typical chat line, about sixty characters!");
            futures_util::FutureExt::now_or_never(engine.send(&session, to, &body, None))
                .expect("write-behind")
                .expect("sent");
            stored += 1;
        }
    }
    // Let the writer drain what it holds, so the figure is the mailboxes' alone.
    while writer.handle().pending() > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = rss();
    println!(
        "stored messages: {stored} (each in two mailboxes), RSS +{:.1} MiB, {:.0} B per message",
        mib(after.saturating_sub(before)),
        after.saturating_sub(before) as f64 / stored as f64
    );
    drop(engine);
    writer.stop(Duration::from_secs(30));
}
