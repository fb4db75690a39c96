//! The culler: a thread that expires idle sessions and old messages, one shard at a time.
//!
//! Every tick (a quarter of the shorter TTL, at most 250 ms, so a 2-second TTL takes effect
//! within about a second) it runs [`Engine::cull_shard`] on each shard in turn. Each step holds a
//! shard's map lock only to copy its entries, and each mailbox's writer lock only for that
//! mailbox, so polls never wait and no step pauses the whole server. Once a second it also queues
//! the sessions' changed `last_active` times as one batched write.

use crate::clock::Clock;
use crate::engine::Engine;
use crossbeam_channel::{RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often `last_active` changes are written.
pub const ACTIVITY_FLUSH: Duration = Duration::from_secs(1);

/// The running culler; stops on [`Culler::stop`] or drop.
#[derive(Debug)]
pub struct Culler {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The tick for these TTLs.
pub fn tick(session_ttl: Duration, message_ttl: Duration) -> Duration {
    (session_ttl.min(message_ttl) / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

impl Culler {
    /// Starts culling `engine`.
    pub fn start(engine: Arc<Engine>) -> std::io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let cfg = engine.config();
        let tick = tick(cfg.session_ttl, cfg.message_ttl);
        let thread = std::thread::Builder::new().name("chatbus-culler".into()).spawn(move || {
            let mut last_flush = Instant::now();
            loop {
                match stopped.recv_timeout(tick) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let flush = last_flush.elapsed() >= ACTIVITY_FLUSH;
                if flush {
                    last_flush = Instant::now();
                }
                engine.cull_all(Clock::wall_ns(), flush);
            }
        })?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Culler {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
