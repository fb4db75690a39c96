//! `static/openapi.json`, the contract as an OpenAPI 3.1 document, checked by machine:
//!
//! - it is a valid OpenAPI 3.1 document (the official schema, vendored in `tests/data/`), and
//!   every `$ref` in it resolves;
//! - it names every route the router has, and nothing the router does not route;
//! - what the server answers conforms to it: each route is exercised (success and its typical
//!   errors), and every answer's status must be documented for its operation, its content type
//!   documented, its required headers present, and its JSON body valid against the schema the
//!   document gives;
//! - `GET /openapi.json` serves the file itself, open even with `--admin-token`.
//!
//! `tests/schemathesis/run` fuzzes the same document against the server on top of this.

mod support;

use chatbus::http::router::{resolve, RouteName};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use strum::IntoEnumIterator;
use support::binary::Chatbus;
use support::contract::{NO_SESSION, NO_USER};

const DOC: &str = include_str!("../static/openapi.json");
/// The OpenAPI 3.1 schema (`https://spec.openapis.org/oas/3.1/schema/2022-10-07`), as bundled in
/// the PyPI package `openapi-spec-validator` 0.9.0
/// (`openapi_spec_validator/resources/schemas/v3.1/schema.json`), unchanged.
const OAS_SCHEMA: &str = include_str!("data/openapi-3.1.schema.json");
const TOKEN: &str = "openapi-test-token";
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn doc() -> Value {
    serde_json::from_str(DOC).expect("static/openapi.json is JSON")
}

/// `v`, or what its `$ref` points at (the document's refs are all local), with the pointer.
fn deref<'a>(doc: &'a Value, v: &'a Value, at: String) -> (&'a Value, String) {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
            (doc.pointer(pointer).unwrap_or_else(|| panic!("$ref {r} resolves to nothing")), pointer.to_owned())
        }
        None => (v, at),
    }
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Every documented operation: (method, path template).
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.push((m.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// The template with each parameter replaced by a value its schema allows.
fn instantiate(doc: &Value, method: &str, template: &str) -> String {
    let op = &doc["paths"][template][method.to_lowercase()];
    let mut path = template.to_owned();
    for p in op["parameters"].as_array().into_iter().flatten() {
        let (p, _) = deref(doc, p, String::new());
        if p["in"] != "path" {
            continue;
        }
        let (schema, _) = deref(doc, &p["schema"], String::new());
        let sample = match (schema["type"].as_str(), schema["pattern"].as_str()) {
            (Some("integer"), _) => "7".to_owned(),
            (_, Some("^[0-9a-f]{32}$")) => NO_SESSION.to_owned(),
            _ => "app.js".to_owned(),
        };
        path = path.replace(&format!("{{{}}}", p["name"].as_str().expect("name")), &sample);
    }
    assert!(!path.contains('{'), "{method} {template}: a path parameter is not declared");
    path
}

#[test]
fn document_is_valid_openapi_3_1_and_every_ref_resolves() {
    let doc = doc();
    let schema: Value = serde_json::from_str(OAS_SCHEMA).expect("vendored schema is JSON");
    let validator = jsonschema::draft202012::new(&schema).expect("the OpenAPI 3.1 schema compiles");
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "static/openapi.json is not valid OpenAPI 3.1:\n{}", errors.join("\n"));
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.1.")), Some(true));

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50, "the document uses components");
    for r in all {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "$ref {r} resolves to nothing");
    }
    // Every schema compiles on its own terms (JSON Schema 2020-12, OpenAPI 3.1's dialect).
    for name in doc["components"]["schemas"].as_object().expect("schemas").keys() {
        validator_for(&doc, &format!("/components/schemas/{}", escape(name)));
    }
}

