//! A server joining the cluster at start ([`Node::join`]) and leaving it at stop.
//!
//! Joining, after the engine was restored from PostgreSQL (the state at the store's log
//! position): connect to NATS, open the stream and read its extent (retrying while NATS is
//! unreachable or the stream has no leader yet, for at most `--connect-timeout`), check that the
//! store's position still fits the stream, start the [`Applier`] from that position, wait until
//! it has applied every entry the stream held when asked, and only then hand the engine its
//! [`ClusterLink`] and start publishing this node's session activity. The server accepts
//! connections after that: a node serves nothing older than the log it joined.
//!
//! **Retention.** The stream is made without an age limit, and the nodes trim it: every
//! [`retention_interval`] each node reads the position PostgreSQL holds (`log_position`) and
//! removes the entries up to the position it read at least `--message-ttl` (and at least
//! `MIN_KEEP`, 10 s: longer than a publish retries under one id) before ([`Retention`]). So an
//! entry leaves the stream only once the store holds it *and* it is older than the message TTL
//! (a message that old has left every mailbox; a running node that far behind cannot catch up
//! anyway). An age limit (`max_age`) alone would also drop entries the store does not hold yet:
//! after every node crashed with its last writes unwritten (the store trails the
//! acknowledgements) and stayed down longer than the TTL, no node could start again —
//! acknowledged users, sessions and contacts in those entries would be lost, and the store's
//! position would no longer fit the stream (`tests/cluster_nodes.rs` crashes the whole cluster
//! while PostgreSQL lags, and restarts it after the TTL).

use super::{resume_position, Applier, ApplierError, Log, LogConfig, Position};
use crate::config::Config;
use crate::engine::{ClusterLink, Engine};
use crate::server::StartError;
use crate::store::LogPosition;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long one request to NATS may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a message id is remembered for deduplication: far longer than a publish retries.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The youngest an entry may be when the nodes trim it, however short `--message-ttl`: longer
/// than a write retries its publish under one id (`engine::cluster::PUBLISH_DEADLINE`, 5 s), so
/// that a retry always finds the first publish still in the stream to be deduplicated against.
const MIN_KEEP: Duration = Duration::from_secs(10);

/// A node's cluster tasks: the applier, the publisher of its session activity, and the
/// trimming of the stream.
#[derive(Debug)]
pub struct Node {
    applier: JoinHandle<ApplierError>,
    activity: JoinHandle<()>,
    retention: JoinHandle<()>,
}

