//! What the log carries ([`Command`]) and the deterministic part of applying it ([`Sequencer`]).
//!
//! A [`Command`] is a mutation as the node that accepted it understood it, *before* the log gave it
//! a place: it holds what the client sent plus what must be chosen once, by the publisher, so that
//! every node applies the same thing (a new session's uuid — random, hence not derivable — and
//! every id a client named). It holds nothing the log decides: no timestamp, no user id. Those
//! come from the [`Sequencer`], which every node runs over the same entries in the same order and
//! so every node computes the same way.
//!
//! Commands travel as JSON (one object, `{"op": "…", …}`): readable with `nats stream view`, and
//! a field added later is ignored by an older node rather than failing it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One mutation in the cluster's log. See the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Create a user; its id is the [`Sequencer`]'s next user id.
    CreateUser {
        /// The user's uuid as the API spells it (chosen by the publishing node).
        uuid: String,
        /// The display name.
        display_name: String,
    },
    /// Change a user's display name.
    UpdateUser {
        /// The user.
        user_id: i64,
        /// The new display name.
        display_name: String,
    },
    /// Delete a user with its sessions and contacts.
    DeleteUser {
        /// The user.
        user_id: i64,
    },
    /// Open a session for a user.
    OpenSession {
        /// The user.
        user_id: i64,
        /// The session's id, 32 lowercase hex digits, drawn by the publishing node from a secure
        /// source. (So the log carries session secrets: NATS access must be as guarded as the
        /// database's.)
        session: String,
    },
    /// Close a session.
    CloseSession {
        /// The session, 32 lowercase hex digits.
        session: String,
    },
    /// Make two users contacts.
    AddContact {
        /// One user.
        user_id: i64,
        /// The other.
        contact_id: i64,
    },
    /// Stop two users being contacts.
    RemoveContact {
        /// One user.
        user_id: i64,
        /// The other.
        contact_id: i64,
    },
    /// Send a message; its `created_utc` is the entry's [`Applied::created_ns`].
    Send {
        /// The sending session (32 hex digits); the sender is its user when applied.
        session: String,
        /// The receiving user.
        receiver_id: i64,
        /// The message body.
        body: String,
        /// The attachments exactly as the client sent them: JSON text, already validated.
        attachments: String,
        /// The message's uuid (chosen by the publishing node); also the publish's message id.
        message: String,
    },
    /// Sessions that were active on the publishing node since its last `Touch`; applied as
    /// "last active at this entry's time", so every node culls by the same clock.
    Touch {
        /// The sessions, 32 hex digits each.
        sessions: Vec<String>,
    },
    /// Time passed: cull, as of this entry's time, what has expired. Published by any node
    /// periodically; applying one twice in a row is harmless (the second culls nothing new).
    Tick,
}

/// What the log decided for one entry, computed by the [`Sequencer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The entry's stream sequence number.
    pub seq: u64,
    /// The entry's server timestamp: strictly greater than every earlier entry's.
    pub created_ns: i64,
    /// The new user's id, for a [`Command::CreateUser`]; `None` for every other command.
    pub user_id: Option<i64>,
}

/// Where a [`Sequencer`] stands after applying an entry; what a node saves (with the state it
/// wrote) to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The last applied stream sequence (0: none).
    pub seq: u64,
    /// The last `created_ns` handed out (0: none).
    pub created_ns: i64,
    /// The last user id handed out (0: none; ids start at 1).
    pub user_id: i64,
}

/// An entry that does not follow the last one applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// Entries are missing between the last applied and this one (lost, or expired by retention).
    #[error("log gap: expected entry {expected}, got {got}")]
    Gap {
        /// The sequence that should have come next.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// The entry was applied already (a redelivery or a reader started too early).
    #[error("log replay: expected entry {expected}, got {got} again")]
    Replay {
        /// The sequence that should have come next.
        expected: u64,
        /// The one that came.
        got: u64,
    },
}

/// The deterministic clock and id counter of the log. Fed the same entries in the same order, two
/// sequencers return the same [`Applied`] for each, on any node.
///
/// - `created_ns = max(previous created_ns + 1, entry timestamp)`: the stream's timestamp keeps
///   `created_utc` close to real time, and the `+ 1` keeps it strictly increasing even when the
///   stream's clock stands still or steps back (a new stream leader with a slower clock, NTP).
/// - user ids are 1, 2, 3, … in the order of `CreateUser` entries.
/// - sequence numbers must be contiguous: anything else is refused, so a node can never apply an
///   entry twice or silently skip one.
#[derive(Debug, Clone, Default)]
pub struct Sequencer {
    at: Position,
}

impl Sequencer {
    /// A sequencer before the first entry of a log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sequencer that resumes after `at` (a position saved with the state it produced).
    pub fn resume(at: Position) -> Self {
        Self { at }
    }

    /// Where it stands: the last entry applied and what it handed out.
    pub fn position(&self) -> Position {
        self.at
    }

    /// Applies the entry `seq`, stored at `timestamp_ns` by the stream, carrying `command`.
    pub fn apply(&mut self, seq: u64, timestamp_ns: i64, command: &Command) -> Result<Applied, SequenceError> {
        let expected = self.at.seq + 1;
        if seq > expected {
            return Err(SequenceError::Gap { expected, got: seq });
        }
        if seq < expected {
            return Err(SequenceError::Replay { expected, got: seq });
        }
        let created_ns = timestamp_ns.max(self.at.created_ns.saturating_add(1));
        let user_id = match command {
            Command::CreateUser { .. } => Some(self.at.user_id + 1),
            _ => None,
        };
        self.at = Position { seq, created_ns, user_id: user_id.unwrap_or(self.at.user_id) };
        Ok(Applied { seq, created_ns, user_id })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {} (created {} ns, user id {})", self.seq, self.created_ns, self.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn send(n: u64) -> Command {
        Command::Send {
            session: format!("{n:032x}"),
            receiver_id: 2,
            body: format!("message {n}"),
            attachments: "[]".into(),
            message: format!("{n:032x}"),
        }
    }

