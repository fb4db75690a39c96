//! The HTTP API: routing, handlers, and the envelope, on hyper 1.x with no framework.
//!
//! [`Api::handle`] is the whole request path: resolve the path ([`router`]) → 404; pick the
//! route by method → 405; read the body (at most 64 KiB) → 413; parse path segments left to right
//! and the body ([`input`]) → 400/404; call the [`Engine`]; wrap the answer in the envelope
//! ([`crate::render`]). Errors of every layer meet as an [`ApiError`] and become an envelope in
//! one place ([`error_response`]).

pub mod error;
pub mod input;
pub mod router;

use crate::engine::{Engine, EngineError};
use crate::mailbox::Entry;
use crate::metrics::Metrics;
use crate::render;
use crate::writer::Ack;
use bytes::Bytes;
pub use error::ApiError;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use router::{Resource, Route};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body accepted.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// How long a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The response type of every route.
pub type HttpResponse = Response<Full<Bytes>>;

const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
const ANY_ORIGIN: HeaderValue = HeaderValue::from_static("*");

/// The API: an engine and its metrics behind the routes of the contract.
#[derive(Debug)]
pub struct Api {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
}

fn respond(status: u16, content_type: HeaderValue, body: Bytes) -> HttpResponse {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN);
    res
}

fn ok(body: Bytes) -> HttpResponse {
    respond(200, JSON, body)
}

/// The envelope of an error.
pub fn error_response(e: &ApiError) -> HttpResponse {
    let mut res = respond(e.status, JSON, render::error(e.status, &e.message));
    if let Some(allow) = e.allow {
        res.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    res
}

fn preflight(headers: &HeaderMap) -> HttpResponse {
    let mut res = respond(204, JSON, Bytes::new());
    let h = res.headers_mut();
    h.remove(header::CONTENT_TYPE);
    if let Some(m) = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m.clone());
    }
    if let Some(v) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    res
}

async fn acked(ack: Ack) -> Result<(), ApiError> {
    ack.await.map_err(|_| ApiError::from(EngineError::StoreUnavailable))
}

async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        if len > MAX_REQUEST_BODY as u64 {
            return Err(ApiError::too_large());
        }
    }
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_REQUEST_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::too_large()),
        Ok(Err(_)) => Err(ApiError::bad_request("request body: could not be read")),
        Err(_) => Err(ApiError::new(408, "request body: not received in time")),
    }
}

