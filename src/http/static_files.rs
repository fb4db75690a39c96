//! What chatbus serves from inside its binary: the contract as an OpenAPI document
//! (`GET /openapi.json`) and the chat client in the browser (`GET /demo`). The files live in
//! `static/` and are embedded at compile time, so nothing is read from disk or fetched at run
//! time. Neither is enveloped (contract: "Envelope").

use super::error::ApiError;
use super::response::{respond, HttpResponse};
use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::StatusCode;

/// The OpenAPI 3.1 document.
pub const OPENAPI: &[u8] = include_bytes!("../../static/openapi.json");

/// The demo's files: name under `/demo/` (`""` is the page itself), content type, content.
const DEMO: &[(&str, &str, &[u8])] = &[
    ("", "text/html; charset=utf-8", include_bytes!("../../static/demo/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../static/demo/app.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../static/demo/style.css")),
];

/// `GET /openapi.json`.
pub fn openapi() -> HttpResponse {
    respond(StatusCode::OK, HeaderValue::from_static("application/json; charset=utf-8"), Bytes::from_static(OPENAPI))
}

/// `GET /demo` and `GET /demo/:asset`; 404 for a file it does not have.
pub fn demo(asset: &str) -> Result<HttpResponse, ApiError> {
    let (_, content_type, body) = DEMO.iter().find(|(name, ..)| *name == asset).ok_or(ApiError::NotFound)?;
    let mut res = respond(StatusCode::OK, HeaderValue::from_static(content_type), Bytes::from_static(body));
    let h = res.headers_mut();
    // The page talks to this server only, and runs no script but its own.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}
