//! How fast a restart restores: writes N messages (default 1,000,000) into a fresh PostgreSQL
//! database through `Store::write`, in batches of the writer's size, then times `Store::load`
//! and `Engine::restore` (what the server does before it accepts connections).
//!
//! ```text
//! cargo bench --bench restore                      # 1,000,000 messages
//! RESTORE_MESSAGES=200000 cargo bench --bench restore
//! ```
//!
//! Needs PostgreSQL as the tests do (`DATABASE_URL`, default the local server). Without
//! `--bench` (`cargo test --benches`) it runs a 10,000-message smoke pass.

#[path = "../tests/support/pg.rs"]
mod pg;

use chatbus::engine::{Engine, EngineConfig};
use chatbus::metrics::Metrics;
use chatbus::store::memory::MemoryStore;
use chatbus::store::postgres::PostgresStore;
use chatbus::store::{MessageRow, Op, Store, StoreOptions, UserRow};
use chatbus::writer::MAX_BATCH;
use chatbus::writer::{Writer, WriterConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: i64 = 10_000;

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: i64 = match std::env::var("RESTORE_MESSAGES") {
        Ok(v) => v.parse().expect("RESTORE_MESSAGES must be a number"),
        Err(_) if benching => 1_000_000,
        Err(_) => 10_000,
    };
    let db = pg::TestDb::create();
    let mut store = PostgresStore::open(db.url(), &StoreOptions::default()).expect("open");

    let users: Vec<Op> = (1..=USERS)
        .map(|id| {
            Op::UpsertUser(UserRow {
                id,
                uuid: format!("user-{id}"),
                display_name: format!("User {id}"),
                left_ns: None,
            })
        })
        .collect();
    for chunk in users.chunks(MAX_BATCH) {
        store.write(chunk).expect("write users");
    }

    // Message rows shaped like the API's: a 128-bit id, a ~40-byte body, attachments on one in ten.
    let start_ns = 1_700_000_000_000_000_000i64;
    let mut written = 0i64;
    let mut writing = Duration::ZERO;
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while written < n {
        ops.clear();
        for _ in 0..MAX_BATCH.min((n - written) as usize) {
            let i = written;
            written += 1;
            ops.push(Op::Message(MessageRow {
                uuid: (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                created_ns: start_ns + i * 1_000,
                sender_id: 1 + i % USERS,
                receiver_id: 1 + (i * 7919) % USERS,
                body: format!("message number {i}, and a few words more"),
                attachments: (i % 10 == 0).then(|| format!("{{\"kind\":\"image\",\"id\":{i}}}")),
            }));
        }
        let t = Instant::now();
        store.write(&ops).expect("write messages");
        writing += t.elapsed();
    }
    println!(
        "write: {n} messages in {:.2} s through Store::write, batches of {MAX_BATCH} ({:.0} rows/s)",
        writing.as_secs_f64(),
        n as f64 / writing.as_secs_f64()
    );
    db.execute("VACUUM ANALYZE");

    let runs = if benching { 3 } else { 1 };
    let mut best = Duration::MAX;
    for run in 1..=runs {
        // A fresh store each time, as at start.
        let mut store = PostgresStore::open(db.url(), &StoreOptions::default()).expect("open");
        let t = Instant::now();
        let snap = store.load().expect("load");
        let took = t.elapsed();
        assert_eq!(snap.messages.len() as i64, n);
        assert_eq!(snap.users.len() as i64, USERS);
        // Then into the engine, as the server does before it accepts connections: every message
        // rendered once and pushed into its sender's and receiver's mailboxes.
        let engine = engine();
        let t = Instant::now();
        engine.restore(snap);
        let into_engine = t.elapsed();
        best = best.min(took + into_engine);
        println!(
            "restore {run}: {n} messages + {USERS} users: load {:.3} s + into the engine {:.3} s = {:.3} s ({:.0} messages/s)",
            took.as_secs_f64(),
            into_engine.as_secs_f64(),
            (took + into_engine).as_secs_f64(),
            n as f64 / (took + into_engine).as_secs_f64()
        );
    }
    println!("restore: best of {runs}: {:.3} s for {n} messages", best.as_secs_f64());
}

fn engine() -> Engine {
    let metrics = Arc::new(Metrics::new(&["restore"]));
    let writer = Writer::start(Box::new(MemoryStore), WriterConfig::new(usize::MAX), metrics.clone()).expect("writer");
    let config = EngineConfig::new(2, 1024);
    let engine = Engine::new(config, writer.handle(), metrics);
    // The writer thread keeps running until the process exits; the bench ends right after.
    std::mem::forget(writer);
    engine
}
