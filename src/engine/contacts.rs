//! Contacts: both ways, idempotent, at most `--max-contacts-per-user`.

use super::{committed, ContactView, Engine, EngineError, Session, User};
use crate::store::Op;
use std::sync::Arc;

impl Engine {
    /// The contacts of a session's user, by id.
    pub fn contacts(&self, session: &Session) -> Vec<ContactView> {
        session
            .user
            .contact_ids()
            .into_iter()
            .filter_map(|id| self.stored_user(id))
            .map(|u| ContactView { is_online: u.is_online(), user: u.view(), is_typing: false })
            .collect()
    }

    /// Makes the session's user and `user_id` contacts of each other (idempotent).
    pub async fn add_contact(&self, session: &Session, user_id: i64) -> Result<(), EngineError> {
        if self.config.cluster {
            return self.clustered_contact(session, user_id, true).await;
        }
        let commit = {
            let _admin = self.admin.lock();
            let (me, other) = self.contact_pair(session, user_id)?;
            if me.id == other.id {
                return Err(EngineError::SelfContact);
            }
            if me.has_contact(other.id) {
                return Ok(());
            }
            if me.contact_count() >= self.config.max_contacts_per_user
                || other.contact_count() >= self.config.max_contacts_per_user
            {
                return Err(EngineError::TooManyContacts);
            }
            self.require_store()?;
            me.add_contact(other.id);
            other.add_contact(me.id);
            self.writer.submit_durable(Op::AddContact { a: me.id.min(other.id), b: me.id.max(other.id) })
        };
        committed(&commit).await
    }

    /// Removes the contact pair both ways (idempotent).
    pub async fn remove_contact(&self, session: &Session, user_id: i64) -> Result<(), EngineError> {
        if self.config.cluster {
            return self.clustered_contact(session, user_id, false).await;
        }
        let commit = {
            let _admin = self.admin.lock();
            let (me, other) = self.contact_pair(session, user_id)?;
            if !me.has_contact(other.id) {
                return Ok(());
            }
            self.require_store()?;
            me.remove_contact(other.id);
            other.remove_contact(me.id);
            self.writer.submit_durable(Op::RemoveContact { a: me.id.min(other.id), b: me.id.max(other.id) })
        };
        committed(&commit).await
    }

    /// The session's user and the user `user_id`, both still there (under the admin lock).
    pub(super) fn contact_pair<'s>(
        &self,
        session: &'s Session,
        user_id: i64,
    ) -> Result<(&'s Arc<User>, Arc<User>), EngineError> {
        if !self.is_live(session) {
            return Err(EngineError::NoSuchSession);
        }
        let other = self.stored_user(user_id).ok_or(EngineError::NoSuchUser("user_id"))?;
        Ok((&session.user, other))
    }
}
