//! The cluster's log: one JetStream stream of [`Command`]s, over the `async-nats` client.
//!
//! - [`Log::open`] connects (to one or more comma-separated URLs: with a NATS cluster, give them
//!   all, and the client fails over between them) and creates the stream if it is missing, with
//!   one subject (`<stream>.log`), file storage, `max_age` (nodes make it with none: they trim
//!   it themselves with [`Log::trim_through`], see `node`), the replica count, and the duplicate
//!   window.
//! - [`Log::publish`] appends a command under a message id (`Nats-Msg-Id`) and returns once
//!   JetStream acknowledged it — stored, and with replicas on a quorum of them — with its stream
//!   sequence. Within the duplicate window a second publish with the same id is not stored again:
//!   the ack says `duplicate` and names the first one's sequence. So **a publisher that got an
//!   error retries with the same id**: an error does not mean "not stored" (the ack may have been
//!   lost, or the client may still deliver a publish it buffered while disconnected), and the
//!   retry is what turns "maybe" into exactly once.
//! - [`Log::read_from`] reads the stream in order from a sequence number, then waits for more,
//!   through an ordered pull consumer (ephemeral, no acks). It survives NATS going away: when the
//!   client reconnects, or the consumer fails, it makes a new consumer from the sequence after the
//!   last one it delivered, so the entries it yields stay contiguous. It does the same when it
//!   has had nothing for a second although the stream holds more (its consumer died with a NATS
//!   cluster server while the client stayed connected to another): one stream-info request per
//!   idle second. The client's own ordered consumer only notices a lost consumer after two
//!   missed 15 s heartbeats; the tests caught both cases.
//! - **After a reconnection it takes nothing more from the old consumer.** A NATS server that
//!   restarts brings its consumers back and may deliver from its own copy of the stream before
//!   JetStream has reconciled the copies. After the whole 3-server NATS cluster was SIGKILLed,
//!   readers that took such entries (the reconnection raced with them) fed their nodes entries
//!   the others never saw, and skipped theirs: nodes diverged, showing messages no other node had
//!   and lacking acknowledged ones (`tests/cluster_nodes.rs`, one run in a few). So a
//!   reconnection wins over a waiting entry, and an entry that arrives once the client has
//!   reconnected is dropped for a new consumer's.
//! - **It checks where it resumes.** The first entry of every new consumer (made by the reader,
//!   or again by the client after an error) is compared with what the stream's leader holds under
//!   its number (timestamp and message id): if it differs — the consumer lives on a server whose
//!   copy is not reconciled yet; seen after the whole NATS cluster crashed — nothing of that
//!   consumer is taken, and a new one is made a moment later. The last entry yielded before is
//!   checked too: if the leader holds another entry under its number, what this node applied is
//!   no longer the log, and the reader yields [`LogError::Inconsistent`] and ends: the node stops
//!   rather than diverge. Two requests per new consumer.
//! - **For a minute after a reconnection it checks every entry** the same way (one request each,
//!   so a round trip to the leader per entry bounds how fast a node applies meanwhile; not
//!   measured): a restarted server's copy can agree with the leader on the first entry a consumer delivers and differ further on
//!   (after the whole 3-server NATS cluster was stopped and restarted, one node took such entries
//!   and diverged from the 310th message on, once in many runs). An entry the leader does not
//!   hold as delivered is not taken; a new consumer is made a moment later.
//!
//! Every error is a [`LogError`] that says in one line what failed.

use super::command::Command;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How the stream is made when it does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// How long the stream keeps an entry (zero: until [`Log::trim_through`] removes it, which
    /// is how nodes run it: an age limit would also drop entries the store does not hold yet).
    pub max_age: Duration,
    /// How many NATS servers hold a copy (1, or 3 on a 3-server NATS cluster).
    pub replicas: usize,
    /// How long a message id is remembered for deduplication: longer than any publisher retries.
    /// Capped at `max_age` (JetStream refuses a longer one).
    pub duplicate_window: Duration,
    /// How long [`Log::publish`] and the other requests wait for the server's answer.
    pub timeout: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::ZERO,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            timeout: Duration::from_secs(2),
        }
    }
}

