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
//!
//! `--transport` picks how users receive (and, for `ws`, send); `poll` is the above.
//!
//! - `longpoll`: each user loops on `GET .../:unix/:nano?wait=W` with the cursor, no pause.
//! - `sse`: each user holds one `GET /api/stream/:session` (Server-Sent Events) and reopens it
//!   with `Last-Event-ID` if it drops.
//! - `ws`: each user holds one WebSocket (`/api/ws/:session`), receives `message` frames and
//!   sends as `send` frames; the `sent` frame with the same `ref` is the acknowledgement.
//!
//! Other transports send with `POST /api/message`. Every held poll, stream or socket is a
//! connection of its own (M users, M sockets, plus the pool for sends). The checks are the same;
//! on a stream "bad cursor" means an event `id` or frame `cursor` that is not the message's
//! `created_utc`, and "out of order" a message not after the one the stream sent before it.
//! Latency runs from just before the send to the poll answer, event or frame that delivers it.
//! Gaps (`meta.gap`, `event: gap`, `gap` frames) are counted and reported.
//!
//! Exit status: 0 when every check is 0 and no request failed, 1 when a check failed, 2 when
//! only requests failed (timeouts, errors, dropped streams).

mod push;
mod report;
mod world;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use chatbus_loadtest::api::{Session, User};
use chatbus_loadtest::client::Api;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use push::{long_poller, sse_user, ws_user, Dial, Target};
use report::Timings;
use world::{histogram, poller, sender, Counters, SendVia, SimUser, World};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How the simulated users receive their messages (and, for `ws`, send them).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Interval polling every P ms over the shared pool of --connections keep-alive connections.
    Poll,
    /// GET .../:unix/:nano?wait=W in a loop: one connection per user, held.
    Longpoll,
    /// Server-Sent Events, GET /api/stream/:session: one connection per user, held.
    Sse,
    /// WebSocket, /api/ws/:session, receiving and sending: one connection per user, held.
    Ws,
}

impl Transport {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Poll => "poll",
            Transport::Longpoll => "longpoll",
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }

    /// Users receive through a stream or socket of their own, not poll answers.
    pub(crate) fn is_stream(self) -> bool {
        matches!(self, Transport::Sse | Transport::Ws)
    }
}

/// Simulate chat users (polling, long-polling, Server-Sent Events or WebSocket) and check every
/// delivery.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The running chatbus; or a cluster's nodes, comma-separated: requests, and each new stream
    /// or socket connection, go to them in turn (so a user's polls land on different nodes).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// How users receive: poll, longpoll, sse or ws (ws also sends over the socket).
    ///
    /// longpoll, sse and ws hold one connection per user for the whole run, besides the
    /// --connections pool that sends (and setup) use: M users need M + --connections sockets on
    /// this side and as many connections on the server's, whose --max-connections (default
    /// 10,000) must be above that. chatsim raises its soft open-files limit to the hard one
    /// (`ulimit -Hn`) and refuses to start when that is too low.
    #[arg(long, value_enum, default_value_t = Transport::Poll, verbatim_doc_comment)]
    transport: Transport,
    /// Simulated users (M).
    #[arg(short = 'm', long, default_value_t = 1000)]
    users: usize,
    /// Poll interval of each user in ms (P); --transport poll only.
    #[arg(short = 'p', long, default_value_t = 1000)]
    poll_ms: u64,
    /// How long the server may hold each long-poll (?wait=); --transport longpoll only.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Messages per second each user sends (R); 0.1 is one every 10 s.
    #[arg(short = 'r', long, default_value_t = 0.1)]
    rate: f64,
    /// How long users send; polling goes on through the drain period after it.
    #[arg(short = 'd', long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Longest wait after the run for outstanding messages [default: 2 poll intervals + 2 s;
    /// push transports: 5 s].
    #[arg(long, value_parser = humantime::parse_duration)]
    drain: Option<Duration>,
    /// Contacts per user.
    #[arg(long, default_value_t = 4)]
    contacts: usize,
    /// Characters per message body (1–1024).
    #[arg(long, default_value_t = 48)]
    body_chars: usize,
    /// Requests in flight at most, and so keep-alive connections, of polls (poll), sends
    /// (all but ws) and setup; for longpoll, sse and ws also the connects in flight at once.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Runtime worker threads of the simulator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Per-request timeout (a long-poll's is --wait plus this), and of opening a stream.
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

