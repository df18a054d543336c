//! Istio's standard metrics, with Istio's names and labels, so dashboards
//! and alerts written for Istio work unchanged.
//!
//! Registered once at startup ([`Metrics::register`]); the request path
//! holds an `Arc<Metrics>` and records one [`RequestLabels`] per request:
//! label values are shared [`Label`]s (no string copies per request) and
//! the four request series of a label set are found with one hash lookup.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use twox_hash::XxHash64;

use crate::flags::Flags;

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

/// A label value: shared, so building a label set per request copies
/// pointers, not strings.
pub type Label = Arc<str>;

/// `unknown`, Istio's value for a label the proxy cannot fill.
pub fn unknown() -> Label {
    static UNKNOWN: LazyLock<Label> = LazyLock::new(|| Arc::from("unknown"));
    UNKNOWN.clone()
}

/// The destination labels a cluster gives its requests, computed once per
/// cluster from its name (`outbound|<port>|<subset>|<host>`).
#[derive(Clone, Debug)]
pub struct ServiceLabels {
    /// `destination_service`: the host (or the cluster name for others).
    pub service: Label,
    /// `destination_service_name`: the host's first label.
    pub name: Label,
    /// `destination_service_namespace`: the host's second label.
    pub namespace: Label,
}

impl ServiceLabels {
    /// The labels of cluster `cluster`.
    pub fn of_cluster(cluster: &str) -> Self {
        let mut parts = cluster.splitn(4, '|');
        if let (Some("outbound"), Some(_), Some(_), Some(host)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let mut h = host.split('.');
            let (name, namespace) = match (h.next(), h.next()) {
                (Some(n), Some(ns)) => (Arc::from(n), Arc::from(ns)),
                _ => (unknown(), unknown()),
            };
            Self {
                service: Arc::from(host),
                name,
                namespace,
            }
        } else {
            Self {
                service: Arc::from(cluster),
                name: unknown(),
                namespace: unknown(),
            }
        }
    }
}

/// This proxy's own labels, computed once.
#[derive(Clone, Debug)]
pub struct OwnLabels {
    pub workload: Label,
    pub namespace: Label,
    pub cluster: Label,
    /// `<workload>.<namespace>`: the destination service inbound.
    pub service: Label,
}

impl OwnLabels {
    /// The labels of `node`.
    pub fn of(node: &isthmus_proxy_core::xds::NodeInfo) -> Self {
        Self {
            workload: Arc::from(node.workload.as_str()),
            namespace: Arc::from(node.namespace.as_str()),
            cluster: Arc::from(node.cluster.as_str()),
            service: Arc::from(format!("{}.{}", node.workload, node.namespace)),
        }
    }
}

/// Labels of the request and TCP metrics (Istio's standard set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source_workload: Label,
    pub source_workload_namespace: Label,
    pub source_principal: Label,
    pub source_cluster: Label,
    pub destination_workload: Label,
    pub destination_workload_namespace: Label,
    pub destination_principal: Label,
    pub destination_service: Label,
    pub destination_service_name: Label,
    pub destination_service_namespace: Label,
    pub destination_cluster: Label,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub response_flags: Flags,
    pub connection_security_policy: &'static str,
}

impl EncodeLabelValue for Flags {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        write!(encoder, "{self}")
    }
}

/// The four series of one request label set, found with one lookup.
#[derive(Debug)]
struct RequestSeries {
    requests: Counter,
    duration_ms: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Label sets seen so far → their series (the families hold the same metrics).
type SeriesCache = RwLock<HashMap<RequestLabels, Arc<RequestSeries>, BuildHasherDefault<XxHash64>>>;

/// Labels of proxy-local counters keyed by cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

/// The sidecar's metrics.
#[derive(Debug)]
pub struct Metrics {
    series: SeriesCache,
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
            series: RwLock::default(),
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

    /// Records one finished request: count, duration and body sizes.
    pub fn record_request(&self, labels: &RequestLabels, duration: Duration, sizes: (u64, u64)) {
        let cached = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(labels)
            .cloned();
        let series = cached.unwrap_or_else(|| {
            let series = Arc::new(RequestSeries {
                requests: self.requests.get_or_create_owned(labels),
                duration_ms: self.duration_ms.get_or_create_owned(labels),
                request_bytes: self.request_bytes.get_or_create_owned(labels),
                response_bytes: self.response_bytes.get_or_create_owned(labels),
            });
            self.series
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(labels.clone(), series.clone());
            series
        });
        series.requests.inc();
        series.duration_ms.observe(duration.as_secs_f64() * 1000.0);
        #[allow(clippy::cast_precision_loss)]
        {
            series.request_bytes.observe(sizes.0 as f64);
            series.response_bytes.observe(sizes.1 as f64);
        }
    }
}