/// What JetStream answered to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The entry's stream sequence (for a duplicate, the sequence of the first publish).
    pub seq: u64,
    /// The message id was seen within the duplicate window: nothing new was stored.
    pub duplicate: bool,
}

/// One entry read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its stream sequence number (1, 2, 3, … with no gaps unless retention removed some).
    pub seq: u64,
    /// When the stream stored it, in nanoseconds since the Unix epoch (the stream leader's clock).
    pub timestamp_ns: i64,
    /// What it says.
    pub command: Command,
    /// The message id it was published under (`Nats-Msg-Id`), by which its publisher waits for
    /// its outcome; `None` if it was published without one.
    pub msg_id: Option<String>,
}

/// The extent of the log as the stream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The oldest entry still kept (`last + 1` when empty).
    pub first_seq: u64,
    /// The newest entry (0 when nothing was ever stored).
    pub last_seq: u64,
    /// How many entries it holds.
    pub entries: u64,
}

/// What went wrong with the log, in one line.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// No NATS server could be reached (or the connection broke before an answer).
    #[error("NATS unreachable: {0}")]
    Unreachable(String),
    /// The server did not answer in time; the publish may still have been stored (retry with the
    /// same message id).
    #[error("NATS did not answer within {0:?}")]
    Timeout(Duration),
    /// JetStream answered, and said no.
    #[error("JetStream refused: {0}")]
    Refused(String),
    /// What this node read and yielded under sequence number `seq` is not what the stream's
    /// leader holds there: the copies of the stream disagreed, or the stream lost entries this
    /// node had read and numbered others alike. A node that applied it cannot go on alike with
    /// the others.
    #[error(
        "the cluster log is inconsistent at entry {seq}: what this node read there is not what the stream holds \
         (did every NATS server crash at once?); this node stops rather than diverge"
    )]
    Inconsistent {
        /// The entry.
        seq: u64,
    },
    /// An entry is not a command this node understands.
    #[error("log entry {seq} unreadable: {reason}")]
    Unreadable {
        /// The entry.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// The stream of entries [`Log::read_from`] returns.
pub type Entries = Pin<Box<dyn Stream<Item = Result<Entry, LogError>> + Send>>;

/// A connection to the cluster's log. Cheap to clone; every clone shares the connection.
#[derive(Debug, Clone)]
pub struct Log {
    js: jetstream::Context,
    /// The connection, for its state.
    client: async_nats::Client,
    stream: String,
    subject: String,
    timeout: Duration,
    /// Counts the client's (re)connections, so readers know to make a new consumer.
    connections: watch::Receiver<u64>,
}

impl Log {
    /// The stream's name (where the stores keep this log's position, `Op::Logged`).
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// Connects to `urls` (comma-separated) and opens the stream `stream`, creating it with
    /// `config` if it does not exist. An existing stream is used as it is.
    pub async fn open(urls: &str, stream: &str, config: LogConfig) -> Result<Self, LogError> {
        let addrs = urls
            .split(',')
            .map(|url| url.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LogError::Unreachable(format!("{urls}: {e}")))?;
        let (connected, connections) = watch::channel(0u64);
        let connected = Arc::new(connected);
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        connected.send_modify(|n| *n += 1);
                    }
                }
            })
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout))
            // Reconnect fast (10 ms doubling to half a second), not the client's default 4 s:
            // while NATS is away this node answers writes 503, and every second counts.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(10u64.saturating_mul(1 << attempts.min(6))).min(Duration::from_millis(500))
            })
            .connect(addrs)
            .await
            .map_err(|e| LogError::Unreachable(format!("{urls}: {e}")))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.timeout);
        let subject = format!("{stream}.log");
        let duplicate_window = if config.max_age.is_zero() {
            config.duplicate_window
        } else {
            config.duplicate_window.min(config.max_age)
        };
        js.get_or_create_stream(stream::Config {
            name: stream.to_owned(),
            subjects: vec![subject.clone()],
            max_age: config.max_age,
            duplicate_window,
            num_replicas: config.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| LogError::Refused(format!("stream {stream}: {e}")))?;
        Ok(Self { js, client, stream: stream.to_owned(), subject, timeout: config.timeout, connections })
    }

    /// Whether the client is connected to a NATS server now (while it is not, a publish can only
    /// time out).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Appends `command` under `msg_id` and waits (at most the timeout) until JetStream stored it.
    /// On any error the command may or may not be stored: retry with the same `msg_id`.
    pub async fn publish(&self, msg_id: &str, command: &Command) -> Result<Stored, LogError> {
        let payload =
            serde_json::to_vec(command).map_err(|e| LogError::Refused(format!("command not serialisable: {e}")))?;
        let message = jetstream::message::PublishMessage::build().payload(payload.into()).message_id(msg_id);
        let publish = async {
            let ack = self
                .js
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|e| publish_error(e, self.timeout))?;
            ack.await.map_err(|e| publish_error(e, self.timeout))
        };
        match tokio::time::timeout(self.timeout, publish).await {
            Ok(Ok(ack)) => Ok(Stored { seq: ack.sequence, duplicate: ack.duplicate }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LogError::Timeout(self.timeout)),
        }
    }

    /// Removes every entry up to and including `seq` from the stream (a JetStream purge below
    /// `seq + 1`) and returns how many went. Only for entries the store holds and no node still
    /// has to read: the nodes trim the stream this way instead of letting it expire entries by
    /// age (see `node`'s retention). Entries removed already are no matter.
    pub async fn trim_through(&self, seq: u64) -> Result<u64, LogError> {
        let stream = self.stream().await?;
        let purged = tokio::time::timeout(self.timeout, stream.purge().sequence(seq.saturating_add(1)))
            .await
            .map_err(|_| LogError::Timeout(self.timeout))?
            .map_err(|e| self.request_error(e))?;
        Ok(purged.purged)
    }

    /// The log's first and last sequence numbers now.
    pub async fn extent(&self) -> Result<Extent, LogError> {
        // Getting the stream is a STREAM.INFO request: its answer is fresh.
        let stream = self.stream().await?;
        let info = stream.cached_info();
        Ok(Extent {
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            entries: info.state.messages,
        })
    }

    /// Every entry from sequence `from` (at least 1) on, in order, then each new one as it is
    /// stored; it ends only after [`LogError::Inconsistent`]. While NATS is away it waits, and it
    /// goes on where it was when NATS is back. An entry that cannot be decoded is an `Err` item,
    /// and the stream goes on after it. Fails only if the first consumer cannot be made.
    pub async fn read_from(&self, from: u64) -> Result<Entries, LogError> {
        let from = from.max(1);
        let mut connections = self.connections.clone();
        connections.mark_unchanged();
        let first = self.consumer_from(from).await?;
        let reader = Reader {
            log: self.clone(),
            next: from,
            last: None,
            inconsistent: false,
            verify_until: None,
            messages: Some(first),
            connections,
        };
        Ok(Box::pin(futures_util::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })))
    }

    /// An ordered consumer's messages from stream sequence `from` on.
    async fn consumer_from(&self, from: u64) -> Result<consumer::pull::Ordered, LogError> {
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
                ..Default::default()
            })
            .await
            .map_err(|e| self.request_error(e))?;
        consumer.messages().await.map_err(|e| self.request_error(e))
    }

    /// Whether the stream (its leader) holds `seen` under its sequence number, with the same
    /// timestamp and message id; `None` when it holds no entry under that number.
    async fn holds(&self, seen: &Seen) -> Result<Option<bool>, LogError> {
        use jetstream::stream::RawMessageErrorKind;
        let stream = self.stream().await?;
        let stored = tokio::time::timeout(self.timeout, stream.get_raw_message(seen.seq))
            .await
            .map_err(|_| LogError::Timeout(self.timeout))?;
        match stored {
            Ok(message) => {
                let timestamp_ns = i64::try_from(message.time.unix_timestamp_nanos()).unwrap_or(i64::MAX);
                let msg_id = message.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_owned());
                Ok(Some(timestamp_ns == seen.timestamp_ns && msg_id == seen.msg_id))
            }
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.request_error(e)),
        }
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream, LogError> {
        tokio::time::timeout(self.timeout, self.js.get_stream(&self.stream))
            .await
            .map_err(|_| LogError::Timeout(self.timeout))?
            .map_err(|e| self.request_error(e))
    }

    fn request_error(&self, e: impl std::fmt::Display) -> LogError {
        let text = e.to_string();
        if text.contains("timed out") {
            LogError::Timeout(self.timeout)
        } else if text.contains("no responders") || text.contains("broken pipe") || text.contains("disconnected") {
            LogError::Unreachable(format!("stream {}: {text}", self.stream))
        } else {
            LogError::Refused(format!("stream {}: {text}", self.stream))
        }
    }
}