#[test]
fn every_route_is_documented_and_every_operation_is_routed() {
    let doc = doc();
    let mut covered = BTreeSet::new();
    for (method, template) in operations(&doc) {
        let path = instantiate(&doc, &method, &template);
        let m = hyper::Method::from_bytes(method.as_bytes()).expect("method");
        let route = resolve(&m, &path)
            .unwrap_or_else(|e| panic!("documented {method} {template} ({path}) is not routed: {e:?}"));
        covered.insert(<&'static str>::from(RouteName::from(&route)));
    }
    for name in RouteName::iter() {
        // OPTIONS answers on any path (the CORS preflight); the document says so in its info.
        if name == RouteName::Options {
            continue;
        }
        let label: &'static str = name.into();
        assert!(covered.contains(label), "route {label} has no operation in static/openapi.json");
    }
}

/// A validator for the schema at `pointer` in the document, `$ref`s resolved within it.
fn validator_for(doc: &Value, pointer: &str) -> jsonschema::Validator {
    let mut root = doc.clone();
    let m = root.as_object_mut().expect("object");
    m.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    // A URI fragment: what a URI may not hold (the space of a content type, braces of a path
    // template) percent-encoded.
    let mut fragment = String::new();
    for c in pointer.chars() {
        match c {
            ' ' | '"' | '%' | '<' | '>' | '\\' | '^' | '`' | '{' | '|' | '}' => {
                fragment.push_str(&format!("%{:02X}", c as u32))
            }
            c => fragment.push(c),
        }
    }
    m.insert("$ref".into(), json!(format!("#{fragment}")));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema at {pointer} does not compile: {e}"))
}

/// What one answer was.
struct Seen {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

/// Checks an answer against the document: status documented for the operation, content type
/// documented, required headers present and valid, a JSON body valid against its schema.
fn conform(doc: &Value, method: &str, template: &str, seen: &Seen) {
    let ctx = format!("{method} {template} -> {} {}", seen.status, String::from_utf8_lossy(&seen.body));
    let op = doc["paths"][template]
        .get(method.to_lowercase())
        .unwrap_or_else(|| panic!("{ctx}: no such operation in the document"));
    let base = format!("/paths/{}/{}/responses/{}", escape(template), method.to_lowercase(), seen.status);
    let response = op["responses"]
        .get(seen.status.to_string())
        .unwrap_or_else(|| panic!("{ctx}: status {} is not documented for this operation", seen.status));
    let (response, at) = deref(doc, response, base);
    for (name, header) in response["headers"].as_object().into_iter().flatten() {
        let value = seen.headers.get(name.as_str()).map(|v| v.to_str().expect("ASCII header"));
        match value {
            None => assert!(header["required"] != true, "{ctx}: required header {name} missing"),
            Some(v) => {
                let value = match header["schema"]["type"].as_str() {
                    Some("integer") => json!(v.parse::<i64>().unwrap_or_else(|_| panic!("{ctx}: {name}: {v}"))),
                    _ => json!(v),
                };
                let pointer = format!("{at}/headers/{}/schema", escape(name));
                let errors: Vec<_> = validator_for(doc, &pointer).iter_errors(&value).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{ctx}: header {name}: {v}: {errors:?}");
            }
        }
    }
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        assert!(seen.body.is_empty(), "{ctx}: a body where the document has none");
        return;
    };
    let ct = seen.headers.get("content-type").map(|v| v.to_str().expect("ASCII")).unwrap_or("");
    assert!(content.contains_key(ct), "{ctx}: content type {ct:?} not documented ({:?})", content.keys());
    if ct.starts_with("application/json") {
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or_else(|e| panic!("{ctx}: not JSON: {e}"));
        let pointer = format!("{at}/content/{}/schema", escape(ct));
        let errors: Vec<_> = validator_for(doc, &pointer)
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{ctx}: body does not match the document:\n{}", errors.join("\n"));
        if let Some(code) = body["meta"]["http_code"].as_u64() {
            assert_eq!(code, u64::from(seen.status), "{ctx}: meta.http_code");
        }
    }
}

/// A client that sends requests and checks every answer against the document.
struct Checker {
    doc: Value,
    base: String,
    http: reqwest::Client,
    exercised: BTreeSet<(String, String)>,
}

impl Checker {
    fn new(port: u16) -> Self {
        Self {
            doc: doc(),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().no_proxy().build().expect("client"),
            exercised: BTreeSet::new(),
        }
    }

    /// Sends `method path` (the operation `template`) with the admin token and `body`, checks the
    /// answer conforms and has `status`; returns its JSON (or `Null`).
    async fn call(&mut self, method: &str, template: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        self.call_with(
            method,
            template,
            path,
            body.map(|b| b.to_string().into_bytes()),
            &[("authorization", "")],
            status,
        )
        .await
    }

    /// [`Checker::call`] with raw body and headers; an `authorization` of `""` is the admin token.
    async fn call_with(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        status: u16,
    ) -> Value {
        let mut req =
            self.http.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", self.base));
        for (k, v) in headers {
            req = match (*k, *v) {
                ("authorization", "") => req.header("authorization", format!("Bearer {TOKEN}")),
                _ => req.header(*k, *v),
            };
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let seen = Seen { status: res.status().as_u16(), headers: res.headers().clone(), body: Vec::new() };
        // An event stream never ends: its head is all there is to check.
        let seen = if seen.headers.get("content-type").is_some_and(|v| v == "text/event-stream") {
            seen
        } else {
            Seen { body: res.bytes().await.expect("body").to_vec(), ..seen }
        };
        conform(&self.doc, method, template, &seen);
        assert_eq!(seen.status, status, "{method} {path}: {}", String::from_utf8_lossy(&seen.body));
        self.exercised.insert((method.to_owned(), template.to_owned()));
        serde_json::from_slice(&seen.body).unwrap_or(Value::Null)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_conform_to_the_document() {
    let srv = Chatbus::start("memory:", &["--admin-token", TOKEN, "--max-wait", "2s", "--send-rate", "1000"]).await;
    let mut c = Checker::new(srv.port());
    let no_user = NO_USER.to_string();

    c.call("GET", "/", "/", None, 200).await;
    c.call("GET", "/healthz", "/healthz", None, 200).await;
    c.call("GET", "/readyz", "/readyz", None, 200).await;
    c.call("GET", "/metrics", "/metrics", None, 200).await;
    c.call("GET", "/openapi.json", "/openapi.json", None, 200).await;
    c.call("GET", "/demo", "/demo", None, 200).await;
    c.call("GET", "/demo/{asset}", "/demo/app.js", None, 200).await;
    c.call("GET", "/demo/{asset}", "/demo/style.css", None, 200).await;
    c.call("GET", "/demo/{asset}", "/demo/nope.txt", None, 404).await;

    // Users.
    let a =
        c.call("POST", "/api/user", "/api/user", Some(json!({"uuid": "alice", "display_name": "Alice"})), 200).await;
    let a = a["response"]["id"].as_i64().expect("id");
    let b = c.call("POST", "/api/users", "/api/users", Some(json!({"uuid": "bob", "display_name": null})), 200).await;
    let b = b["response"]["id"].as_i64().expect("id");
    for bad in [json!({"uuid": ""}), json!({"uuid": "x".repeat(65)}), json!({"uuid": 5}), json!([1])] {
        c.call("POST", "/api/user", "/api/user", Some(bad), 400).await;
    }
    c.call_with("POST", "/api/user", "/api/user", Some(b"{".to_vec()), &[("authorization", "")], 400).await;
    c.call_with("POST", "/api/user", "/api/user", Some(br#"{"uuid":"c"}"#.to_vec()), &[], 401).await;
    c.call_with("GET", "/api/users", "/api/users", None, &[("authorization", "Bearer wrong")], 401).await;
    let big = vec![b' '; 64 * 1024 + 1];
    c.call_with("POST", "/api/user", "/api/user", Some(big.clone()), &[("authorization", "")], 413).await;
    c.call("GET", "/api/users", "/api/users", None, 200).await;
    c.call("GET", "/api/users", "/api/users?limit=1&after_id=0", None, 200).await;
    c.call("GET", "/api/users", "/api/users?limit=0", None, 400).await;
    c.call("GET", "/api/users", "/api/users?after_id=x", None, 400).await;
    c.call("GET", "/api/users", &format!("/api/users?x={}", "y".repeat(9000)), None, 414).await;
    let huge = "h".repeat(33 * 1024);
    c.call_with("GET", "/healthz", "/healthz", None, &[("x-big", &huge)], 431).await;
    c.call("GET", "/api/user/{id}", &format!("/api/user/{a}"), None, 200).await;
    c.call("GET", "/api/user/{id}", "/api/user/abc", None, 400).await;
    c.call("GET", "/api/user/{id}", &format!("/api/user/{no_user}"), None, 404).await;
    c.call("GET", "/api/user.uuid/{uuid}", "/api/user.uuid/alice", None, 200).await;
    c.call("GET", "/api/user.uuid/{uuid}", "/api/user.uuid/nobody", None, 404).await;
    c.call("GET", "/api/user.uuid/{uuid}", "/api/user.uuid/%FF", None, 400).await;
    c.call("PUT", "/api/user/{id}", &format!("/api/user/{a}"), Some(json!({"display_name": "Al"})), 200).await;
    c.call("PUT", "/api/user/{id}", &format!("/api/user/{a}"), Some(json!({})), 400).await;
    c.call("PUT", "/api/user/{id}", &format!("/api/user/{no_user}"), Some(json!({"display_name": "x"})), 404).await;

    // Sessions and contacts.
    let s = c.call("POST", "/api/session/{id}", &format!("/api/session/{a}"), None, 200).await;
    let s = s["response"]["uuid"].as_str().expect("uuid").to_owned();
    c.call("POST", "/api/session/{id}", &format!("/api/session/{no_user}"), None, 404).await;
    c.call("POST", "/api/session/{id}", "/api/session/x", None, 400).await;
    c.call("GET", "/api/sessions", "/api/sessions", None, 200).await;
    c.call("GET", "/api/sessions", &format!("/api/sessions?limit=5&after={NO_SESSION}"), None, 200).await;
    c.call("GET", "/api/sessions", "/api/sessions?after=zz", None, 400).await;
    let contact = "/api/contact/{session_id}/{user_id}";
    c.call("POST", contact, &format!("/api/contact/{s}/{b}"), None, 200).await;
    c.call("POST", contact, &format!("/api/contact/{s}/{a}"), None, 400).await;
    c.call("POST", contact, &format!("/api/contact/{s}/{no_user}"), None, 404).await;
    c.call("POST", contact, &format!("/api/contact/{NO_SESSION}/{b}"), None, 404).await;
    c.call("GET", "/api/contacts/{session_id}", &format!("/api/contacts/{s}"), None, 200).await;
    c.call("GET", "/api/contacts/{session_id}", "/api/contacts/nope", None, 404).await;
    c.call("DELETE", contact, &format!("/api/contact/{s}/{b}"), None, 200).await;
    c.call("DELETE", contact, &format!("/api/contact/{s}/x"), None, 400).await;
    c.call("DELETE", contact, &format!("/api/contact/{NO_SESSION}/{b}"), None, 404).await;

    // Messages.
    let send = "/api/message/{session_id}";
    let m =
        c.call("POST", send, &format!("/api/message/{s}"), Some(json!({"receiver_id": b, "body": "hi"})), 200).await;
    let created = m["response"]["created_utc"].as_str().expect("created").to_owned();
    let with = json!({"receiver_id": b, "body": "", "attachments": {"k": [1, "v"]}});
    c.call("POST", "/api/send/{session_id}", &format!("/api/send/{s}"), Some(with), 200).await;
    c.call("POST", send, &format!("/api/message/{s}"), Some(json!({"receiver_id": b, "body": "x".repeat(1025)})), 400)
        .await;
    c.call("POST", send, &format!("/api/message/{s}"), Some(json!({"receiver_id": NO_USER, "body": "x"})), 400).await;
    c.call(
        "POST",
        send,
        &format!("/api/message/{s}"),
        Some(json!({"receiver_id": b, "body": "", "attachments": 1})),
        400,
    )
    .await;
    c.call("POST", send, &format!("/api/message/{NO_SESSION}"), Some(json!({"receiver_id": b, "body": "x"})), 404)
        .await;
    c.call_with("POST", send, &format!("/api/message/{s}"), Some(big), &[], 413).await;
    let poll = "/api/messages/{session_id}";
    let p = c.call("GET", poll, &format!("/api/messages/{s}"), None, 200).await;
    assert_eq!(p["response"].as_array().map(Vec::len), Some(2));
    assert!(created.starts_with("20"));
    c.call("GET", "/api/messages/{session_id}/{unix}", &format!("/api/messages/{s}/1"), None, 200).await;
    c.call("GET", "/api/messages/{session_id}/{unix}/{nano}", &format!("/api/messages/{s}/1/5"), None, 200).await;
    c.call("GET", "/api/messages/{session_id}/{unix}", &format!("/api/messages/{s}/x"), None, 400).await;
    c.call(
        "GET",
        "/api/messages/{session_id}/{unix}/{nano}",
        &format!("/api/messages/{s}/{}/0?wait=100ms", i64::MAX),
        None,
        200,
    )
    .await;
    c.call("GET", poll, &format!("/api/messages/{s}?wait=1m"), None, 400).await;
    c.call("GET", poll, &format!("/api/messages/{s}?wait=3s"), None, 400).await;
    c.call("GET", poll, &format!("/api/messages/{NO_SESSION}"), None, 404).await;

    // Real time: event streams and the WebSocket.
    let stream = "/api/stream/{session_id}";
    c.call("GET", stream, &format!("/api/stream/{s}"), None, 200).await;
    c.call("GET", "/api/stream/{session_id}/{unix}", &format!("/api/stream/{s}/1"), None, 200).await;
    c.call("GET", "/api/stream/{session_id}/{unix}/{nano}", &format!("/api/stream/{s}/1/2"), None, 200).await;
    c.call_with("GET", stream, &format!("/api/stream/{s}"), None, &[("last-event-id", "12")], 400).await;
    c.call("GET", "/api/stream/{session_id}/{unix}", &format!("/api/stream/{s}/x"), None, 400).await;
    c.call("GET", stream, &format!("/api/stream/{NO_SESSION}"), None, 404).await;
    let ws = "/api/ws/{session_id}";
    c.call("GET", ws, &format!("/api/ws/{s}"), None, 426).await;
    c.call("GET", ws, &format!("/api/ws/{s}?cursor=1.2"), None, 400).await;
    c.call("GET", ws, &format!("/api/ws/{NO_SESSION}"), None, 404).await;
    let (mut socket, res) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/api/ws/{s}", srv.port()))
        .await
        .expect("websocket handshake");
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in res.headers() {
        headers.insert(
            reqwest::header::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
            reqwest::header::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    conform(&c.doc, "GET", ws, &Seen { status: res.status().as_u16(), headers, body: Vec::new() });
    // The frames, against the document's frame schemas.
    use futures_util::{SinkExt, StreamExt};
    let server_frame = validator_for(&c.doc, "/components/schemas/WsServerFrame");
    let client_frame = json!({"type": "send", "ref": "c-1", "receiver_id": b, "body": "over ws", "attachments": null});
    assert!(validator_for(&c.doc, "/components/schemas/WsClientFrame").is_valid(&client_frame));
    socket.send(tokio_tungstenite::tungstenite::Message::text(client_frame.to_string())).await.expect("send frame");
    socket.send(tokio_tungstenite::tungstenite::Message::text("{nope")).await.expect("send frame");
    let mut kinds = BTreeSet::new();
    while kinds.len() < 3 {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        let Ok(text) = frame.to_text() else { continue };
        if text.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(text).expect("JSON frame");
        let errors: Vec<_> = server_frame.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v}: {errors:?}");
        kinds.insert(v["type"].as_str().expect("type").to_owned());
    }
    assert_eq!(kinds, BTreeSet::from(["message".to_owned(), "sent".to_owned(), "error".to_owned()]));
    drop(socket);

    // Closing, deleting.
    c.call("DELETE", "/api/session/{id}", &format!("/api/session/{s}"), None, 200).await;
    c.call("DELETE", "/api/session/{id}", &format!("/api/session/{s}"), None, 404).await;
    c.call("DELETE", "/api/user/{id}", &format!("/api/user/{b}"), None, 200).await;
    c.call("DELETE", "/api/user/{id}", &format!("/api/user/{b}"), None, 404).await;
    c.call("DELETE", "/api/user/{id}", "/api/user/1.5", None, 400).await;

    let missing: Vec<_> = operations(&c.doc).into_iter().filter(|op| !c.exercised.contains(op)).collect();
    assert!(missing.is_empty(), "documented operations this test never exercised: {missing:?}");
    srv.stop().await;
}

/// The limits' answers: 429 (with `Retry-After` on a send), 503 past `--max-users`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_answers_conform_to_the_document() {
    let args = ["--send-rate", "1", "--max-sessions-per-user", "1", "--max-users", "2"];
    let srv = Chatbus::start("memory:", &args).await;
    let mut c = Checker::new(srv.port());
    let a = c.call("POST", "/api/user", "/api/user", Some(json!({"uuid": "a"})), 200).await["response"]["id"].clone();
    c.call("POST", "/api/user", "/api/user", Some(json!({"uuid": "b"})), 200).await;
    c.call("POST", "/api/user", "/api/user", Some(json!({"uuid": "c"})), 503).await;
    let s = c.call("POST", "/api/session/{id}", &format!("/api/session/{a}"), None, 200).await;
    let s = s["response"]["uuid"].as_str().expect("uuid").to_owned();
    c.call("POST", "/api/session/{id}", &format!("/api/session/{a}"), None, 429).await;
    let send = "/api/message/{session_id}";
    c.call("POST", send, &format!("/api/message/{s}"), Some(json!({"receiver_id": a, "body": "1"})), 200).await;
    c.call("POST", send, &format!("/api/message/{s}"), Some(json!({"receiver_id": a, "body": "2"})), 429).await;
    srv.stop().await;
}

/// `GET /openapi.json` is the file, as `application/json`, and needs no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_is_served_as_is_and_open() {
    let srv = Chatbus::start("memory:", &["--admin-token", TOKEN]).await;
    let res = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}/openapi.json", srv.port()))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(res.status().as_u16(), 200);
    let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(ct.as_deref(), Some("application/json; charset=utf-8"));
    assert_eq!(res.headers().get("access-control-allow-origin").map(|v| v.as_bytes()), Some(&b"*"[..]));
    assert_eq!(res.bytes().await.expect("body"), DOC.as_bytes());
    srv.stop().await;
}
