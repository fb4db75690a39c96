//! chatbus in-process: the library's `Server` on an ephemeral port, with a checking client.

use super::client::Api;
use super::store::TestStore;
use chatbus::config::Config;
use chatbus::server::Server;
use clap::Parser;
use std::net::SocketAddr;

/// A config for tests: an ephemeral port, the store at `database_url`, two worker threads, plus
/// `extra` flags.
pub fn config(database_url: &str, extra: &[&str]) -> Config {
    let mut args = vec!["chatbus", "--listen", "127.0.0.1:0", "--database-url", database_url, "--threads", "2"];
    args.extend_from_slice(extra);
    Config::try_parse_from(args).expect("test config")
}

/// A running in-process server; derefs to its [`Api`].
pub struct TestServer {
    server: Server,
    api: Api,
    /// The store, when the server owns it (see [`TestServer::sqlite`]).
    store: Option<TestStore>,
}

impl TestServer {
    /// Starts a server with `config`; it serves once this returns.
    pub async fn start(config: &Config) -> Self {
        let server = Server::start(config).await.expect("server starts");
        let api = Api::new(format!("http://{}", server.local_addr()));
        Self { server, api, store: None }
    }

    /// A server on the store at `database_url` with `extra` flags (see [`config`]).
    pub async fn on(database_url: &str, extra: &[&str]) -> Self {
        Self::start(&config(database_url, extra)).await
    }

    /// A server on a fresh SQLite store of its own, deleted after the server stopped.
    pub async fn sqlite(extra: &[&str]) -> Self {
        let store = TestStore::sqlite();
        let mut srv = Self::on(store.url(), extra).await;
        srv.store = Some(store);
        srv
    }

    /// The store of a server started with [`TestServer::sqlite`].
    pub fn store(&self) -> &TestStore {
        self.store.as_ref().expect("a server with a store of its own")
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// A client for it (clones share connections).
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    /// Graceful stop, as SIGTERM does: finishes requests in flight and writes everything
    /// acknowledged to the store.
    pub async fn stop(self) {
        let report = self.server.shutdown().await;
        assert_eq!(report, chatbus::writer::StopReport::default(), "a test's graceful stop writes everything");
        drop(self.store);
    }
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}
