//! The hand-written router: a method and a path become a [`Route`] carrying its typed segments,
//! or a [`NotRouted`] (404, 405). No allocation, no regex: the hot poll path is a few byte
//! comparisons and the integer parses it needs anyway.
//!
//! A segment that does not parse is not a routing failure: the contract answers a bad segment
//! only after the admin token and the body size (see [`crate::http`]), so each segment is kept as
//! a [`Seg`] — the value or the error it will answer — and the handler applies `?` to the
//! segments from left to right, interleaved with the lookups they name.

use super::error::ApiError;
use super::input;
use crate::clock::Cursor;
use crate::engine::SessionId;
use hyper::Method;
use std::borrow::Cow;
use strum::{EnumCount, EnumDiscriminants, EnumIter, IntoStaticStr};

/// A parsed path segment, or the error its request will answer.
pub type Seg<T> = Result<T, ApiError>;

/// A route chatbus serves, with its segments. Each variant's name, in snake case, is its label
/// in `/metrics` ([`RouteName`]).
#[derive(Debug, EnumDiscriminants)]
#[strum_discriminants(
    name(RouteName),
    derive(IntoStaticStr, EnumIter, EnumCount),
    strum(serialize_all = "snake_case"),
    doc = "A route's label in `/metrics`: the variant of [`Route`] without its segments."
)]
pub enum Route<'a> {
    /// `GET /`
    Root,
    /// `GET /api/users`
    UsersList,
    /// `POST /api/user`, `POST /api/users`
    UserCreate,
    /// `GET /api/user/:id`
    UserGet(Seg<i64>),
    /// `GET /api/user.uuid/:uuid`
    UserGetByUuid(Seg<Cow<'a, str>>),
    /// `PUT /api/user/:id`
    UserUpdate(Seg<i64>),
    /// `DELETE /api/user/:id`
    UserDelete(Seg<i64>),
    /// `GET /api/sessions`
    SessionsList,
    /// `POST /api/session/:user_id`
    SessionOpen(Seg<i64>),
    /// `DELETE /api/session/:session_id`
    SessionClose(Seg<SessionId>),
    /// `GET /api/contacts/:session_id`
    ContactsList(Seg<SessionId>),
    /// `POST /api/contact/:session_id/:user_id`
    ContactAdd(Seg<SessionId>, Seg<i64>),
    /// `DELETE /api/contact/:session_id/:user_id`
    ContactRemove(Seg<SessionId>, Seg<i64>),
    /// `GET /api/messages/:session_id[/:unix[/:nano]]`
    MessagesPoll(Seg<SessionId>, Seg<Option<Cursor>>),
    /// `POST /api/message/:session_id`, `POST /api/send/:session_id`
    MessageSend(Seg<SessionId>),
    /// `GET /api/stream/:session_id[/:unix[/:nano]]`: Server-Sent Events
    MessagesStream(Seg<SessionId>, Seg<Option<Cursor>>),
    /// `GET /api/ws/:session_id`: a WebSocket
    MessagesSocket(Seg<SessionId>),
    /// `GET /openapi.json`: the contract as an OpenAPI 3.1 document
    Openapi,
    /// `GET /demo[/:asset]`: the chat client in the browser (`""` is its page)
    Demo(&'a str),
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
    /// `OPTIONS` on any path: the CORS preflight.
    Options,
}

impl Route<'_> {
    /// The session the route names, when it names one and it parsed.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Route::SessionClose(Ok(id))
            | Route::ContactsList(Ok(id))
            | Route::ContactAdd(Ok(id), _)
            | Route::ContactRemove(Ok(id), _)
            | Route::MessagesPoll(Ok(id), _)
            | Route::MessageSend(Ok(id))
            | Route::MessagesStream(Ok(id), _)
            | Route::MessagesSocket(Ok(id)) => Some(*id),
            _ => None,
        }
    }
}

impl Route<'_> {
    /// Whether the route is an admin route (contract: "Access control and limits"), which needs
    /// the admin token when one is set. Everything a session does is authorised by its id.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Route::UsersList
                | Route::UserCreate
                | Route::UserGet(_)
                | Route::UserGetByUuid(_)
                | Route::UserUpdate(_)
                | Route::UserDelete(_)
                | Route::SessionsList
                | Route::SessionOpen(_)
        )
    }
}

