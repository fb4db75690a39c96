//! chatbus: a backend for chat clients that poll ("what arrived for my session since my last
//! look?"), keeping the HTTP API of the original chatbus (Go, 2016).
//!
//! # Layout
//!
//! Data flows top to bottom: listener → router → handler → engine (shard → mailbox) → writer
//! channel → store.
//!
//! - [`server`]: start (store → restore → listener) and graceful stop.
//! - [`http`]: the contract's routes on hyper; [`http::router`] resolves paths,
//!   [`http::input`] parses what clients send, [`http::error`] is every error answer.
//! - [`render`]: the JSON envelope, objects and timestamps; messages are rendered once, at send.
//! - [`engine`]: users, sessions, contacts and mailboxes in shards; the ordering invariant.
//! - [`mailbox`]: the per-user ring buffer, read without locks.
//! - [`clock`]: strictly increasing server timestamps.
//! - [`writer`]: the dedicated thread that drains the write queue into the store in batches.
//! - [`store`]: the `Store` abstraction; SQLite (default), PostgreSQL, and `memory:`.
//! - [`cull`]: the thread that expires idle sessions and old messages, shard by shard.
//! - [`metrics`]: Prometheus counters and histograms for `/metrics`.
//! - [`config`]: the command line.

#![warn(missing_docs)]

pub mod clock;
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
