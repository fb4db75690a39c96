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
use crate::metrics::Metrics;
use crate::render;
use crate::writer::Ack;
use bytes::Bytes;
use bytes::BytesMut;
pub use error::ApiError;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use router::{Resource, Route};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body accepted.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Most bytes of an unwanted (or too large) body read and dropped to keep the connection usable.
pub const MAX_DRAIN: u64 = 1024 * 1024;
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

/// How a request body was read.
enum ReadBody {
    /// All of it, within the size limit.
    Complete(Bytes),
    /// Over the limit (for a body nobody wants, any body at all); the rest was discarded.
    TooLarge,
    /// The client broke off or sent a malformed body.
    Broken,
    /// The client did not send it in time.
    TimedOut,
}

/// Reads a body, keeping at most `keep` bytes. A body that is not wanted (or too large) is still
/// read and dropped, up to [`MAX_DRAIN`] bytes, so the connection can serve the next request;
/// the returned flag is `false` when that was not possible and the answer must close it.
async fn read_body(headers: &HeaderMap, mut body: Incoming, keep: usize) -> (ReadBody, bool) {
    if body.is_end_stream() {
        return (ReadBody::Complete(Bytes::new()), true);
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_DRAIN) {
        // Not worth reading just to throw away: answer and close.
        return (ReadBody::TooLarge, false);
    }
    let mut data = BytesMut::new();
    let mut total = 0u64;
    let read = tokio::time::timeout(BODY_TIMEOUT, async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return Some(ReadBody::Broken) };
            let Ok(chunk) = frame.into_data() else { continue }; // trailers
            total += chunk.len() as u64;
            if total > MAX_DRAIN {
                return Some(ReadBody::TooLarge);
            }
            if total <= keep as u64 {
                data.extend_from_slice(&chunk);
            }
        }
        None
    })
    .await;
    match read {
        Err(_) => (ReadBody::TimedOut, false),
        Ok(Some(outcome)) => (outcome, false),
        Ok(None) if total > keep as u64 => (ReadBody::TooLarge, true),
        Ok(None) => (ReadBody::Complete(data.freeze()), true),
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
        // Precedence: unknown path, then wrong method, then body size, then the rest.
        let resolved = if parts.method == Method::OPTIONS {
            Err((Route::Options, None))
        } else {
            match router::resolve(parts.uri.path()) {
                None => Err((Route::NotFound, Some(ApiError::not_found()))),
                Some(resource) => match resource.route(&parts.method) {
                    None => Err((Route::MethodNotAllowed, Some(ApiError::method_not_allowed(resource.allow())))),
                    Some(route) => Ok((route, resource)),
                },
            }
        };
        let keep = if resolved.is_ok() { MAX_REQUEST_BODY } else { 0 };
        let (body, reusable) = read_body(&parts.headers, body, keep).await;
        let (route, mut res) = match (resolved, body) {
            (Err((route, None)), _) => (route, Ok(preflight(&parts.headers))),
            (Err((route, Some(e))), _) => (route, Err(e)),
            (Ok((route, resource)), ReadBody::Complete(body)) => (route, self.route(route, resource, &body).await),
            (Ok((route, _)), ReadBody::TooLarge) => (route, Err(ApiError::too_large())),
            (Ok((route, _)), ReadBody::Broken) => {
                (route, Err(ApiError::bad_request("request body: could not be read")))
            }
            (Ok((route, _)), ReadBody::TimedOut) => {
                (route, Err(ApiError::new(408, "request body: not received in time")))
            }
        };
        if !reusable {
            // The rest of the body is still on the wire: say so, and hyper closes after answering.
            let mut r = match res {
                Ok(r) => r,
                Err(e) => error_response(&e),
            };
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            res = Ok(r);
        }
        (route, res)
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
                let (user, ack) = e.create_user(&u.uuid, &u.display_name)?;
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

    /// `GET /api/messages/...`: the hot path. One buffer: the mailbox copies the messages in,
    /// the envelope goes in front of them; an empty poll makes one small allocation.
    fn poll(&self, s: &str, unix: Option<&str>, nano: Option<&str>) -> Result<HttpResponse, ApiError> {
        let session = self.engine.session(input::session_segment(s)?)?;
        let cutoff = input::cutoff(unix, nano)?;
        let mut answer = render::PollAnswer::new();
        let polled = self.engine.poll(&session, cutoff, answer.messages());
        Ok(ok(answer.finish(polled.cursor, polled.gap)))
    }
}
