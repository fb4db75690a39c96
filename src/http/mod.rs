//! The HTTP API: routing, handlers, and the envelope, on hyper 1.x with no framework.
//!
//! [`Api::handle`] is the whole request path, in the contract's order of precedence: resolve the
//! method and path ([`router`]) → 404, 405; read the body ([`body`], at most 64 KiB) → 413; then
//! the route's handler parses its path segments left to right and its body ([`input`]) → 400/404,
//! calls the [`Engine`], and wraps the answer in the envelope ([`response`], [`crate::render`]).
//! Handlers live per resource, as mini-redis keeps one file per command: [`users`], [`sessions`],
//! [`contacts`], [`messages`] (the hot path), [`ops`]. Errors of every layer meet as an
//! [`ApiError`] and become an envelope in one place ([`error::error_response`]).

pub mod body;
pub mod contacts;
pub mod error;
pub mod input;
pub mod limits;
pub mod messages;
pub mod ops;
pub mod response;
pub mod router;
pub mod sessions;
pub mod socket;
pub mod static_files;
pub mod stream;
pub mod users;

use crate::engine::Engine;
use crate::metrics::Metrics;
use body::ReadBody;
pub use error::ApiError;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::Request;
use messages::Polled;
use response::HttpResponse;
use router::Route;
use std::sync::Arc;
use std::time::Instant;

/// A connection's place under `--max-connections`, handed to a WebSocket that takes the
/// connection over, so that the place is freed only when both are done.
#[derive(Debug, Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

impl ConnectionSlot {
    /// The connection's place.
    pub fn new(permit: Arc<tokio::sync::OwnedSemaphorePermit>) -> Self {
        Self(permit)
    }
}

/// What a WebSocket upgrade needs of the connection: hyper's upgrade, and the connection's place.
#[derive(Debug)]
pub struct Upgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    slot: Option<ConnectionSlot>,
}

/// The API's settings (from the command line).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `--admin-token`.
    pub admin_token: Option<String>,
    /// `--max-wait`: the longest `?wait=`.
    pub max_wait: std::time::Duration,
    /// `--heartbeat`: the SSE comment and WebSocket ping interval.
    pub heartbeat: std::time::Duration,
}

/// The API: an engine and its metrics behind the routes of the contract.
pub struct Api {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    /// `Bearer <--admin-token>`, when one is set.
    admin: Option<Vec<u8>>,
    max_wait: std::time::Duration,
    heartbeat: std::time::Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Api").field("admin_token", &self.admin.is_some()).finish_non_exhaustive()
    }
}