impl Api {
    /// The API over `engine`.
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>) -> Self {
        Self { engine, metrics }
    }

    /// Answers one request; never fails (errors are envelopes).
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let started = Instant::now();
        let (route, res) = self.dispatch(req).await;
        let res = res.unwrap_or_else(|e| error_response(&e));
        self.metrics.observe(route as usize, res.status().as_u16(), started.elapsed().as_secs_f64());
        res
    }

    async fn dispatch(&self, req: Request<Incoming>) -> (Route, Result<HttpResponse, ApiError>) {
        let (parts, body) = req.into_parts();
        if parts.method == Method::OPTIONS {
            return (Route::Options, Ok(preflight(&parts.headers)));
        }
        let Some(resource) = router::resolve(parts.uri.path()) else {
            return (Route::NotFound, Err(ApiError::not_found()));
        };
        let Some(route) = resource.route(&parts.method) else {
            return (Route::MethodNotAllowed, Err(ApiError::method_not_allowed(resource.allow())));
        };
        let body = match read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(e) => return (route, Err(e)),
        };
        (route, self.route(route, resource, &body).await)
    }

    async fn route(&self, route: Route, resource: Resource<'_>, body: &[u8]) -> Result<HttpResponse, ApiError> {
        let e = &*self.engine;
        match (route, resource) {
            (Route::Poll, Resource::Messages(s, unix, nano)) => self.poll(s, unix, nano),
            (Route::Send, Resource::Send(s)) => {
                let session = e.session(input::session_segment(s)?)?;
                let m = input::new_message(body)?;
                let sent = e.send(&session, m.receiver_id, &m.body, m.attachments)?;
                if let Some(ack) = sent.ack {
                    acked(ack).await?;
                }
                Ok(ok(render::ok_raw(&sent.json)))
            }
            (Route::Root, _) => {
                Ok(ok(Bytes::from_static(b"{\"meta\":{\"http_code\":200},\"response\":{\"app\":\"Chat Bus\"}}")))
            }
            (Route::ListUsers, _) => Ok(ok(render::ok_value(&e.users()))),
            (Route::CreateUser, _) => {
                let u = input::new_user(body)?;
                let (user, ack) = e.create_user(&u.uuid, &u.display_name);
                if let Some(ack) = ack {
                    acked(ack).await?;
                }
                Ok(ok(render::ok_value(&user)))
            }
            (Route::GetUser, Resource::UserId(id)) => {
                let id = input::int_segment(id, "user_id")?;
                let user = e.user(id).ok_or(EngineError::NoSuchUser("user_id"))?;
                Ok(ok(render::ok_value(&user)))
            }
            (Route::GetUserByUuid, Resource::UserUuid(uuid)) => {
                let uuid = input::decoded_segment(uuid)?;
                let user = e.user_by_uuid(&uuid).ok_or(EngineError::NoSuchUser("uuid"))?;
                Ok(ok(render::ok_value(&user)))
            }
            (Route::UpdateUser, Resource::UserId(id)) => {
                let id = input::int_segment(id, "user_id")?;
                e.user(id).ok_or(EngineError::NoSuchUser("user_id"))?;
                let name = input::display_name(body)?;
                let (user, ack) = e.update_user(id, &name)?;
                acked(ack).await?;
                Ok(ok(render::ok_value(&user)))
            }
            (Route::DeleteUser, Resource::UserId(id)) => {
                let ack = e.delete_user(input::int_segment(id, "user_id")?)?;
                acked(ack).await?;
                Ok(ok(render::ok_plain()))
            }
            (Route::ListSessions, _) => Ok(ok(render::ok_value(&e.sessions()))),
            (Route::OpenSession, Resource::Session(user_id)) => {
                let (session, ack) = e.open_session(input::int_segment(user_id, "user_id")?)?;
                acked(ack).await?;
                Ok(ok(render::ok_value(&session)))
            }
            (Route::CloseSession, Resource::Session(s)) => {
                let ack = e.close_session(input::session_segment(s)?)?;
                acked(ack).await?;
                Ok(ok(render::ok_plain()))
            }
            (Route::ListContacts, Resource::Contacts(s)) => {
                let session = e.session(input::session_segment(s)?)?;
                Ok(ok(render::ok_value(&e.contacts(&session))))
            }
            (Route::AddContact | Route::RemoveContact, Resource::Contact(s, u)) => {
                let session = e.session(input::session_segment(s)?)?;
                let user_id = input::int_segment(u, "user_id")?;
                let ack = if route == Route::AddContact {
                    e.add_contact(&session, user_id)?
                } else {
                    e.remove_contact(&session, user_id)?
                };
                if let Some(ack) = ack {
                    acked(ack).await?;
                }
                Ok(ok(render::ok_plain()))
            }
            (Route::Healthz, _) => Ok(ok(render::ok_plain())),
            (Route::Readyz, _) => {
                let w = e.writer();
                if !w.is_healthy() {
                    Err(ApiError::new(503, "not ready: the store is unreachable"))
                } else if w.is_full() {
                    Err(ApiError::new(503, "not ready: the write queue is at --max-pending"))
                } else {
                    Ok(ok(render::ok_plain()))
                }
            }
            (Route::Metrics, _) => {
                self.metrics.queue_depth.set(i64::try_from(e.writer().pending()).unwrap_or(i64::MAX));
                Ok(respond(
                    200,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    Bytes::from(self.metrics.render()),
                ))
            }
            // `Resource::route` only yields routes matching their resource.
            _ => Err(ApiError::not_found()),
        }
    }

    /// `GET /api/messages/...`: the hot path. An empty poll allocates only its answer.
    fn poll(&self, s: &str, unix: Option<&str>, nano: Option<&str>) -> Result<HttpResponse, ApiError> {
        let session = self.engine.session(input::session_segment(s)?)?;
        let cutoff = input::cutoff(unix, nano)?;
        let mut entries: Vec<Arc<Entry>> = Vec::new();
        let polled = self.engine.poll(&session, cutoff, &mut entries);
        let json: Vec<&Bytes> = entries.iter().map(|e| &e.json).collect();
        Ok(ok(render::poll_answer(polled.cursor, polled.gap, &json)))
    }
}
