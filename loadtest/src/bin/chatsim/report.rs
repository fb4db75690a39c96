//! The end of a run: account for every send, print the summary and its `RESULT` line, and write
//! the JSON summary and the latency plot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Result;
use chatbus_loadtest::plot::{self, LatencyPlot};
use hdrhistogram::Histogram;

use super::world::{SendState, World};
use super::Args;

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
    duplicated: u64,
    out_of_order: u64,
    corrupt: u64,
    bad_cursor: u64,
    /// Failed requests, polls and sends.
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
    let (mut missing, mut failed_lost) = (0u64, 0u64);
    for outbox in &world.outbox {
        for sent in outbox.lock().unwrap().iter() {
            match (sent.state, sent.deliveries) {
                (SendState::Acked, 0) => missing += 1,
                (SendState::Failed, 0) => failed_lost += 1,
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
        duplicated,
        out_of_order,
        corrupt,
        bad_cursor,
        errors: get(&c.poll_errors) + get(&c.send_errors),
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

/// The text summary on stdout, ending with the one-line `RESULT` that scripts read.
fn print_summary(args: &Args, world: &World, timings: Timings, tally: &Tally) {
    let Timings { sending, sent_for, total } = timings;
    let Tally { missing, failed_lost, duplicated, out_of_order, corrupt, bad_cursor, errors, failed_checks, .. } =
        *tally;
    let (delivery, poll_rt, send_rt) = (&tally.delivery, &tally.poll_rt, &tally.send_rt);
    let (m, c, secs) = (args.users, &world.c, sending.as_secs_f64());
    let verdict = if failed_checks > 0 {
        "FAILED"
    } else if errors > 0 {
        "OK, but requests failed"
    } else {
        "OK"
    };

    println!(
        "chatsim: M={m} users, P={} ms, R={} msg/s/user, {:.1} s of sending + {:.1} s drain, {} connections",
        args.poll_ms,
        args.rate,
        secs,
        (total - sent_for).as_secs_f64(),
        args.connections
    );
    println!(
        "  polls       {:>9} ({:.0}/s)  errors {}  gap=true {}  {:.1} MB received",
        get(&c.polls),
        get(&c.polls) as f64 / total.as_secs_f64(),
        get(&c.poll_errors),
        get(&c.gaps),
        get(&c.poll_bytes) as f64 / 1e6
    );
    println!(
        "  sends       {:>9} acked ({:.0}/s)  errors {} ({} of them never delivered, {} delivered anyway)",
        get(&c.sends_acked),
        get(&c.sends_acked) as f64 / secs,
        get(&c.send_errors),
        failed_lost,
        get(&c.delivered_unacked)
    );
    println!("  deliveries  {:>9} ({:.0}/s)", get(&c.delivered), get(&c.delivered) as f64 / secs);
    println!(
        "  delivery latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}   (goal: p99 < P + 5 = {} ms)",
        ms(delivery, 0.5),
        ms(delivery, 0.9),
        ms(delivery, 0.99),
        ms(delivery, 0.999),
        delivery.max() as f64 / 1000.0,
        args.poll_ms + 5
    );
    println!(
        "  round trip ms: poll p50 {:.2} p99 {:.2} max {:.1};  send p50 {:.2} p99 {:.2} max {:.1}",
        ms(poll_rt, 0.5),
        ms(poll_rt, 0.99),
        poll_rt.max() as f64 / 1000.0,
        ms(send_rt, 0.5),
        ms(send_rt, 0.99),
        send_rt.max() as f64 / 1000.0
    );
    println!(
        "  correctness: missing {missing}  duplicated {duplicated}  out_of_order {out_of_order}  corrupt {corrupt}  bad_cursor {bad_cursor}  -> {verdict}"
    );
    for e in world.errors.lock().unwrap().iter() {
        println!("  error: {e}");
    }
    println!(
        "RESULT tool=chatsim users={m} poll_ms={} rate={} duration_s={secs:.1} delivered={} delivered_per_s={:.1} polls_per_s={:.1} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} missing={missing} duplicated={duplicated} out_of_order={out_of_order} corrupt={corrupt} bad_cursor={bad_cursor} errors={errors}",
        args.poll_ms,
        args.rate,
        get(&c.delivered),
        get(&c.delivered) as f64 / secs,
        get(&c.polls) as f64 / total.as_secs_f64(),
        ms(delivery, 0.5),
        ms(delivery, 0.9),
        ms(delivery, 0.99),
        ms(delivery, 0.999),
        delivery.max() as f64 / 1000.0
    );
}

/// The summary as JSON (`--json`).
fn summary_json(args: &Args, world: &World, timings: Timings, tally: &Tally) -> serde_json::Value {
    let Tally { missing, duplicated, out_of_order, corrupt, bad_cursor, failed_checks, .. } = *tally;
    let delivery = &tally.delivery;
    let (m, c, secs) = (args.users, &world.c, timings.sending.as_secs_f64());
    serde_json::json!({
        "users": m, "poll_ms": args.poll_ms, "rate": args.rate, "duration_s": secs,
        "connections": args.connections,
        "polls": get(&c.polls), "poll_errors": get(&c.poll_errors), "gaps": get(&c.gaps),
        "sends_acked": get(&c.sends_acked), "send_errors": get(&c.send_errors),
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
    let title = format!(
        "chatsim: {m} users, poll every {} ms, {} msg/s each, {:.0} s — send-to-delivery latency",
        args.poll_ms, args.rate, secs
    );
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
