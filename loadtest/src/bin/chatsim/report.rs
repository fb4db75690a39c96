//! The end of a run: account for every send, print the summary and its `RESULT` line, and write
//! the JSON summary and the latency plot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Result;
use chatbus_loadtest::plot::{self, LatencyPlot};
use hdrhistogram::Histogram;

use super::world::{SendState, World};
use super::{Args, Transport};

/// How long the phases of a run took, each measured from the moment the users started.
#[derive(Clone, Copy)]
pub(crate) struct Timings {
    /// Until the senders were told to stop: the rates are per second of this.
    pub(crate) sending: Duration,
    /// Until every sender had stopped.
    pub(crate) sent_for: Duration,
    /// Until the drain was over and every poller had stopped.
    pub(crate) total: Duration,
}

/// What the run comes to, beyond the live counters.
struct Tally {
    /// Acknowledged sends never delivered.
    missing: u64,
    /// Failed sends never delivered.
    failed_lost: u64,
    /// WebSocket sends never answered (no `sent` or `error` frame by the end).
    unanswered: u64,
    duplicated: u64,
    out_of_order: u64,
    corrupt: u64,
    bad_cursor: u64,
    /// Gap answers, events and frames.
    gaps: u64,
    /// Failed requests, polls and sends, unanswered sends, dropped streams.
    errors: u64,
    /// Every check that must be 0, added up.
    failed_checks: u64,
    delivery: Histogram<u64>,
    poll_rt: Histogram<u64>,
    send_rt: Histogram<u64>,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Accounting: every send by its outcome, and the checks' counters.
fn tally(world: &World) -> Tally {
    let (mut missing, mut failed_lost, mut unanswered) = (0u64, 0u64, 0u64);
    for outbox in &world.outbox {
        for sent in outbox.lock().unwrap().iter() {
            match (sent.state, sent.deliveries) {
                (SendState::Acked, 0) => missing += 1,
                (SendState::Failed, 0) => failed_lost += 1,
                (SendState::InFlight, _) => unanswered += 1,
                _ => {}
            }
        }
    }
    let c = &world.c;
    let (duplicated, out_of_order, corrupt, bad_cursor) =
        (get(&c.duplicated), get(&c.out_of_order), get(&c.corrupt), get(&c.bad_cursor));
    Tally {
        missing,
        failed_lost,
        unanswered,
        duplicated,
        out_of_order,
        corrupt,
        bad_cursor,
        gaps: get(&c.gaps),
        errors: get(&c.poll_errors) + get(&c.send_errors) + unanswered + get(&c.stream_drops),
        failed_checks: missing + duplicated + out_of_order + corrupt + bad_cursor,
        delivery: world.delivery_us.lock().unwrap().clone(),
        poll_rt: world.poll_us.lock().unwrap().clone(),
        send_rt: world.send_us.lock().unwrap().clone(),
    }
}

/// Prints the summary, writes the JSON and the plot; returns the exit status: 0 when every check
/// is 0 and no request failed, 1 when a check failed, 2 when only requests failed.
pub(crate) fn report(args: &Args, world: &World, timings: Timings) -> Result<u8> {
    let tally = tally(world);
    print_summary(args, world, timings, &tally);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary_json(args, world, timings, &tally))? + "\n")?;
    }
    write_plot(args, world, timings, &tally)?;
    Ok(if tally.failed_checks > 0 {
        1
    } else if tally.errors > 0 {
        2
    } else {
        0
    })
}

/// What the run's header says of how users receive: `P=1000 ms`, `wait=25s`, or nothing.
fn receiving(args: &Args) -> String {
    match args.transport {
        Transport::Poll => format!(", P={} ms", args.poll_ms),
        Transport::Longpoll => format!(", wait={}", humantime::format_duration(args.wait)),
        Transport::Sse | Transport::Ws => String::new(),
    }
}

