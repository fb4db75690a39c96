//! Waiting: for a condition, with a deadline, never for a guessed length of time.

use super::timestamp::now_ns;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] checks.
const INTERVAL: Duration = Duration::from_millis(10);

/// Checks `check` every 10 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(wait_until_or(limit, check).await, "timed out after {limit:?} waiting for {what}");
}

/// Checks `check` every 10 ms until it holds (`true`) or `limit` has passed (`false`), for a
/// caller that says more than [`wait_until`] can about what did not happen.
pub async fn wait_until_or<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(INTERVAL).await;
    }
    true
}

/// Waits until the wall clock is past `ns` + 2 ms, so that a request made now is measurably
/// later than the server timestamp `ns`.
pub async fn wall_clock_past(ns: i128) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while now_ns() <= ns + 2_000_000 {
        assert!(Instant::now() < deadline, "timed out waiting for the wall clock to move on");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs blocking work (a `pg_ctl`, a thread's join) off the runtime the server under test uses.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
