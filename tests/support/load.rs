//! Load for the fault tests: senders that keep sending and record what was acknowledged, and a
//! client polling with the cursor as a chat client does.

use super::client::Api;
use super::cluster::Cluster;
use super::contract::uuid_of;
use super::wait::{blocking, wait_until};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Users with a session each, sending to one receiver.
pub struct Party {
    pub receiver: i64,
    pub receiver_session: String,
    pub senders: Vec<String>,
}

impl Party {
    /// `{prefix}-receiver` and `senders` users `{prefix}-sender-{i}`, each with a session.
    pub async fn create(api: &Api, prefix: &str, senders: usize) -> Self {
        let receiver = api.user(&format!("{prefix}-receiver")).await;
        let receiver_session = api.session(receiver).await;
        let mut sessions = Vec::new();
        for i in 0..senders {
            let id = api.user(&format!("{prefix}-sender-{i}")).await;
            sessions.push(api.session(id).await);
        }
        Self { receiver, receiver_session, senders: sessions }
    }

    /// Every sender sends `per_sender` messages, all at once; returns the acknowledged uuids.
    pub async fn send_all(&self, api: &Api, per_sender: usize) -> HashSet<String> {
        let tasks: Vec<_> = self
            .senders
            .iter()
            .enumerate()
            .map(|(i, session)| {
                let (api, session, rx) = (api.clone(), session.clone(), self.receiver);
                tokio::spawn(async move {
                    let mut acked = Vec::with_capacity(per_sender);
                    for n in 0..per_sender {
                        acked.push(uuid_of(&api.send(&session, rx, &format!("{i}/{n}")).await));
                    }
                    acked
                })
            })
            .collect();
        let mut acked = HashSet::new();
        for t in tasks {
            acked.extend(t.await.expect("sender task"));
        }
        acked
    }
}

/// Senders that send until stopped, each at most one message per `pace`, recording every
/// acknowledged uuid — and every answer that was not a `200`.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashSet<String>>>,
    /// How many sends were acknowledged (the size of `acked`), readable without the lock.
    count: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// Starts one sending task per sender of `party`.
    pub fn start(api: &Api, party: &Party, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let tasks = party
            .senders
            .iter()
            .enumerate()
            .map(|(i, session)| {
                let (api, session, rx) = (api.clone(), session.clone(), party.receiver);
                let (stop, acked, count) = (stop.clone(), acked.clone(), count.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let mut tick = tokio::time::interval(pace);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        n += 1;
                        match api.try_send(&session, rx, &format!("{i}/{n}")).await {
                            Ok(r) if r.status == 200 => {
                                acked.lock().unwrap().insert(uuid_of(r.response()));
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures.push(format!("{}: {}", r.status, r.text())),
                            Err(e) => {
                                // The server is gone (or killed on purpose): stop this sender.
                                failures.push(format!("no answer: {e}"));
                                break;
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        Self { stop, acked, count, tasks }
    }

    /// How many sends have been acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The number of acknowledged sends, for a thread to watch the progress.
    pub fn acked_counter(&self) -> Arc<AtomicUsize> {
        self.count.clone()
    }

    /// Waits until `more` further sends have been acknowledged.
    pub async fn progress(&self, more: usize, what: &str) {
        let target = self.acked() + more;
        wait_until(&format!("{more} more acknowledged sends {what}"), Duration::from_secs(30), || async {
            self.acked() >= target
        })
        .await;
    }

    /// Stops the senders; every send must have been answered `200`. Returns the acknowledged.
    pub async fn finish(self) -> HashSet<String> {
        let (acked, failures) = self.stop_and_collect().await;
        assert!(failures.is_empty(), "{} sends were not acknowledged, e.g. {:?}", failures.len(), &failures[..1]);
        acked
    }

    /// Stops the senders and returns the acknowledged uuids and every failed send (as text,
    /// `no answer: …` when there was none), for a test that expects failures.
    pub async fn stop_and_collect(self) -> (HashSet<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.expect("load task"));
        }
        (Arc::try_unwrap(self.acked).expect("tasks done").into_inner().unwrap(), failures)
    }
}

/// A client polling one mailbox with the cursor, as a chat client does, until stopped.
pub struct Poller {
    stop: Arc<AtomicBool>,
    polls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Poller {
    /// Starts polling `session`'s mailbox every 10 ms.
    pub fn start(api: &Api, session: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicUsize::new(0));
        let task = {
            let (api, session, stop, polls) = (api.clone(), session.to_owned(), stop.clone(), polls.clone());
            tokio::spawn(async move {
                let (mut seen, mut failures) = (Vec::new(), Vec::new());
                let mut path = format!("/api/messages/{session}");
                while !stop.load(Ordering::Relaxed) {
                    match api.try_call("GET", &path, None).await {
                        Ok(r) if r.status == 200 => {
                            seen.extend(r.response().as_array().expect("messages").iter().map(uuid_of));
                            let c = &r.json["meta"]["cursor"];
                            path = format!("/api/messages/{session}/{}/{}", c["unix"], c["nano"]);
                            polls.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("{}: {}", r.status, r.text())),
                        Err(e) => failures.push(format!("no answer: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (seen, failures)
            })
        };
        Self { stop, polls, task }
    }

    /// How many polls were answered so far.
    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::Relaxed)
    }

    /// Stops polling; every poll must have answered `200`. Returns the uuids received, in order.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let (seen, failures) = self.task.await.expect("poller task");
        assert!(failures.is_empty(), "{} polls failed, e.g. {:?}", failures.len(), &failures[..1]);
        seen
    }
}

/// What a poller received is a subset of the acknowledged messages, each received once.
#[track_caller]
pub fn assert_received_once(seen: &[String], acked: &HashSet<String>) {
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a poller received a message twice");
    assert!(seen.iter().all(|u| acked.contains(u)), "a poller received a message that was never acknowledged");
}

/// Sets the flag when dropped: stops a helper thread also when the test panics.
pub struct SetOnDrop(pub Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts the throwaway cluster again and waits until chatbus reports ready on it.
pub async fn start_and_wait_ready(cluster: &Arc<Cluster>, api: &Api) {
    let c = cluster.clone();
    blocking(move || c.start()).await;
    wait_until("/readyz 200 once PostgreSQL is back", Duration::from_secs(20), || async {
        api.readyz().await.status == 200
    })
    .await;
}
