//! Restoring the engine from a store [`Snapshot`] at start, before any connection is accepted.
//!
//! Messages are replayed oldest first through the same mailbox push the live path uses, so ring
//! capacity evicts, and raises gap watermarks, exactly as it did before the restart. Messages the
//! store no longer has (culled by TTL) are covered by each user's stored `left_ns`, and those it
//! still has but a mailbox culled already (at or below its `left_ns`) are not pushed into it.
//! Messages past their TTL are pushed too and leave at the first culling pass, which runs before
//! the listener opens (in cluster mode, at the next tick in the log, as on every node). The clock is moved past every restored timestamp so none is ever handed out again.

use super::{Engine, Session, SessionId};
use crate::render;
use crate::store::Snapshot;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Engine {
    /// Loads `snapshot` into an empty engine.
    pub fn restore(&self, snapshot: Snapshot) {
        let mut max_id = snapshot.max_user_id;
        for row in snapshot.users {
            max_id = max_id.max(row.id);
            let user = self.insert_user(row.id, &row.uuid, &row.display_name, None);
            if let Some(ns) = row.left_ns {
                user.mailbox.lock().mark_left(ns);
            }
        }
        self.next_user_id.fetch_max(max_id + 1, Ordering::Relaxed);
        for (a, b) in snapshot.contacts {
            if let (Some(ua), Some(ub)) = (self.user_arc(a), self.user_arc(b)) {
                ua.add_contact(b);
                ub.add_contact(a);
            }
        }
        for row in snapshot.sessions {
            let Some(user) = self.user_arc(row.user_id) else { continue };
            self.clock.advance_past(row.created_ns);
            let session = Arc::new(Session::new(
                SessionId(row.uuid),
                user,
                row.created_ns,
                row.last_active_ns,
                None,
                self.config.cluster,
            ));
            self.link_session(session);
        }
        for m in snapshot.messages {
            self.clock.advance_past(m.created_ns);
            let sent =
                render::message(m.uuid, m.created_ns, m.sender_id, m.receiver_id, &m.body, m.attachments.as_deref());
            let mut ids = [m.sender_id, m.receiver_id];
            ids.sort_unstable();
            for (i, id) in ids.iter().enumerate() {
                if i == 1 && ids[0] == ids[1] {
                    break;
                }
                if let Some(u) = self.user_arc(*id) {
                    // Culled from this mailbox already (the store deletes culled messages in
                    // steps of its own, so it may still hold some): it stays out. (Pushes go in
                    // order, so one evicted here is always older than the next pushed.)
                    if u.mailbox.watermark().is_none_or(|left| m.created_ns > left) {
                        u.mailbox.lock().push(m.created_ns, sent.json());
                    }
                }
            }
        }
    }
}
