//! Expiry: idle sessions and old messages leave, shard by shard, and sessions' activity is
//! written in batches. Driven by the [`Culler`](crate::cull::Culler) thread.

use super::{Engine, Session, User};
use crate::store::Op;
use std::sync::Arc;
use std::time::Duration;

fn ttl_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Whether a held poll or open stream keeps an idle session from expiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holds {
    /// Yes: single-node mode, where the hold is on this very server.
    Keep,
    /// No: cluster mode, where holds are local to one node and so cannot decide what every node
    /// does; a held session's activity reaches the log as a `Touch` instead.
    Ignore,
}

impl Holds {
    fn keeps(self, s: &Session) -> bool {
        self == Holds::Keep && s.holds() > 0
    }
}

impl Engine {
    /// One culling pass over shard `index` at wall time `now`: closes idle sessions, removes
    /// expired messages from mailboxes, and (when `flush_activity`) queues the `last_active`
    /// changes since the last flush as one batched op. Takes each shard's map lock only long
    /// enough to copy its entries; each mailbox's writer lock only for its own cull.
    pub fn cull_shard(&self, index: usize, now: i64, flush_activity: bool) {
        self.cull_shard_as(index, now, flush_activity, Holds::Keep);
    }

    /// [`Engine::cull_shard`], with `holds` saying whether a held session is spared.
    pub(super) fn cull_shard_as(&self, index: usize, now: i64, flush_activity: bool, holds: Holds) {
        let Some(shard) = self.shards.get(index) else { return };
        let idle_before = now.saturating_sub(ttl_ns(self.config.session_ttl));
        let sessions: Vec<Arc<Session>> = shard.sessions.read().values().cloned().collect();
        let mut touches = Vec::new();
        for s in sessions {
            if s.last_active() < idle_before && !holds.keeps(&s) {
                self.expire_session(&s, idle_before, holds);
            } else if flush_activity {
                if let Some(ns) = s.take_unpersisted_activity() {
                    touches.push((s.uuid.0, ns));
                }
            }
        }
        if !touches.is_empty() {
            self.queue(Op::TouchSessions(touches));
        }
        let expire_before = now.saturating_sub(ttl_ns(self.config.message_ttl));
        let users: Vec<Arc<User>> = shard.users.read().values().cloned().collect();
        for u in users {
            if let Some(left_ns) = u.mailbox.lock().cull_before(expire_before) {
                self.queue(Op::Watermark { user_id: u.id, left_ns });
            }
        }
    }

    fn expire_session(&self, s: &Arc<Session>, idle_before: i64, holds: Holds) {
        let _admin = self.admin.lock();
        // A poll may have touched it, or a held poll or stream taken it, since we looked.
        if s.last_active() >= idle_before || holds.keeps(s) {
            return;
        }
        if self.unlink_session(s.uuid).is_some() {
            s.user.remove_session(s.uuid);
            self.queue(Op::DeleteSession { uuid: s.uuid.0 });
            self.metrics.sessions_culled.inc();
        }
    }

    /// Queues every `last_active` change not yet written (at graceful stop).
    pub fn flush_activity(&self) {
        for shard in self.shards.iter() {
            let touches: Vec<(u128, i64)> = shard
                .sessions
                .read()
                .values()
                .filter_map(|s| s.take_unpersisted_activity().map(|ns| (s.uuid.0, ns)))
                .collect();
            if !touches.is_empty() {
                self.queue(Op::TouchSessions(touches));
            }
        }
    }

    /// One culling pass over every shard, then the store's share of message culling.
    pub fn cull_all(&self, now: i64, flush_activity: bool) {
        self.cull_all_as(now, flush_activity, Holds::Keep);
    }

    /// [`Engine::cull_all`], with `holds` saying whether a held session is spared.
    pub(super) fn cull_all_as(&self, now: i64, flush_activity: bool, holds: Holds) {
        for i in 0..self.shards.len() {
            self.cull_shard_as(i, now, flush_activity, holds);
        }
        self.writer.cull(now.saturating_sub(ttl_ns(self.config.message_ttl)));
    }
}