/// What identifies an entry a reader yielded: its sequence number, and what the stream stored
/// under it (its timestamp and message id).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    seq: u64,
    timestamp_ns: i64,
    msg_id: Option<String>,
}

impl Seen {
    fn of(entry: &Entry) -> Self {
        Self { seq: entry.seq, timestamp_ns: entry.timestamp_ns, msg_id: entry.msg_id.clone() }
    }
}

/// The state behind [`Log::read_from`]'s stream.
struct Reader {
    log: Log,
    /// The sequence of the next entry to yield.
    next: u64,
    /// The last entry yielded: a new consumer's entries follow it only if the stream still
    /// holds it (see the module doc).
    last: Option<Seen>,
    /// Set once the log was found inconsistent: nothing more is read.
    inconsistent: bool,
    /// Until when every entry is checked against the stream's leader before it is taken: set at
    /// each reconnection (see the module doc).
    verify_until: Option<tokio::time::Instant>,
    /// The current consumer's messages; `None` after a failure, until a new one is made.
    messages: Option<consumer::pull::Ordered>,
    connections: watch::Receiver<u64>,
}

impl Reader {
    /// After a reconnection: a new consumer, and every entry checked for a while.
    fn reconnected(&mut self) {
        self.messages = None;
        self.verify_until = Some(tokio::time::Instant::now() + VERIFY_AFTER_RECONNECTION);
    }

