//! `/api/sessions`, `/api/session/:id`.

use super::error::ApiError;
use super::response::{ok_plain, ok_value, HttpResponse};
use super::router::Seg;
use crate::engine::{Engine, SessionId};

/// `GET /api/sessions`: all live sessions, oldest first.
pub fn list(engine: &Engine) -> Result<HttpResponse, ApiError> {
    Ok(ok_value(&engine.sessions()))
}

/// `POST /api/session/:user_id`.
pub async fn open(engine: &Engine, user_id: Seg<i64>) -> Result<HttpResponse, ApiError> {
    Ok(ok_value(&engine.open_session(user_id?).await?))
}

/// `DELETE /api/session/:session_id`.
pub async fn close(engine: &Engine, session: Seg<SessionId>) -> Result<HttpResponse, ApiError> {
    engine.close_session(session?).await?;
    Ok(ok_plain())
}