impl Api {
    /// The API over `engine`. `metrics` must have been made with [`router::metric_labels`].
    /// With an admin token, the admin routes need `Authorization: Bearer <token>`.
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>, config: &ApiConfig) -> Self {
        Self {
            engine,
            metrics,
            admin: config.admin_token.as_ref().map(|t| format!("Bearer {t}").into_bytes()),
            max_wait: config.max_wait,
            heartbeat: config.heartbeat,
        }
    }

    /// Whether `headers` carry the admin token (or none is needed), compared in constant time.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        let Some(expected) = &self.admin else { return true };
        headers.get(header::AUTHORIZATION).is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected)))
    }

    /// Answers one request; never fails (errors are envelopes).
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let resolved = match limits::check(&parts) {
            Ok(()) => router::resolve(&parts.method, parts.uri.path()),
            Err(too_large) => Err(too_large),
        };
        let metric = router::metric_index(&resolved);
        // Only the WebSocket route needs what hyper keeps for an upgrade (and its place).
        let upgrade = match resolved {
            Ok(Route::MessagesSocket(_)) => parts
                .extensions
                .remove::<hyper::upgrade::OnUpgrade>()
                .map(|on_upgrade| Upgrade { on_upgrade, slot: parts.extensions.remove::<ConnectionSlot>() }),
            _ => None,
        };
        // Precedence: unknown path, wrong method, then the admin token, then the body.
        let denied = matches!(&resolved, Ok(route) if route.is_admin()) && !self.authorized(&parts.headers);
        // Only a routed request's body is kept; any other is drained so the connection lives on.
        let keep = match resolved {
            Ok(Route::Options) | Err(_) => 0,
            Ok(_) if denied => 0,
            Ok(_) => body::MAX_REQUEST_BODY,
        };
        let (body, reusable) = body::read(&parts.headers, body, keep).await;
        let answer = match (resolved, body) {
            (Err(not_routed), _) => Err(ApiError::from(not_routed)),
            (Ok(_), _) if denied => Err(ApiError::Unauthorized),
            (Ok(route), ReadBody::Complete(body)) => match self.route(route, &parts, &body, upgrade).await {
                Ok(Polled::Now(answer)) => Ok(answer),
                Ok(Polled::Hold(session, cutoff, wait)) => {
                    // The request head's bytes pin hyper's first read buffer (hyper has reserved
                    // another by now): let go of them before waiting (holdbench: 20.3 -> 16.1 KB
                    // per held long-poll).
                    drop((parts, body));
                    // Boxed: the waiting state is large, and every request's future would
                    // otherwise carry room for it.
                    Box::pin(messages::hold_then_poll(&self.engine, session, cutoff, wait, &self.metrics)).await
                }
                Err(e) => Err(e),
            },
            (Ok(Route::Options), _) => Ok(response::preflight(&parts.headers)),
            (Ok(_), ReadBody::TooLarge) => Err(ApiError::TooLarge),
            (Ok(_), ReadBody::Broken) => Err(ApiError::bad_request("request body: could not be read")),
            (Ok(_), ReadBody::TimedOut) => Err(ApiError::BodyTimeout),
        };
        let mut res = answer.unwrap_or_else(|e| error::error_response(&e));
        if !reusable {
            // The rest of the body is still on the wire: say so, and hyper closes after answering.
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        self.metrics.observe(metric, res.status().as_u16(), started.elapsed().as_secs_f64());
        res
    }

    /// Runs the route's handler; a long-poll to hold comes back to `handle` to be held.
    async fn route(
        &self,
        route: Route<'_>,
        parts: &Parts,
        body: &[u8],
        upgrade: Option<Upgrade>,
    ) -> Result<Polled, ApiError> {
        let e = &*self.engine;
        let query = parts.uri.query();
        if let Some(session) = route.session() {
            // Cluster mode: a session opened through another node an instant ago.
            e.expect_session(session).await;
        }
        let answered = match route {
            // A hold is held by `handle`, once it has let go of the request.
            Route::MessagesPoll(session, cutoff) => return messages::poll(e, session, cutoff, query, self.max_wait),
            Route::MessagesSocket(session) => {
                socket::open(&self.engine, session, query, &parts.headers, upgrade, self.heartbeat, &self.metrics)
            }
            Route::MessagesStream(session, cutoff) => {
                stream::open(&self.engine, session, cutoff, &parts.headers, self.heartbeat, &self.metrics)
            }
            Route::MessageSend(session) => messages::send(e, session, body).await,
            Route::Root => ops::root(),
            Route::UsersList => users::list(e, query),
            Route::UserCreate => users::create(e, body).await,
            Route::UserGet(id) => users::get(e, id),
            Route::UserGetByUuid(uuid) => users::get_by_uuid(e, uuid),
            Route::UserUpdate(id) => users::update(e, id, body).await,
            Route::UserDelete(id) => users::delete(e, id).await,
            Route::SessionsList => sessions::list(e, query),
            Route::SessionOpen(user_id) => sessions::open(e, user_id).await,
            Route::SessionClose(session) => sessions::close(e, session).await,
            Route::ContactsList(session) => contacts::list(e, session),
            Route::ContactAdd(session, user_id) => contacts::add(e, session, user_id).await,
            Route::ContactRemove(session, user_id) => contacts::remove(e, session, user_id).await,
            Route::Openapi => Ok(static_files::openapi()),
            Route::Demo(asset) => static_files::demo(asset),
            Route::Healthz => ops::healthz(),
            Route::Readyz => ops::readyz(e),
            Route::Metrics => ops::metrics(&self.metrics),
            Route::Options => Ok(response::preflight(&parts.headers)),
        };
        answered.map(Polled::Now)
    }
}
