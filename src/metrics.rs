//! `/metrics`: Prometheus counters and histograms (the `prometheus` crate, atomics only).
//!
//! Per-route handles are resolved once at start, so recording a request is a few atomic adds
//! and no map lookup or lock.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Statuses whose counters are resolved up front; others are looked up when they happen.
const COMMON_STATUSES: [u16; 8] = [200, 204, 400, 404, 405, 408, 413, 503];

struct RouteHandles {
    latency: Histogram,
    by_status: [IntCounter; COMMON_STATUSES.len()],
}

/// Adds one to a gauge until dropped (a held poll, an open stream).
#[derive(Debug)]
pub struct Counted(IntGauge);

impl Counted {
    /// `gauge` + 1, until this is dropped.
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric chatbus exports.
pub struct Metrics {
    registry: Registry,
    routes: Vec<&'static str>,
    handles: Vec<RouteHandles>,
    requests: IntCounterVec,
    /// Messages accepted by `POST /api/message`.
    pub messages_sent: IntCounter,
    /// Writes queued for the store, not yet committed.
    pub queue_depth: IntGauge,
    /// Ops per store batch.
    pub batch_size: Histogram,
    /// Seconds per store batch (one transaction).
    pub batch_seconds: Histogram,
    /// Seconds from a message's server timestamp to the commit that stored it, for the oldest
    /// message of each batch: the write-behind window a crash could lose.
    pub message_lag_seconds: Histogram,
    /// Store calls that failed, by call (`op`: `write`, `cull`, `ping`) and by what went wrong
    /// (`kind`: `unreachable`, `full`, `busy`, `read_only`, `rejected`, `other`).
    pub store_errors: IntCounterVec,
    /// Writes the store refused for good, set aside in the dead-letter file.
    pub dead_letters: IntCounter,
    /// Messages culled from the store.
    pub messages_culled: IntCounter,
    /// Sessions closed for idleness.
    pub sessions_culled: IntCounter,
    /// Long-polls held now.
    pub waiting_polls: IntGauge,
    /// Event streams open now.
    pub open_streams: IntGauge,
    /// WebSockets open now.
    pub open_sockets: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("routes", &self.routes).finish_non_exhaustive()
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Registration fails only for duplicate or malformed names, which are constants here.
    match r {
        Ok(v) => v,
        Err(e) => panic!("metric definition: {e}"),
    }
}

impl Metrics {
    /// Metrics for a server whose routes are labelled `routes` (indexed by position).
    pub fn new(routes: &[&'static str]) -> Self {
        let registry = Registry::new_custom(Some("chatbus".into()), None).unwrap_or_default();
        let requests = must(IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        ));
        let latency = must(HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Time from request to response, by route").buckets(
                vec![
                    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 1.0,
                ],
            ),
            &["route"],
        ));
        let messages_sent = must(IntCounter::new("messages_sent_total", "Messages accepted"));
        let queue_depth = must(IntGauge::new("writer_queue_depth", "Writes queued for the store"));
        let batch_size = must(Histogram::with_opts(
            HistogramOpts::new("writer_batch_size", "Ops per store transaction")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0]),
        ));
        let batch_seconds = must(Histogram::with_opts(
            HistogramOpts::new("writer_batch_seconds", "Seconds per store transaction")
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 15).unwrap_or_default()),
        ));
        let message_lag_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "writer_message_lag_seconds",
                "Seconds from a message's timestamp to its commit (oldest message of each batch)",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18).unwrap_or_default()),
        ));
        let store_errors = must(IntCounterVec::new(
            Opts::new("store_errors_total", "Failed store calls, by call (write, cull, ping) and kind"),
            &["op", "kind"],
        ));
        let dead_letters = must(IntCounter::new(
            "store_dead_letters_total",
            "Writes the store refused, set aside in the dead-letter file",
        ));
        let messages_culled = must(IntCounter::new("messages_culled_total", "Messages culled from the store"));
        let sessions_culled = must(IntCounter::new("sessions_culled_total", "Sessions closed for idleness"));
        let waiting_polls = must(IntGauge::new("waiting_polls", "Long-polls held now"));
        let open_streams = must(IntGauge::new("open_streams", "Server-Sent Event streams open now"));
        let open_sockets = must(IntGauge::new("open_sockets", "WebSockets open now"));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(messages_sent.clone()),
            Box::new(queue_depth.clone()),
            Box::new(batch_size.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(message_lag_seconds.clone()),
            Box::new(store_errors.clone()),
            Box::new(dead_letters.clone()),
            Box::new(messages_culled.clone()),
            Box::new(sessions_culled.clone()),
            Box::new(waiting_polls.clone()),
            Box::new(open_streams.clone()),
            Box::new(open_sockets.clone()),
        ] {
            must(registry.register(c));
        }
        let handles = routes
            .iter()
            .map(|r| RouteHandles {
                latency: latency.with_label_values(&[r]),
                by_status: COMMON_STATUSES.map(|s| requests.with_label_values(&[r, &s.to_string()])),
            })
            .collect();
        Self {
            registry,
            routes: routes.to_vec(),
            handles,
            requests,
            messages_sent,
            queue_depth,
            batch_size,
            batch_seconds,
            message_lag_seconds,
            store_errors,
            dead_letters,
            messages_culled,
            sessions_culled,
            waiting_polls,
            open_streams,
            open_sockets,
        }
    }

    /// Records one request to route number `route`.
    pub fn observe(&self, route: usize, status: u16, seconds: f64) {
        let Some(h) = self.handles.get(route) else { return };
        h.latency.observe(seconds);
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(i) => h.by_status[i].inc(),
            None => self.requests.with_label_values(&[self.routes[route], &status.to_string()]).inc(),
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
