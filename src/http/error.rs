//! [`ApiError`]: every error a client can get, and the one place it becomes an envelope.
//!
//! Every status number and every message text an error answer carries is written here (or, for
//! the engine's errors, in [`EngineError`]'s `Display`), nowhere else.

use super::response::{respond, HttpResponse, JSON};
use crate::engine::{EngineError, NotReady};
use crate::render;
use hyper::header::{self, HeaderValue};
use hyper::StatusCode;
use std::borrow::Cow;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No such path.
    NotFound,
    /// The path exists, not with this method; carries the `Allow` header's value.
    MethodNotAllowed(&'static str),
    /// The request body is over the 64 KiB limit.
    TooLarge,
    /// The URI is over [`super::limits::MAX_URI`].
    UriTooLong,
    /// The header fields are over [`super::limits::MAX_HEADER_BYTES`].
    HeadersTooLarge,
    /// The request body did not arrive in time.
    BodyTimeout,
    /// The client's input is wrong; the message names the field.
    BadRequest(Cow<'static, str>),
    /// The engine refused.
    Engine(EngineError),
    /// `/readyz`: not ready.
    NotReady(NotReady),
    /// An admin route without the admin token.
    Unauthorized,
    /// A query parameter is wrong; the message names it.
    BadQuery(Cow<'static, str>),
    /// `GET /api/ws/...` without a WebSocket upgrade.
    UpgradeRequired,
}

impl ApiError {
    /// A 400 naming what was wrong.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::BadRequest(message.into())
    }

    /// The HTTP status, which is also `meta.http_code`.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Engine(e) => match e {
                EngineError::NoSuchSession | EngineError::NoSuchUser(_) => StatusCode::NOT_FOUND,
                EngineError::NoSuchReceiver | EngineError::SelfContact => StatusCode::BAD_REQUEST,
                EngineError::TooManySessions | EngineError::TooManyContacts | EngineError::SendRate(_) => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                EngineError::TooManyUsers => StatusCode::SERVICE_UNAVAILABLE,
                EngineError::QueueFull
                | EngineError::StoreStalled
                | EngineError::StoreUnreachable
                | EngineError::WriteUnconfirmed
                | EngineError::ClusterUnavailable
                | EngineError::ClusterUnconfirmed => StatusCode::SERVICE_UNAVAILABLE,
                // Only a write that passed validation reaches the store: its refusal is ours.
                EngineError::StoreRefused => StatusCode::INTERNAL_SERVER_ERROR,
                // A publisher wrote an entry no node can apply: ours too.
                EngineError::MalformedCommand(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        }
    }

    /// `meta.message`: what was wrong, naming the field where there is one.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            ApiError::NotFound => Cow::Borrowed("Not Found."),
            ApiError::MethodNotAllowed(allow) => Cow::Owned(format!("Method Not Allowed. Allowed: {allow}.")),
            ApiError::TooLarge => Cow::Borrowed("request body: larger than 64 KiB"),
            ApiError::UriTooLong => Cow::Borrowed("request line: the URI is longer than 8 KiB"),
            ApiError::HeadersTooLarge => Cow::Borrowed("request headers: larger than 32 KiB in all"),
            ApiError::BodyTimeout => Cow::Borrowed("request body: not received in time"),
            ApiError::BadRequest(m) => Cow::Borrowed(m),
            ApiError::Engine(e) => Cow::Owned(e.to_string()),
            ApiError::NotReady(n) => Cow::Owned(n.to_string()),
            ApiError::Unauthorized => Cow::Borrowed("authorization: admin token required"),
            ApiError::BadQuery(m) => Cow::Borrowed(m),
            ApiError::UpgradeRequired => Cow::Borrowed(
                "upgrade: this route is a WebSocket (Connection: Upgrade, Upgrade: websocket, \
                 Sec-WebSocket-Version: 13, Sec-WebSocket-Key)",
            ),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::Engine(e)
    }
}

impl From<NotReady> for ApiError {
    fn from(n: NotReady) -> Self {
        ApiError::NotReady(n)
    }
}

/// The envelope of an error, with `Allow` on a 405.
pub fn error_response(e: &ApiError) -> HttpResponse {
    let status = e.status();
    let mut res = respond(status, JSON, render::error(status.as_u16(), &e.message()));
    match e {
        ApiError::MethodNotAllowed(allow) => {
            res.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        ApiError::UpgradeRequired => {
            res.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            res.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        ApiError::Unauthorized => {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        ApiError::Engine(EngineError::SendRate(wait)) => {
            // Whole seconds, at least 1, rounded up: a client that waits this long gets through.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        _ => {}
    }
    res
}
