//! Waiting for news: a held poll or a stream sleeps until a message after its cutoff enters the
//! mailbox, its session closes, its deadline passes, or the server stops.
//!
//! A waiter holds its session ([`Hold`]): while any hold is open the session does not expire,
//! and when the last one ends the session counts as active from then. Waiting costs no thread
//! and no lock: the waiter registers on its user's mailbox and on the user's [`Notify`] (see
//! "Waiting" in [`crate::mailbox`]), and a deadline is one entry in tokio's timer wheel. When
//! woken it re-reads the mailbox through the same lock-free path as any poll, so ordering and
//! the gap watermark are exactly a plain poll's.
//!
//! [`Notify`]: tokio::sync::Notify

use super::{Engine, Session};
use crate::clock::{Clock, Cursor};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A message after the cutoff is in the mailbox.
    Message,
    /// The deadline passed.
    TimedOut,
    /// The session was closed (or expired, or its user deleted).
    SessionClosed,
    /// The server is stopping.
    Stopping,
}

/// A session held open by a waiting poll or a stream; see the module doc.
#[derive(Debug)]
pub struct Hold(Arc<Session>);

impl Hold {
    /// Holds `session` until dropped.
    pub fn new(session: Arc<Session>) -> Self {
        session.hold();
        Self(session)
    }

    /// The session held.
    pub fn session(&self) -> &Arc<Session> {
        &self.0
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.release(Clock::wall_ns());
    }
}

/// Takes back a mailbox registration however the wait ends (also when its future is dropped).
struct Registered<'a>(&'a Session);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.user.mailbox.unregister_waiter();
    }
}

impl Engine {
    /// Waits until the session's mailbox holds a message created after `cutoff` (any message,
    /// with none), the session closes, `deadline` passes (never, with none), or the server stops.
    pub async fn wait_for_message(
        &self,
        hold: &Hold,
        cutoff: Option<Cursor>,
        deadline: Option<tokio::time::Instant>,
    ) -> Woken {
        let session = hold.session();
        let user = &session.user;
        let cutoff = cutoff.map(Cursor::as_ns);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let mut sleep = std::pin::pin!(sleep);
        loop {
            // Listen first, then look: a wake between the look and the await is not lost.
            let woken = user.wake.notified();
            let stop = self.stop_waiters.notified();
            let mut woken = std::pin::pin!(woken);
            let mut stop = std::pin::pin!(stop);
            woken.as_mut().enable();
            stop.as_mut().enable();
            user.mailbox.register_waiter();
            let _registered = Registered(session);
            if self.stopping.load(Ordering::Acquire) {
                return Woken::Stopping;
            }
            if session.is_closed() {
                return Woken::SessionClosed;
            }
            if user.mailbox.newest().is_some_and(|n| cutoff.is_none_or(|c| i128::from(n) > c)) {
                return Woken::Message;
            }
            tokio::select! {
                biased;
                () = &mut stop => return Woken::Stopping,
                () = &mut woken => {} // look again
                () = &mut sleep => return Woken::TimedOut,
            }
        }
    }

    /// Ends every wait at once (graceful stop): held polls answer with what they have, streams
    /// end.
    pub fn stop_waiting(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop_waiters.notify_waiters();
    }

    /// Whether [`Engine::stop_waiting`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}
