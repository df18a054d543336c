//! Istio's standard metrics, with Istio's names and labels, so dashboards
//! and alerts written for Istio work unchanged.
//!
//! Registered once at startup ([`Metrics::register`]); the request path
//! holds an `Arc<Metrics>` and records one [`RequestLabels`] per request.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which side of the call reports (Istio's `reporter` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's sidecar (outbound).
    Source,
    /// The callee's sidecar (inbound).
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let v = match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        EncodeLabelValue::encode(&v, encoder)
    }
}

/// Labels of the request and TCP metrics (Istio's standard set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_code: u16,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// Labels of proxy-local counters keyed by cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

/// The sidecar's metrics.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration_ms: Family<RequestLabels, Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram>,
    pub tcp_opened: Family<RequestLabels, Counter>,
    pub tcp_closed: Family<RequestLabels, Counter>,
    pub tcp_sent: Family<RequestLabels, Counter>,
    pub tcp_received: Family<RequestLabels, Counter>,
    pub retries: Family<ClusterLabel, Counter>,
    pub active_connections: Gauge,
}

fn ms_buckets() -> Histogram {
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn byte_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 9,
    ))
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (no prefix: Istio's names).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration_ms: Family::new_with_constructor(ms_buckets),
            request_bytes: Family::new_with_constructor(byte_buckets),
            response_bytes: Family::new_with_constructor(byte_buckets),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            retries: Family::default(),
            active_connections: Gauge::default(),
        };
        registry.register("istio_requests", "Requests", m.requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            m.duration_ms.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes",
            m.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes",
            m.response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream",
            m.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream",
            m.tcp_received.clone(),
        );
        registry.register(
            "isthmus_sidecar_upstream_retries",
            "Retried upstream requests by cluster",
            m.retries.clone(),
        );
        registry.register(
            "isthmus_sidecar_active_connections",
            "Downstream connections open now",
            m.active_connections.clone(),
        );
        m
    }
}
