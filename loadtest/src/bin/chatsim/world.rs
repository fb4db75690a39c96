//! The simulated users: what they share (the [`World`]), the check of every poll answer and
//! every streamed message against what was sent, and the two tasks each user runs: a receiver
//! ([`poller`] here, the push transports' in `push.rs`) and a [`sender`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatbus_loadtest::api::{Cursor, Message};
use chatbus_loadtest::client::{Api, Poll};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, Instant, MissedTickBehavior};

/// A simulated user.
pub(crate) struct SimUser {
    pub(crate) id: i64,
    pub(crate) session: String,
    pub(crate) contacts: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendState {
    InFlight,
    Acked,
    Failed,
}

/// One send, at index `seq` of its sender's outbox.
pub(crate) struct Sent {
    pub(crate) receiver: u32,
    pub(crate) sent_ns: u64,
    pub(crate) state: SendState,
    pub(crate) deliveries: u32,
}

#[derive(Default)]
pub(crate) struct Counters {
    /// Poll answers (plain or long-poll).
    pub(crate) polls: AtomicU64,
    /// Failed polls, and failed stream or socket connects.
    pub(crate) poll_errors: AtomicU64,
    /// Bytes received by the receivers (poll answers, stream bodies, socket frames).
    pub(crate) poll_bytes: AtomicU64,
    pub(crate) messages_seen: AtomicU64,
    /// `meta.gap: true` answers, `event: gap` events, `gap` frames.
    pub(crate) gaps: AtomicU64,
    /// Streams (SSE) or sockets (WebSocket) opened, reconnects included.
    pub(crate) streams_opened: AtomicU64,
    /// Users whose stream or socket is open now.
    pub(crate) streams_open: AtomicU64,
    /// Users connected at least once: stream or socket opened, or (long-poll) a first poll
    /// answered on a connection of its own.
    pub(crate) ready: AtomicU64,
    /// Streams or sockets that ended while the run still wanted them.
    pub(crate) stream_drops: AtomicU64,
    /// `: ping` comments and WebSocket pings received.
    pub(crate) pings: AtomicU64,
    pub(crate) sends_acked: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) delivered_unacked: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) corrupt: AtomicU64,
    pub(crate) bad_cursor: AtomicU64,
}

