//! Building answers: the headers every answer carries, and the envelope's success forms.

use crate::render::{self, Pieces};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// The response type of every route.
pub type HttpResponse = Response<Body>;

/// A response body: the whole of it at once (every enveloped answer), or a stream of chunks
/// that a task sends as they come (`text/event-stream`), ending when the task drops its sender.
#[derive(Debug)]
pub struct Body(Inner);

enum Inner {
    Full(Full<Bytes>),
    /// Pieces written one after another (a long poll answer: see `render::PollAnswer`), and
    /// the bytes left to write.
    Pieces(std::vec::IntoIter<Bytes>, u64),
    /// The chunks, and whatever must live as long as the stream (see [`Body::keep_until_end`]).
    Stream(mpsc::Receiver<Bytes>, Option<Box<dyn Send + Sync>>),
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::Full(full) => f.debug_tuple("Full").field(full).finish(),
            Inner::Pieces(pieces, left) => f.debug_tuple("Pieces").field(&pieces.len()).field(left).finish(),
            Inner::Stream(..) => f.write_str("Stream"),
        }
    }
}

impl Body {
    /// All of it, now.
    pub fn full(bytes: Bytes) -> Self {
        Self(Inner::Full(Full::new(bytes)))
    }

    /// `pieces`, one after another: hyper queues them and writes them with vectored I/O.
    pub fn pieces(pieces: Pieces) -> Self {
        if pieces.rest.is_empty() {
            return Self::full(pieces.first);
        }
        let len = pieces.len() as u64;
        let mut all = Vec::with_capacity(1 + pieces.rest.len());
        all.push(pieces.first);
        all.extend(pieces.rest);
        Self(Inner::Pieces(all.into_iter(), len))
    }

    /// Chunks as they are sent on the channel.
    pub fn stream(rx: mpsc::Receiver<Bytes>) -> Self {
        Self(Inner::Stream(rx, None))
    }

    /// Whether this is a stream (its request is not over when its handler returns).
    pub fn is_stream(&self) -> bool {
        matches!(self.0, Inner::Stream(..))
    }

    /// Keeps `guard` until the stream ends (hyper drops the body then): for a stream, what marks
    /// its request finished. A whole body drops it at once.
    pub fn keep_until_end(&mut self, guard: impl Send + Sync + 'static) {
        if let Inner::Stream(_, keep) = &mut self.0 {
            *keep = Some(Box::new(guard));
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.0 {
            Inner::Full(full) => Pin::new(full).poll_frame(cx),
            Inner::Pieces(pieces, left) => Poll::Ready(pieces.next().map(|piece| {
                *left -= piece.len() as u64;
                Ok(Frame::data(piece))
            })),
            Inner::Stream(rx, _) => rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(full) => full.is_end_stream(),
            Inner::Pieces(_, left) => *left == 0,
            Inner::Stream(..) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(full) => full.size_hint(),
            Inner::Pieces(_, left) => SizeHint::with_exact(*left),
            Inner::Stream(..) => SizeHint::default(),
        }
    }
}

/// The content type of every enveloped answer.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
const ANY_ORIGIN: HeaderValue = HeaderValue::from_static("*");

/// An answer with `status`, `content_type` and `body`, and the CORS header every answer carries.
pub fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes) -> HttpResponse {
    respond_with(status, content_type, Body::full(body))
}

/// [`respond`] with any body.
///
/// The two headers are inserted, not cloned from a ready map: hyper parses the connection's next
/// request into this answer's map, and a clone is cut to its two entries, so that parse must
/// grow it again (callgrind: a cloned map saved 88 instructions here and cost 314 in the parse).
fn respond_with(status: StatusCode, content_type: HeaderValue, body: Body) -> HttpResponse {
    let mut res = Response::new(body);
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

/// A 200 whose body is an envelope already rendered, in pieces.
pub fn ok_pieces(envelope: Pieces) -> HttpResponse {
    respond_with(StatusCode::OK, JSON, Body::pieces(envelope))
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
