//! chatbus: a backend for chat clients that poll ("what arrived for my session since my last
//! look?"), keeping the HTTP API of the original chatbus (Go, 2016).
//!
//! # Layout
//!
//! Data flows top to bottom, and imports only point down this list: listener → router →
//! handler → engine (shard → mailbox) → writer channel → store.
//!
//! - [`server`]: start (store → restore → writer → culler → listener) and graceful stop, in order.
//! - [`config`]: the command line.
//! - [`listener`]: accepts connections and serves them with hyper; per-connection idle timer.
//! - [`http`]: the contract's routes. [`http::router`] turns a method and path into a
//!   [`Route`](http::router::Route) with typed segments; one file per resource holds its
//!   handlers (`users`, `sessions`, `contacts`, `messages`, `ops`), with the push transports in
//!   `stream` (Server-Sent Events) and `socket` (WebSocket); [`http::input`] parses what clients
//!   send; [`http::error`] is every error answer; [`http::body`] reads bodies in bounds;
//!   [`http::limits`] the request's own size limits.
//! - [`cull`]: the thread that expires idle sessions and old messages, shard by shard.
//! - [`engine`]: users, sessions, contacts and mailboxes in shards; the ordering invariant;
//!   every mutation awaits its own durability; waiting for news (held polls, streams, sockets).
//!   [`engine::SessionId`] is the session's id.
//! - [`render`]: the JSON envelope, objects and timestamps; messages are rendered once, at send.
//! - [`mailbox`]: the per-user ring buffer, read without locks; its messages kept in segments that
//!   a large poll answer references instead of copying.
//! - [`writer`]: the dedicated thread that drains the write queue into the store in batches;
//!   poison ops set aside, a bound on what is acknowledged while the store fails, spill files.
//! - [`store`]: the `Store` abstraction; SQLite (default), PostgreSQL, and `memory:`; one
//!   migration runner.
//! - [`clock`]: strictly increasing server timestamps, and the [`Cursor`](clock::Cursor) clients
//!   poll with.
//! - [`metrics`]: Prometheus counters and histograms for `/metrics`.
//! - [`cluster`]: cluster mode's foundation (not wired in yet): the JetStream log of commands,
//!   the sequencer that derives timestamps and user ids from it, and the applier that applies it
//!   to the engine (`Engine::apply`, in `engine/apply.rs`); its doc is the design.

#![warn(missing_docs)]

pub mod clock;
pub mod cluster;
pub mod config;
pub mod cull;
pub mod engine;
pub mod http;
pub mod listener;
pub mod mailbox;
pub mod metrics;
pub mod render;
pub mod server;
pub mod store;
pub mod writer;
