//! `/api/users`, `/api/user`, `/api/user/:id`, `/api/user.uuid/:uuid`.

use super::error::ApiError;
use super::input;
use super::response::{ok_plain, ok_value, HttpResponse};
use super::router::Seg;
use crate::engine::Engine;
use std::borrow::Cow;

/// `GET /api/users`: all users, by id; or with `?limit=N&after_id=ID`, a page of them.
pub fn list(engine: &Engine, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    match input::page(query, "after_id", |s| s.parse::<i64>().ok(), "an integer")? {
        Some(page) => Ok(ok_value(&engine.users_after(page.after.unwrap_or(0), page.limit))),
        None if engine.user_count() > input::MAX_PAGE => Err(ApiError::BadQuery(
            format!("limit: more than {} users; page through them with ?limit=N&after_id=ID", input::MAX_PAGE).into(),
        )),
        None => Ok(ok_value(&engine.users())),
    }
}

/// `POST /api/user`: creates the user, or returns the one with that uuid unchanged.
pub async fn create(engine: &Engine, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let u = input::new_user(body)?;
    Ok(ok_value(&engine.create_user(&u.uuid, &u.display_name).await?))
}

/// `GET /api/user/:id`.
pub fn get(engine: &Engine, id: Seg<i64>) -> Result<HttpResponse, ApiError> {
    Ok(ok_value(&engine.user(id?)?))
}

/// `GET /api/user.uuid/:uuid`.
pub fn get_by_uuid(engine: &Engine, uuid: Seg<Cow<'_, str>>) -> Result<HttpResponse, ApiError> {
    Ok(ok_value(&engine.user_by_uuid(&uuid?)?))
}

/// `PUT /api/user/:id`: sets the display name (the user must exist before the body is read).
pub async fn update(engine: &Engine, id: Seg<i64>, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let id = id?;
    engine.user(id)?;
    let name = input::display_name(body)?;
    Ok(ok_value(&engine.update_user(id, &name).await?))
}

/// `DELETE /api/user/:id`.
pub async fn delete(engine: &Engine, id: Seg<i64>) -> Result<HttpResponse, ApiError> {
    engine.delete_user(id?).await?;
    Ok(ok_plain())
}