/// How often a node publishes the sessions it served and a tick: a quarter of the shorter TTL,
/// between 100 ms and 1 s (a session's activity is known cluster-wide that much later).
pub fn activity_interval(session_ttl: Duration, message_ttl: Duration) -> Duration {
    (session_ttl.min(message_ttl) / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// The settings applying the log depends on (`Engine::apply`), as one line: every node must
/// run with the same (the store records the first node's, and a node that differs refuses to
/// start).
pub fn settings(config: &Config) -> String {
    format!(
        "--session-ttl {} --message-ttl {} --mailbox-capacity {} --max-users {} --max-sessions-per-user {} \
         --max-contacts-per-user {}",
        humantime::format_duration(config.session_ttl),
        humantime::format_duration(config.message_ttl),
        config.mailbox_capacity,
        config.max_users,
        config.max_sessions_per_user,
        config.max_contacts_per_user
    )
}

impl Node {
    /// Joins `engine`, restored from a store holding `positions`, to the cluster log at `url`
    /// (see the module doc).
    pub async fn join(
        url: &str,
        config: &Config,
        engine: &Arc<Engine>,
        positions: &[(String, LogPosition)],
    ) -> Result<Self, StartError> {
        let stream = config.nats_stream.as_str();
        let fail = |reason: String| StartError::Cluster { url: url.to_owned(), stream: stream.to_owned(), reason };
        let log_config = LogConfig {
            // No age limit: the nodes trim the stream once the store holds what they remove
            // (see the module doc).
            max_age: Duration::ZERO,
            replicas: usize::from(config.nats_replicas),
            duplicate_window: DUPLICATE_WINDOW,
            timeout: NATS_TIMEOUT,
        };
        let give_up = Instant::now() + config.connect_timeout;
        let log = loop {
            match Log::open(url, stream, log_config).await {
                Ok(log) => break log,
                Err(e) if Instant::now() >= give_up => return Err(fail(e.to_string())),
                Err(e) => {
                    tracing::warn!("cannot reach the cluster log yet, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let from = resume_position(positions, stream);
        // A stream just made, or electing its leader (a NATS cluster starting), may not answer
        // yet: also within --connect-timeout.
        let extent = loop {
            match log.extent().await {
                Ok(extent) => break extent,
                Err(e) if Instant::now() >= give_up => return Err(fail(e.to_string())),
                Err(e) => {
                    tracing::warn!("cannot read the cluster log's extent yet, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        check_fits(from, extent.first_seq, extent.last_seq).map_err(fail)?;
        tracing::info!(from = from.seq, to = extent.last_seq, "catching up with the cluster log");
        let (handle, mut applier) = Applier::start(log.clone(), engine.clone(), from);
        tokio::select! {
            caught_up = handle.wait_applied(extent.last_seq) => {
                if caught_up.is_err() {
                    let why = (&mut applier).await.map_or_else(|e| e.to_string(), |e| e.to_string());
                    return Err(fail(format!("applying the log failed: {why}")));
                }
            }
            ended = &mut applier => {
                let why = ended.map_or_else(|e| e.to_string(), |e| e.to_string());
                return Err(fail(format!("applying the log failed: {why}")));
            }
        }
        tracing::info!(at = extent.last_seq, "caught up with the cluster log");
        engine.join_cluster(ClusterLink::new(log.clone(), handle));
        let interval = activity_interval(config.session_ttl, config.message_ttl);
        let activity = tokio::spawn({
            let engine = engine.clone();
            async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    engine.publish_activity().await;
                }
            }
        });
        let retention = tokio::spawn(trim(log, config.database_url.clone(), config.message_ttl));
        Ok(Self { applier, activity, retention })
    }

    /// Stops publishing, trimming and applying: what was applied is queued to the store already.
    pub async fn stop(self) {
        self.activity.abort();
        self.retention.abort();
        self.applier.abort();
        let _ = self.activity.await;
        let _ = self.retention.await;
        let _ = self.applier.await;
    }
}

/// How often a node reads the store's position and trims the stream, for entries kept `keep`:
/// a quarter of that, between 1 s and 1 min.
pub fn retention_interval(keep: Duration) -> Duration {
    (keep / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Which entries may leave the stream (see the module doc): those up to a position the store
/// held at least `keep` (the message TTL) ago.
#[derive(Debug)]
pub struct Retention {
    keep: Duration,
    /// The store's positions as read, oldest first: at most one older than `keep` is kept.
    seen: VecDeque<(Instant, u64)>,
    /// How far the stream was trimmed by this node.
    trimmed: u64,
}

impl Retention {
    /// Nothing seen, nothing trimmed.
    pub fn new(keep: Duration) -> Self {
        Self { keep, seen: VecDeque::new(), trimmed: 0 }
    }

    /// The store held the log up to `seq` at `at`.
    pub fn saw(&mut self, at: Instant, seq: u64) {
        self.seen.push_back((at, seq));
    }

    /// The entry up to which the stream may be trimmed at `now`, if that is further than it was.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        let old_enough = |at: Instant| now.saturating_duration_since(at) >= self.keep;
        while self.seen.len() > 1 && old_enough(self.seen[1].0) {
            self.seen.pop_front();
        }
        let &(at, seq) = self.seen.front()?;
        (old_enough(at) && seq > self.trimmed).then_some(seq)
    }

    /// The stream was trimmed up to `seq`.
    pub fn trimmed(&mut self, seq: u64) {
        self.trimmed = self.trimmed.max(seq);
    }
}

/// The node's retention task (see the module doc): reads the store's position every
/// [`retention_interval`] and trims the stream up to the position read a message TTL (at least
/// [`MIN_KEEP`]) before. A failed read or trim is logged and tried again at the next round.
async fn trim(log: Log, database_url: String, message_ttl: Duration) {
    let keep = message_ttl.max(MIN_KEEP);
    let mut retention = Retention::new(keep);
    let mut rounds = tokio::time::interval(retention_interval(keep));
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        rounds.tick().await;
        match stored_seq(&database_url, log.stream_name()).await {
            Ok(seq) => retention.saw(Instant::now(), seq),
            Err(e) => tracing::warn!("cannot read the store's log position to trim the cluster log: {e}"),
        }
        let Some(through) = retention.due(Instant::now()) else { continue };
        match log.trim_through(through).await {
            Ok(removed) => {
                tracing::debug!(through, removed, "trimmed the cluster log");
                retention.trimmed(through);
            }
            Err(e) => tracing::warn!("cannot trim the cluster log: {e}"),
        }
    }
}

/// The position the store at `database_url` holds for `stream` (0: none yet), over a connection
/// of its own.
async fn stored_seq(database_url: &str, stream: &str) -> Result<u64, String> {
    const LIMIT: Duration = Duration::from_secs(5);
    let config: tokio_postgres::Config = database_url.parse().map_err(|e| format!("{e}"))?;
    let read = async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        let row = client.query_opt("SELECT seq FROM log_position WHERE stream = $1", &[&stream]).await;
        drop(client);
        let _ = connection.await;
        row
    };
    let row = tokio::time::timeout(LIMIT, read)
        .await
        .map_err(|_| format!("no answer within {LIMIT:?}"))?
        .map_err(|e| e.to_string())?;
    Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
}

/// Whether a store at `from` can go on with a stream holding `first..=last`: it must not be past
/// the stream's end (a stream made anew under the same name) nor before its start (entries it
/// lacks were removed from the stream).
fn check_fits(from: Position, first: u64, last: u64) -> Result<(), String> {
    if from.seq > last {
        Err(format!(
            "the store holds this log up to entry {} but the stream ends at {last}: was the stream made anew? \
             (use a new --nats-stream, or an empty database)",
            from.seq
        ))
    } else if from.seq + 1 < first {
        Err(format!(
            "the store holds this log up to entry {} but the stream starts at {first}: the entries in between \
             are gone from the stream (expired or purged) and cannot be replayed",
            from.seq
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> Position {
        Position { seq, ..Position::default() }
    }

    #[test]
    fn a_store_fits_a_stream_it_can_go_on_with() {
        assert!(check_fits(at(0), 1, 0).is_ok(), "a new store, a new stream");
        assert!(check_fits(at(0), 1, 10).is_ok(), "a new store replays the whole stream");
        assert!(check_fits(at(10), 11, 10).is_ok(), "everything written, the stream emptied by age");
        assert!(check_fits(at(5), 3, 10).is_ok());
        assert!(check_fits(at(5), 7, 10).unwrap_err().contains("expired"));
        assert!(check_fits(at(11), 1, 10).unwrap_err().contains("made anew"));
    }

    #[test]
    fn the_stream_is_trimmed_only_up_to_what_the_store_held_a_ttl_ago() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut r = Retention::new(s(10));
        assert_eq!(r.due(t0), None, "nothing seen");
        r.saw(t0, 100);
        assert_eq!(r.due(t0 + s(9)), None, "the store held 100 for less than the TTL");
        r.saw(t0 + s(5), 150);
        assert_eq!(r.due(t0 + s(10)), Some(100));
        r.trimmed(100);
        assert_eq!(r.due(t0 + s(12)), None, "trimmed that far already");
        r.saw(t0 + s(12), 150);
        assert_eq!(r.due(t0 + s(15)), Some(150), "the newest position a TTL old");
        r.trimmed(150);
        assert_eq!(r.due(t0 + s(30)), None, "the store did not move on");
        assert_eq!(retention_interval(s(300)), s(60));
        assert_eq!(retention_interval(s(2)), s(1));
    }

    #[test]
    fn activity_is_published_often_enough_for_the_ttls() {
        let s = Duration::from_secs;
        assert_eq!(activity_interval(s(300), s(300)), s(1));
        assert_eq!(activity_interval(s(2), s(300)), Duration::from_millis(500));
        assert_eq!(activity_interval(Duration::from_millis(100), s(300)), Duration::from_millis(100));
    }
}
