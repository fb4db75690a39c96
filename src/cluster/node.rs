//! A server joining the cluster at start ([`Node::join`]) and leaving it at stop.
//!
//! Joining, after the engine was restored from PostgreSQL (the state at the store's log
//! position): connect to NATS and open the stream (retrying while NATS is unreachable, for at
//! most `--connect-timeout`), check that the store's position still fits the stream, start the
//! [`Applier`] from that position, wait until it has applied every entry the stream held when
//! asked, and only then hand the engine its [`ClusterLink`] and start publishing this node's
//! session activity. The server accepts connections after that: a node serves nothing older
//! than the log it joined.

use super::{resume_position, Applier, ApplierError, Log, LogConfig, Position};
use crate::config::Config;
use crate::engine::{ClusterLink, Engine};
use crate::server::StartError;
use crate::store::LogPosition;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long one request to NATS may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a message id is remembered for deduplication: far longer than a publish retries.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A node's cluster tasks: the applier, and the publisher of its session activity.
#[derive(Debug)]
pub struct Node {
    applier: JoinHandle<ApplierError>,
    activity: JoinHandle<()>,
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
            // A message older than its TTL has left every mailbox; the rest is in PostgreSQL.
            max_age: config.message_ttl,
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
        let extent = log.extent().await.map_err(|e| fail(e.to_string()))?;
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
        engine.join_cluster(ClusterLink::new(log, handle));
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
        Ok(Self { applier, activity })
    }

    /// Stops publishing and applying: what was applied is queued to the store already.
    pub async fn stop(self) {
        self.activity.abort();
        self.applier.abort();
        let _ = self.activity.await;
        let _ = self.applier.await;
    }
}

/// Whether a store at `from` can go on with a stream holding `first..=last`: it must not be past
/// the stream's end (a stream made anew under the same name) nor before its start (entries it
/// lacks expired from the stream).
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
             expired from the stream (older than --message-ttl) and cannot be replayed",
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
    fn activity_is_published_often_enough_for_the_ttls() {
        let s = Duration::from_secs;
        assert_eq!(activity_interval(s(300), s(300)), s(1));
        assert_eq!(activity_interval(s(2), s(300)), Duration::from_millis(500));
        assert_eq!(activity_interval(Duration::from_millis(100), s(300)), Duration::from_millis(100));
    }
}
