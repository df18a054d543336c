//! The client task: connect, run one ADS stream, reconnect with backoff,
//! until shutdown. The protocol lives in `state` (and the wire formats in
//! `sotw` and `delta`); this file does the I/O, the timers and the
//! publishing, and falls back to state of the world for good when the
//! control plane does not serve incremental xDS.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::connector::Connector;
use super::delta::Delta;
use super::sotw::Sotw;
use super::state::{Handled, Outcome, State};
use super::{XdsCounters, XdsError, XdsOptions, XdsProtocol, error_chain};
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
    /// The protocol of the next stream.
    protocol: XdsProtocol,
    sotw: Sotw,
    delta: Delta,
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
            protocol: options.protocol,
            options,
            connector,
            out,
            shutdown,
            state,
            sotw: Sotw::default(),
            delta: Delta::default(),
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
        if self.protocol == XdsProtocol::Incremental {
            let (tx, rx) = mpsc::unbounded_channel();
            for request in self.delta.start(&mut self.state) {
                send(&tx, request);
            }
            match client
                .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
                .await
            {
                Ok(responses) => {
                    return self
                        .serve(responses.into_inner(), established, |this, response| {
                            let (type_url, version, nonce) = (
                                response.type_url.clone(),
                                response.system_version_info.clone(),
                                response.nonce.clone(),
                            );
                            let handled = this.delta.on_response(&mut this.state, response);
                            this.handled(handled, &tx, (type_url, version, nonce));
                        })
                        .await;
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    info!(
                        reason = status.message(),
                        "the control plane does not serve incremental xDS; using state of the world"
                    );
                    self.protocol = XdsProtocol::StateOfTheWorld;
                }
                Err(status) => return Err(XdsError::Open(status)),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for request in self.sotw.start(&mut self.state) {
            send(&tx, request);
        }
        let responses = client
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .map_err(XdsError::Open)?
            .into_inner();
        self.serve(responses, established, |this, response| {
            let (type_url, version, nonce) = (
                response.type_url.clone(),
                response.version_info.clone(),
                response.nonce.clone(),
            );
            let handled = this.sotw.on_response(&mut this.state, response);
            this.handled(handled, &tx, (type_url, version, nonce));
        })
        .await
    }

    /// Reads an open stream's responses (and runs the warming timer) until
    /// the stream fails or ends.
    async fn serve<R>(
        &mut self,
        mut responses: tonic::Streaming<R>,
        established: &mut Option<Instant>,
        mut on_response: impl FnMut(&mut Self, R),
    ) -> Result<(), XdsError> {
        *established = Some(Instant::now());
        let counters = &self.out.counters;
        counters.state_of_the_world.store(
            self.protocol == XdsProtocol::StateOfTheWorld,
            Ordering::Relaxed,
        );
        counters.connected.store(true, Ordering::Relaxed);
        info!(protocol = self.protocol.name(), "ADS stream open");
        loop {
            tokio::select! {
                message = responses.message() => match message.map_err(XdsError::Stream)? {
                    Some(response) => on_response(self, response),
                    None => return Err(XdsError::Closed),
                },
                () = deadline(self.warm_deadline) => self.warm_timeout(),
            }
        }
    }

    /// Sends what handling a response produced and acts on its outcome;
    /// `about` is the response's type URL, version and nonce, for logs.
    fn handled<Q>(
        &mut self,
        handled: Handled<Q>,
        tx: &mpsc::UnboundedSender<Q>,
        about: (String, String, String),
    ) {
        let (type_url, version, nonce) = about;
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
fn send<Q>(tx: &mpsc::UnboundedSender<Q>, request: Q) {
    let _ = tx.send(request);
}

/// Completes at `at`, or never.
async fn deadline(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}
