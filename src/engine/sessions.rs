//! Sessions: opening (answered only once stored), listing, paging, closing; the index of
//! session ids kept in order for paging.

use super::{committed, Engine, EngineError, Session, SessionId, SessionView};
use crate::store::{Op, SessionRow};
use std::sync::Arc;

impl Engine {
    /// Opens a session for a user.
    pub async fn open_session(&self, user_id: i64) -> Result<SessionView, EngineError> {
        if self.config.cluster {
            return self.clustered_open_session(user_id).await;
        }
        let session = {
            let _admin = self.admin.lock();
            let user = self.stored_user(user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
            if user.session_count() >= self.config.max_sessions_per_user {
                return Err(EngineError::TooManySessions);
            }
            self.require_store()?;
            let uuid = SessionId::random();
            let now = self.clock.next();
            let created = self.writer.submit_durable(Op::InsertSession(SessionRow {
                uuid: uuid.0,
                user_id,
                created_ns: now,
                last_active_ns: now,
            }));
            let session = Arc::new(Session::new(uuid, user.clone(), now, now, Some(created.clone()), false));
            self.link_session(session.clone());
            (session, created)
        };
        let (session, created) = session;
        let outcome = committed(&created).await;
        if outcome == Err(EngineError::StoreRefused) {
            let _admin = self.admin.lock();
            if let Some(s) = self.unlink_session(session.uuid) {
                s.user.remove_session(s.uuid);
            }
        }
        outcome?;
        Ok(session.view())
    }

    /// All live sessions, oldest first.
    pub fn sessions(&self) -> Vec<SessionView> {
        let mut all: Vec<Arc<Session>> = self
            .shards
            .iter()
            .flat_map(|s| s.sessions.read().values().filter(|s| s.is_stored()).cloned().collect::<Vec<_>>())
            .collect();
        all.sort_unstable_by_key(|s| (s.created, s.uuid));
        all.iter().map(|s| s.view()).collect()
    }

    /// At most `limit` live sessions with ids after `after`, in id order.
    pub fn sessions_after(&self, after: Option<SessionId>, limit: usize) -> Vec<SessionView> {
        use std::ops::Bound;
        // The index, then a shard: the order writers take them in too.
        let index = self.session_index.read();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        index
            .range((from, Bound::Unbounded))
            .filter_map(|id| self.session(*id).ok())
            .filter(|s| s.is_stored())
            .take(limit)
            .map(|s| s.view())
            .collect()
    }

    /// How many live sessions there are.
    pub fn session_count(&self) -> usize {
        self.session_index.read().len()
    }

    /// Puts a session into its shard, its user's list and the index (under `admin`, or alone at
    /// restore).
    pub(super) fn link_session(&self, session: Arc<Session>) {
        session.user.add_session(session.uuid);
        self.session_index.write().insert(session.uuid);
        self.session_shard(session.uuid).sessions.write().insert(session.uuid, session);
    }

    /// Takes a session out of its shard and the index (under `admin`); its user's list is the
    /// caller's.
    pub(super) fn unlink_session(&self, uuid: SessionId) -> Option<Arc<Session>> {
        self.session_index.write().remove(&uuid);
        let session = self.session_shard(uuid).sessions.write().remove(&uuid)?;
        session.mark_closed();
        Some(session)
    }

    /// Closes a session.
    pub async fn close_session(&self, uuid: SessionId) -> Result<(), EngineError> {
        if self.config.cluster {
            return self.clustered_close_session(uuid).await;
        }
        let commit = {
            let _admin = self.admin.lock();
            self.session(uuid)?;
            self.require_store()?;
            let session = self.unlink_session(uuid).ok_or(EngineError::NoSuchSession)?;
            session.user.remove_session(uuid);
            self.writer.submit_durable(Op::DeleteSession { uuid: uuid.0 })
        };
        committed(&commit).await
    }
}
