//! The chatbus load-testing kit: what the `seed`, `floor` and `chatsim` binaries share.
//!
//! # Layout
//!
//! - [`api`]: the contract's objects as a client sees them (`User`, `Session`, `Message`, the
//!   envelope and its `meta`), and [`api::Cursor`], the `(unix, nano)` poll cutoff, with the
//!   RFC 3339 parsing that turns a message's `created_utc` into one.
//! - [`client`]: [`client::Api`], a small async chatbus client over one pool of keep-alive
//!   connections with a cap on requests in flight; every binary talks to the server through it.
//! - [`plot`]: the latency histogram PNG the simulator writes, drawn with an embedded font so it
//!   needs no system fonts.
//!
//! The binaries (`src/bin/`) hold the flow of each tool: `seed` creates the data the wrk/oha
//! scenarios need and writes their paths; `floor` is a bare hyper server answering fixed bytes;
//! `chatsim` simulates interval-polling users and checks every delivery.

pub mod api;
pub mod client;
pub mod plot;
