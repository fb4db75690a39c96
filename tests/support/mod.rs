//! The harness every integration test shares: include it with `mod support;`.
//!
//! - [`client`]: the one HTTP client. Every answer it gets is checked against what the contract
//!   (the README's API section) says of *every* answer, before a test looks at it.
//! - [`contract`]: the shapes of the contract's objects (user, session, message) and its limits.
//! - [`server`]: chatbus in-process on an ephemeral port ([`server::TestServer`]).
//! - [`binary`]: the `chatbus` binary as a child process ([`binary::Chatbus`]), for signals and
//!   crashes.
//! - [`store`]: the store a test runs on, SQLite or PostgreSQL ([`store::TestStore`]), and
//!   reading its rows back to compare them with what the API acknowledged.
//! - [`pg`]: a throwaway database per test on the shared PostgreSQL; [`cluster`]: a throwaway
//!   PostgreSQL cluster for tests that stop or crash PostgreSQL itself.
//! - [`nats`]: NATS servers of the test's own ([`nats::Nats`]) and a 3-server NATS cluster
//!   ([`nats::NatsCluster`]), to crash and restart, for the cluster tests.
//! - [`nodes`]: chatbus nodes of one cluster on NATS and PostgreSQL, and load spread over them.
//! - [`load`]: concurrent senders and a polling client, for the load and fault tests.
//! - [`raw`]: a raw HTTP/1.1 connection, for keep-alive, pipelining and framing.
//! - [`timestamp`]: the one timestamp parser (RFC 3339 through the `time` crate) and cursors.
//! - [`wait`]: waiting for a condition, always with a deadline.
//!
//! A test that needs PostgreSQL fails loudly when there is none; nothing here skips.

// Every test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod binary;
pub mod client;
pub mod cluster;
pub mod contract;
pub mod load;
pub mod nats;
pub mod nodes;
pub mod pg;
pub mod raw;
pub mod server;
pub mod store;
pub mod timestamp;
pub mod wait;

/// Defines a store-independent scenario's two tests: `$scenario::sqlite` and
/// `$scenario::postgres`, each calling `async fn $scenario(store: TestStore)` with a fresh store
/// of that kind. `cargo test $scenario` runs both.
#[allow(unused_macros)]
macro_rules! both_stores {
    ($scenario:ident) => {
        $crate::support::both_stores!($scenario, worker_threads = 2);
    };
    ($scenario:ident, worker_threads = $threads:literal) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
            async fn sqlite() {
                super::$scenario($crate::support::store::TestStore::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
            async fn postgres() {
                super::$scenario($crate::support::store::TestStore::postgres()).await;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_stores;
