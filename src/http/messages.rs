//! `/api/messages/...` (the poll: the hot path) and `/api/message/:session_id`.

use super::error::ApiError;
use super::input;
use super::response::{ok, HttpResponse};
use super::router::Seg;
use crate::clock::Cursor;
use crate::engine::{Engine, SessionId};
use crate::render;

/// `GET /api/messages/:session_id[/:unix[/:nano]]`. One buffer: the mailbox copies the messages
/// in, the envelope goes in front of them; an empty poll makes one small allocation.
pub fn poll(engine: &Engine, session: Seg<SessionId>, cutoff: Seg<Option<Cursor>>) -> Result<HttpResponse, ApiError> {
    let session = engine.session(session?)?;
    let cutoff = cutoff?;
    let mut answer = render::PollAnswer::new();
    let polled = engine.poll(&session, cutoff, answer.messages());
    Ok(ok(answer.finish(polled.cursor, polled.gap)))
}

/// `POST /api/message/:session_id`: the stored message.
pub async fn send(engine: &Engine, session: Seg<SessionId>, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let session = engine.session(session?)?;
    let m = input::new_message(body)?;
    let json = engine.send(&session, m.receiver_id, &m.body, m.attachments).await?;
    Ok(ok(render::ok_raw(&json)))
}
