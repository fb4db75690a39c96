//! The one HTTP client of the tests. Every answer goes through [`check_answer`], which checks what
//! the contract (the README's API section) says of *every* answer:
//!
//! - `Access-Control-Allow-Origin: *`;
//! - JSON with `Content-Type: application/json; charset=utf-8`, an object, and `meta.http_code`
//!   equal to the status — except `GET /metrics` (Prometheus text) and `204` (no body);
//! - an error (`>= 400`) is exactly `{"meta": {"http_code": …, "message": …}}` with a non-empty
//!   message, and no `response`;
//! - a `405` carries a non-empty `Allow` header.
//!
//! On top of that: [`ok`], [`ok_plain`], [`err`] and [`not_found_path`] for what a test expects
//! of one answer, and helpers for the steps most tests take (a user, a session, a send, a poll),
//! each checking the shape of what comes back.

use super::contract::{
    assert_contact_shape, assert_message_shape, assert_session_shape, assert_user_shape, keys, set, uuids, JSON_CT,
};
use serde_json::{json, Value};
use std::time::Duration;

/// One answer, already checked against the rules every answer follows.
#[derive(Clone)]
pub struct Answer {
    /// `METHOD path`, for failure messages.
    pub request: String,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The body as sent.
    pub raw: Vec<u8>,
    /// The body parsed (`Null` for `204` and for `/metrics`).
    pub json: Value,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {}", self.request, self.status, self.text())
    }
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("header is ASCII"))
    }

    /// `meta.message`, or `""`.
    pub fn message(&self) -> &str {
        self.json["meta"]["message"].as_str().unwrap_or("")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// `response`.
    pub fn response(&self) -> &Value {
        &self.json["response"]
    }
}

/// The checks every answer must pass (see the module doc); returns the parsed body.
pub fn check_answer(method: &str, path: &str, status: u16, headers: &reqwest::header::HeaderMap, raw: &[u8]) -> Value {
    let ctx = format!("{method} {path} -> {status} {:?}", String::from_utf8_lossy(raw));
    let header = |name: &str| headers.get(name).map(|v| v.to_str().expect("ASCII header"));
    assert_eq!(header("access-control-allow-origin"), Some("*"), "Access-Control-Allow-Origin on {ctx}");
    if status == 405 {
        assert!(header("allow").is_some_and(|v| !v.is_empty()), "405 carries Allow: {ctx}");
    }
    if status == 204 {
        assert!(raw.is_empty(), "204 has no body: {ctx}");
        return Value::Null;
    }
    if path == "/metrics" && status == 200 {
        let ct = header("content-type").unwrap_or("");
        assert!(ct.starts_with("text/plain"), "metrics content type {ct:?}");
        return Value::Null;
    }
    assert_eq!(header("content-type"), Some(JSON_CT), "Content-Type on {ctx}");
    let json: Value = serde_json::from_slice(raw).unwrap_or_else(|e| panic!("not JSON ({e}): {ctx}"));
    assert!(json.is_object(), "envelope is an object: {ctx}");
    assert_eq!(json["meta"]["http_code"].as_u64(), Some(u64::from(status)), "meta.http_code = status: {ctx}");
    if status >= 400 {
        assert_eq!(keys(&json), set(&["meta"]), "an error carries no response: {ctx}");
        assert_eq!(keys(&json["meta"]), set(&["http_code", "message"]), "error meta: {ctx}");
        let msg = json["meta"]["message"].as_str().unwrap_or("");
        assert!(!msg.trim().is_empty(), "an error has a non-empty message: {ctx}");
    }
    json
}

/// A 200 with a value: exactly `{"meta":{"http_code":200},"response":V}`; returns V.
#[track_caller]
pub fn ok(r: &Answer) -> Value {
    assert_eq!(r.status, 200, "{}: expected 200, got {}", r.request, r.text());
    assert_eq!(r.json["meta"], json!({"http_code": 200}), "{}: {}", r.request, r.text());
    assert_eq!(keys(&r.json), set(&["meta", "response"]), "{}: {}", r.request, r.text());
    r.json["response"].clone()
}

