//! Cluster mode (issue 12): several chatbus nodes as one server, on NATS JetStream and PostgreSQL.
//!
//! **Status.** Built and tested against real NATS: the log's [`Command`]s, the deterministic
//! [`Sequencer`], the JetStream [`Log`] — publish with dedup, in-order reading that survives
//! a NATS server's crash and a NATS cluster's leader failover (`tests/cluster_log.rs`) — and the
//! deterministic state machine: [`Engine::apply`](crate::engine::Engine::apply) applies one entry
//! with the sequencer's ids and times (`engine/apply.rs`, whose doc says how each command is
//! applied), and the [`Applier`] task applies the log to an engine, publishes how far it got and
//! hands each entry's outcome to its publisher (`tests/cluster_apply.rs`: two nodes agree on every
//! message and timestamp, a receiver polling both gets every acknowledged message once, a late
//! node catches up), and the [`Publisher`] a node's writes will go through (publish under a
//! message id, retried with that id, and the entry's outcome; a repeated id is reported as
//! applied already). The stores keep a log position per stream ([`Op::LogPosition`], table
//! `log_position`). **Not built yet:** publishing from the HTTP handlers, writing the position
//! as entries are applied, and start-up replay — nothing here is wired into the server, which
//! has no `--nats-url` flag until it is (see "What is next").
//!
//! [`Op::LogPosition`]: crate::store::Op::LogPosition
//!
//! What the tests taught about JetStream (nats-server 2.9, async-nats 0.46):
//!
//! - An acknowledged publish survives a SIGKILL of a lone server and the loss of an R3 stream's
//!   leader; a publish answered with an error may *also* have been stored (the client buffers
//!   what it publishes while disconnected and sends it on reconnect), so the publisher must retry
//!   with the same message id until it gets an ack, and the duplicate window must outlast its
//!   retries. The duplicate window survives a server restart.
//! - A 3-server cluster that loses its stream leader accepts publishes again after about 4–8 s
//!   (a Raft election), whether or not the meta leader died with it; meanwhile publishes time out.
//! - The client's ordered consumer does not notice a consumer lost with a server for ~30 s, so
//!   [`Log::read_from`] replaces it itself (see [`log`]).
//!
//! # The design
//!
//! ## JetStream is the ordered log of every mutation
//!
//! Every change to shared state — users, sessions, contacts, messages, session activity, and the
//! clock ticks culling decides by — is a [`Command`] in one JetStream stream (`--nats-stream`,
//! default `chatbus`, subject `<stream>.log`). NATS replicates the stream with Raft (3 replicas on
//! a 3-server NATS cluster), so chatbus has no consensus or membership protocol of its own: the
//! stream's sequence numbers *are* the cluster's total order.
//!
//! ## A write is acknowledged once it is in the log and applied
//!
//! A node that accepts a write validates it against its own state (the 4xx answers), publishes
//! the command with a message id (`Nats-Msg-Id`: the message's or session's uuid, or a fresh one),
//! and answers the client once JetStream acknowledged it *and* this node has applied that
//! sequence number — so the answer carries the log-derived `created_utc` or user id, and the
//! client's next request on this node sees its own write. A publish that fails or times out is
//! retried with the same id: JetStream drops a repeat within the stream's duplicate window
//! (2 minutes), so a retried publish is stored once. A command may still fail when applied (the
//! session was closed by an entry ordered before it): every node refuses it the same way, and the
//! publishing node answers the client with that refusal.
//!
//! ## Every node applies the log in order, as a deterministic state machine
//!
//! Each node reads the stream from its position on ([`Log::read_from`]) and applies entry after
//! entry to its own engine. Applying depends only on the entries, never on the node's clock or
//! randomness: whatever must be random (a session uuid) is chosen by the publisher and carried in
//! the command, and whatever must be ordered comes from the [`Sequencer`]:
//!
//! - `created_utc = max(previous + 1 ns, the entry's stream timestamp)`: strictly increasing
//!   across the whole cluster (one log, one order), close to real time, and the same on every
//!   node. This is the engine's ordering invariant made cluster-wide, and what keeps the cursor
//!   exactly-once when a client's polls land on different nodes: every node's mailbox holds the
//!   same messages with the same timestamps, a node that trails has a prefix of them, and a poll
//!   there returns fewer messages, never other ones.
//! - user ids are a counter over `CreateUser` entries in log order.
//! - sequence numbers must be contiguous; the sequencer refuses a gap or a replay, so a node
//!   never applies an entry twice and never skips one silently.
//!
//! ## PostgreSQL: each row written exactly once, however many nodes write it
//!
//! Every node writes what it applies through the same writer thread and binary COPY as today.
//! Because every node derives the same rows, the rows are identical and the writes idempotent:
//! messages are keyed by `created_ns`, users by `id`, sessions by `uuid`, contacts by
//! `(user_a, user_b)` — all primary keys — and every insert is `INSERT … SELECT … FROM staging
//! ON CONFLICT DO NOTHING` (updates and deletes are idempotent by nature: set the same value,
//! delete what may already be gone). The table `log_position (stream TEXT PRIMARY KEY, seq BIGINT,
//! created_ns BIGINT, user_id BIGINT)` (migration 0002) records how far the database holds the
//! log: a node queues an `Op::LogPosition` after the ops of the entries it applied, so the batch
//! that writes the position writes those entries too, and the row is raised (never lowered) to
//! the furthest any node has *fully* written — each node writes every entry in order, so the
//! furthest node's position has everything before it. A starting node loads PostgreSQL as
//! today, then resumes from that position — with the sequencer resumed there
//! (`Snapshot::log_positions`) — replaying the stream from `seq + 1` before it accepts
//! connections. Entries it
//! replays that another node wrote already are absorbed by the `ON CONFLICT DO NOTHING`.
//!
//! ## Retention
//!
//! The stream's `max_age` is `--message-ttl`: a message older than that has left every mailbox
//! anyway. A node whose saved position is older than the stream's first entry cannot replay the
//! gap (the sequencer refuses it) and must start from a node that has written more recently,
//! which is what the position in `log_position` gives it.
//!
//! ## Activity and culling agree across nodes
//!
//! A session polled only on node A must not be culled by node B, so activity goes through the
//! log too, but in batches: each node publishes one `Touch { sessions }` a second with the
//! sessions it served since the last one, and applying it sets their `last_active` to the entry's
//! log time. Culling is a `Tick` entry (published by any node once a second; a redundant tick
//! culls nothing new), and every node culls as of the tick's log time. The cost is that a
//! session's activity is known cluster-wide a second late, far inside any sensible session TTL.
//!
//! # What is built, what is next
//!
//! Built:
//!
//! - [`Command`], [`Sequencer`], [`Log`] (above).
//! - `Engine::apply` (`engine/apply.rs`): every command applied from the engine's state, the
//!   command and [`Applied`] alone, with the live paths' validation and errors; `Touch` sets
//!   activity to the entry's time, `Tick` culls as of it (held polls do not spare a session in
//!   cluster mode: they are one node's); writes go to the writer write-behind.
//! - [`Applier`]: reads the log from a [`Position`], sequences and applies each entry, publishes
//!   the position on a `watch` ([`ApplierHandle::wait_applied`]), and hands outcomes to
//!   publishers by message id ([`ApplierHandle::expect`]; the id is the entry's `Nats-Msg-Id`).
//!   A sequence error or an unreadable entry stops it, and every waiter is told.
//!
//! Next:
//!
//! 1. The engine's mutations, in cluster mode, go through the [`Publisher`] (built: retries
//!    under one id, `PublishError::AlreadyApplied` for an id applied before) instead of
//!    mutating locally: validate locally (4xx, `--send-rate`, the write queue's room), draw the
//!    ids the command carries, write, answer with the outcome (503 on `NotStored`). Polls and held polls/streams in cluster mode must stop marking activity on the
//!    local clock (`Engine::poll`, `Hold`'s release) and collect the sessions for the node's
//!    once-a-second `Touch` instead; the local `Culler` thread must not run (ticks come from the
//!    log: one node, or every node, publishes `Tick` once a second).
//! 2. The applier queues `Op::LogPosition` after each applied entry (the stores and their
//!    migration exist; the writer writes only the last of a batch); start-up loads PostgreSQL
//!    and starts the applier from `Snapshot::log_positions`; `/readyz` is
//!    503 until the applier has caught up with the log's end seen at start.
//! 3. Only then the `--nats-url` / `--nats-stream` flags, `/readyz` reflecting the connection
//!    and the applier, and the multi-node tests of the issue. Nodes must agree on the settings
//!    applying depends on (`--max-users`, the per-user caps, both TTLs, the mailbox capacity):
//!    a node should refuse to start when they differ from those recorded with the stream.

pub mod applier;
pub mod command;
pub mod log;
pub mod node;
pub mod publisher;

pub use applier::{resume_position, Applier, ApplierError, ApplierHandle, Outcome, Stopped};
pub use command::{Applied, Command, Position, SequenceError, Sequencer};
pub use log::{Entries, Entry, Extent, Log, LogConfig, LogError, Stored};
pub use node::Node;
pub use publisher::{PublishError, Publisher};