    fn create(n: u64) -> Command {
        Command::CreateUser { uuid: format!("{n:032x}"), display_name: format!("user {n}") }
    }

    #[test]
    fn commands_round_trip_through_json_with_their_op_named() {
        let commands = vec![
            create(1),
            Command::UpdateUser { user_id: 1, display_name: "Ada".into() },
            Command::DeleteUser { user_id: 1 },
            Command::OpenSession { user_id: 1, session: "ab".repeat(16) },
            Command::CloseSession { session: "ab".repeat(16) },
            Command::AddContact { user_id: 1, contact_id: 2 },
            Command::RemoveContact { user_id: 1, contact_id: 2 },
            send(7),
            Command::Touch { sessions: vec!["ab".repeat(16), "cd".repeat(16)] },
            Command::Tick,
        ];
        for command in commands {
            let json = serde_json::to_string(&command).expect("serialise");
            assert!(json.starts_with("{\"op\":\""), "{json}");
            let back: Command = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(back, command);
        }
        assert_eq!(serde_json::to_string(&Command::Tick).expect("serialise"), r#"{"op":"tick"}"#);
    }

    #[test]
    fn a_field_added_later_is_ignored() {
        let back: Command =
            serde_json::from_str(r#"{"op":"delete_user","user_id":4,"reason":"new field"}"#).expect("deserialise");
        assert_eq!(back, Command::DeleteUser { user_id: 4 });
    }

    #[test]
    fn created_follows_the_stream_clock_and_never_repeats() {
        let mut s = Sequencer::new();
        assert_eq!(s.apply(1, 1_000, &Command::Tick).map(|a| a.created_ns), Ok(1_000));
        // The stream clock stands still, then steps back: still strictly increasing.
        assert_eq!(s.apply(2, 1_000, &Command::Tick).map(|a| a.created_ns), Ok(1_001));
        assert_eq!(s.apply(3, 500, &Command::Tick).map(|a| a.created_ns), Ok(1_002));
        // And catches up with it again once it is ahead.
        assert_eq!(s.apply(4, 5_000, &Command::Tick).map(|a| a.created_ns), Ok(5_000));
        assert_eq!(s.position(), Position { seq: 4, created_ns: 5_000, user_id: 0 });
    }

    #[test]
    fn user_ids_count_create_user_entries_only() {
        let mut s = Sequencer::new();
        assert_eq!(s.apply(1, 1, &create(1)).map(|a| a.user_id), Ok(Some(1)));
        assert_eq!(s.apply(2, 2, &send(2)).map(|a| a.user_id), Ok(None));
        assert_eq!(s.apply(3, 3, &create(3)).map(|a| a.user_id), Ok(Some(2)));
        let mut resumed = Sequencer::resume(s.position());
        assert_eq!(resumed.apply(4, 4, &create(4)).map(|a| a.user_id), Ok(Some(3)));
    }

    #[test]
    fn gaps_and_replays_are_refused_and_change_nothing() {
        let mut s = Sequencer::new();
        assert_eq!(s.apply(2, 1, &Command::Tick), Err(SequenceError::Gap { expected: 1, got: 2 }));
        assert!(s.apply(1, 1, &create(1)).is_ok());
        assert_eq!(s.apply(1, 1, &create(1)), Err(SequenceError::Replay { expected: 2, got: 1 }));
        assert_eq!(s.apply(5, 1, &create(1)), Err(SequenceError::Gap { expected: 2, got: 5 }));
        assert_eq!(s.position(), Position { seq: 1, created_ns: 1, user_id: 1 });
        assert_eq!(SequenceError::Gap { expected: 2, got: 5 }.to_string(), "log gap: expected entry 2, got 5");
    }

    /// Property (seeded, 200 random logs): two sequencers fed the same log agree on every entry,
    /// `created_ns` strictly increases and is never below the stream's timestamp, whatever the
    /// stream clock does, and user ids are 1..=n in order.
    #[test]
    fn any_log_gives_every_node_the_same_strictly_increasing_stamps() {
        let mut rng = StdRng::seed_from_u64(12);
        for _ in 0..200 {
            let len = rng.gen_range(1..300);
            let mut ts: i64 = rng.gen_range(0..1_000_000_000_000);
            let log: Vec<(u64, i64, Command)> = (1..=len)
                .map(|seq| {
                    // Forwards, still, or backwards (a new leader with a slower clock).
                    ts += rng.gen_range(-5_000..5_000);
                    let command = if rng.gen_bool(0.2) { create(seq) } else { send(seq) };
                    (seq, ts, command)
                })
                .collect();
            let (mut a, mut b) = (Sequencer::new(), Sequencer::new());
            let mut last = i64::MIN;
            let mut users = 0;
            for (seq, ts, command) in &log {
                let x = a.apply(*seq, *ts, command).expect("contiguous");
                let y = b.apply(*seq, *ts, command).expect("contiguous");
                assert_eq!(x, y);
                assert!(x.created_ns > last, "created {} after {last}", x.created_ns);
                assert!(x.created_ns >= *ts);
                last = x.created_ns;
                if let Some(id) = x.user_id {
                    users += 1;
                    assert_eq!(id, users);
                }
            }
            assert_eq!(a.position(), b.position());
        }
    }
}
