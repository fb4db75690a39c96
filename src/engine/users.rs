//! Users: creating (answered only once stored), reading, paging, renaming, deleting.

use super::{committed, Engine, EngineError, User, UserView};
use crate::store::{Op, UserRow};
use crate::writer::Commit;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Engine {
    /// Creates a user, or returns the existing one with that `uuid` unchanged. Either way it
    /// answers only once the user is in the store: a second create of a uuid whose first create
    /// is still being written waits for that write, and fails with it.
    pub async fn create_user(&self, uuid: &str, display_name: &str) -> Result<UserView, EngineError> {
        if self.config.cluster {
            return self.clustered_create_user(uuid, display_name).await;
        }
        let (user, new) = {
            let _admin = self.admin.lock();
            match self.by_uuid.get(uuid).map(|u| u.clone()) {
                Some(existing) => (existing, false),
                None => {
                    if self.user_count.load(Ordering::Relaxed) >= self.config.max_users {
                        return Err(EngineError::TooManyUsers);
                    }
                    self.require_store()?;
                    let id = self.next_user_id.fetch_add(1, Ordering::Relaxed);
                    let created = self.writer.submit_durable(Op::UpsertUser(UserRow {
                        id,
                        uuid: uuid.to_owned(),
                        display_name: display_name.to_owned(),
                        left_ns: None,
                    }));
                    (self.insert_user(id, uuid, display_name, Some(created)), true)
                }
            }
        };
        if let Some(created) = user.creation() {
            let outcome = committed(created).await;
            if new && outcome == Err(EngineError::StoreRefused) {
                self.forget_user(&user);
            }
            outcome?;
        }
        Ok(user.view())
    }

    /// Puts a new user into its shard, the uuid index and the count (under `admin`, or alone at
    /// restore). `created` is the commit of the write that creates it, if it must be awaited.
    pub(super) fn insert_user(
        &self,
        id: i64,
        uuid: &str,
        display_name: &str,
        created: Option<Arc<Commit>>,
    ) -> Arc<User> {
        let key: Arc<str> = uuid.into();
        let user = Arc::new(User::new(id, key.clone(), display_name.into(), self.config.mailbox_capacity, created));
        self.user_shard(id).users.write().insert(id, user.clone());
        self.by_uuid.insert(key, user.clone());
        self.user_count.fetch_add(1, Ordering::Relaxed);
        user
    }

    /// Takes a user whose creation the store refused back out of memory.
    pub(super) fn forget_user(&self, user: &Arc<User>) {
        let _admin = self.admin.lock();
        let mut users = self.user_shard(user.id).users.write();
        if users.get(&user.id).is_some_and(|u| Arc::ptr_eq(u, user)) {
            users.remove(&user.id);
            self.by_uuid.remove_if(&user.uuid, |_, u| Arc::ptr_eq(u, user));
            self.user_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// One user by id.
    pub fn user(&self, id: i64) -> Result<UserView, EngineError> {
        self.stored_user(id).map(|u| u.view()).ok_or(EngineError::NoSuchUser("user_id"))
    }

    /// One user by external id.
    pub fn user_by_uuid(&self, uuid: &str) -> Result<UserView, EngineError> {
        self.by_uuid.get(uuid).filter(|u| u.is_stored()).map(|u| u.view()).ok_or(EngineError::NoSuchUser("uuid"))
    }

    /// All users, by id.
    pub fn users(&self) -> Vec<UserView> {
        let mut all: Vec<UserView> = self
            .shards
            .iter()
            .flat_map(|s| s.users.read().values().filter(|u| u.is_stored()).map(|u| u.view()).collect::<Vec<_>>())
            .collect();
        all.sort_unstable_by_key(|u| u.id);
        all
    }

    /// At most `limit` users with ids greater than `after_id`, by id. Ids are handed out in
    /// order and never reused, so this probes ids upwards: its cost follows the users returned
    /// plus the ids deleted in between.
    pub fn users_after(&self, after_id: i64, limit: usize) -> Vec<UserView> {
        let end = self.next_user_id.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut id = after_id.max(0).saturating_add(1);
        while id < end && out.len() < limit {
            if let Some(u) = self.stored_user(id) {
                out.push(u.view());
            }
            id += 1;
        }
        out
    }

    /// How many users there are.
    pub fn user_count(&self) -> usize {
        self.user_count.load(Ordering::Relaxed)
    }

    /// Sets a user's display name.
    pub async fn update_user(&self, id: i64, display_name: &str) -> Result<UserView, EngineError> {
        if self.config.cluster {
            return self.clustered_update_user(id, display_name).await;
        }
        let (view, commit) = {
            let _admin = self.admin.lock();
            let user = self.stored_user(id).ok_or(EngineError::NoSuchUser("user_id"))?;
            self.require_store()?;
            user.set_display_name(display_name.into());
            let commit = self.writer.submit_durable(Op::UpsertUser(UserRow {
                id,
                uuid: user.uuid.to_string(),
                display_name: display_name.to_owned(),
                left_ns: user.mailbox.watermark(),
            }));
            (user.view(), commit)
        };
        committed(&commit).await?;
        Ok(view)
    }

    /// Deletes a user with their sessions, contacts and mailbox.
    pub async fn delete_user(&self, id: i64) -> Result<(), EngineError> {
        if self.config.cluster {
            return self.clustered_delete_user(id).await;
        }
        let commit = {
            let _admin = self.admin.lock();
            self.stored_user(id).ok_or(EngineError::NoSuchUser("user_id"))?;
            self.require_store()?;
            self.remove_user(id).ok_or(EngineError::NoSuchUser("user_id"))?;
            self.writer.submit_durable(Op::DeleteUser { id })
        };
        committed(&commit).await
    }

    /// Takes a user out of memory with their sessions (closed, so their waiters end) and their
    /// contacts, both ways (under `admin`). The store's share is the caller's.
    pub(super) fn remove_user(&self, id: i64) -> Option<Arc<User>> {
        let user = self.user_shard(id).users.write().remove(&id)?;
        self.by_uuid.remove(&user.uuid);
        self.user_count.fetch_sub(1, Ordering::Relaxed);
        for uuid in user.take_sessions() {
            self.unlink_session(uuid);
        }
        for other in user.take_contacts() {
            if let Some(o) = self.user_arc(other) {
                o.remove_contact(id);
            }
        }
        Some(user)
    }
}
