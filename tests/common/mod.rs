//! Shared test support: a real chatbus server on an ephemeral port, and a small JSON client.
#![allow(dead_code)]

use chatbus::config::Config;
use chatbus::server::Server;
use clap::Parser;
use serde_json::Value;
use std::path::PathBuf;

/// A running in-process server and a client for it.
pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub client: reqwest::Client,
}

/// A config for tests: ephemeral port, the given store, plus extra flags.
pub fn config(database_url: &str, extra: &[&str]) -> Config {
    let mut args = vec!["chatbus", "--listen", "127.0.0.1:0", "--database-url", database_url, "--threads", "2"];
    args.extend_from_slice(extra);
    Config::try_parse_from(args).expect("test config")
}

/// A fresh SQLite file in a temp dir (the dir lives as long as the returned guard).
pub fn temp_sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("chatbus.db");
    let url = format!("sqlite:{}", path.display());
    (dir, url)
}

impl TestServer {
    pub async fn start(config: &Config) -> Self {
        let server = Server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.local_addr());
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
        Self { server, base, client }
    }

    /// Graceful stop, as SIGTERM does.
    pub async fn stop(self) {
        self.server.shutdown().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request and returns (status, parsed JSON body or Null when empty).
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_owned());
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let bytes = res.bytes().await.expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes)))
        };
        if value.is_object() {
            assert_eq!(value["meta"]["http_code"].as_u64(), Some(u64::from(status)), "envelope code = status: {value}");
        }
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// Creates a user and returns its id.
    pub async fn user(&self, uuid: &str) -> i64 {
        let (s, v) = self.post("/api/user", &serde_json::json!({ "uuid": uuid }).to_string()).await;
        assert_eq!(s, 200, "{v}");
        v["response"]["id"].as_i64().expect("id")
    }

    /// Opens a session for a user and returns its uuid.
    pub async fn session(&self, user_id: i64) -> String {
        let (s, v) = self.post(&format!("/api/session/{user_id}"), "").await;
        assert_eq!(s, 200, "{v}");
        v["response"]["uuid"].as_str().expect("uuid").to_owned()
    }

    /// Sends a message and returns the stored message object.
    pub async fn send(&self, session: &str, receiver: i64, body: &str) -> Value {
        let (s, v) = self
            .post(
                &format!("/api/message/{session}"),
                &serde_json::json!({"receiver_id": receiver, "body": body}).to_string(),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["response"].clone()
    }
}