/// The run, phase by phase: setup, the users running (after their streams are open), the
/// drain, the report.
async fn run(args: Args) -> Result<u8> {
    check_args(&args)?;
    raise_open_files(&args)?;
    let api = Api::new(&args.url, args.connections, args.timeout);
    api.check_identity().await?;
    let world = Arc::new(setup(&args, &api).await?);
    let (mut users, vias) = start_receivers(&args, &api, &world)?;
    connect(&args, &world).await?;
    start_senders(&args, &world, &mut users, vias);
    let progress = Progress::start(&args, &world);
    let (sending, sent_for) = let_users_send(&args, &mut users).await;
    let total = drain(&args, &world, users, progress, sent_for).await;
    report::report(&args, &world, Timings { sending, sent_for, total })
}

/// The flags' values that make no run.
fn check_args(args: &Args) -> Result<()> {
    ensure!(args.users >= 1, "--users must be at least 1");
    ensure!(args.poll_ms >= 1, "--poll-ms must be at least 1");
    ensure!((1..=1024).contains(&args.body_chars), "--body-chars must be 1..=1024");
    ensure!(args.rate >= 0.0 && args.rate.is_finite(), "--rate must be >= 0");
    ensure!(args.transport != Transport::Longpoll || !args.wait.is_zero(), "--wait must be longer than 0");
    Ok(())
}

/// Raises the soft limit on open files to the hard one; for the transports that hold a socket
/// per user, fails when even that is too few for the users and the pool.
fn raise_open_files(args: &Args) -> Result<()> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-files limit")?;
    if args.transport != Transport::Poll {
        let need = (args.users + args.connections + 64) as u64;
        ensure!(
            limit >= need,
            "--transport {} holds a socket per user: {} users need about {need} open files, the limit is {limit} \
             (raise the hard limit: ulimit -Hn)",
            args.transport.name(),
            args.users
        );
    }
    Ok(())
}

/// The contact ring as pairs `(i, j)`: user i with users i+1 … i+contacts/2 (mod M, as far as M
/// allows, at least one when M > 1). Both users of a pair become each other's contact.
fn contact_pairs(m: usize, contacts: usize) -> Vec<(usize, usize)> {
    let half = (contacts / 2).min((m - 1) / 2).max(usize::from(m > 1));
    if m > 1 {
        (0..m).flat_map(|i| (1..=half).map(move |s| (i, (i + s) % m))).filter(|(a, b)| a != b).collect()
    } else {
        Vec::new()
    }
}

/// Setup: users, sessions, contacts, through the API like any client; then the world the users
/// share, and a line on stderr saying what the run will do.
async fn setup(args: &Args, api: &Api) -> Result<World> {
    let tag = args.tag.clone().unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        format!("cs{}-{}", now.as_secs(), std::process::id())
    });
    let m = args.users;
    let pairs = contact_pairs(m, args.contacts);
    let (users, sessions) = create(args, api, &tag, &pairs).await?;
    let world = new_world(users, sessions, &pairs);
    let receiving = match args.transport {
        Transport::Poll => format!("polling every {} ms", args.poll_ms),
        Transport::Longpoll => format!("long-polling (wait {:?})", args.wait),
        Transport::Sse => "on Server-Sent Events".to_owned(),
        Transport::Ws => "on WebSockets".to_owned(),
    };
    eprintln!(
        "chatsim: {m} users ({} contact pairs), {receiving}, sending {} msg/s each ({:.0} msg/s in all) for {:?}",
        pairs.len(),
        args.rate,
        args.rate * m as f64,
        args.duration
    );
    Ok(world)
}

/// Creates the users (uuids `<tag>-u<i>`), opens a session for each, and adds the contacts.
async fn create(args: &Args, api: &Api, tag: &str, pairs: &[(usize, usize)]) -> Result<(Vec<User>, Vec<Session>)> {
    let m = args.users;
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
    Ok((users, sessions))
}

