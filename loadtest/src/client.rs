//! [`Api`]: the kit's chatbus client.
//!
//! One `hyper-util` pooled client holds keep-alive connections to the server; a semaphore caps
//! the requests in flight, and so the connections open, however many simulated users wait on
//! it (10,000 users must not mean 10,000 sockets). Every request has a timeout so a stalled
//! server ends a run with errors instead of hanging it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::api::{Cursor, Envelope, Message, Session, User};

/// A chatbus client for `http://host:port` (no TLS: the kit only ever targets loopback) — or for
/// several, comma-separated (the nodes of a cluster), which its requests then go to in turn.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    bases: Arc<[Arc<str>]>,
    /// The next base a request goes to (round-robin), shared by the clones.
    next: Arc<std::sync::atomic::AtomicUsize>,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

/// A raw answer: status and body bytes.
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

/// A decoded messages answer.
#[derive(Debug)]
pub struct Poll {
    /// Oldest first.
    pub messages: Vec<crate::api::Message>,
    /// `meta.cursor`, the cutoff for the next poll.
    pub cursor: Option<Cursor>,
    /// `meta.gap`.
    pub gap: bool,
    /// Size of the answer body in bytes.
    pub bytes: usize,
}

impl Api {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) with at most `max_in_flight`
    /// requests, and so connections, at once.
    pub fn new(base: &str, max_in_flight: usize, timeout: Duration) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Api {
            client,
            bases: base.split(',').map(|b| Arc::from(b.trim().trim_end_matches('/'))).collect(),
            next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            timeout,
        }
    }

    /// The (first) base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.bases[0]
    }

    /// The base the next request goes to.
    fn pick(&self) -> &str {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.bases[n % self.bases.len()]
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub async fn request(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Answer> {
        let _permit = self.permits.acquire().await.context("client closed")?;
        let mut req = Request::builder().method(method.clone()).uri(format!("{}{path}", self.pick()));
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Answer { status, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer.with_context(|| format!("{method} {path}")),
            Err(_) => bail!("{method} {path}: no answer within {:?}", self.timeout),
        }
    }

    /// Sends a request and decodes a 200 envelope; any other status is an error quoting
    /// the server's `meta.message`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(Envelope<T>, usize)> {
        let body = body.map(|b| serde_json::to_vec(b).map(Bytes::from)).transpose()?;
        let answer = self.request(method.clone(), path, body).await?;
        let envelope: Envelope<T> = serde_json::from_slice(&answer.body).with_context(|| {
            format!(
                "{method} {path}: {} with a body that is not the envelope: {:?}",
                answer.status,
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
            )
        })?;
        if answer.status != StatusCode::OK {
            bail!("{method} {path}: {} {}", answer.status, envelope.meta.message.as_deref().unwrap_or("(no message)"));
        }
        if envelope.meta.http_code != 200 {
            bail!("{method} {path}: status 200 but meta.http_code {}", envelope.meta.http_code);
        }
        Ok((envelope, answer.body.len()))
    }

    /// `call` for answers that must carry a `response`.
    async fn value<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&impl Serialize>) -> Result<T> {
        let (envelope, _) = self.call::<T>(method.clone(), path, body).await?;
        envelope.response.ok_or_else(|| anyhow!("{method} {path}: 200 without a response"))
    }

    /// `POST /api/user`: creates the user (or returns the one with that uuid).
    pub async fn create_user(&self, uuid: &str, display_name: &str) -> Result<User> {
        let body = serde_json::json!({ "uuid": uuid, "display_name": display_name });
        self.value(Method::POST, "/api/user", Some(&body)).await
    }

    /// `POST /api/session/:user_id`.
    pub async fn open_session(&self, user_id: i64) -> Result<Session> {
        self.value(Method::POST, &format!("/api/session/{user_id}"), None::<&()>).await
    }

    /// `POST /api/contact/:session_id/:user_id`.
    pub async fn add_contact(&self, session: &str, user_id: i64) -> Result<()> {
        self.call::<serde_json::Value>(Method::POST, &format!("/api/contact/{session}/{user_id}"), None::<&()>)
            .await
            .map(drop)
    }

    /// `POST /api/message/:session_id` with `{"receiver_id", "body"}`.
    pub async fn send(&self, session: &str, receiver_id: i64, body: &str) -> Result<Message> {
        let body = serde_json::json!({ "receiver_id": receiver_id, "body": body });
        self.value(Method::POST, &format!("/api/message/{session}"), Some(&body)).await
    }

    /// `GET /api/messages/:session_id/:unix/:nano`.
    pub async fn poll(&self, session: &str, cutoff: Cursor) -> Result<Poll> {
        self.long_poll(session, cutoff, None).await
    }

    /// `GET /api/messages/:session_id/:unix/:nano?wait=<ms>ms`: held by the server until a
    /// message after the cutoff arrives or the wait passes; without a wait, a plain poll. The
    /// client's per-request timeout must be longer than the wait.
    pub async fn long_poll(&self, session: &str, cutoff: Cursor, wait: Option<Duration>) -> Result<Poll> {
        let mut path = cutoff.poll_path(session);
        if let Some(wait) = wait {
            path.push_str(&format!("?wait={}ms", wait.as_millis()));
        }
        let (envelope, bytes) = self.call::<Vec<Message>>(Method::GET, &path, None::<&()>).await?;
        Ok(Poll {
            messages: envelope.response.unwrap_or_default(),
            cursor: envelope.meta.cursor,
            gap: envelope.meta.gap.unwrap_or(false),
            bytes,
        })
    }

    /// `GET /`, to fail early with a clear message when nothing listens.
    pub async fn check_identity(&self) -> Result<()> {
        let answer = self
            .request(Method::GET, "/", None)
            .await
            .with_context(|| format!("is chatbus listening at {}?", self.base()))?;
        if answer.status != StatusCode::OK {
            bail!("GET {}/ answered {}", self.base(), answer.status);
        }
        Ok(())
    }
}