/// Why a request has no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRouted {
    /// No such path: 404.
    NotFound,
    /// The path exists with other methods: 405 with this `Allow` header.
    MethodNotAllowed(&'static str),
    /// The URI is over the limit (see [`super::limits`]): 414.
    UriTooLong,
    /// The header fields are over the limit: 431.
    HeadersTooLarge,
}

impl NotRouted {
    /// Their labels in `/metrics`, after the routes' ([`metric_labels`]).
    const LABELS: [&'static str; 4] = ["not_found", "method_not_allowed", "uri_too_long", "headers_too_large"];

    fn label_index(self) -> usize {
        RouteName::COUNT
            + match self {
                NotRouted::NotFound => 0,
                NotRouted::MethodNotAllowed(_) => 1,
                NotRouted::UriTooLong => 2,
                NotRouted::HeadersTooLarge => 3,
            }
    }
}

impl From<NotRouted> for ApiError {
    fn from(n: NotRouted) -> Self {
        match n {
            NotRouted::NotFound => ApiError::NotFound,
            NotRouted::MethodNotAllowed(allow) => ApiError::MethodNotAllowed(allow),
            NotRouted::UriTooLong => ApiError::UriTooLong,
            NotRouted::HeadersTooLarge => ApiError::HeadersTooLarge,
        }
    }
}

/// Every label a request can be counted under in `/metrics`, indexed by [`metric_index`].
pub fn metric_labels() -> Vec<&'static str> {
    use strum::IntoEnumIterator;
    RouteName::iter().map(<&'static str>::from).chain(NotRouted::LABELS).collect()
}

/// Where a resolved request is counted in [`metric_labels`].
pub fn metric_index(resolved: &Result<Route<'_>, NotRouted>) -> usize {
    match resolved {
        Ok(route) => RouteName::from(route) as usize,
        Err(n) => n.label_index(),
    }
}

/// What a path names, before the method picks the route.
enum Path<'a> {
    Root,
    Users,
    User,
    UserId(&'a str),
    UserUuid(&'a str),
    Sessions,
    Session(&'a str),
    Contacts(&'a str),
    Contact(&'a str, &'a str),
    Messages(&'a str, Option<&'a str>, Option<&'a str>),
    Send(&'a str),
    Stream(&'a str, Option<&'a str>, Option<&'a str>),
    Socket(&'a str),
    Healthz,
    Readyz,
    Metrics,
    Openapi,
    Demo(&'a str),
}

/// Resolves a method and a path (without query). `HEAD` is served like `GET`; `OPTIONS` is the
/// preflight on every path.
pub fn resolve<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, NotRouted> {
    if *method == Method::GET || *method == Method::HEAD {
        if let Some(poll) = plain_poll(path) {
            return Ok(poll);
        }
    }
    resolve_any(method, path)
}

/// The poll as nearly every one is written — `/api/messages/<id>[/<unix>[/<nano>]][/]`, a valid
/// id, plain digits — read in one pass: what [`resolve_any`] makes of the same path, at half
/// the cost (callgrind: routing a poll took 1,020 instructions of a handler's ~4,000 through
/// `resolve_any`, 539 so). `None` for anything else, which `resolve_any` then reads (a test
/// holds the two together).
#[inline]
fn plain_poll(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/api/messages/")?;
    let session = Ok(rest.get(..32)?.parse::<SessionId>().ok()?);
    let mut rest = rest.as_bytes().get(32..)?;
    if rest.last() == Some(&b'/') {
        rest = &rest[..rest.len() - 1];
    }
    let mut numbers = [0i64; 2];
    let mut given = 0;
    while !rest.is_empty() {
        // Each segment: '/' and 1..=18 digits (no sign, no overflow); at most two.
        rest = rest.strip_prefix(b"/")?;
        let digits = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        if given == 2 || digits == 0 || digits > 18 {
            return None;
        }
        let mut n = 0i64;
        for &b in &rest[..digits] {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            n = n * 10 + i64::from(d);
        }
        numbers[given] = n;
        given += 1;
        rest = &rest[digits..];
    }
    let cutoff = match given {
        0 => Ok(None),
        _ => input::cursor_of(numbers[0], numbers[1]),
    };
    Some(Route::MessagesPoll(session, cutoff))
}

/// Any route, by the general reading of a path (see [`resolve`]).
fn resolve_any<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, NotRouted> {
    if *method == Method::OPTIONS {
        return Ok(Route::Options);
    }
    let p = parse_path(path).ok_or(NotRouted::NotFound)?;
    let get = *method == Method::GET || *method == Method::HEAD;
    let post = *method == Method::POST;
    let put = *method == Method::PUT;
    let delete = *method == Method::DELETE;
    let session = |s: &str| s.parse::<SessionId>().map_err(ApiError::from);
    let user_id = |s: &str| input::int_segment(s, "user_id");
    Ok(match p {
        Path::Messages(s, unix, nano) if get => Route::MessagesPoll(session(s), input::cutoff(unix, nano)),
        Path::Send(s) if post => Route::MessageSend(session(s)),
        Path::Stream(s, unix, nano) if get => Route::MessagesStream(session(s), input::cutoff(unix, nano)),
        Path::Socket(s) if get => Route::MessagesSocket(session(s)),
        Path::Root if get => Route::Root,
        Path::Users if get => Route::UsersList,
        Path::Users | Path::User if post => Route::UserCreate,
        Path::UserId(id) if get => Route::UserGet(user_id(id)),
        Path::UserId(id) if put => Route::UserUpdate(user_id(id)),
        Path::UserId(id) if delete => Route::UserDelete(user_id(id)),
        Path::UserUuid(u) if get => Route::UserGetByUuid(input::decoded_segment(u)),
        Path::Sessions if get => Route::SessionsList,
        Path::Session(id) if post => Route::SessionOpen(user_id(id)),
        Path::Session(s) if delete => Route::SessionClose(session(s)),
        Path::Contacts(s) if get => Route::ContactsList(session(s)),
        Path::Contact(s, u) if post => Route::ContactAdd(session(s), user_id(u)),
        Path::Contact(s, u) if delete => Route::ContactRemove(session(s), user_id(u)),
        Path::Openapi if get => Route::Openapi,
        Path::Demo(asset) if get => Route::Demo(asset),
        Path::Healthz if get => Route::Healthz,
        Path::Readyz if get => Route::Readyz,
        Path::Metrics if get => Route::Metrics,
        other => return Err(NotRouted::MethodNotAllowed(allow(&other))),
    })
}

/// The `Allow` header of a 405 on `path`.
fn allow(path: &Path<'_>) -> &'static str {
    match path {
        Path::Users => "GET, HEAD, POST, OPTIONS",
        Path::User | Path::Send(_) => "POST, OPTIONS",
        Path::UserId(_) => "GET, HEAD, PUT, DELETE, OPTIONS",
        Path::Session(_) | Path::Contact(..) => "POST, DELETE, OPTIONS",
        _ => "GET, HEAD, OPTIONS",
    }
}

/// The text before the next `/` of `rest` (all of it when there is none), as `str::split('/')`
/// yields it: `memchr` (callgrind: ~50 instructions fewer than a byte loop over a poll's path,
/// which itself cost a third of `split`'s searcher).
fn next_segment<'a>(rest: &mut Option<&'a str>) -> Option<&'a str> {
    let s = (*rest)?;
    match memchr::memchr(b'/', s.as_bytes()) {
        Some(i) => {
            *rest = Some(&s[i + 1..]);
            Some(&s[..i])
        }
        None => {
            *rest = None;
            Some(s)
        }
    }
}

/// Splits a path into what it names; `None` is a 404.
fn parse_path(path: &str) -> Option<Path<'_>> {
    // An empty segment anywhere is a 404. The checks below find every one (as an empty `first`
    // or an empty segment, or a segment too many) except in "//", which the trailing-slash strip
    // would turn into "/".
    if path == "//" {
        return None;
    }
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    if path == "/" {
        return Some(Path::Root);
    }
    let mut rest = Some(path.strip_prefix('/')?);
    let first = next_segment(&mut rest)?;
    let mut it = || next_segment(&mut rest);
    let segs: [Option<&str>; 5] = [it(), it(), it(), it(), it()];
    if segs.iter().flatten().any(|s| s.is_empty()) {
        return None;
    }
    match first {
        "healthz" if segs[0].is_none() => return Some(Path::Healthz),
        "readyz" if segs[0].is_none() => return Some(Path::Readyz),
        "metrics" if segs[0].is_none() => return Some(Path::Metrics),
        "openapi.json" if segs[0].is_none() => return Some(Path::Openapi),
        "demo" if segs[1].is_none() => return Some(Path::Demo(segs[0].unwrap_or(""))),
        "api" => {}
        _ => return None,
    }
    Some(match segs {
        [Some("messages"), Some(s), unix, nano, None] if unix.is_some() || nano.is_none() => {
            Path::Messages(s, unix, nano)
        }
        [Some("message" | "send"), Some(s), None, None, None] => Path::Send(s),
        [Some("stream"), Some(s), unix, nano, None] if unix.is_some() || nano.is_none() => Path::Stream(s, unix, nano),
        [Some("ws"), Some(s), None, None, None] => Path::Socket(s),
        [Some("users"), None, None, None, None] => Path::Users,
        [Some("user"), None, None, None, None] => Path::User,
        [Some("user"), Some(id), None, None, None] => Path::UserId(id),
        [Some("user.uuid"), Some(u), None, None, None] => Path::UserUuid(u),
        [Some("sessions"), None, None, None, None] => Path::Sessions,
        [Some("session"), Some(id), None, None, None] => Path::Session(id),
        [Some("contacts"), Some(s), None, None, None] => Path::Contacts(s),
        [Some("contact"), Some(s), Some(u), None, None] => Path::Contact(s, u),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(method: Method, path: &str) -> Result<&'static str, NotRouted> {
        resolve(&method, path).map(|r| RouteName::from(&r).into())
    }

    /// The one-pass reading of a plain poll gives exactly the route the general reading gives,
    /// for every path it takes; it takes the common shapes, and leaves the rest (signs, empty
    /// segments, a segment too many, long numbers, bad ids) to the general reading.
    #[test]
    fn plain_polls_read_as_the_general_reading_reads_them() {
        use rand::{Rng, SeedableRng};
        let id = "0123456789abcdef0123456789abcdef";
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let pieces =
            ["/", "1", "0", "9", "1700000000", "999999999", "-", "+", "a", "", "//", "123456789012345678", "9"];
        let ids = [
            id,
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcdé",
        ];
        let mut taken = 0;
        for i in 0..20_000 {
            let mut path = format!("/api/messages/{}", ids[if i % 4 == 0 { rng.gen_range(0..ids.len()) } else { 0 }]);
            for _ in 0..rng.gen_range(0..7) {
                path.push_str(pieces[rng.gen_range(0..pieces.len())]);
            }
            if let Some(fast) = plain_poll(&path) {
                taken += 1;
                let general = resolve_any(&Method::GET, &path).unwrap_or_else(|e| panic!("{path}: {e:?}"));
                assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{path}");
            }
        }
        assert!(taken > 2_000, "the fast reading took only {taken} paths");
        for (path, cutoff) in [
            (format!("/api/messages/{id}"), None),
            (format!("/api/messages/{id}/"), None),
            (format!("/api/messages/{id}/1700000000"), Some((1_700_000_000, 0))),
            (format!("/api/messages/{id}/1700000000/5/"), Some((1_700_000_000, 5))),
            (format!("/api/messages/{id}/1/1500000000"), Some((2, 500_000_000))),
        ] {
            let Some(Route::MessagesPoll(Ok(s), Ok(c))) = plain_poll(&path) else { panic!("{path} not taken") };
            assert_eq!(s, id.parse().unwrap());
            assert_eq!(c.map(|c| (c.unix, c.nano)), cutoff, "{path}");
        }
        for path in [
            format!("/api/messages/{id}//"),
            format!("/api/messages/{id}/1/2/3"),
            format!("/api/messages/{id}/-1"),
            format!("/api/messages/{id}/+1"),
            format!("/api/messages/{id}/1234567890123456789"),
            format!("/api/messages/{id}x"),
            "/api/messages/0123456789ABCDEF0123456789abcdef".to_owned(),
        ] {
            assert!(plain_poll(&path).is_none(), "{path}");
        }
    }

    #[test]
    fn resolves_every_route_of_the_contract() {
        use Method as M;
        for (method, path, expected) in [
            (M::GET, "/", "root"),
            (M::HEAD, "/", "root"),
            (M::GET, "/api/users", "users_list"),
            (M::POST, "/api/users", "user_create"),
            (M::POST, "/api/user", "user_create"),
            (M::GET, "/api/user/7", "user_get"),
            (M::PUT, "/api/user/7", "user_update"),
            (M::DELETE, "/api/user/7", "user_delete"),
            (M::GET, "/api/user.uuid/al%20ice", "user_get_by_uuid"),
            (M::GET, "/api/sessions", "sessions_list"),
            (M::POST, "/api/session/7", "session_open"),
            (M::DELETE, "/api/session/s", "session_close"),
            (M::GET, "/api/contacts/s", "contacts_list"),
            (M::POST, "/api/contact/s/7", "contact_add"),
            (M::DELETE, "/api/contact/s/7", "contact_remove"),
            (M::GET, "/api/messages/s", "messages_poll"),
            (M::GET, "/api/messages/s/", "messages_poll"),
            (M::GET, "/api/messages/s/1", "messages_poll"),
            (M::GET, "/api/messages/s/1/2", "messages_poll"),
            (M::POST, "/api/message/s", "message_send"),
            (M::POST, "/api/send/s", "message_send"),
            (M::GET, "/api/stream/s", "messages_stream"),
            (M::GET, "/api/stream/s/1/2", "messages_stream"),
            (M::GET, "/api/ws/s", "messages_socket"),
            (M::GET, "/healthz", "healthz"),
            (M::GET, "/readyz", "readyz"),
            (M::GET, "/metrics", "metrics"),
            (M::GET, "/openapi.json", "openapi"),
            (M::GET, "/demo", "demo"),
            (M::GET, "/demo/", "demo"),
            (M::GET, "/demo/app.js", "demo"),
            (M::OPTIONS, "/anything/at/all", "options"),
        ] {
            assert_eq!(name(method.clone(), path), Ok(expected), "{method} {path}");
        }
        for bad in [
            "",
            "/api",
            "/api/",
            "/api/nope",
            "/api/messages",
            "/api/messages//1",
            "/api/messages/s/1/2/3",
            "/api/user/1/2",
            "/x",
            "//",
            "/api/contact/s",
            "/demo/a/b",
            "/healthz//",
            "//healthz",
            "/api//users",
            "/api/users//",
            "/api/messages/s/1/2//",
            "/openapi.json/x",
        ] {
            assert_eq!(name(Method::GET, bad).unwrap_err(), NotRouted::NotFound, "{bad}");
        }
    }

    #[test]
    fn segments_are_typed_and_their_errors_kept_for_later() {
        let s = "0123456789abcdef0123456789abcdef";
        let path = format!("/api/messages/{s}/-5/2000000001");
        match resolve(&Method::GET, &path) {
            Ok(Route::MessagesPoll(Ok(id), Ok(Some(cutoff)))) => {
                assert_eq!(id.to_string(), s);
                assert_eq!(cutoff, Cursor { unix: -3, nano: 1 });
            }
            other => panic!("{other:?}"),
        }
        match resolve(&Method::POST, "/api/contact/NOT-HEX/abc") {
            Ok(Route::ContactAdd(Err(session), Err(user))) => {
                assert_eq!(session.status(), hyper::StatusCode::NOT_FOUND);
                assert_eq!(user.status(), hyper::StatusCode::BAD_REQUEST);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn methods_pick_routes_or_405_with_allow() {
        assert_eq!(name(Method::GET, "/api/session/1"), Err(NotRouted::MethodNotAllowed("POST, DELETE, OPTIONS")));
        assert_eq!(name(Method::GET, "/api/message/s"), Err(NotRouted::MethodNotAllowed("POST, OPTIONS")));
        assert_eq!(name(Method::POST, "/healthz"), Err(NotRouted::MethodNotAllowed("GET, HEAD, OPTIONS")));
    }

    #[test]
    fn every_outcome_has_its_own_metric_label() {
        let labels = metric_labels();
        let unique: std::collections::HashSet<_> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
        assert_eq!(labels[metric_index(&Err(NotRouted::NotFound))], "not_found");
        assert_eq!(labels[metric_index(&Err(NotRouted::MethodNotAllowed("GET")))], "method_not_allowed");
        assert_eq!(labels[metric_index(&resolve(&Method::GET, "/api/messages/x"))], "messages_poll");
    }
}
