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
pub mod users;

use crate::engine::Engine;
use crate::metrics::Metrics;
use body::ReadBody;
pub use error::ApiError;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::Request;
use response::HttpResponse;
use router::Route;
use std::sync::Arc;
use std::time::Instant;

/// The API: an engine and its metrics behind the routes of the contract.
#[derive(Debug)]
pub struct Api {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
}

impl Api {
    /// The API over `engine`. `metrics` must have been made with [`router::metric_labels`].
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>) -> Self {
        Self { engine, metrics }
    }

    /// Answers one request; never fails (errors are envelopes).
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let resolved = match limits::check(&parts) {
            Ok(()) => router::resolve(&parts.method, parts.uri.path()),
            Err(too_large) => Err(too_large),
        };
        let metric = router::metric_index(&resolved);
        // Only a routed request's body is kept; any other is drained so the connection lives on.
        let keep = match resolved {
            Ok(Route::Options) | Err(_) => 0,
            Ok(_) => body::MAX_REQUEST_BODY,
        };
        let (body, reusable) = body::read(&parts.headers, body, keep).await;
        let answer = match (resolved, body) {
            (Err(not_routed), _) => Err(ApiError::from(not_routed)),
            (Ok(route), ReadBody::Complete(body)) => self.route(route, &parts.headers, &body).await,
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

    /// Runs the route's handler.
    async fn route(&self, route: Route<'_>, headers: &HeaderMap, body: &[u8]) -> Result<HttpResponse, ApiError> {
        let e = &*self.engine;
        match route {
            Route::MessagesPoll(session, cutoff) => messages::poll(e, session, cutoff),
            Route::MessageSend(session) => messages::send(e, session, body).await,
            Route::Root => ops::root(),
            Route::UsersList => users::list(e),
            Route::UserCreate => users::create(e, body).await,
            Route::UserGet(id) => users::get(e, id),
            Route::UserGetByUuid(uuid) => users::get_by_uuid(e, uuid),
            Route::UserUpdate(id) => users::update(e, id, body).await,
            Route::UserDelete(id) => users::delete(e, id).await,
            Route::SessionsList => sessions::list(e),
            Route::SessionOpen(user_id) => sessions::open(e, user_id).await,
            Route::SessionClose(session) => sessions::close(e, session).await,
            Route::ContactsList(session) => contacts::list(e, session),
            Route::ContactAdd(session, user_id) => contacts::add(e, session, user_id).await,
            Route::ContactRemove(session, user_id) => contacts::remove(e, session, user_id).await,
            Route::Healthz => ops::healthz(),
            Route::Readyz => ops::readyz(e),
            Route::Metrics => ops::metrics(&self.metrics),
            Route::Options => Ok(response::preflight(headers)),
        }
    }
}