/// The text summary on stdout, ending with the one-line `RESULT` that scripts read.
fn print_summary(args: &Args, world: &World, timings: Timings, tally: &Tally) {
    let Timings { sending, sent_for, total } = timings;
    let Tally {
        missing,
        failed_lost,
        unanswered,
        duplicated,
        out_of_order,
        corrupt,
        bad_cursor,
        gaps,
        errors,
        failed_checks,
        ..
    } = *tally;
    let (delivery, poll_rt, send_rt) = (&tally.delivery, &tally.poll_rt, &tally.send_rt);
    let (m, c, secs) = (args.users, &world.c, sending.as_secs_f64());
    let transport = args.transport.name();
    let verdict = if failed_checks > 0 {
        "FAILED"
    } else if errors > 0 {
        "OK, but requests failed"
    } else {
        "OK"
    };

    println!(
        "chatsim: transport={transport}, M={m} users{}, R={} msg/s/user, {:.1} s of sending + {:.1} s drain, {} connections",
        receiving(args),
        args.rate,
        secs,
        (total - sent_for).as_secs_f64(),
        args.connections
    );
    if args.transport.is_stream() {
        println!(
            "  {:<11} {:>9} opened for {m} users  dropped {}  errors {}  gaps {}  pings {}  {:.1} MB received",
            if args.transport == Transport::Sse { "streams" } else { "sockets" },
            get(&c.streams_opened),
            get(&c.stream_drops),
            get(&c.poll_errors),
            gaps,
            get(&c.pings),
            get(&c.poll_bytes) as f64 / 1e6
        );
    } else {
        println!(
            "  {:<11} {:>9} ({:.0}/s)  errors {}  gap=true {gaps}  {:.1} MB received",
            if args.transport == Transport::Longpoll { "long-polls" } else { "polls" },
            get(&c.polls),
            get(&c.polls) as f64 / total.as_secs_f64(),
            get(&c.poll_errors),
            get(&c.poll_bytes) as f64 / 1e6
        );
    }
    println!(
        "  sends       {:>9} acked ({:.0}/s{})  errors {} ({} of them never delivered, {} delivered anyway){}",
        get(&c.sends_acked),
        get(&c.sends_acked) as f64 / secs,
        if args.transport == Transport::Ws { ", by sent frames" } else { "" },
        get(&c.send_errors),
        failed_lost,
        get(&c.delivered_unacked),
        if unanswered > 0 { format!("  never answered {unanswered}") } else { String::new() }
    );
    println!("  deliveries  {:>9} ({:.0}/s)", get(&c.delivered), get(&c.delivered) as f64 / secs);
    println!(
        "  delivery latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}{}",
        ms(delivery, 0.5),
        ms(delivery, 0.9),
        ms(delivery, 0.99),
        ms(delivery, 0.999),
        delivery.max() as f64 / 1000.0,
        if args.transport == Transport::Poll {
            format!("   (goal: p99 < P + 5 = {} ms)", args.poll_ms + 5)
        } else {
            String::new()
        }
    );
    let send_rt_line = format!(
        "send{} p50 {:.2} p99 {:.2} max {:.1}",
        if args.transport == Transport::Ws { " (to its sent frame)" } else { "" },
        ms(send_rt, 0.5),
        ms(send_rt, 0.99),
        send_rt.max() as f64 / 1000.0
    );
    if args.transport.is_stream() {
        println!("  round trip ms: {send_rt_line}");
    } else {
        println!(
            "  round trip ms: {} p50 {:.2} p99 {:.2} max {:.1};  {send_rt_line}",
            if args.transport == Transport::Longpoll { "long-poll (held)" } else { "poll" },
            ms(poll_rt, 0.5),
            ms(poll_rt, 0.99),
            poll_rt.max() as f64 / 1000.0,
        );
    }
    println!(
        "  correctness: missing {missing}  duplicated {duplicated}  out_of_order {out_of_order}  corrupt {corrupt}  bad_cursor {bad_cursor}  (gaps {gaps})  -> {verdict}"
    );
    for e in world.errors.lock().unwrap().iter() {
        println!("  error: {e}");
    }
    println!(
        "RESULT tool=chatsim transport={transport} users={m} poll_ms={} wait_ms={} rate={} duration_s={secs:.1} delivered={} delivered_per_s={:.1} polls_per_s={:.1} sends_per_s={:.1} streams_opened={} stream_drops={} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} missing={missing} duplicated={duplicated} out_of_order={out_of_order} corrupt={corrupt} bad_cursor={bad_cursor} gaps={gaps} errors={errors}",
        args.poll_ms,
        if args.transport == Transport::Longpoll { args.wait.as_millis() } else { 0 },
        args.rate,
        get(&c.delivered),
        get(&c.delivered) as f64 / secs,
        get(&c.polls) as f64 / total.as_secs_f64(),
        get(&c.sends_acked) as f64 / secs,
        get(&c.streams_opened),
        get(&c.stream_drops),
        ms(delivery, 0.5),
        ms(delivery, 0.9),
        ms(delivery, 0.99),
        ms(delivery, 0.999),
        delivery.max() as f64 / 1000.0
    );
}

