//! `/api/messages/...` (the poll: the hot path) and `/api/message/:session_id`.

use super::error::ApiError;
use super::input;
use super::response::{ok, ok_pieces, HttpResponse};
use super::router::Seg;
use crate::clock::Cursor;
use crate::engine::{Engine, EngineError, Hold, Session, SessionId, Woken};
use crate::metrics::{Counted, Metrics};
use crate::render;
use std::sync::Arc;
use std::time::Duration;

/// What a request's handler comes to: an answer now, or a wait (a long-poll with nothing to
/// answer yet).
#[derive(Debug)]
pub enum Polled {
    /// The answer.
    Now(HttpResponse),
    /// Hold the request: see [`hold_then_poll`].
    Hold(Arc<Session>, Option<Cursor>, Duration),
}

/// `GET /api/messages/:session_id[/:unix[/:nano]][?wait=DUR]`. One buffer: the mailbox copies
/// the messages in, the envelope goes in front of them; an empty poll makes one small
/// allocation. Not `async`: a poll that answers at once (every plain poll) builds no future.
///
/// With `?wait=` and nothing after the cutoff, the request is to be held (see
/// [`hold_then_poll`]) until a message after the cutoff arrives — then it answers with every
/// message after the cutoff, exactly as a plain poll would — or the wait passes (`[]`, the
/// cutoff as cursor), the session closes (404), or the server stops (at once, with what there
/// is).
pub fn poll(
    engine: &Engine,
    session: Seg<SessionId>,
    cutoff: Seg<Option<Cursor>>,
    query: Option<&str>,
    max_wait: Duration,
) -> Result<Polled, ApiError> {
    let session = engine.session(session?)?;
    let cutoff = cutoff?;
    let wait = input::wait(query, max_wait)?;
    let mut answer = render::PollAnswer::new();
    let polled = engine.poll(&session, cutoff, &mut answer);
    if wait.is_zero() || !answer.is_empty() || engine.is_stopping() {
        return Ok(Polled::Now(ok_pieces(answer.finish(polled.cursor, polled.gap))));
    }
    Ok(Polled::Hold(session, cutoff, wait))
}

/// The held part of a long-poll: wait, then answer as a plain poll would.
pub async fn hold_then_poll(
    engine: &Engine,
    session: Arc<Session>,
    cutoff: Option<Cursor>,
    wait: Duration,
    metrics: &Metrics,
) -> Result<HttpResponse, ApiError> {
    let hold = Hold::new(session);
    let _counted = Counted::new(&metrics.waiting_polls);
    match engine.wait_for_message(&hold, cutoff, Some(tokio::time::Instant::now() + wait)).await {
        Woken::SessionClosed => Err(EngineError::NoSuchSession.into()),
        Woken::Message | Woken::TimedOut | Woken::Stopping => {
            let mut answer = render::PollAnswer::new();
            let polled = engine.poll(hold.session(), cutoff, &mut answer);
            Ok(ok_pieces(answer.finish(polled.cursor, polled.gap)))
        }
    }
}

/// `POST /api/message/:session_id`: the stored message.
pub async fn send(engine: &Engine, session: Seg<SessionId>, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let session = engine.session(session?)?;
    let m = input::new_message(body)?;
    let sent = engine.send(&session, m.receiver_id, &m.body, m.attachments).await?;
    Ok(ok(sent.into_envelope()))
}