    /// The next entry; `None` only when the connection is gone for good (the `Log` was dropped).
    async fn next(&mut self) -> Option<Result<Entry, LogError>> {
        /// How long to wait before making a consumer again after a failure.
        const RETRY: Duration = Duration::from_millis(100);
        /// How long without an entry before asking the stream whether the consumer is stuck.
        const STALLED: Duration = Duration::from_secs(1);
        /// How long to wait before a new consumer after one whose entry failed its check.
        const UNCHECKED: Duration = Duration::from_millis(250);
        if self.inconsistent {
            return None;
        }
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.log.consumer_from(self.next).await {
                    Ok(messages) => self.messages = Some(messages),
                    Err(_) => tokio::time::sleep(RETRY).await,
                }
                continue;
            };
            tokio::select! {
                // A reconnection first: no entry of the old consumer is taken after it.
                biased;
                changed = self.connections.changed() => {
                    changed.ok()?;
                    // Reconnected: the consumer may be gone with the server it lived on, or come
                    // back with what that server kept; a new one, checked (see the module doc).
                    self.reconnected();
                }
                message = messages.next() => match message {
                    // Reconnected while this arrived: as above.
                    Some(_) if self.connections.has_changed().unwrap_or(false) => {
                        self.connections.mark_unchanged();
                        self.reconnected();
                    }
                    Some(Ok(message)) => match entry(&message) {
                        // Left over from a consumer made before the last one was replaced.
                        Ok(entry) if entry.seq < self.next => {}
                        Ok(entry) => {
                            // The first entry of a new consumer (ours, or one the client made
                            // again): it and the last one read, against the stream's leader. Soon
                            // after a reconnection: every entry.
                            let checked = if message.info().is_ok_and(|info| info.consumer_sequence == 1) {
                                consistent_at(&self.log, self.last.as_ref(), &entry).await
                            } else if self.verify_until.is_some_and(|until| tokio::time::Instant::now() < until) {
                                leader_holds(&self.log, &entry).await.map(|()| None)
                            } else {
                                Ok(None)
                            };
                            match checked {
                                Ok(None) => {}
                                Ok(Some(seq)) => {
                                    self.inconsistent = true;
                                    return Some(Err(LogError::Inconsistent { seq }));
                                }
                                Err(e) => {
                                    // Not known yet, or this consumer's server delivers otherwise
                                    // than the leader holds (nothing of it was taken): a new
                                    // consumer, and the check again.
                                    tracing::warn!("cluster log: entry {} not taken: {e}", entry.seq);
                                    self.messages = None;
                                    tokio::time::sleep(UNCHECKED).await;
                                    continue;
                                }
                            }
                            self.next = entry.seq + 1;
                            self.last = Some(Seen::of(&entry));
                            return Some(Ok(entry));
                        }
                        Err(e) => {
                            if let LogError::Unreadable { seq, .. } = e {
                                self.next = self.next.max(seq + 1);
                            }
                            return Some(Err(e));
                        }
                    },
                    Some(Err(_)) | None => {
                        self.messages = None;
                        tokio::time::sleep(RETRY).await;
                    }
                },
                () = tokio::time::sleep(STALLED) => {
                    // Quiet, or stuck on a consumer whose server died while this client stayed
                    // connected elsewhere (a NATS cluster): the stream says which.
                    if self.log.extent().await.is_ok_and(|extent| extent.last_seq >= self.next) {
                        self.messages = None;
                    }
                }
            }
        }
    }
}

