//! chatsim: M simulated chat users against a running chatbus, checking every delivery.
//!
//! Each user has a session and a few contacts (a ring: user i and users i±1 … i±contacts/2).
//! It polls `GET /api/messages/:session/:unix/:nano` every P ms, taking the next cutoff from
//! `meta.cursor`, and sends R messages per second, round-robin to its contacts. A body carries
//! the sender's index, its per-sender sequence number and the send time:
//! `cs <sender> <seq> <sent_ns> <padding>`.
//!
//! What is measured: send-to-delivery latency (from just before the POST to the poll answer
//! that carries the message, so up to one poll interval plus the server's time), throughput,
//! and the round trips of polls and sends. What is checked, and must all be 0:
//!
//! - missing: acknowledged (200) sends never delivered to their receiver by the end of the
//!   drain period that follows the run;
//! - duplicated: a message delivered twice, in one answer or across polls;
//! - out of order: per sender → receiver, sequence numbers must arrive increasing, and each
//!   answer's messages must have strictly increasing `created_utc` after the cutoff;
//! - corrupt: a message that is not one we sent to that user (wrong receiver, unknown sender,
//!   mangled body), or an unparsable `created_utc`;
//! - bad cursor: `meta.cursor` absent or not the newest message's `created_utc` (the cutoff,
//!   when the answer is empty).
//!
//! All users share one tokio runtime and one pool of keep-alive connections (`--connections`),
//! so 10,000 users polling every second are 10,000 small tasks, not 10,000 threads or sockets.
//! Exit status: 0 when every check is 0 and no request failed, 1 when a check failed, 2 when
//! only requests failed (timeouts, errors).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use chatbus_loadtest::api::Cursor;
use chatbus_loadtest::client::{Api, Poll};
use chatbus_loadtest::plot::{self, LatencyPlot};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Simulate interval-polling chat users and check every delivery.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The running chatbus.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Simulated users (M).
    #[arg(short = 'm', long, default_value_t = 1000)]
    users: usize,
    /// Poll interval of each user in ms (P).
    #[arg(short = 'p', long, default_value_t = 1000)]
    poll_ms: u64,
    /// Messages per second each user sends (R); 0.1 is one every 10 s.
    #[arg(short = 'r', long, default_value_t = 0.1)]
    rate: f64,
    /// How long users send; polling goes on through the drain period after it.
    #[arg(short = 'd', long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Longest wait after the run for outstanding messages [default: 2 poll intervals + 2 s].
    #[arg(long, value_parser = humantime::parse_duration)]
    drain: Option<Duration>,
    /// Contacts per user.
    #[arg(long, default_value_t = 4)]
    contacts: usize,
    /// Characters per message body (1–1024).
    #[arg(long, default_value_t = 48)]
    body_chars: usize,
    /// Requests in flight at most, and so keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Runtime worker threads of the simulator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Where the latency plot (PNG) goes.
    #[arg(long, default_value = "loadtest/out/chatsim-latency.png")]
    plot: PathBuf,
    /// Also write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Prefix of the users' external uuids [default: unique per run].
    #[arg(long)]
    tag: Option<String>,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

/// A simulated user.
struct SimUser {
    id: i64,
    session: String,
    contacts: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SendState {
    InFlight,
    Acked,
    Failed,
}

/// One send, at index `seq` of its sender's outbox.
struct Sent {
    receiver: u32,
    sent_ns: u64,
    state: SendState,
    deliveries: u32,
}

#[derive(Default)]
struct Counters {
    polls: AtomicU64,
    poll_errors: AtomicU64,
    poll_bytes: AtomicU64,
    messages_seen: AtomicU64,
    gaps: AtomicU64,
    sends_acked: AtomicU64,
    send_errors: AtomicU64,
    delivered: AtomicU64,
    delivered_unacked: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    corrupt: AtomicU64,
    bad_cursor: AtomicU64,
}

/// Everything the user tasks share.
struct World {
    start: Instant,
    users: Vec<SimUser>,
    by_id: HashMap<i64, u32>,
    /// Per sender, indexed by sequence number. A send is recorded before its POST goes out,
    /// because the receiver's poll may see the message before the sender sees the 200.
    outbox: Vec<Mutex<Vec<Sent>>>,
    c: Counters,
    delivery_us: Mutex<Histogram<u64>>,
    poll_us: Mutex<Histogram<u64>>,
    send_us: Mutex<Histogram<u64>>,
    errors: Mutex<Vec<String>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl World {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Acknowledged sends not delivered (yet).
    fn undelivered(&self) -> u64 {
        let mut n = 0;
        for outbox in &self.outbox {
            n += outbox.lock().unwrap().iter().filter(|s| s.state == SendState::Acked && s.deliveries == 0).count()
                as u64;
        }
        n
    }

    fn error(&self, e: anyhow::Error) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 5 {
            errors.push(format!("{e:#}"));
        }
    }

