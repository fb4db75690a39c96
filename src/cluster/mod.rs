//! Cluster mode (issue 12): several chatbus nodes as one server, on NATS JetStream and PostgreSQL.
//!
//! **Status.** Served: `--nats-url` runs a node ([`Node::join`] at start; the engine's changes go
//! through the [`Publisher`], see `engine/cluster.rs`). Tested against real NATS and PostgreSQL:
//! the log (`tests/cluster_log.rs`: dedup, a NATS server's crash, a NATS cluster's leader
//! failover), the state machine and the applier (`tests/cluster_apply.rs`), and whole nodes
//! (`tests/cluster_nodes.rs`: three nodes as one server, a node killed and restarted, a node
//! stopped gracefully, a late node, NATS restarted, a NATS cluster losing its leader, the whole
//! NATS cluster crashed and restarted, PostgreSQL stopped under the cluster).
//!
//! [`Op::Logged`]: crate::store::Op::Logged
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
//! - After every server of a NATS cluster was SIGKILLed, a restarted server brings its consumers
//!   back and may deliver from its own copy of the stream before the copies are reconciled, and
//!   takes 5–30 s to take writes again: [`Log::read_from`] takes nothing from a consumer made
//!   before a reconnection, checks where it resumes against the stream's leader, and for a minute
//!   after a reconnection checks every entry so.
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
//! Every node writes what it applies through the same writer thread and binary COPY as on one
//! server, but an applied entry's writes are queued as one [`Op::Logged`] with the position
//! after the entry (the engine collects them while applying: `Engine::record_log_position`). The
//! table `log_position (stream TEXT PRIMARY KEY, seq BIGINT, created_ns BIGINT, user_id BIGINT)`
//! (migration 0002) records how far the database holds the log. A batch that holds entries
//! first locks the stream's row (`SELECT … FOR UPDATE`, in its own transaction), then writes only
//! the entries past the position it read, and raises the position to its last entry
//! ([`crate::store::logged_writes`]). So whichever node's batch reaches an entry first writes its
//! rows; every other node finds the position past it and skips it: each row is written once, the
//! lock orders the nodes' batches, and the database always holds exactly the state after its
//! position — never a lagging node's older write over a newer one (a session re-inserted after
//! it was closed, say). A starting node loads PostgreSQL in one `REPEATABLE READ` snapshot (the
//! state at its position) and resumes the log there with the sequencer resumed at that position
//! (`Snapshot::log_positions`), replaying from `seq + 1` before it accepts connections.
//!
//! Not every write is an entry's: the writer's culling of expired messages in the store
//! (`Store::cull_messages`) runs by the ticks' times, outside entries; it deletes only what every
//! node's mailboxes drop at those ticks anyway.
//!
//! ## Retention
//!
//! The stream has no age limit: the nodes trim it ([`node`], "Retention"). Each node reads the
//! position PostgreSQL holds every quarter of the message TTL and removes the entries up to the
//! position it read at least a TTL before (and at least 10 s, longer than any publish retries).
//! So an entry leaves the stream only once the store holds it *and* it is older than the message
//! TTL. An age limit alone (`max_age`) would also drop entries the store does not hold yet: had
//! every node crashed with its last writes unwritten and stayed down longer than the TTL, no
//! node could have started again (`tests/cluster_nodes.rs` does exactly that). A node whose
//! store position is older than the stream's first entry cannot replay the gap, and says so at
//! start.
//!
//! ## Activity and culling agree across nodes
//!
//! A session polled only on node A must not be culled by node B, so activity goes through the
//! log too, in batches: a poll, send or held request on a node only marks its session *served*
//! there; each node publishes, once per interval (a quarter of the shorter TTL, 100 ms to 1 s:
//! [`node::activity_interval`]), `Touch { sessions }` entries with the sessions it served or
//! holds open since the last one, then a `Tick`. Applying a `Touch` sets those sessions'
//! `last_active` to the entry's log time; applying a `Tick` culls idle sessions and old messages
//! as of its log time. Every node applies every node's ticks (N nodes: N culling passes per
//! interval on each; a redundant one culls nothing new). The cost is that a session's activity is
//! known cluster-wide up to an interval late, far inside any sensible session TTL.
//!
//! # Settings every node shares
//!
//! `Engine::apply` decides by the TTLs, the mailbox capacity and the caps, so every node must run
//! with the same: the first node records them in the database (`cluster_settings`, migration
//! 0003; [`node::settings`]), and a node whose settings differ refuses to start.
//!
//! # What is not done
//!
//! - Every node applies every write: write throughput is one stream's and one apply loop's, and
//!   does not grow with nodes (README, "How far one stream goes, and past it").
//! - A `Tick` culls on the applier task: with very many sessions, applying it delays the entries
//!   behind it by the pass's time.

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
