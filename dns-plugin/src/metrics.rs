//! DNS server metrics, registered once at startup; the request path only
//! touches pre-created atomic counters (no label lookup, no lock).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

const QTYPES: [&str; 8] = ["A", "AAAA", "SRV", "SOA", "NS", "ANY", "PTR", "OTHER"];
const RCODES: [&str; 7] = [
    "NOERROR", "NXDOMAIN", "REFUSED", "FORMERR", "SERVFAIL", "NOTIMP", "OTHER",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: &'static str,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ZoneLabels {
    zone: String,
}

/// Handles to every DNS metric.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    /// `[qtype][rcode]`, created up front.
    queries: Arc<[[Counter; RCODES.len()]; QTYPES.len()]>,
    latency: LatencyHistogram,
    zone_services: Family<ZoneLabels, Gauge>,
    /// Version of the snapshot being served.
    pub snapshot_version: Gauge,
    /// Snapshots received from the control plane.
    pub feed_updates: Counter,
    /// 1 while the feed stream is up.
    pub feed_connected: Gauge,
    /// UDP queries dropped by the per-source rate limit.
    pub rate_limited: Counter,
    /// Queries sent to the upstream resolver that failed.
    pub upstream_errors: Counter,
    /// UDP queries dropped because too many were already on the full path.
    pub udp_overflow: Counter,
}

impl DnsMetrics {
    /// Registers every metric under `registry` (prefix it, e.g. `isthmus_dns`).
    pub fn register(registry: &mut Registry) -> DnsMetrics {
        let family = Family::<QueryLabels, Counter>::default();
        let queries = std::array::from_fn(|q| {
            std::array::from_fn(|r| {
                family
                    .get_or_create(&QueryLabels {
                        qtype: QTYPES[q],
                        rcode: RCODES[r],
                    })
                    .clone()
            })
        });
        registry.register(
            "queries",
            "DNS queries answered, by type and response code",
            family,
        );
        let latency = LatencyHistogram::default();
        registry.register(
            "request_duration_seconds",
            "Time from a decoded query to its response being handed to the socket",
            latency.clone(),
        );
        let zone_services = Family::<ZoneLabels, Gauge>::default();
        registry.register(
            "zone_services",
            "Services answered in each zone",
            zone_services.clone(),
        );
        let m = DnsMetrics {
            queries: Arc::new(queries),
            latency,
            zone_services,
            snapshot_version: Gauge::default(),
            feed_updates: Counter::default(),
            feed_connected: Gauge::default(),
            rate_limited: Counter::default(),
            upstream_errors: Counter::default(),
            udp_overflow: Counter::default(),
        };
        registry.register(
            "snapshot_version",
            "Version of the control-plane snapshot being served",
            m.snapshot_version.clone(),
        );
        registry.register(
            "feed_updates",
            "Snapshots received from the control plane",
            m.feed_updates.clone(),
        );
        registry.register(
            "feed_connected",
            "1 while the control-plane feed stream is up",
            m.feed_connected.clone(),
        );
        registry.register(
            "rate_limited",
            "UDP queries dropped by the per-source rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "upstream_errors",
            "Forwarded queries the upstream did not answer",
            m.upstream_errors.clone(),
        );
        registry.register(
            "udp_overflow",
            "UDP queries dropped because too many were already waiting on the full (non-fast) path",
            m.udp_overflow.clone(),
        );
        m
    }

    /// Counts one answered query and its latency.
    pub fn observe(&self, qtype: Option<RecordType>, rcode: ResponseCode, elapsed: Duration) {
        let q = match qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::SRV) => 2,
            Some(RecordType::SOA) => 3,
            Some(RecordType::NS) => 4,
            Some(RecordType::ANY) => 5,
            Some(RecordType::PTR) => 6,
            _ => 7,
        };
        let r = match rcode {
            ResponseCode::NoError => 0,
            ResponseCode::NXDomain => 1,
            ResponseCode::Refused => 2,
            ResponseCode::FormErr => 3,
            ResponseCode::ServFail => 4,
            ResponseCode::NotImp => 5,
            _ => 6,
        };
        self.queries[q][r].inc();
        self.latency.observe(elapsed);
    }

    /// Records how many services each zone answers.
    pub fn set_zone_size(&self, zone: &str, services: usize) {
        self.zone_services
            .get_or_create(&ZoneLabels {
                zone: zone.to_string(),
            })
            .set(i64::try_from(services).unwrap_or(i64::MAX));
    }
}

/// Upper bounds of the latency buckets, in seconds (10 µs … 1 s).
const BOUNDS: [f64; 12] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0,
];

/// A histogram of atomics: `prometheus_client`'s own takes a mutex per observation.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// One per bound plus +Inf.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
