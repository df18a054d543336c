//! The gateway's metrics, registered once under `isthmus_gateway_`.
//!
//! Label values come from our config only (the cluster name as `service`,
//! a fixed set of reasons, known ALPN names): an SNI a client made up is
//! never a label value, so a scanner cannot blow up the series count. It
//! is logged instead (rate limited).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use isthmus_proxy_core::transport::{Direction, Transfer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Service {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Opened {
    service: String,
    alpn: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WithReason {
    service: String,
    reason: &'static str,
}

/// ALPN values worth a label; anything else is `other`.
const KNOWN_ALPN: [&str; 7] = [
    "istio-peer-exchange",
    "istio",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
    "h2",
    "http/1.1",
];

/// The first offered ALPN name as a bounded label value.
pub fn alpn_label(alpn: &[String]) -> &'static str {
    match alpn.first() {
        None => "none",
        Some(a) => KNOWN_ALPN
            .iter()
            .find(|k| **k == a)
            .copied()
            .unwrap_or("other"),
    }
}

/// Handles to every metric; clone freely.
#[derive(Clone, Debug)]
pub struct Metrics {
    opened: Family<Opened, Counter>,
    closed: Family<WithReason, Counter>,
    rejected: Family<WithReason, Counter>,
    bytes_received: Family<Service, Counter>,
    bytes_sent: Family<Service, Counter>,
    active: Family<Service, Gauge>,
    peek: Histogram,
    accept_paused: Counter,
}

impl Metrics {
    /// Registers every metric in `registry` (prefix `gateway`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            opened: Family::default(),
            closed: Family::default(),
            rejected: Family::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            active: Family::default(),
            // 100 µs .. ~6 s.
            peek: Histogram::new(exponential_buckets(0.0001, 3.0, 11)),
            accept_paused: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("gateway");
        r.register(
            "connections_opened",
            "Connections routed and connected upstream, by service (cluster) and first ALPN",
            m.opened.clone(),
        );
        r.register(
            "connections_closed",
            "Routed connections that ended, by service and how (closed, idle_timeout, upstream_error, downstream_error, shutdown)",
            m.closed.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections closed before routing or connecting, by reason (and service once the SNI is known)",
            m.rejected.clone(),
        );
        r.register_with_unit(
            "received",
            "Bytes from clients forwarded to the service, by service",
            Unit::Bytes,
            m.bytes_received.clone(),
        );
        r.register_with_unit(
            "sent",
            "Bytes from the service forwarded to clients, by service",
            Unit::Bytes,
            m.bytes_sent.clone(),
        );
        r.register(
            "active_connections",
            "Connections open now, by service (\"\" before routing)",
            m.active.clone(),
        );
        r.register_with_unit(
            "client_hello_duration",
            "From accept to a complete ClientHello",
            Unit::Seconds,
            m.peek.clone(),
        );
        r.register(
            "accept_paused",
            "Times the accept loop waited because the global connection limit was reached",
            m.accept_paused.clone(),
        );
        m
    }

    pub(crate) fn rejected(&self, service: &str, reason: &'static str) {
        self.rejected
            .get_or_create(&WithReason {
                service: service.to_string(),
                reason,
            })
            .inc();
    }

    pub(crate) fn opened(&self, service: &str, alpn: &'static str) {
        self.opened
            .get_or_create(&Opened {
                service: service.to_string(),
                alpn,
            })
            .inc();
    }

    pub(crate) fn closed(&self, service: &str, reason: &'static str) {
        self.closed
            .get_or_create(&WithReason {
                service: service.to_string(),
                reason,
            })
            .inc();
    }

    pub(crate) fn peek_seconds(&self, seconds: f64) {
        self.peek.observe(seconds);
    }

    pub(crate) fn accept_paused(&self) {
        self.accept_paused.inc();
    }

    /// Counts one connection as active under `service` until dropped.
    pub(crate) fn active(&self, service: &str) -> ActiveConnection {
        let gauge = self
            .active
            .get_or_create(&Service {
                service: service.to_string(),
            })
            .clone();
        gauge.inc();
        ActiveConnection(gauge)
    }

    /// Byte counters of one service, resolved once per connection.
    pub(crate) fn bytes(&self, service: &str) -> ByteCounters {
        let label = Service {
            service: service.to_string(),
        };
        ByteCounters {
            received: self.bytes_received.get_or_create(&label).clone(),
            sent: self.bytes_sent.get_or_create(&label).clone(),
        }
    }
}

/// Decrements the active gauge on drop.
#[derive(Debug)]
pub(crate) struct ActiveConnection(Gauge);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection's byte counters (what the splice reports goes here).
#[derive(Clone, Debug)]
pub(crate) struct ByteCounters {
    pub(crate) received: Counter,
    pub(crate) sent: Counter,
}

impl Transfer for ByteCounters {
    fn transferred(&self, direction: Direction, bytes: u64) {
        match direction {
            Direction::ToUpstream => self.received.inc_by(bytes),
            Direction::ToDownstream => self.sent.inc_by(bytes),
        };
    }
}

/// Lets at most `per_second` log lines through each second (a scanner
/// trying SNIs must not turn into a log flood).
#[derive(Debug)]
pub(crate) struct LogLimit {
    per_second: u64,
    /// (second << 32) | count in that second.
    state: AtomicU64,
}

impl LogLimit {
    pub(crate) const fn new(per_second: u64) -> Self {
        Self {
            per_second,
            state: AtomicU64::new(0),
        }
    }

    /// Whether to log now.
    pub(crate) fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() & 0xffff_ffff)
            .unwrap_or(0);
        let mut allowed = false;
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                let (second, count) = (s >> 32, s & 0xffff_ffff);
                let count = if second == now { count } else { 0 };
                allowed = count < self.per_second;
                Some((now << 32) | (count + 1).min(0xffff_ffff))
            });
        allowed
    }
}
