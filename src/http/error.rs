//! [`ApiError`]: every error a client can get, and the one place it becomes an envelope.

use crate::engine::EngineError;
use std::borrow::Cow;

/// An error answer: status, message, and for 405 the `Allow` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (and `meta.http_code`).
    pub status: u16,
    /// `meta.message`: what was wrong, naming the field where there is one.
    pub message: Cow<'static, str>,
    /// `Allow` header value, for 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: u16, message: impl Into<Cow<'static, str>>) -> Self {
        Self { status, message: message.into(), allow: None }
    }

    /// 400.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(400, message)
    }

    /// 404 for an unknown path.
    pub fn not_found() -> Self {
        Self::new(404, "Not Found.")
    }

    /// 405 with the methods the path allows.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self { status: 405, message: Cow::Owned(format!("Method Not Allowed. Allowed: {allow}.")), allow: Some(allow) }
    }

    /// 413.
    pub fn too_large() -> Self {
        Self::new(413, "request body: larger than 64 KiB")
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match e {
            EngineError::NoSuchSession | EngineError::NoSuchUser(_) => 404,
            EngineError::NoSuchReceiver | EngineError::SelfContact => 400,
            EngineError::QueueFull | EngineError::StoreDown | EngineError::StoreUnavailable => 503,
        };
        Self::new(status, e.to_string())
    }
}