/// How long after a reconnection every entry a consumer delivers is checked against the stream's
/// leader before it is taken (a restarted NATS server's copy can differ from the leader's further
/// on than the first entry; see the module doc).
const VERIFY_AFTER_RECONNECTION: Duration = Duration::from_secs(60);

/// `Ok` if the stream's leader holds `entry` under its number, as the consumer delivered it.
async fn leader_holds(log: &Log, entry: &Entry) -> Result<(), LogError> {
    match log.holds(&Seen::of(entry)).await? {
        Some(true) => Ok(()),
        Some(false) => Err(LogError::Refused(format!(
            "the consumer delivered entry {} otherwise than the stream's leader holds it",
            entry.seq
        ))),
        None => Err(LogError::Refused(format!("entry {} is not in the stream's leader yet", entry.seq))),
    }
}

/// Whether `last`, the last entry yielded, is still what the stream (its leader) holds under its
/// number: `Some(seq)` if not — what this node applied is not the log any more. And whether
/// `first`, the first entry of a new consumer, is what the leader holds: an `Err` if not, or if
/// either is not known yet, and the consumer is not to be read (see the module doc).
async fn consistent_at(log: &Log, last: Option<&Seen>, first: &Entry) -> Result<Option<u64>, LogError> {
    if let Some(last) = last {
        match log.holds(last).await? {
            Some(true) => {}
            Some(false) => return Ok(Some(last.seq)),
            // Trimmed is fine (only trimming removes entries, and only once the store has held
            // them for a message TTL); missing from the leader's copy is not known yet.
            None if log.extent().await?.first_seq > last.seq => {}
            None => return Err(LogError::Refused(format!("entry {} is not in the stream's leader", last.seq))),
        }
    }
    leader_holds(log, first).await.map(|()| None)
}

/// Decodes one stored message into an [`Entry`].
fn entry(message: &jetstream::Message) -> Result<Entry, LogError> {
    let info = message.info().map_err(|e| LogError::Unreadable { seq: 0, reason: format!("no metadata: {e}") })?;
    let seq = info.stream_sequence;
    let timestamp_ns = i64::try_from(info.published.unix_timestamp_nanos())
        .map_err(|_| LogError::Unreadable { seq, reason: "timestamp out of range".into() })?;
    let command = serde_json::from_slice(&message.payload)
        .map_err(|e| LogError::Unreadable { seq, reason: format!("not a command: {e}") })?;
    let msg_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned());
    Ok(Entry { seq, timestamp_ns, command, msg_id })
}

fn publish_error(e: jetstream::context::PublishError, timeout: Duration) -> LogError {
    use jetstream::context::PublishErrorKind as Kind;
    match e.kind() {
        Kind::TimedOut => LogError::Timeout(timeout),
        // No responders: no JetStream server took the subject (down, or electing a leader).
        Kind::BrokenPipe | Kind::StreamNotFound => LogError::Unreachable(format!("publish: {e}")),
        _ => LogError::Refused(format!("publish: {e}")),
    }
}