    /// Checks one poll answer of user `me` for `cutoff`; returns the next cutoff.
    fn check(&self, me: u32, cutoff: Cursor, poll: &Poll, now_ns: u64, last_seq: &mut HashMap<u32, u64>) -> Cursor {
        let c = &self.c;
        c.poll_bytes.fetch_add(poll.bytes as u64, Relaxed);
        c.messages_seen.fetch_add(poll.messages.len() as u64, Relaxed);
        if poll.gap {
            c.gaps.fetch_add(1, Relaxed);
        }
        let my_id = self.users[me as usize].id;
        let mut prev = cutoff;
        let mut prev_uuid: Option<&str> = None;
        for m in &poll.messages {
            let Some(ts) = Cursor::parse_rfc3339(&m.created_utc) else {
                c.corrupt.fetch_add(1, Relaxed);
                continue;
            };
            let repeated = ts <= cutoff || prev_uuid == Some(m.uuid.as_str());
            if ts <= prev && !repeated {
                c.out_of_order.fetch_add(1, Relaxed);
            }
            prev = prev.max(ts);
            prev_uuid = Some(&m.uuid);
            let Some((sender, seq, sent_ns)) = parse_body(&m.body) else {
                c.corrupt.fetch_add(1, Relaxed);
                continue;
            };
            let Some(user) = self.users.get(sender as usize).filter(|u| u.id == m.sender_id) else {
                c.corrupt.fetch_add(1, Relaxed);
                continue;
            };
            let Some(&receiver) = self.by_id.get(&m.receiver_id) else {
                c.corrupt.fetch_add(1, Relaxed);
                continue;
            };
            let mut outbox = self.outbox[sender as usize].lock().unwrap();
            let Some(sent) = outbox.get_mut(seq as usize).filter(|s| s.receiver == receiver && s.sent_ns == sent_ns)
            else {
                c.corrupt.fetch_add(1, Relaxed);
                continue;
            };
            if m.receiver_id != my_id {
                // The sender's own copy in its own mailbox: only order and repeats matter.
                if user.id != my_id {
                    c.corrupt.fetch_add(1, Relaxed); // someone else's message
                } else if repeated {
                    c.duplicated.fetch_add(1, Relaxed);
                }
                continue;
            }
            sent.deliveries += 1;
            if sent.deliveries > 1 {
                c.duplicated.fetch_add(1, Relaxed);
                continue;
            }
            if sent.state == SendState::Failed {
                c.delivered_unacked.fetch_add(1, Relaxed);
            }
            drop(outbox);
            c.delivered.fetch_add(1, Relaxed);
            let _ = self.delivery_us.lock().unwrap().record((now_ns.saturating_sub(sent_ns) / 1000).max(1));
            match last_seq.get_mut(&sender) {
                Some(last) if seq <= *last => {
                    c.out_of_order.fetch_add(1, Relaxed);
                }
                Some(last) => *last = seq,
                None => {
                    last_seq.insert(sender, seq);
                }
            }
        }
        let expected = if poll.messages.is_empty() { cutoff } else { prev };
        match poll.cursor {
            Some(cursor) if cursor == expected => cursor,
            Some(cursor) => {
                c.bad_cursor.fetch_add(1, Relaxed);
                cursor.max(cutoff)
            }
            None => {
                c.bad_cursor.fetch_add(1, Relaxed);
                expected
            }
        }
    }
}

/// `cs <sender> <seq> <sent_ns> ...`
fn parse_body(body: &str) -> Option<(u32, u64, u64)> {
    let mut words = body.split(' ');
    if words.next()? != "cs" {
        return None;
    }
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// Text after the header so bodies have a realistic size.
const FILLER: &str = "are we still on for lunch tomorrow? I can be there by half past twelve if the \
train is on time, otherwise a bit later; let me know what suits you best. ";

async fn poller(
    world: Arc<World>,
    api: Api,
    me: u32,
    first: Instant,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let session = world.users[me as usize].session.clone();
    let mut cutoff = Cursor::ZERO;
    let mut last_seq = HashMap::new();
    let mut ticker = interval_at(first, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let t = Instant::now();
        let answer = api.poll(&session, cutoff).await;
        let now_ns = world.now_ns();
        match answer {
            Ok(poll) => {
                world.c.polls.fetch_add(1, Relaxed);
                let _ = world.poll_us.lock().unwrap().record((t.elapsed().as_micros() as u64).max(1));
                cutoff = world.check(me, cutoff, &poll, now_ns, &mut last_seq);
            }
            Err(e) => {
                world.c.poll_errors.fetch_add(1, Relaxed);
                world.error(e);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    world: Arc<World>,
    api: Api,
    me: u32,
    first: Instant,
    every: Duration,
    body_chars: usize,
    start_contact: usize,
    mut stop: watch::Receiver<bool>,
) {
    let user = &world.users[me as usize];
    if user.contacts.is_empty() {
        return;
    }
    let mut ticker = interval_at(first, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for k in start_contact.. {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let to = user.contacts[k % user.contacts.len()];
        let sent_ns = world.now_ns();
        let seq = {
            let mut outbox = world.outbox[me as usize].lock().unwrap();
            outbox.push(Sent { receiver: to, sent_ns, state: SendState::InFlight, deliveries: 0 });
            outbox.len() - 1
        };
        let mut body = format!("cs {me} {seq} {sent_ns} ");
        let want = body_chars.max(body.len());
        body.extend(FILLER.chars().cycle().take(want - body.len()));
        let t = Instant::now();
        let result = api.send(&user.session, world.users[to as usize].id, &body).await;
        let state = match result {
            Ok(_) => {
                world.c.sends_acked.fetch_add(1, Relaxed);
                let _ = world.send_us.lock().unwrap().record((t.elapsed().as_micros() as u64).max(1));
                SendState::Acked
            }
            Err(e) => {
                world.c.send_errors.fetch_add(1, Relaxed);
                world.error(e);
                SendState::Failed
            }
        };
        world.outbox[me as usize].lock().unwrap()[seq].state = state;
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("chatsim: {e:#}");
            std::process::ExitCode::from(3)
        }
    }
}

fn bar(len: u64, hidden: bool, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if hidden { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr_with_hz(4) },
    );
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> "));
    bar
}

async fn run(args: Args) -> Result<u8> {
    ensure!(args.users >= 1, "--users must be at least 1");
    ensure!(args.poll_ms >= 1, "--poll-ms must be at least 1");
    ensure!((1..=1024).contains(&args.body_chars), "--body-chars must be 1..=1024");
    ensure!(args.rate >= 0.0 && args.rate.is_finite(), "--rate must be >= 0");
    let api = Api::new(&args.url, args.connections, args.timeout);
    api.check_identity().await?;
    let tag = args.tag.clone().unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        format!("cs{}-{}", now.as_secs(), std::process::id())
    });
    let m = args.users;

    // Setup: users, sessions, contacts, through the API like any client.
    let half = (args.contacts / 2).min((m - 1) / 2).max(usize::from(m > 1));
    let pairs: Vec<(usize, usize)> = if m > 1 {
        (0..m).flat_map(|i| (1..=half).map(move |s| (i, (i + s) % m))).filter(|(a, b)| a != b).collect()
    } else {
        Vec::new()
    };
    let setup = bar((2 * m + pairs.len()) as u64, args.no_progress, "setup {bar:40} {pos}/{len} requests {elapsed}");
    let users = join_all(
        &setup,
        (0..m).map(|i| {
            let (api, uuid) = (api.clone(), format!("{tag}-u{i}"));
            async move { api.create_user(&uuid, &format!("sim user {i}")).await }
        }),
    )
    .await
    .context("creating users")?;
    let sessions = join_all(
        &setup,
        users.iter().map(|u| {
            let (api, id) = (api.clone(), u.id);
            async move { api.open_session(id).await }
        }),
    )
    .await
    .context("opening sessions")?;
    join_all(
        &setup,
        pairs.iter().map(|&(a, b)| {
            let (api, session, other) = (api.clone(), sessions[a].uuid.clone(), users[b].id);
            async move { api.add_contact(&session, other).await }
        }),
    )
    .await
    .context("adding contacts")?;
    setup.finish_and_clear();
    let mut contacts: Vec<Vec<u32>> = vec![Vec::new(); m];
    for &(a, b) in &pairs {
        contacts[a].push(b as u32);
        contacts[b].push(a as u32);
    }
    let world = Arc::new(World {
        start: Instant::now(),
        by_id: users.iter().enumerate().map(|(i, u)| (u.id, i as u32)).collect(),
        users: users
            .iter()
            .zip(sessions)
            .zip(contacts)
            .map(|((u, s), mut contacts)| {
                contacts.sort_unstable();
                contacts.dedup();
                SimUser { id: u.id, session: s.uuid, contacts }
            })
            .collect(),
        outbox: (0..m).map(|_| Mutex::new(Vec::new())).collect(),
        c: Counters::default(),
        delivery_us: Mutex::new(histogram()),
        poll_us: Mutex::new(histogram()),
        send_us: Mutex::new(histogram()),
        errors: Mutex::new(Vec::new()),
    });
    eprintln!(
        "chatsim: {m} users ({} contact pairs), polling every {} ms, sending {} msg/s each ({:.0} msg/s in all) for {:?}",
        pairs.len(),
        args.poll_ms,
        args.rate,
        args.rate * m as f64,
        args.duration
    );

    // Run: every user polls from a random phase of its interval, and sends likewise.
    let every = Duration::from_millis(args.poll_ms);
    let (stop_polls, polls_rx) = watch::channel(false);
    let (stop_sends, sends_rx) = watch::channel(false);
    let mut pollers = JoinSet::new();
    let mut senders = JoinSet::new();
    let mut rng = rand::thread_rng();
    let now = Instant::now();
    for me in 0..m as u32 {
        let first = now + every.mul_f64(rng.gen::<f64>());
        pollers.spawn(poller(world.clone(), api.clone(), me, first, every, polls_rx.clone()));
        if args.rate > 0.0 {
            let send_every = Duration::from_secs_f64(1.0 / args.rate);
            let first = now + send_every.mul_f64(rng.gen::<f64>());
            let start_contact = rng.gen_range(0..16);
            senders.spawn(sender(
                world.clone(),
                api.clone(),
                me,
                first,
                send_every,
                args.body_chars,
                start_contact,
                sends_rx.clone(),
            ));
        }
    }
    let progress = bar(args.duration.as_secs().max(1), args.no_progress, "{bar:30} {pos:>3}/{len}s  {msg}");
    let ticker = {
        let (world, progress) = (world.clone(), progress.clone());
        tokio::spawn(async move {
            let mut last = (0u64, 0u64, 0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let c = &world.c;
                let (polls, sends, delivered) =
                    (c.polls.load(Relaxed), c.sends_acked.load(Relaxed), c.delivered.load(Relaxed));
                let dt = last.3.elapsed().as_secs_f64().max(1e-3);
                let p99 = world.delivery_us.lock().unwrap().value_at_quantile(0.99) as f64 / 1000.0;
                let errors = c.poll_errors.load(Relaxed) + c.send_errors.load(Relaxed);
                let bad = c.duplicated.load(Relaxed)
                    + c.out_of_order.load(Relaxed)
                    + c.corrupt.load(Relaxed)
                    + c.bad_cursor.load(Relaxed);
                progress.set_position(world.start.elapsed().as_secs());
                progress.set_message(format!(
                    "polls {:.0}/s  sends {:.0}/s  delivered {delivered} ({:.0}/s)  p99 {p99:.1} ms  errors {errors}  bad {bad}",
                    (polls - last.0) as f64 / dt,
                    (sends - last.1) as f64 / dt,
                    (delivered - last.2) as f64 / dt,
                ));
                last = (polls, sends, delivered, Instant::now());
            }
        })
    };
    tokio::time::sleep(args.duration).await;
    let sending = now.elapsed();
    let _ = stop_sends.send(true);
    while senders.join_next().await.is_some() {}
    let sent_for = now.elapsed();

    // Drain: keep polling until every acknowledged message arrived, or the drain time is up.
    let drain = args.drain.unwrap_or(every * 2 + Duration::from_secs(2));
    let deadline = Instant::now() + drain;
    progress.set_length((sent_for + drain).as_secs());
    let min_drain = Instant::now() + every + Duration::from_millis(50);
    loop {
        let outstanding = world.undelivered();
        let now = Instant::now();
        if now >= deadline || (outstanding == 0 && now >= min_drain) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_polls.send(true);
    while pollers.join_next().await.is_some() {}
    ticker.abort();
    progress.finish_and_clear();
    let total = now.elapsed();

    // Accounting.
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
    let get = |a: &AtomicU64| a.load(Relaxed);
    let delivery = world.delivery_us.lock().unwrap().clone();
    let poll_rt = world.poll_us.lock().unwrap().clone();
    let send_rt = world.send_us.lock().unwrap().clone();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let secs = sending.as_secs_f64();
    let (duplicated, out_of_order, corrupt, bad_cursor) =
        (get(&c.duplicated), get(&c.out_of_order), get(&c.corrupt), get(&c.bad_cursor));
    let errors = get(&c.poll_errors) + get(&c.send_errors);
    let failed_checks = missing + duplicated + out_of_order + corrupt + bad_cursor;
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
        ms(&delivery, 0.5),
        ms(&delivery, 0.9),
        ms(&delivery, 0.99),
        ms(&delivery, 0.999),
        delivery.max() as f64 / 1000.0,
        args.poll_ms + 5
    );
    println!(
        "  round trip ms: poll p50 {:.2} p99 {:.2} max {:.1};  send p50 {:.2} p99 {:.2} max {:.1}",
        ms(&poll_rt, 0.5),
        ms(&poll_rt, 0.99),
        poll_rt.max() as f64 / 1000.0,
        ms(&send_rt, 0.5),
        ms(&send_rt, 0.99),
        send_rt.max() as f64 / 1000.0
    );
    println!(
        "  correctness: missing {missing}  duplicated {duplicated}  out_of_order {out_of_order}  corrupt {corrupt}  bad_cursor {bad_cursor}  -> {verdict}"
    );
    for e in world.errors.lock().unwrap().iter() {
        println!("  error: {e}");
    }
    let summary = serde_json::json!({
        "users": m, "poll_ms": args.poll_ms, "rate": args.rate, "duration_s": secs,
        "connections": args.connections,
        "polls": get(&c.polls), "poll_errors": get(&c.poll_errors), "gaps": get(&c.gaps),
        "sends_acked": get(&c.sends_acked), "send_errors": get(&c.send_errors),
        "delivered": get(&c.delivered), "delivered_per_s": get(&c.delivered) as f64 / secs,
        "latency_ms": {
            "p50": ms(&delivery, 0.5), "p90": ms(&delivery, 0.9), "p99": ms(&delivery, 0.99),
            "p999": ms(&delivery, 0.999), "max": delivery.max() as f64 / 1000.0,
        },
        "missing": missing, "duplicated": duplicated, "out_of_order": out_of_order,
        "corrupt": corrupt, "bad_cursor": bad_cursor, "ok": failed_checks == 0,
    });
    println!(
        "RESULT tool=chatsim users={m} poll_ms={} rate={} duration_s={secs:.1} delivered={} delivered_per_s={:.1} polls_per_s={:.1} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} missing={missing} duplicated={duplicated} out_of_order={out_of_order} corrupt={corrupt} bad_cursor={bad_cursor} errors={errors}",
        args.poll_ms,
        args.rate,
        get(&c.delivered),
        get(&c.delivered) as f64 / secs,
        get(&c.polls) as f64 / total.as_secs_f64(),
        ms(&delivery, 0.5),
        ms(&delivery, 0.9),
        ms(&delivery, 0.99),
        ms(&delivery, 0.999),
        delivery.max() as f64 / 1000.0
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")?;
    }
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
        ms(&delivery, 0.5),
        ms(&delivery, 0.99),
        ms(&delivery, 0.999),
        delivery.max() as f64 / 1000.0
    );
    plot::write_png(&args.plot, &LatencyPlot { title: &title, subtitle: &subtitle, histogram: &delivery })?;
    println!("  plot: {}", args.plot.display());
    Ok(if failed_checks > 0 {
        1
    } else if errors > 0 {
        2
    } else {
        0
    })
}

/// Runs the futures concurrently (the client's in-flight cap bounds them), ticking `bar`,
/// and returns their values in order, or the first error.
async fn join_all<T, F>(bar: &ProgressBar, futures: impl Iterator<Item = F>) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut n = 0;
    for (i, f) in futures.enumerate() {
        set.spawn(async move { f.await.map(|v| (i, v)) });
        n += 1;
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, v) = joined??;
        out[i] = Some(v);
        bar.inc(1);
    }
    Ok(out.into_iter().map(|v| v.expect("every task answered")).collect())
}