/// The world of the created users: each with its session and its contacts (both sides of every
/// pair, once each), an empty outbox, zero counters and empty histograms; its clock starts now.
fn new_world(users: Vec<User>, sessions: Vec<Session>, pairs: &[(usize, usize)]) -> World {
    let m = users.len();
    let mut contacts: Vec<Vec<u32>> = vec![Vec::new(); m];
    for &(a, b) in pairs {
        contacts[a].push(b as u32);
        contacts[b].push(a as u32);
    }
    World {
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
    }
}

/// The users' tasks while they run, and the switches that stop them.
struct Users {
    /// When the tasks were started; the run's phases are timed from here.
    started: Instant,
    pollers: JoinSet<()>,
    senders: JoinSet<()>,
    stop_polls: watch::Sender<bool>,
    stop_sends: watch::Sender<bool>,
}

/// Run: every user starts receiving: polling from a random phase of its interval, or at once
/// on the push transports. Returns how each user will send.
fn start_receivers(args: &Args, api: &Api, world: &Arc<World>) -> Result<(Users, Vec<SendVia>)> {
    let m = args.users;
    let every = Duration::from_millis(args.poll_ms);
    let (stop_polls, polls_rx) = watch::channel(false);
    let (stop_sends, _) = watch::channel(false);
    let mut pollers = JoinSet::new();
    let mut rng = rand::thread_rng();
    // Long-polls: one request, so one connection, in flight per user, outside the sends' pool.
    let long_polls = Api::new(&args.url, m, args.wait + args.timeout);
    let dial = Arc::new(Dial {
        targets: Target::parse_all(&args.url)?,
        next: std::sync::atomic::AtomicUsize::new(0),
        handshakes: tokio::sync::Semaphore::new(args.connections.max(1)),
        timeout: args.timeout,
    });
    let now = Instant::now();
    let mut vias = Vec::with_capacity(m);
    for me in 0..m as u32 {
        let mut via = SendVia::Http(api.clone());
        match args.transport {
            Transport::Poll => {
                let first = now + every.mul_f64(rng.gen::<f64>());
                pollers.spawn(poller(world.clone(), api.clone(), me, first, every, polls_rx.clone()));
            }
            Transport::Longpoll => {
                pollers.spawn(long_poller(
                    world.clone(),
                    long_polls.clone(),
                    dial.clone(),
                    me,
                    args.wait,
                    polls_rx.clone(),
                ));
            }
            Transport::Sse => {
                pollers.spawn(sse_user(world.clone(), dial.clone(), me, polls_rx.clone()));
            }
            Transport::Ws => {
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                via = SendVia::Socket(tx);
                pollers.spawn(ws_user(world.clone(), dial.clone(), me, rx, polls_rx.clone()));
            }
        }
        vias.push(via);
    }
    let users = Users { started: now, pollers, senders: JoinSet::new(), stop_polls, stop_sends };
    Ok((users, vias))
}

/// Every user sends from a random phase of its interval; the run's clock starts now.
fn start_senders(args: &Args, world: &Arc<World>, users: &mut Users, vias: Vec<SendVia>) {
    let mut rng = rand::thread_rng();
    let now = Instant::now();
    users.started = now;
    if args.rate <= 0.0 {
        return;
    }
    let every = Duration::from_secs_f64(1.0 / args.rate);
    for (me, via) in vias.into_iter().enumerate() {
        let first = now + every.mul_f64(rng.gen::<f64>());
        let start_contact = rng.gen_range(0..16);
        users.senders.spawn(sender(
            world.clone(),
            via,
            me as u32,
            first,
            every,
            args.body_chars,
            start_contact,
            users.stop_sends.subscribe(),
        ));
    }
}

