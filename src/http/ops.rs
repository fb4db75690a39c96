//! The service routes: `/`, `/healthz`, `/readyz`, `/metrics`.

use super::error::ApiError;
use super::response::{ok, ok_plain, respond, HttpResponse};
use crate::engine::Engine;
use crate::metrics::Metrics;
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::StatusCode;

/// `GET /`: the service's identity.
pub fn root() -> Result<HttpResponse, ApiError> {
    Ok(ok(Bytes::from_static(b"{\"meta\":{\"http_code\":200},\"response\":{\"app\":\"Chat Bus\"}}")))
}

/// `GET /healthz`: the process is up.
pub fn healthz() -> Result<HttpResponse, ApiError> {
    Ok(ok_plain())
}

/// `GET /readyz`: the store answers and the write queue has room.
pub fn readyz(engine: &Engine) -> Result<HttpResponse, ApiError> {
    engine.readiness()?;
    Ok(ok_plain())
}

/// `GET /metrics`: the Prometheus text format.
pub fn metrics(metrics: &Metrics) -> Result<HttpResponse, ApiError> {
    Ok(respond(
        StatusCode::OK,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        Bytes::from(metrics.render()),
    ))
}
