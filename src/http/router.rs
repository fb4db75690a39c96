//! The hand-written router: a path becomes a [`Resource`] with its raw segments, then the method
//! picks the [`Route`]. No allocation, no regex: the hot poll path is a few byte comparisons.

use hyper::Method;

/// What a path names, with its (still unparsed, percent-decoded later where needed) segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `/`
    Root,
    /// `/api/users`
    Users,
    /// `/api/user`
    User,
    /// `/api/user/:id`
    UserId(&'a str),
    /// `/api/user.uuid/:uuid`
    UserUuid(&'a str),
    /// `/api/sessions`
    Sessions,
    /// `/api/session/:id` (a user id for POST, a session id for DELETE)
    Session(&'a str),
    /// `/api/contacts/:session_id`
    Contacts(&'a str),
    /// `/api/contact/:session_id/:user_id`
    Contact(&'a str, &'a str),
    /// `/api/messages/:session_id[/:unix[/:nano]]`
    Messages(&'a str, Option<&'a str>, Option<&'a str>),
    /// `/api/message/:session_id` and `/api/send/:session_id`
    Send(&'a str),
    /// `/healthz`
    Healthz,
    /// `/readyz`
    Readyz,
    /// `/metrics`
    Metrics,
}

/// A resource and method that chatbus serves. The discriminant indexes [`ROUTE_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Route {
    Root,
    ListUsers,
    CreateUser,
    GetUser,
    GetUserByUuid,
    UpdateUser,
    DeleteUser,
    ListSessions,
    OpenSession,
    CloseSession,
    ListContacts,
    AddContact,
    RemoveContact,
    Poll,
    Send,
    Healthz,
    Readyz,
    Metrics,
    Options,
    NotFound,
    MethodNotAllowed,
}

/// Metric labels, indexed by `Route as usize`.
pub const ROUTE_NAMES: &[&str] = &[
    "root",
    "users_list",
    "user_create",
    "user_get",
    "user_get_by_uuid",
    "user_update",
    "user_delete",
    "sessions_list",
    "session_open",
    "session_close",
    "contacts_list",
    "contact_add",
    "contact_remove",
    "messages_poll",
    "message_send",
    "healthz",
    "readyz",
    "metrics",
    "options",
    "not_found",
    "method_not_allowed",
];

/// Resolves a path (without query) to a resource; `None` is a 404.
pub fn resolve(path: &str) -> Option<Resource<'_>> {
    if path.contains("//") {
        return None;
    }
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    if path == "/" {
        return Some(Resource::Root);
    }
    let rest = path.strip_prefix('/')?;
    let mut it = rest.split('/');
    let first = it.next()?;
    let segs: [Option<&str>; 5] = [it.next(), it.next(), it.next(), it.next(), it.next()];
    if segs.iter().flatten().any(|s| s.is_empty()) {
        return None;
    }
    match first {
        "healthz" if segs[0].is_none() => return Some(Resource::Healthz),
        "readyz" if segs[0].is_none() => return Some(Resource::Readyz),
        "metrics" if segs[0].is_none() => return Some(Resource::Metrics),
        "api" => {}
        _ => return None,
    }
    let r = match segs {
        [Some("messages"), Some(s), unix, nano, None] if unix.is_some() || nano.is_none() => {
            Resource::Messages(s, unix, nano)
        }
        [Some("message" | "send"), Some(s), None, None, None] => Resource::Send(s),
        [Some("users"), None, None, None, None] => Resource::Users,
        [Some("user"), None, None, None, None] => Resource::User,
        [Some("user"), Some(id), None, None, None] => Resource::UserId(id),
        [Some("user.uuid"), Some(u), None, None, None] => Resource::UserUuid(u),
        [Some("sessions"), None, None, None, None] => Resource::Sessions,
        [Some("session"), Some(id), None, None, None] => Resource::Session(id),
        [Some("contacts"), Some(s), None, None, None] => Resource::Contacts(s),
        [Some("contact"), Some(s), Some(u), None, None] => Resource::Contact(s, u),
        _ => return None,
    };
    Some(r)
}

impl Resource<'_> {
    /// The route for `method`, or `None` (405).
    pub fn route(&self, method: &Method) -> Option<Route> {
        let get = *method == Method::GET || *method == Method::HEAD;
        let post = *method == Method::POST;
        let put = *method == Method::PUT;
        let delete = *method == Method::DELETE;
        Some(match self {
            Resource::Messages(..) if get => Route::Poll,
            Resource::Send(_) if post => Route::Send,
            Resource::Root if get => Route::Root,
            Resource::Users if get => Route::ListUsers,
            Resource::Users | Resource::User if post => Route::CreateUser,
            Resource::UserId(_) if get => Route::GetUser,
            Resource::UserId(_) if put => Route::UpdateUser,
            Resource::UserId(_) if delete => Route::DeleteUser,
            Resource::UserUuid(_) if get => Route::GetUserByUuid,
            Resource::Sessions if get => Route::ListSessions,
            Resource::Session(_) if post => Route::OpenSession,
            Resource::Session(_) if delete => Route::CloseSession,
            Resource::Contacts(_) if get => Route::ListContacts,
            Resource::Contact(..) if post => Route::AddContact,
            Resource::Contact(..) if delete => Route::RemoveContact,
            Resource::Healthz if get => Route::Healthz,
            Resource::Readyz if get => Route::Readyz,
            Resource::Metrics if get => Route::Metrics,
            _ => return None,
        })
    }

    /// The `Allow` header of a 405.
    pub fn allow(&self) -> &'static str {
        match self {
            Resource::Users => "GET, HEAD, POST, OPTIONS",
            Resource::User | Resource::Send(_) => "POST, OPTIONS",
            Resource::UserId(_) => "GET, HEAD, PUT, DELETE, OPTIONS",
            Resource::Session(_) | Resource::Contact(..) => "POST, DELETE, OPTIONS",
            _ => "GET, HEAD, OPTIONS",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_route_of_the_contract() {
        assert_eq!(resolve("/"), Some(Resource::Root));
        assert_eq!(resolve("/api/users"), Some(Resource::Users));
        assert_eq!(resolve("/api/user"), Some(Resource::User));
        assert_eq!(resolve("/api/user/7"), Some(Resource::UserId("7")));
        assert_eq!(resolve("/api/user.uuid/al%20ice"), Some(Resource::UserUuid("al%20ice")));
        assert_eq!(resolve("/api/sessions"), Some(Resource::Sessions));
        assert_eq!(resolve("/api/session/7"), Some(Resource::Session("7")));
        assert_eq!(resolve("/api/contacts/s"), Some(Resource::Contacts("s")));
        assert_eq!(resolve("/api/contact/s/7"), Some(Resource::Contact("s", "7")));
        assert_eq!(resolve("/api/messages/s"), Some(Resource::Messages("s", None, None)));
        assert_eq!(resolve("/api/messages/s/1"), Some(Resource::Messages("s", Some("1"), None)));
        assert_eq!(resolve("/api/messages/s/1/2"), Some(Resource::Messages("s", Some("1"), Some("2"))));
        assert_eq!(resolve("/api/message/s"), Some(Resource::Send("s")));
        assert_eq!(resolve("/api/send/s"), Some(Resource::Send("s")));
        assert_eq!(resolve("/api/messages/s/"), Some(Resource::Messages("s", None, None)));
        assert_eq!(resolve("/healthz"), Some(Resource::Healthz));
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
        ] {
            assert_eq!(resolve(bad), None, "{bad}");
        }
    }

    #[test]
    fn methods_pick_routes_or_405() {
        let r = resolve("/api/session/1").unwrap();
        assert_eq!(r.route(&Method::POST), Some(Route::OpenSession));
        assert_eq!(r.route(&Method::DELETE), Some(Route::CloseSession));
        assert_eq!(r.route(&Method::GET), None);
        assert!(r.allow().contains("DELETE"));
        assert_eq!(ROUTE_NAMES.len(), Route::MethodNotAllowed as usize + 1);
    }
}