/// Push transports: waits until every user has connected (its stream or socket open, its
/// first long-poll answered), or `--timeout` passed without one more, so the run measures
/// delivery, not a storm of connects. Fails when not one connected (a server without the
/// route, say).
async fn connect(args: &Args, world: &World) -> Result<()> {
    if args.transport == Transport::Poll {
        return Ok(());
    }
    let m = args.users as u64;
    let bar = bar(m, args.no_progress, "connect {bar:40} {pos}/{len} users {elapsed}");
    let (mut last, mut progressed) = (0, Instant::now());
    loop {
        let open = world.c.ready.load(Relaxed);
        bar.set_position(open);
        if open >= m {
            break;
        }
        if open > last {
            (last, progressed) = (open, Instant::now());
        } else if progressed.elapsed() > args.timeout {
            if open == 0 {
                let first = world.errors.lock().unwrap().first().cloned().unwrap_or_default();
                bail!("--transport {}: no user connected within {:?}: {first}", args.transport.name(), args.timeout);
            }
            eprintln!(
                "chatsim: only {open} of {m} users connected after {:?} without progress; running anyway",
                args.timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    Ok(())
}

/// The progress bar and the task that refreshes it.
struct Progress {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl Progress {
    /// Shows the run's rates, latency and errors four times a second (unless hidden).
    fn start(args: &Args, world: &Arc<World>) -> Progress {
        let progress = bar(args.duration.as_secs().max(1), args.no_progress, "{bar:30} {pos:>3}/{len}s  {msg}");
        let ticker = {
            let (world, progress, stream) = (world.clone(), progress.clone(), args.transport.is_stream());
            tokio::spawn(async move {
                let mut last = (0u64, 0u64, 0u64, Instant::now());
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let c = &world.c;
                    let (polls, sends, delivered) =
                        (c.polls.load(Relaxed), c.sends_acked.load(Relaxed), c.delivered.load(Relaxed));
                    let receiving = if stream {
                        format!("open {}  drops {}", c.streams_open.load(Relaxed), c.stream_drops.load(Relaxed))
                    } else {
                        format!("polls {:.0}/s", (polls - last.0) as f64 / last.3.elapsed().as_secs_f64().max(1e-3))
                    };
                    let dt = last.3.elapsed().as_secs_f64().max(1e-3);
                    let p99 = world.delivery_us.lock().unwrap().value_at_quantile(0.99) as f64 / 1000.0;
                    let errors = c.poll_errors.load(Relaxed) + c.send_errors.load(Relaxed);
                    let bad = c.duplicated.load(Relaxed)
                        + c.out_of_order.load(Relaxed)
                        + c.corrupt.load(Relaxed)
                        + c.bad_cursor.load(Relaxed);
                    progress.set_position(world.start.elapsed().as_secs());
                    progress.set_message(format!(
                        "{receiving}  sends {:.0}/s  delivered {delivered} ({:.0}/s)  p99 {p99:.1} ms  errors {errors}  bad {bad}",
                        (sends - last.1) as f64 / dt,
                        (delivered - last.2) as f64 / dt,
                    ));
                    last = (polls, sends, delivered, Instant::now());
                }
            })
        };
        Progress { bar: progress, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// Lets the users send for `--duration`, then stops the senders and waits for them. Returns how
/// long after the start the senders were told to stop, and when the last had stopped.
async fn let_users_send(args: &Args, users: &mut Users) -> (Duration, Duration) {
    tokio::time::sleep(args.duration).await;
    let sending = users.started.elapsed();
    let _ = users.stop_sends.send(true);
    while users.senders.join_next().await.is_some() {}
    (sending, users.started.elapsed())
}

/// Drain: keep polling until every acknowledged message arrived, or the drain time is up; then
/// stop the pollers. Returns how long after the start the last poller stopped.
async fn drain(args: &Args, world: &World, mut users: Users, progress: Progress, sent_for: Duration) -> Duration {
    // Polls may find a message one interval late; a push delivers it at once.
    let every = if args.transport == Transport::Poll { Duration::from_millis(args.poll_ms) } else { Duration::ZERO };
    let default_drain =
        if args.transport == Transport::Poll { every * 2 + Duration::from_secs(2) } else { Duration::from_secs(5) };
    let drain = args.drain.unwrap_or(default_drain);
    let deadline = Instant::now() + drain;
    progress.bar.set_length((sent_for + drain).as_secs());
    let min_drain = Instant::now() + every + Duration::from_millis(50);
    loop {
        let outstanding = world.undelivered();
        let now = Instant::now();
        if now >= deadline || (outstanding == 0 && now >= min_drain) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = users.stop_polls.send(true);
    while users.pollers.join_next().await.is_some() {}
    progress.finish();
    users.started.elapsed()
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
