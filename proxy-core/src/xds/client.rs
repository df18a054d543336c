//! The client task: connect, run one ADS stream, reconnect with backoff,
//! until shutdown. The protocol lives in `state`; this file does the I/O,
//! the timers and the publishing.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::connector::Connector;
use super::state::{Outcome, State};
use super::{XdsCounters, XdsError, XdsOptions, error_chain};
use crate::config::ProxyConfig;

/// Where the client publishes.
pub(super) struct Outputs {
    pub(super) config: watch::Sender<Arc<ProxyConfig>>,
    pub(super) ready: watch::Sender<bool>,
    pub(super) counters: Arc<XdsCounters>,
}

/// The client task's state.
pub(super) struct Runner {
    options: XdsOptions,
    connector: Box<dyn Connector>,
    out: Outputs,
    shutdown: CancellationToken,
    state: State,
    /// When the first sync stops waiting for named resources.
    warm_deadline: Option<Instant>,
}

/// How one stream ended.
struct StreamEnd {
    /// When the stream was established, if it was.
    established: Option<Instant>,
    /// Why it ended; `Ok` on shutdown.
    result: Result<(), XdsError>,
}

impl Runner {
    pub(super) fn new(
        options: XdsOptions,
        connector: Box<dyn Connector>,
        out: Outputs,
        shutdown: CancellationToken,
    ) -> Self {
        let state = State::new(
            options.node.clone(),
            options.extra_secrets.clone(),
            options.local_secrets.clone(),
        );
        Self {
            options,
            connector,
            out,
            shutdown,
            state,
            warm_deadline: None,
        }
    }

    /// Streams and reconnects until shutdown.
    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::new(self.options.backoff);
        let mut first = true;
        while !self.shutdown.is_cancelled() {
            if !first {
                XdsCounters::inc(&self.out.counters.reconnects);
            }
            first = false;
            let end = self.stream().await;
            self.out.counters.connected.store(false, Ordering::Relaxed);
            if self.shutdown.is_cancelled() {
                break;
            }
            if let Err(e) = &end.result {
                warn!(error = %error_chain(e), "ADS stream failed; keeping the last config");
            }
            backoff.reset_if_stable(end.established);
            let delay = backoff.next_delay();
            debug!(
                ?delay,
                attempt = backoff.attempts(),
                "reconnecting after backoff"
            );
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = sleep_until(wake) => break,
                    () = deadline(self.warm_deadline) => self.warm_timeout(),
                }
            }
        }
        info!("xDS client stopped");
    }

    /// One connection and stream, until it fails or shutdown.
    async fn stream(&mut self) -> StreamEnd {
        let mut end = StreamEnd {
            established: None,
            result: Ok(()),
        };
        let shutdown = self.shutdown.clone();
        tokio::select! {
            () = shutdown.cancelled() => {}
            result = self.connect_and_serve(&mut end.established) => end.result = result,
        }
        end
    }

    async fn connect_and_serve(
        &mut self,
        established: &mut Option<Instant>,
    ) -> Result<(), XdsError> {
        let limit = self.options.connect_timeout;
        let channel = timeout(limit, self.connector.connect())
            .await
            .map_err(|_| XdsError::ConnectTimeout(limit))?
            .map_err(XdsError::Connect)?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.options.max_message_size);
        // Unbounded: requests are few and small, and a full queue must never
        // stop this task from reading responses.
        let (tx, rx) = mpsc::unbounded_channel();
        for request in self.state.start_stream() {
            send(&tx, request);
        }
        let mut responses = client
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .map_err(XdsError::Open)?
            .into_inner();
        *established = Some(Instant::now());
        self.out.counters.connected.store(true, Ordering::Relaxed);
        info!("ADS stream open");
        loop {
            tokio::select! {
                message = responses.message() => match message.map_err(XdsError::Stream)? {
                    Some(response) => self.on_response(response, &tx),
                    None => return Err(XdsError::Closed),
                },
                () = deadline(self.warm_deadline) => self.warm_timeout(),
            }
        }
    }

    fn on_response(
        &mut self,
        response: DiscoveryResponse,
        tx: &mpsc::UnboundedSender<DiscoveryRequest>,
    ) {
        let (type_url, version, nonce) = (
            response.type_url.clone(),
            response.version_info.clone(),
            response.nonce.clone(),
        );
        let handled = self.state.on_response(response);
        for request in handled.requests {
            send(tx, request);
        }
        match handled.outcome {
            Outcome::Accepted { publish } => {
                XdsCounters::inc(&self.out.counters.updates_accepted);
                debug!(type_url, version, nonce, "ACK");
                if publish {
                    self.publish();
                } else if self.warm_deadline.is_none() && self.state.has_wildcards() {
                    self.warm_deadline = self
                        .options
                        .initial_fetch_timeout
                        .map(|t| Instant::now() + t);
                }
            }
            Outcome::Rejected(error) => {
                XdsCounters::inc(&self.out.counters.nacks_sent);
                warn!(type_url, version, nonce, %error, "rejected config (NACK); keeping the previous one");
            }
            Outcome::Ignored => {}
        }
    }

    /// The first sync waited long enough: publish what is there.
    fn warm_timeout(&mut self) {
        self.warm_deadline = None;
        if self.state.is_synced() {
            return;
        }
        let missing = self.state.force_sync();
        warn!(%missing, "initial fetch timeout: publishing the config without what is missing");
        self.publish();
    }

    /// Publishes the state's config if it differs from the published one
    /// (a resync after a reconnect usually brings nothing new).
    fn publish(&mut self) {
        self.warm_deadline = None;
        let config = self.state.config();
        let first = !*self.out.ready.borrow();
        if first || **self.out.config.borrow() != *config {
            let config = Arc::new(config.clone());
            info!(summary = %config.summary(), "config published");
            self.out.config.send_replace(config);
        }
        if first {
            self.out.ready.send_replace(true);
        }
    }
}

/// Queues a request; a closed stream is noticed on the response side.
fn send(tx: &mpsc::UnboundedSender<DiscoveryRequest>, request: DiscoveryRequest) {
    let _ = tx.send(request);
}

/// Completes at `at`, or never.
async fn deadline(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}
