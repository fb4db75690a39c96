//! Building answers: the headers every answer carries, and the envelope's success forms.

use crate::render;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// The response type of every route.
pub type HttpResponse = Response<Full<Bytes>>;

/// The content type of every enveloped answer.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
const ANY_ORIGIN: HeaderValue = HeaderValue::from_static("*");

/// An answer with `status`, `content_type` and `body`, and the CORS header every answer carries.
pub fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes) -> HttpResponse {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN);
    res
}

/// A 200 whose body is an envelope already rendered.
pub fn ok(envelope: Bytes) -> HttpResponse {
    respond(StatusCode::OK, JSON, envelope)
}

/// A 200 with `value` as the envelope's `response`.
pub fn ok_value<T: Serialize + ?Sized>(value: &T) -> HttpResponse {
    ok(render::ok_value(value))
}

/// A 200 with no value: `{"meta":{"http_code":200,"message":"OK!"}}`.
pub fn ok_plain() -> HttpResponse {
    ok(render::ok_plain())
}

/// The CORS preflight: 204, reflecting what the browser asks for.
pub fn preflight(headers: &HeaderMap) -> HttpResponse {
    let mut res = respond(StatusCode::NO_CONTENT, JSON, Bytes::new());
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