/// The summary as JSON (`--json`).
fn summary_json(args: &Args, world: &World, timings: Timings, tally: &Tally) -> serde_json::Value {
    let Tally { missing, unanswered, duplicated, out_of_order, corrupt, bad_cursor, gaps, failed_checks, .. } = *tally;
    let delivery = &tally.delivery;
    let (m, c, secs) = (args.users, &world.c, timings.sending.as_secs_f64());
    serde_json::json!({
        "transport": args.transport.name(),
        "users": m, "poll_ms": args.poll_ms, "wait_ms": args.wait.as_millis() as u64, "rate": args.rate,
        "duration_s": secs, "connections": args.connections,
        "polls": get(&c.polls), "poll_errors": get(&c.poll_errors), "gaps": gaps,
        "streams_opened": get(&c.streams_opened), "stream_drops": get(&c.stream_drops), "pings": get(&c.pings),
        "sends_acked": get(&c.sends_acked), "send_errors": get(&c.send_errors), "sends_unanswered": unanswered,
        "delivered": get(&c.delivered), "delivered_per_s": get(&c.delivered) as f64 / secs,
        "latency_ms": {
            "p50": ms(delivery, 0.5), "p90": ms(delivery, 0.9), "p99": ms(delivery, 0.99),
            "p999": ms(delivery, 0.999), "max": delivery.max() as f64 / 1000.0,
        },
        "missing": missing, "duplicated": duplicated, "out_of_order": out_of_order,
        "corrupt": corrupt, "bad_cursor": bad_cursor, "ok": failed_checks == 0,
    })
}

/// The send-to-delivery latency plot (`--plot`).
fn write_plot(args: &Args, world: &World, timings: Timings, tally: &Tally) -> Result<()> {
    let Tally { missing, duplicated, out_of_order, .. } = *tally;
    let delivery = &tally.delivery;
    let (m, c, secs) = (args.users, &world.c, timings.sending.as_secs_f64());
    if let Some(dir) = args.plot.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let receiving = match args.transport {
        Transport::Poll => format!("poll every {} ms", args.poll_ms),
        Transport::Longpoll => format!("long-poll (wait {})", humantime::format_duration(args.wait)),
        Transport::Sse => "Server-Sent Events".to_owned(),
        Transport::Ws => "WebSocket".to_owned(),
    };
    let title =
        format!("chatsim: {m} users, {receiving}, {} msg/s each, {:.0} s — send-to-delivery latency", args.rate, secs);
    let subtitle = format!(
        "{} delivered · p50 {:.1} ms · p99 {:.1} ms · p99.9 {:.1} ms · max {:.1} ms · missing {missing} · duplicated {duplicated} · out of order {out_of_order}",
        get(&c.delivered),
        ms(delivery, 0.5),
        ms(delivery, 0.99),
        ms(delivery, 0.999),
        delivery.max() as f64 / 1000.0
    );
    plot::write_png(&args.plot, &LatencyPlot { title: &title, subtitle: &subtitle, histogram: delivery })?;
    println!("  plot: {}", args.plot.display());
    Ok(())
}
