//! Prometheus metrics of the ADS server, registered once and shared by every
//! connection.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// The xDS type as a metric label: `cds`, `eds`, `lds`, `rds`, `sds`, or
/// `other` (type URLs come from clients, so they are not used verbatim).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

impl TypeLabel {
    fn of(type_url: &str) -> Self {
        Self {
            r#type: short_type(type_url),
        }
    }
}

/// A short name for a type URL, for metrics and logs.
pub(super) fn short_type(type_url: &str) -> &'static str {
    match type_url {
        CLUSTER => "cds",
        ENDPOINT => "eds",
        LISTENER => "lds",
        ROUTE => "rds",
        SECRET => "sds",
        _ => "other",
    }
}

/// Handles to the ADS metrics (`xds_*`). [`Default`] gives unregistered
/// handles, for servers nobody scrapes (tests).
#[derive(Clone, Debug)]
pub struct AdsMetrics {
    responses: Family<TypeLabel, Counter>,
    push_errors: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    connected: Gauge,
    push_duration: Histogram,
    convergence: Histogram,
}

impl Default for AdsMetrics {
    fn default() -> Self {
        Self {
            responses: Family::default(),
            push_errors: Family::default(),
            nacks: Family::default(),
            connected: Gauge::default(),
            // 100 µs … 26 s.
            push_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            // 50 ms … 100 s: includes the debounce.
            convergence: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
        }
    }
}

impl AdsMetrics {
    /// Creates the metrics and registers them under the `xds` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("xds");
        r.register(
            "pushes",
            "DiscoveryResponses sent, by xDS type",
            metrics.responses.clone(),
        );
        r.register(
            "push_errors",
            "Resource generations that failed (nothing sent for that type), by xDS type",
            metrics.push_errors.clone(),
        );
        r.register(
            "nacks",
            "Responses rejected by a proxy (NACK), by xDS type",
            metrics.nacks.clone(),
        );
        r.register(
            "connected_proxies",
            "Open ADS streams that sent a valid node",
            metrics.connected.clone(),
        );
        r.register_with_unit(
            "push_duration",
            "Time to generate and send one proxy's push after a config change",
            Unit::Seconds,
            metrics.push_duration.clone(),
        );
        r.register_with_unit(
            "convergence",
            "Time from a config change reaching the server until a proxy ACKed every type pushed for it",
            Unit::Seconds,
            metrics.convergence.clone(),
        );
        metrics
    }

    pub(super) fn response_sent(&self, type_url: &str) {
        self.responses.get_or_create(&TypeLabel::of(type_url)).inc();
    }

    pub(super) fn push_error(&self, type_url: &str) {
        self.push_errors
            .get_or_create(&TypeLabel::of(type_url))
            .inc();
    }

    pub(super) fn nack(&self, type_url: &str) {
        self.nacks.get_or_create(&TypeLabel::of(type_url)).inc();
    }

    pub(super) fn connected(&self) -> &Gauge {
        &self.connected
    }

    pub(super) fn push_duration(&self) -> &Histogram {
        &self.push_duration
    }

    pub(super) fn convergence(&self) -> &Histogram {
        &self.convergence
    }
}
