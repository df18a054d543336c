//! The control-plane feed: one `isthmus.dns.v1.DnsFeed/Watch` stream, each
//! message a full snapshot, turned into a [`Snapshot`] and swapped in.
//!
//! While the stream is down the last snapshot keeps being served; the
//! client reconnects with exponential backoff and jitter (between half and
//! all of the current delay, doubling from `backoff_min` to `backoff_max`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use isthmus_proto::dns::WatchRequest;
use isthmus_proto::dns::dns_feed_client::DnsFeedClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::metrics::DnsMetrics;
use crate::zone::{AnswerConfig, Snapshot};

/// Where the feed comes from and how to retry.
#[derive(Clone, Debug)]
pub struct FeedOptions {
    /// The control plane's gRPC address: `host:port` or a `http://` URI.
    pub control_plane: String,
    /// Names this server in the control plane's logs.
    pub node: String,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl FeedOptions {
    pub fn new(control_plane: impl Into<String>) -> FeedOptions {
        FeedOptions {
            control_plane: control_plane.into(),
            node: String::new(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }

    fn uri(&self) -> String {
        if self.control_plane.contains("://") {
            self.control_plane.clone()
        } else {
            format!("http://{}", self.control_plane)
        }
    }
}

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("control plane closed the stream")]
    Closed,
}

/// Keeps the feed until `shutdown`, swapping each snapshot into `current`.
pub async fn run(
    options: FeedOptions,
    config: AnswerConfig,
    current: Arc<ArcSwap<Snapshot>>,
    metrics: DnsMetrics,
    shutdown: CancellationToken,
) {
    let endpoint = match Endpoint::from_shared(options.uri()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .tcp_nodelay(true),
        Err(error) => {
            tracing::error!(%error, control_plane = %options.control_plane, "bad control-plane address; serving no names");
            return;
        }
    };
    let mut delay = options.backoff_min;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = stream(&endpoint, &options, &config, &current, &metrics) => r,
        };
        metrics.feed_connected.set(0);
        let Err(error) = result;
        // A stream that lived a while resets the backoff.
        if started.elapsed() > options.backoff_max {
            delay = options.backoff_min;
        }
        let wait = jitter(delay);
        tracing::warn!(%error, control_plane = %options.control_plane, retry_in_ms = wait.as_millis() as u64,
            version = current.load().version, "DNS feed down; serving the last snapshot");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        delay = (delay * 2).min(options.backoff_max);
    }
}

/// Between half and all of `delay`.
fn jitter(delay: Duration) -> Duration {
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(nanos / 2 + rand::random_range(0..=nanos / 2))
}

async fn stream(
    endpoint: &Endpoint,
    options: &FeedOptions,
    config: &AnswerConfig,
    current: &ArcSwap<Snapshot>,
    metrics: &DnsMetrics,
) -> Result<std::convert::Infallible, StreamError> {
    let channel = endpoint.connect().await?;
    let mut client = DnsFeedClient::new(channel).max_decoding_message_size(256 << 20);
    let mut stream = client
        .watch(WatchRequest {
            cluster: config.cluster.clone(),
            node: options.node.clone(),
        })
        .await?
        .into_inner();
    metrics.feed_connected.set(1);
    while let Some(message) = stream.message().await? {
        let started = Instant::now();
        let snapshot = Snapshot::build(&message, config);
        for zone in &snapshot.zones {
            metrics.set_zone_size(&zone.config.origin.to_string(), zone.services);
        }
        metrics
            .snapshot_version
            .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
        metrics.feed_updates.inc();
        tracing::info!(
            version = snapshot.version,
            services = snapshot.services(),
            build_ms = started.elapsed().as_millis() as u64,
            "DNS snapshot applied"
        );
        current.store(Arc::new(snapshot));
    }
    Err(StreamError::Closed)
}
