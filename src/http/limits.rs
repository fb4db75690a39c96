//! The request's own size limits, checked before routing so that their answers are enveloped
//! like every other.
//!
//! hyper answers some malformed requests itself, before chatbus sees them, with a bare status, no
//! body and no CORS header, and closes the connection: a request line that is not HTTP (400),
//! more than 100 header fields or a header block over [`HYPER_MAX_HEADER_BYTES`] (431). hyper
//! 1.x offers no hook to shape those answers. Everything below those bounds that is still too
//! large gets chatbus's own enveloped 414 or 431 here.

use super::router::NotRouted;
use hyper::http::request::Parts;

/// Longest URI (path and query) answered normally; longer is a 414.
pub const MAX_URI: usize = 8 * 1024;
/// Most bytes of header names and values answered normally; more is a 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Where hyper itself stops reading a request head (request line and headers) and answers a
/// bare 431: also what a slow or hostile client can make a connection hold.
pub const HYPER_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Checks the URI's and the headers' size.
pub fn check(parts: &Parts) -> Result<(), NotRouted> {
    let uri = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri > MAX_URI {
        return Err(NotRouted::UriTooLong);
    }
    let headers: usize = parts.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if headers > MAX_HEADER_BYTES {
        return Err(NotRouted::HeadersTooLarge);
    }
    Ok(())
}
