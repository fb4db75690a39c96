//! `/api/contacts/:session_id`, `/api/contact/:session_id/:user_id`.

use super::error::ApiError;
use super::response::{ok_plain, ok_value, HttpResponse};
use super::router::Seg;
use crate::engine::{Engine, SessionId};

/// `GET /api/contacts/:session_id`.
pub fn list(engine: &Engine, session: Seg<SessionId>) -> Result<HttpResponse, ApiError> {
    let session = engine.session(session?)?;
    Ok(ok_value(&engine.contacts(&session)))
}

/// `POST /api/contact/:session_id/:user_id` (idempotent).
pub async fn add(engine: &Engine, session: Seg<SessionId>, user_id: Seg<i64>) -> Result<HttpResponse, ApiError> {
    let session = engine.session(session?)?;
    engine.add_contact(&session, user_id?).await?;
    Ok(ok_plain())
}

/// `DELETE /api/contact/:session_id/:user_id` (idempotent).
pub async fn remove(engine: &Engine, session: Seg<SessionId>, user_id: Seg<i64>) -> Result<HttpResponse, ApiError> {
    let session = engine.session(session?)?;
    engine.remove_contact(&session, user_id?).await?;
    Ok(ok_plain())
}
