//! The simulated users: what they share (the [`World`]), the check of every poll answer against
//! what was sent, and the two tasks each user runs, [`poller`] and [`sender`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatbus_loadtest::api::Cursor;
use chatbus_loadtest::client::{Api, Poll};
use hdrhistogram::Histogram;
use tokio::sync::watch;
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
    pub(crate) polls: AtomicU64,
    pub(crate) poll_errors: AtomicU64,
    pub(crate) poll_bytes: AtomicU64,
    pub(crate) messages_seen: AtomicU64,
    pub(crate) gaps: AtomicU64,
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
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Acknowledged sends not delivered (yet).
    pub(crate) fn undelivered(&self) -> u64 {
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

#[allow(clippy::too_many_arguments)]
pub(crate) async fn sender(
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
