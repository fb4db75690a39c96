//! Reading a request body within the limits: at most 64 KiB kept, at most 1 MiB read and
//! dropped to keep a connection usable, within [`BODY_TIMEOUT`].

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap};
use std::time::Duration;

/// Largest request body accepted.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Most bytes of an unwanted (or too large) body read and dropped to keep the connection usable.
pub const MAX_DRAIN: u64 = 1024 * 1024;
/// How long a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How a request body was read.
#[derive(Debug)]
pub enum ReadBody {
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
pub async fn read(headers: &HeaderMap, mut body: Incoming, keep: usize) -> (ReadBody, bool) {
    if body.is_end_stream() {
        return (ReadBody::Complete(Bytes::new()), true);
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_DRAIN) {
        // Not worth reading just to throw away: answer and close.
        return (ReadBody::TooLarge, false);
    }
    let mut kept = Kept::default();
    // A small body has usually arrived with the head: take what is there without a timer (and
    // without a clock read), and only then wait, within the timeout, for the rest.
    loop {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                if let Some(outcome) = kept.take(frame, keep) {
                    return (outcome, false);
                }
            }
            Some(Some(Err(_))) => return (ReadBody::Broken, false),
            Some(None) => return kept.finish(keep),
            None => break,
        }
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return Some(ReadBody::Broken) };
            if let Some(outcome) = kept.take(frame, keep) {
                return Some(outcome);
            }
        }
        None
    })
    .await;
    match read {
        Err(_) => (ReadBody::TimedOut, false),
        Ok(Some(outcome)) => (outcome, false),
        Ok(None) => kept.finish(keep),
    }
}

/// What a body read keeps: a body that came in one chunk is kept as that chunk, not copied.
#[derive(Default)]
struct Kept {
    first: Option<Bytes>,
    more: BytesMut,
    total: u64,
}

impl Kept {
    /// Takes one frame; `Some` when reading must stop (the body is over [`MAX_DRAIN`]).
    fn take(&mut self, frame: hyper::body::Frame<Bytes>, keep: usize) -> Option<ReadBody> {
        let Ok(chunk) = frame.into_data() else { return None }; // trailers
        self.total += chunk.len() as u64;
        if self.total > MAX_DRAIN {
            return Some(ReadBody::TooLarge);
        }
        if self.total <= keep as u64 {
            match &self.first {
                None if self.more.is_empty() => self.first = Some(chunk),
                _ => {
                    if let Some(first) = self.first.take() {
                        self.more.extend_from_slice(&first);
                    }
                    self.more.extend_from_slice(&chunk);
                }
            }
        }
        None
    }

    /// The body's end reached.
    fn finish(self, keep: usize) -> (ReadBody, bool) {
        if self.total > keep as u64 {
            return (ReadBody::TooLarge, true);
        }
        let body = match self.first {
            Some(first) => first,
            None => self.more.freeze(),
        };
        (ReadBody::Complete(body), true)
    }
}
