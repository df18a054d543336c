//! The DNS feed (`isthmus.dns.v1.DnsFeed`): streams full snapshots of the
//! cross-cluster names to DNS servers.
//!
//! One builder task follows the published push contexts, waits for 100 ms
//! of quiet (at most 1 s) after a change, builds the snapshot from the
//! registry ([`build::snapshot`]) and publishes it — only when it differs
//! from the last one, with the next version. Each `Watch` stream sends the
//! current snapshot at once and then every new one; a slow stream skips to
//! the newest. Streams end when the control plane shuts down.

pub mod build;
pub mod vip;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use isthmus_proto::dns as proto;
use isthmus_proto::dns::dns_feed_server::{DnsFeed, DnsFeedServer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::xds::generate::PushContext;
pub use vip::VipRange;

/// How snapshots are built.
#[derive(Clone, Debug)]
pub struct FeedOptions {
    pub vip_range: VipRange,
    /// Quiet time after a registry change before a snapshot is built.
    pub debounce: Duration,
    /// Longest a stream of changes can delay a snapshot.
    pub max_delay: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            vip_range: VipRange::default(),
            debounce: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// The gRPC service; cheap to clone.
#[derive(Clone, Debug)]
pub struct DnsFeedService {
    snapshots: watch::Receiver<Arc<proto::Snapshot>>,
    shutdown: CancellationToken,
}

impl DnsFeedService {
    /// Starts the builder task following `push` until `shutdown`.
    pub fn spawn(
        mut push: watch::Receiver<Arc<PushContext>>,
        options: FeedOptions,
        shutdown: CancellationToken,
    ) -> DnsFeedService {
        let range = options.vip_range;
        let build = move |pc: &PushContext, version| {
            build::snapshot(&pc.registry, &pc.mesh.cluster.cluster, &range, version)
        };
        let first = build(&push.borrow_and_update(), 1);
        let (tx, rx) = watch::channel(Arc::new(first));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = push.changed() => if changed.is_err() { return },
                }
                // Debounce: wait for quiet, bounded by max_delay.
                let deadline = tokio::time::Instant::now() + options.max_delay;
                loop {
                    let quiet = tokio::time::sleep(options.debounce);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = quiet => break,
                        _ = tokio::time::sleep_until(deadline) => break,
                        changed = push.changed() => if changed.is_err() { return },
                    }
                }
                let pc = push.borrow_and_update().clone();
                let last = tx.borrow().clone();
                let started = std::time::Instant::now();
                let next = build(&pc, last.version + 1);
                if next.services != last.services {
                    tracing::debug!(
                        version = next.version,
                        services = next.services.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "DNS snapshot built"
                    );
                    tx.send_replace(Arc::new(next));
                }
            }
        });
        DnsFeedService {
            snapshots: rx,
            shutdown,
        }
    }

    /// The snapshot streams send now.
    pub fn current(&self) -> Arc<proto::Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// The tonic service to add to the gRPC server.
    pub fn into_service(self) -> DnsFeedServer<DnsFeedService> {
        DnsFeedServer::new(self).max_encoding_message_size(256 << 20)
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<proto::Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl DnsFeed for DnsFeedService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let who = request.into_inner();
        tracing::info!(cluster = %who.cluster, node = %who.node, "DNS server watching");
        // The current snapshot first, then each new one (skipping to the newest).
        let stream = futures::stream::unfold(
            (self.snapshots.clone(), true),
            |(mut rx, first)| async move {
                if !first {
                    rx.changed().await.ok()?;
                }
                let snapshot = rx.borrow_and_update().as_ref().clone();
                Some((Ok(snapshot), (rx, false)))
            },
        )
        .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests;
