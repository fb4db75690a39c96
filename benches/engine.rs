//! Criterion benchmarks of the hot path: ring push, mailbox reads returning k messages from
//! mailboxes of different capacities (cost must follow k, not capacity), a whole 1024-message
//! answer for messages of growing size (its cost must not follow the bytes), rendering a poll
//! answer, and a send through the engine.
//!
//! `cargo bench --bench engine`

use bytes::Bytes;
use chatbus::clock::Clock;
use chatbus::clock::Cursor;
use chatbus::engine::{Engine, EngineConfig};
use chatbus::mailbox::Mailbox;
use chatbus::metrics::Metrics;
use chatbus::render;
use chatbus::store::memory::MemoryStore;
use chatbus::writer::{Writer, WriterConfig};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn message_json(created: i64) -> Bytes {
    let sent = render::message(
        0x1234_5678_9abc_def0_1234_5678_9abc_def0,
        created,
        7,
        9,
        "a typical chat line, about sixty characters long.",
        None,
    );
    Bytes::copy_from_slice(sent.json())
}

/// A full mailbox of `capacity`, timestamps 1..=capacity.
fn full_mailbox(capacity: usize) -> Mailbox {
    let mb = Mailbox::new(capacity);
    let json = message_json(1_471_756_932_632_474_775);
    for t in 1..=capacity as i64 {
        mb.lock().push(t, json.clone());
    }
    mb
}

fn ring_push(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_push");
    for cap in [64usize, 1024] {
        let mb = full_mailbox(cap);
        let json = message_json(1);
        let mut t = cap as i64;
        g.bench_function(BenchmarkId::from_parameter(cap), |b| {
            b.iter(|| {
                t += 1;
                mb.lock().push(t, json.clone());
            })
        });
    }
    g.finish();
}

fn poll(c: &mut Criterion) {
    let mut g = c.benchmark_group("poll");
    for (cap, k) in [(64usize, 0usize), (1024, 0), (64, 10), (1024, 10), (64, 64), (1024, 64), (1024, 1024)] {
        let mb = full_mailbox(cap);
        let cutoff = Some(i128::from((cap - k) as i64));
        g.throughput(Throughput::Elements(k.max(1) as u64));
        let mut out = bytes::BytesMut::new();
        // The lock-free read alone: seek back, copy the k messages into a reused buffer.
        g.bench_function(BenchmarkId::new(format!("read/cap{cap}"), k), |b| {
            b.iter(|| {
                out.clear();
                let o = mb.read_into(black_box(cutoff), &mut out);
                assert_eq!(o.newest.is_some(), k > 0);
                black_box(o)
            })
        });
        // The handler's path: short runs copied into one buffer, long ones kept, the envelope
        // written in front.
        g.bench_function(BenchmarkId::new(format!("answer/cap{cap}"), k), |b| {
            b.iter(|| {
                let mut answer = render::PollAnswer::new();
                let o = mb.read_into(black_box(cutoff), &mut answer);
                let cursor = o.newest.map(Cursor::from_ns).unwrap_or(Cursor { unix: 0, nano: 0 });
                black_box(answer.finish(cursor, o.gap))
            })
        });
    }
    g.finish();
}

/// A whole 1024-message poll answer for messages of growing size: building the answer (the
/// handler's path, which keeps long runs) against copying the same messages into one buffer.
/// The copy grows with the bytes; the answer must not.
fn poll_bytes(c: &mut Criterion) {
    let mut g = c.benchmark_group("poll_bytes");
    for size in [64usize, 256, 1024] {
        let mb = Mailbox::new(1024);
        let json = format!("{{\"body\":\"{}\"}}", "x".repeat(size - 11));
        for t in 1..=1024 {
            mb.lock().push(t, &json);
        }
        g.throughput(Throughput::Bytes(1024 * size as u64));
        g.bench_function(BenchmarkId::new("answer", size), |b| {
            b.iter(|| {
                let mut answer = render::PollAnswer::new();
                let o = mb.read_into(black_box(None), &mut answer);
                black_box(answer.finish(Cursor::from_ns(o.newest.unwrap_or(0)), o.gap))
            })
        });
        let mut out = bytes::BytesMut::new();
        g.bench_function(BenchmarkId::new("copy", size), |b| {
            b.iter(|| {
                out.clear();
                black_box(mb.read_into(black_box(None), &mut out))
            })
        });
    }
    g.finish();
}

fn render_answer(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    // The envelope alone: the buffer and the `meta` written in front of the (here no) messages.
    // The messages' copy is measured with the read above (poll/answer).
    g.bench_function("poll_envelope", |b| {
        b.iter(|| {
            let answer = render::PollAnswer::new();
            black_box(answer.finish(Cursor { unix: 1_471_756_932, nano: 632_474_775 }, black_box(false)))
        })
    });
    g.bench_function("message_json", |b| b.iter(|| black_box(message_json(black_box(1_471_756_932_632_474_775)))));
    g.finish();
}

fn send(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new(&["bench"]));
    let writer = Writer::start(Box::new(MemoryStore), WriterConfig::new(usize::MAX), metrics.clone()).expect("writer");
    let engine = Engine::new(EngineConfig::new(2, 1024), writer.handle(), metrics);
    // Setting up waits for the (memory) store's commits; a send does not wait for anything.
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let a = rt.block_on(engine.create_user("a", "")).expect("user").id;
    let b = rt.block_on(engine.create_user("b", "")).expect("user").id;
    let session = |user| -> Arc<chatbus::engine::Session> {
        let view = rt.block_on(engine.open_session(user)).expect("session");
        engine.session(view.uuid.parse().expect("session id")).expect("live")
    };
    let s = session(a);
    let mut g = c.benchmark_group("engine");
    g.bench_function("send", |bn| {
        bn.iter(|| {
            let sent = engine.send(&s, b, "a typical chat line, about sixty characters long.", None);
            black_box(sent.now_or_never().expect("a write-behind send does not wait").expect("sent"))
        })
    });
    let mut out = bytes::BytesMut::new();
    let bs = session(b);
    let now = Cursor::from_ns(Clock::wall_ns() + 1_000_000_000_000);
    g.bench_function("poll_empty", |bn| {
        bn.iter(|| {
            out.clear();
            black_box(engine.poll(&bs, Some(now), &mut out))
        })
    });
    g.finish();
    drop(engine);
    writer.stop(Duration::from_secs(30));
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
    targets = ring_push, poll, poll_bytes, render_answer, send
}
criterion_main!(benches);
