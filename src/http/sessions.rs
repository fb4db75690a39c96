//! `/api/sessions`, `/api/session/:id`.

use super::error::ApiError;
use super::input;
use super::response::{ok_plain, ok_value, HttpResponse};
use super::router::Seg;
use crate::engine::{Engine, SessionId};

/// `GET /api/sessions`: all live sessions, oldest first; or with `?limit=N&after=UUID`, a page
/// of them in uuid order.
pub fn list(engine: &Engine, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let page = input::page(query, "after", |s| s.parse::<SessionId>().ok(), "a session id (32 lowercase hex digits)")?;
    match page {
        Some(page) => Ok(ok_value(&engine.sessions_after(page.after, page.limit))),
        None if engine.session_count() > input::MAX_PAGE => Err(ApiError::BadQuery(
            format!("limit: more than {} sessions; page through them with ?limit=N&after=UUID", input::MAX_PAGE).into(),
        )),
        None => Ok(ok_value(&engine.sessions())),
    }
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