/// Everything the user tasks share.
pub(crate) struct World {
    pub(crate) start: Instant,
    pub(crate) users: Vec<SimUser>,
    pub(crate) by_id: HashMap<i64, u32>,
    /// Per sender, indexed by sequence number. A send is recorded before its POST goes out,
    /// because the receiver's poll may see the message before the sender sees the 200.
    pub(crate) outbox: Vec<Mutex<Vec<Sent>>>,
    pub(crate) c: Counters,
    pub(crate) delivery_us: Mutex<Histogram<u64>>,
    pub(crate) poll_us: Mutex<Histogram<u64>>,
    pub(crate) send_us: Mutex<Histogram<u64>>,
    pub(crate) errors: Mutex<Vec<String>>,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl World {
    pub(crate) fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Sends acknowledged, or not answered yet (a WebSocket's), and not delivered (yet).
    pub(crate) fn undelivered(&self) -> u64 {
        let mut n = 0;
        for outbox in &self.outbox {
            n += outbox.lock().unwrap().iter().filter(|s| s.state != SendState::Failed && s.deliveries == 0).count()
                as u64;
        }
        n
    }

    pub(crate) fn error(&self, e: anyhow::Error) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 5 {
            errors.push(format!("{e:#}"));
        }
    }

    /// Checks one poll answer of user `me` for `cutoff`; returns the next cutoff.
    pub(crate) fn check(
        &self,
        me: u32,
        cutoff: Cursor,
        poll: &Poll,
        now_ns: u64,
        last_seq: &mut HashMap<u32, u64>,
    ) -> Cursor {
        let c = &self.c;
        c.poll_bytes.fetch_add(poll.bytes as u64, Relaxed);
        c.messages_seen.fetch_add(poll.messages.len() as u64, Relaxed);
        if poll.gap {
            c.gaps.fetch_add(1, Relaxed);
        }
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
            self.deliver(me, m, repeated, now_ns, last_seq);
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

    /// Checks one message that user `me`'s stream (SSE event or WebSocket frame) carried with
    /// position `id`, the stream having been at `position` (the last message's id, or where it
    /// started); returns the stream's new position. On a stream every message must come after
    /// the one before it, and its `id` must be its `created_utc`.
    pub(crate) fn check_event(
        &self,
        me: u32,
        position: Option<Cursor>,
        id: Option<Cursor>,
        m: &Message,
        now_ns: u64,
        last_seq: &mut HashMap<u32, u64>,
    ) -> Option<Cursor> {
        let c = &self.c;
        c.messages_seen.fetch_add(1, Relaxed);
        let Some(ts) = Cursor::parse_rfc3339(&m.created_utc) else {
            c.corrupt.fetch_add(1, Relaxed);
            return position.max(id);
        };
        if id != Some(ts) {
            c.bad_cursor.fetch_add(1, Relaxed);
        }
        let repeated = position.is_some_and(|p| ts <= p);
        if let Delivery::First { in_order: true } = self.deliver(me, m, repeated, now_ns, last_seq) {
            if repeated {
                // New to us, yet not after what the stream already sent: it came late.
                c.out_of_order.fetch_add(1, Relaxed);
            }
        }
        position.max(Some(ts))
    }

    /// Accounts for message `m` delivered to user `me`: a first delivery records its latency
    /// and checks the order of its sender's sequence numbers; `repeated` (at or before what the
    /// receiver had already seen) tells a repeat of the user's own copy.
    fn deliver(&self, me: u32, m: &Message, repeated: bool, now_ns: u64, last_seq: &mut HashMap<u32, u64>) -> Delivery {
        let c = &self.c;
        let my_id = self.users[me as usize].id;
        let Some((sender, seq, sent_ns)) = parse_body(&m.body) else {
            c.corrupt.fetch_add(1, Relaxed);
            return Delivery::Corrupt;
        };
        let Some(user) = self.users.get(sender as usize).filter(|u| u.id == m.sender_id) else {
            c.corrupt.fetch_add(1, Relaxed);
            return Delivery::Corrupt;
        };
        let Some(&receiver) = self.by_id.get(&m.receiver_id) else {
            c.corrupt.fetch_add(1, Relaxed);
            return Delivery::Corrupt;
        };
        let mut outbox = self.outbox[sender as usize].lock().unwrap();
        let Some(sent) = outbox.get_mut(seq as usize).filter(|s| s.receiver == receiver && s.sent_ns == sent_ns) else {
            c.corrupt.fetch_add(1, Relaxed);
            return Delivery::Corrupt;
        };
        if m.receiver_id != my_id {
            // The sender's own copy in its own mailbox: only order and repeats matter.
            if user.id != my_id {
                c.corrupt.fetch_add(1, Relaxed); // someone else's message
                return Delivery::Corrupt;
            } else if repeated {
                c.duplicated.fetch_add(1, Relaxed);
                return Delivery::Again;
            }
            return Delivery::OwnCopy;
        }
        sent.deliveries += 1;
        if sent.deliveries > 1 {
            c.duplicated.fetch_add(1, Relaxed);
            return Delivery::Again;
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
                Delivery::First { in_order: false }
            }
            Some(last) => {
                *last = seq;
                Delivery::First { in_order: true }
            }
            None => {
                last_seq.insert(sender, seq);
                Delivery::First { in_order: true }
            }
        }
    }

    /// Settles user `me`'s send `seq` (acknowledged or failed) if it is still in flight;
    /// returns when it was sent, or `None` when there is no such send in flight.
    pub(crate) fn settle(&self, me: u32, seq: usize, state: SendState) -> Option<u64> {
        let mut outbox = self.outbox[me as usize].lock().unwrap();
        let sent = outbox.get_mut(seq).filter(|s| s.state == SendState::InFlight)?;
        sent.state = state;
        Some(sent.sent_ns)
    }
}

/// What [`World::deliver`] made of a message.
enum Delivery {
    /// Not one we sent to that user (counted).
    Corrupt,
    /// Delivered before (counted as duplicated).
    Again,
    /// The receiver's copy of its own send, the first time.
    OwnCopy,
    /// A first delivery; `in_order: false` when its sequence number was already passed (counted).
    First { in_order: bool },
}

/// `cs <sender> <seq> <sent_ns> ...`
pub(crate) fn parse_body(body: &str) -> Option<(u32, u64, u64)> {
    let mut words = body.split(' ');
    if words.next()? != "cs" {
        return None;
    }
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// Text after the header so bodies have a realistic size.
const FILLER: &str = "are we still on for lunch tomorrow? I can be there by half past twelve if the \
train is on time, otherwise a bit later; let me know what suits you best. ";

pub(crate) async fn poller(
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

/// How a user's sends go out.
#[derive(Clone)]
pub(crate) enum SendVia {
    /// `POST /api/message/:session`; the 200 is the acknowledgement.
    Http(Api),
    /// A `send` frame on the user's WebSocket, written by its socket task (`push::ws_user`),
    /// which also takes the `sent` frame that acknowledges it.
    Socket(mpsc::Sender<Outgoing>),
}

/// A send handed to a user's socket task: the outbox entry `seq` it stands for.
pub(crate) struct Outgoing {
    pub(crate) seq: usize,
    pub(crate) receiver_id: i64,
    pub(crate) body: String,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn sender(
    world: Arc<World>,
    via: SendVia,
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
        let receiver_id = world.users[to as usize].id;
        let api = match &via {
            SendVia::Http(api) => api,
            SendVia::Socket(socket) => {
                // Acknowledged (or failed) by the socket task when the answer comes.
                if socket.send(Outgoing { seq, receiver_id, body }).await.is_err() {
                    world.c.send_errors.fetch_add(1, Relaxed);
                    world.settle(me, seq, SendState::Failed);
                }
                continue;
            }
        };
        let t = Instant::now();
        let result = api.send(&user.session, receiver_id, &body).await;
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