/// Plain success: exactly `{"meta":{"http_code":200,"message":"OK!"}}`.
#[track_caller]
pub fn ok_plain(r: &Answer) {
    assert_eq!(r.status, 200, "{}: {}", r.request, r.text());
    assert_eq!(r.json, json!({"meta": {"http_code": 200, "message": "OK!"}}), "{}: {}", r.request, r.text());
}

/// An error with `status` whose message names `word` (the field that was wrong, mostly).
#[track_caller]
pub fn err(r: &Answer, status: u16, word: &str) {
    assert_eq!(r.status, status, "{}: expected {status} naming {word:?}, got {}", r.request, r.text());
    assert!(r.message().contains(word), "{}: the message should name {word:?}: {:?}", r.request, r.message());
}

/// The unknown-path answer: exactly `{"meta":{"http_code":404,"message":"Not Found."}}`.
#[track_caller]
pub fn not_found_path(r: &Answer) {
    assert_eq!(r.status, 404, "{}: {}", r.request, r.text());
    assert_eq!(r.json, json!({"meta": {"http_code": 404, "message": "Not Found."}}), "{}", r.request);
}

/// What a request body can be given as.
pub trait IntoBody {
    fn into_body(self) -> Vec<u8>;
}

impl IntoBody for &str {
    fn into_body(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl IntoBody for String {
    fn into_body(self) -> Vec<u8> {
        self.into_bytes()
    }
}

impl IntoBody for &String {
    fn into_body(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl IntoBody for Value {
    fn into_body(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl IntoBody for &Value {
    fn into_body(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl IntoBody for &[u8] {
    fn into_body(self) -> Vec<u8> {
        self.to_vec()
    }
}

impl IntoBody for Vec<u8> {
    fn into_body(self) -> Vec<u8> {
        self
    }
}

/// A client for one server (cheap to clone: clones share their connections).
#[derive(Clone, Debug)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// A client for `base` (`http://host:port`) that keeps its connections alive.
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        Self { base: base.into(), http }
    }

    /// A client for the same server that opens a new connection for every request: for requests
    /// after which the server may close the connection (bodies it does not read), so that the
    /// failure stays in the test that is about it.
    pub fn fresh(&self) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        Self { base: self.base.clone(), http }
    }

    /// `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One request with extra headers; `Err` only when there was no answer (connection refused
    /// or reset). A body is sent as `application/json`.
    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, reqwest::Error> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let raw = res.bytes().await?.to_vec();
        let json = check_answer(method, path, status, &headers, &raw);
        Ok(Answer { request: format!("{method} {path}"), status, headers, raw, json })
    }

    /// [`Api::try_request`], and there must be an answer.
    pub async fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>, headers: &[(&str, &str)]) -> Answer {
        self.try_request(method, path, body, headers).await.unwrap_or_else(|e| panic!("{method} {path}: {e:?}"))
    }

    /// One request; `Err` only when there was no answer.
    pub async fn try_call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Answer, reqwest::Error> {
        self.try_request(method, path, body.map(<[u8]>::to_vec), &[]).await
    }

    /// One request, which must be answered.
    pub async fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Answer {
        self.request(method, path, body.map(<[u8]>::to_vec), &[]).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: impl IntoBody) -> Answer {
        self.request("POST", path, Some(body.into_body()), &[]).await
    }

    pub async fn put(&self, path: &str, body: impl IntoBody) -> Answer {
        self.request("PUT", path, Some(body.into_body()), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, None).await
    }

    pub async fn readyz(&self) -> Answer {
        self.get("/readyz").await
    }

    /// Creates a user (or gets the one with that uuid) and returns it, checked.
    pub async fn create_user(&self, uuid: &str, name: Option<&str>) -> Value {
        let body = match name {
            Some(n) => json!({"uuid": uuid, "display_name": n}),
            None => json!({"uuid": uuid}),
        };
        let u = ok(&self.post("/api/user", body).await);
        assert_user_shape(&u);
        assert_eq!(u["uuid"], uuid);
        assert_eq!(u["display_name"], name.unwrap_or(""));
        u
    }

    /// Creates a user without a display name and returns its id.
    pub async fn user(&self, uuid: &str) -> i64 {
        self.create_user(uuid, None).await["id"].as_i64().expect("id")
    }

    /// Opens a session and returns it, checked.
    pub async fn open_session(&self, user_id: i64) -> Value {
        let s = ok(&self.call("POST", &format!("/api/session/{user_id}"), None).await);
        assert_session_shape(&s);
        assert_eq!(s["user_id"], user_id);
        s
    }

    /// Opens a session and returns its uuid.
    pub async fn session(&self, user_id: i64) -> String {
        self.open_session(user_id).await["uuid"].as_str().expect("uuid").to_owned()
    }

    /// Sends `body` to `receiver`; `Err` only when there was no answer.
    pub async fn try_send(&self, session: &str, receiver: i64, body: &str) -> Result<Answer, reqwest::Error> {
        let body = json!({"receiver_id": receiver, "body": body}).to_string().into_bytes();
        self.try_request("POST", &format!("/api/message/{session}"), Some(body), &[]).await
    }

    /// Sends `body` to `receiver` and returns the stored message, checked.
    pub async fn send(&self, session: &str, receiver: i64, body: &str) -> Value {
        let r = self.try_send(session, receiver, body).await.unwrap_or_else(|e| panic!("send: {e:?}"));
        let m = ok(&r);
        assert_message_shape(&m);
        assert_eq!(m["receiver_id"], receiver);
        assert_eq!(m["body"], body);
        assert_eq!(m["attachments"], Value::Null);
        m
    }

    /// A messages answer, checked: exactly `meta` (exactly `http_code`, `cursor` with exactly
    /// `unix` and `nano`, and a boolean `gap`) and `response`, an array of messages. Returns
    /// (meta, messages).
    pub async fn poll(&self, path: &str) -> (Value, Vec<Value>) {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(keys(&r.json), set(&["meta", "response"]), "{path}");
        let meta = r.json["meta"].clone();
        assert_eq!(keys(&meta), set(&["http_code", "cursor", "gap"]), "messages meta: {meta}");
        assert!(meta["gap"].is_boolean(), "{meta}");
        assert_eq!(keys(&meta["cursor"]), set(&["unix", "nano"]), "{meta}");
        assert!(meta["cursor"]["unix"].is_i64() && meta["cursor"]["nano"].is_i64(), "{meta}");
        let msgs = r.json["response"].as_array().unwrap_or_else(|| panic!("{path}: response is an array")).clone();
        for m in &msgs {
            assert_message_shape(m);
        }
        (meta, msgs)
    }

    /// The uuids of every message in the session user's mailbox, oldest first.
    pub async fn mailbox(&self, session: &str) -> Vec<String> {
        uuids(&self.poll(&format!("/api/messages/{session}")).await.1)
    }

    /// `GET /api/sessions`, each checked.
    pub async fn sessions(&self) -> Vec<Value> {
        let list = ok(&self.get("/api/sessions").await);
        let list = list.as_array().expect("array").clone();
        for s in &list {
            assert_session_shape(s);
        }
        list
    }

    /// The listed session with `uuid`.
    pub async fn session_by_uuid(&self, uuid: &str) -> Value {
        self.sessions().await.into_iter().find(|s| s["uuid"] == uuid).unwrap_or_else(|| panic!("session {uuid} listed"))
    }

    /// `GET /api/contacts/{session}`, each checked.
    pub async fn contacts(&self, session: &str) -> Vec<Value> {
        let list = ok(&self.get(&format!("/api/contacts/{session}")).await);
        let list = list.as_array().expect("array").clone();
        for c in &list {
            assert_contact_shape(c);
        }
        list
    }
}
