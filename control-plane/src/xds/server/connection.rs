//! The protocol state of one stream: subscriptions, ACKs and NACKs, and
//! pushes; published to the server's status view after every change.
//!
//! A push asks the new state what changed since the stream's state
//! ([`ConfigState::changes_since`](crate::xds::ConfigState::changes_since)):
//! nothing; endpoints only (then only the changed assignments the proxy
//! subscribed to go out, as a partial EDS response; when the proxy's own
//! workload is among them, its other types are regenerated too); some services (anything
//! for a proxy that imports one of them, else their endpoints only:
//! [`Changes::for_proxy`](crate::xds::Changes::for_proxy), Sidecar scoping);
//! or anything (then every subscribed type is regenerated and sent if its
//! digest changed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, trace, warn};

use super::debounce::{Update, same_state};
use super::first_sync::FirstSync;
use super::metrics::short_type;
use super::names::Names;
use super::pending::PendingPushes;
use super::push::{Digest, Step, make_before_break, version_info};
use super::status::{NackStatus, TypeSyncStatus, View};
use super::stream::{End, Protocol, ResponseTx};
use super::wire::{Request, Response};
use super::{Inner, RESPONSE_BUFFER, lock};
use crate::xds::{
    CLUSTER, Changes, ENDPOINT, GenerateError, LISTENER, PUSH_ORDER, ProxyInfo, SharedResource,
    SharedState, is_wildcard_type,
};

/// Identifies this control plane in every response.
pub(super) const CONTROL_PLANE_ID: &str = "isthmus";
/// How long a push waits for a proxy to take its responses before it lets
/// the next stream push (see [`Connection::send`]).
pub(super) const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// A partial EDS push up to this size (encoded resources) goes out without
/// waiting for the push throttle or for the proxy to take it: what the
/// throttle bounds is the memory of large responses in flight, and an
/// endpoint change is a few hundred bytes per proxy, whose latency is what
/// the mesh feels.
pub(super) const SMALL_PUSH: usize = 64 * 1024;

/// Protocol state of one subscribed type.
struct TypeState {
    names: Names,
    sent: Option<Sent>,
    acked: Option<String>,
    nack: Option<NackStatus>,
}

/// The last response sent for a type.
struct Sent {
    version: String,
    nonce: String,
    /// Of everything the proxy has of this type.
    digest: Digest,
    /// The clusters (CDS only: make before break needs the old ones); other
    /// types keep no resources, a config dump regenerates them.
    clusters: Option<Arc<Vec<Arc<SharedResource>>>>,
}

/// One proxy on one stream, registered in the status view while it lives.
pub(super) struct Connection {
    inner: Arc<Inner>,
    id: u64,
    proxy: ProxyInfo,
    tx: ResponseTx,
    /// The state every response is generated from.
    current: Arc<Update>,
    types: BTreeMap<String, TypeState>,
    pending: PendingPushes,
    view: Arc<Mutex<View>>,
    first_sync: FirstSync,
}

impl Connection {
    fn new(inner: Arc<Inner>, proxy: ProxyInfo, tx: ResponseTx, current: Arc<Update>) -> Self {
        let id = inner
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let view = inner
            .connections
            .insert(View::new(id, &proxy, current.state.clone(), false));
        inner.metrics.connected().inc();
        info!(
            connection = id,
            scope = current.state.scope_of(&proxy).as_deref().unwrap_or("none"),
            "proxy connected"
        );
        Self {
            inner,
            id,
            proxy,
            tx,
            current,
            types: BTreeMap::new(),
            pending: PendingPushes::default(),
            view,
            first_sync: FirstSync::Waiting,
        }
    }

    /// Whether the proxy has answered (ACK or NACK) every response and
    /// subscribed to LDS: what Envoy does last in its first sync, except
    /// for RDS and SDS, which by then wait for the push throttle only.
    fn synced(&self) -> bool {
        self.types.contains_key(LISTENER)
            && self.types.values().all(|t| match &t.sent {
                None => true,
                Some(sent) => {
                    t.acked.as_ref() == Some(&sent.version)
                        || t.nack.as_ref().is_some_and(|n| n.version == sent.version)
                }
            })
    }

    async fn on_request(&mut self, request: Request) -> Result<(), End> {
        let type_url = request.type_url;
        if type_url.is_empty() {
            return Err(End::Reject(Status::invalid_argument(
                "DiscoveryRequest without type_url",
            )));
        }
        let same = self
            .types
            .get(&type_url)
            .and_then(|state| state.names.same_as(&request.resource_names));
        let names = match same {
            _ if is_wildcard_type(&type_url) => Names::default(),
            // An ACK: usually the same names (no set built).
            Some(names) => names,
            None => self
                .inner
                .names
                .intern(&request.resource_names)
                .map_err(|e| {
                    End::Reject(Status::invalid_argument(format!(
                        "DiscoveryRequest for {type_url}: {e}"
                    )))
                })?,
        };
        let respond = match self.types.get_mut(&type_url) {
            None => {
                debug!(type_url, names = names.len(), "new subscription");
                self.types.insert(
                    type_url.clone(),
                    TypeState {
                        names,
                        sent: None,
                        acked: None,
                        nack: None,
                    },
                );
                true
            }
            Some(state) => {
                let answers_last = state
                    .sent
                    .as_ref()
                    .is_some_and(|s| s.nonce == request.response_nonce);
                if !answers_last {
                    trace!(type_url, nonce = request.response_nonce, "stale nonce");
                } else if let Some(error) = request.error_detail {
                    self.on_nack(&type_url, error.message);
                } else {
                    self.on_ack(&type_url);
                }
                match self.types.get_mut(&type_url) {
                    Some(state) => {
                        let changed = state.names != names;
                        if changed {
                            debug!(type_url, names = names.len(), "subscription changed");
                        }
                        // The same set keeps this request's wire hash.
                        state.names = names;
                        changed
                    }
                    None => false,
                }
            }
        };
        if respond {
            self.first_sync.take_place(&self.inner).await;
            let _permit = self.inner.throttle.clone().acquire_owned().await;
            if let Some(step) = self.generate(&type_url) {
                self.send(step).await?;
                self.drained().await;
            }
        }
        self.publish(&type_url);
        if self.first_sync.is_holding() && self.synced() {
            self.first_sync.end(&self.inner, true);
        }
        Ok(())
    }

    fn on_ack(&mut self, type_url: &str) {
        let Some(state) = self.types.get_mut(type_url) else {
            return;
        };
        let Some(sent) = &state.sent else {
            return;
        };
        trace!(type_url, version = sent.version, "ACK");
        state.acked = Some(sent.version.clone());
        self.pending
            .acked([type_url], self.inner.metrics.convergence());
    }

    fn on_nack(&mut self, type_url: &str, message: String) {
        let Some(state) = self.types.get_mut(type_url) else {
            return;
        };
        let Some(sent) = &state.sent else {
            return;
        };
        warn!(
            proxy = self.proxy.id,
            type_url,
            version = sent.version,
            message,
            "proxy rejected config (NACK); keeping it until the config changes"
        );
        self.inner.metrics.nack(type_url);
        state.nack = Some(NackStatus {
            version: sent.version.clone(),
            message,
        });
        self.pending.rejected(type_url);
    }

    /// Sends what changed for this proxy between the stream's state and
    /// `update`'s, make before break.
    async fn push(&mut self, update: Arc<Update>) -> Result<(), End> {
        let started = Instant::now();
        let (version, current) = (update.state.version(), self.current.state.version());
        if version < current || same_state(&update.state, &self.current.state) {
            trace!(version, current, "update not newer than the stream's state");
            return Ok(());
        }
        let previous = std::mem::replace(&mut self.current, update);
        let changes = self.current.state.changes_since(current).for_proxy(
            &self.proxy,
            &*self.current.state,
            &*previous.state,
        );
        let (changed, small) = match changes {
            Changes::None => (Vec::new(), true),
            Changes::Endpoints(scope) if !scope.affects_whole(&self.proxy) => {
                // From the generation cache: one lookup per changed name.
                let step = self.changed_endpoints(&previous.state, &scope.clusters);
                let small = step.as_ref().is_none_or(|s| {
                    s.resources.iter().map(|r| r.encoded.len()).sum::<usize>() <= SMALL_PUSH
                });
                (step.into_iter().collect(), small)
            }
            // The proxy's own workload moved: its other types may change,
            // but of its assignments only the changed ones can.
            Changes::Endpoints(scope) => (
                self.changed_types(Some((&previous.state, &scope.clusters)))
                    .await,
                false,
            ),
            Changes::Services(_) | Changes::All => (self.changed_types(None).await, false),
        };
        if changed.is_empty() {
            trace!(version, "nothing changed for this proxy");
            self.publish_state();
            return Ok(());
        }
        let _permit = if small {
            None
        } else {
            Some(self.inner.throttle.clone().acquire_owned().await)
        };
        let sent_clusters = self
            .types
            .get(CLUSTER)
            .and_then(|t| t.sent.as_ref())
            .and_then(|s| Some((s.clusters.as_deref()?.as_slice(), s.digest)));
        let steps = make_before_break(changed, sent_clusters);
        let awaiting: BTreeSet<String> = steps.iter().map(|s| s.type_url.clone()).collect();
        let sent: Vec<&str> = steps.iter().map(|s| short_type(&s.type_url)).collect();
        debug!(version, types = ?sent, "pushing");
        for step in steps {
            let type_url = step.type_url.clone();
            self.send(step).await?;
            self.publish(&type_url);
        }
        if !small {
            self.drained().await;
        }
        self.inner
            .metrics
            .push_duration()
            .observe(started.elapsed().as_secs_f64());
        self.pending.record(self.current.changed_at, awaiting);
        Ok(())
    }

    /// Every subscribed type regenerated, those whose content changed; of
    /// EDS only the assignments of the given clusters, when given (an
    /// endpoint change, with the state the proxy's assignments came from).
    async fn changed_types(
        &mut self,
        endpoints: Option<(&SharedState, &BTreeSet<String>)>,
    ) -> Vec<Step> {
        let mut changed = Vec::new();
        for type_url in self.push_order() {
            let permit = self.inner.throttle.clone().acquire_owned().await;
            if let (ENDPOINT, Some((previous, clusters))) = (type_url.as_str(), endpoints) {
                changed.extend(self.changed_endpoints(previous, clusters));
            } else if let Some(step) = self.generate(&type_url) {
                let unchanged = self
                    .types
                    .get(&type_url)
                    .and_then(|t| t.sent.as_ref())
                    .is_some_and(|s| s.digest == step.digest);
                if !unchanged {
                    changed.push(step);
                }
            }
            drop(permit);
            // Generation is CPU work: let other streams run in between.
            tokio::task::yield_now().await;
        }
        changed
    }

    /// The assignments among `clusters` this proxy subscribed to, as one
    /// partial EDS response, if any of them changed for it. `previous` is
    /// the state the proxy's assignments came from.
    fn changed_endpoints(
        &mut self,
        previous: &SharedState,
        clusters: &BTreeSet<String>,
    ) -> Option<Step> {
        let state = self.types.get(ENDPOINT)?;
        let Some(sent) = &state.sent else {
            // Nothing sent yet (its generation failed): try the whole type.
            return self.generate(ENDPOINT);
        };
        let names: BTreeSet<String> = clusters
            .iter()
            .filter(|n| state.names.contains(n))
            .cloned()
            .collect();
        if names.is_empty() {
            return None;
        }
        let sent_digest = sent.digest;
        let new = self.generate_names(ENDPOINT, &names)?;
        let old = previous
            .generate_shared(&self.proxy, ENDPOINT, &names)
            .unwrap_or_default();
        let digest = sent_digest.replace(&old, &new);
        if digest == sent_digest {
            return None;
        }
        let mut step = Step::new(ENDPOINT, new);
        step.digest = digest;
        step.partial = true;
        Some(step)
    }

    /// Subscribed types: those of [`PUSH_ORDER`] in that order, then any
    /// others by type URL.
    fn push_order(&self) -> Vec<String> {
        let known = PUSH_ORDER
            .iter()
            .copied()
            .filter(|t| self.types.contains_key(*t));
        let others = self
            .types
            .keys()
            .map(String::as_str)
            .filter(|t| !PUSH_ORDER.contains(t));
        known.chain(others).map(str::to_string).collect()
    }

    /// Generates a subscribed type from the current state; on error logs
    /// it, counts it, and forgets the subscription if the type is unknown.
    fn generate(&mut self, type_url: &str) -> Option<Step> {
        let names = self.types.get(type_url)?.names.set.clone();
        let resources = self.generate_names(type_url, &names)?;
        Some(Step::new(type_url, resources))
    }

    /// Generates `names` of a type from the current state (errors as in
    /// [`generate`](Self::generate)).
    fn generate_names(
        &mut self,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Option<Vec<Arc<SharedResource>>> {
        let generated = generate_or_log(&self.inner, &self.current, &self.proxy, type_url, names);
        if generated == Err(Generated::UnknownType) {
            self.types.remove(type_url);
        }
        generated.ok()
    }

    async fn send(&mut self, step: Step) -> Result<(), End> {
        let version = version_info(self.current.state.version(), step.digest);
        let nonce = self.inner.nonce();
        let count = step.resources.len();
        let resources = Arc::new(step.resources);
        let response = Response {
            version_info: version.clone(),
            resources: resources.clone(),
            type_url: step.type_url.clone(),
            nonce: nonce.clone(),
            control_plane: CONTROL_PLANE_ID,
        };
        // A proxy that stops reading must not hold up shutdown.
        tokio::select! {
            sent = self.tx.send(Ok(response)) => sent.map_err(|_| End::Gone)?,
            () = self.inner.close.cancelled() => return Err(End::Shutdown),
        }
        self.inner.metrics.response_sent(&step.type_url);
        debug!(
            type_url = step.type_url,
            version,
            nonce,
            resources = count,
            partial = step.partial,
            "sent"
        );
        if let Some(state) = self.types.get_mut(&step.type_url) {
            state.sent = Some(Sent {
                version,
                nonce,
                digest: step.digest,
                clusters: (step.type_url == CLUSTER).then_some(resources),
            });
        }
        Ok(())
    }

    /// Waits (bounded) until the transport has taken every queued response.
    ///
    /// Called while holding a push permit: the responses in flight, each a
    /// copy of what is shared, are then bounded by the push throttle, not
    /// by the number of streams (1,000 sidecars reconnecting at once).
    async fn drained(&self) {
        let _ = tokio::time::timeout(DRAIN_WAIT, self.tx.reserve_many(RESPONSE_BUFFER)).await;
    }

    /// Copies one type's state to the view read by `sync_status`.
    fn publish(&self, type_url: &str) {
        let mut view = lock(&self.view);
        view.state = self.current.state.clone();
        match self.types.get(type_url) {
            Some(state) => {
                view.status.types.insert(
                    type_url.to_string(),
                    TypeSyncStatus {
                        wildcard: is_wildcard_type(type_url),
                        subscribed_names: state.names.len(),
                        last_sent_version: state.sent.as_ref().map(|s| s.version.clone()),
                        last_acked_version: state.acked.clone(),
                        last_nack: state.nack.clone(),
                    },
                );
                if state.sent.is_some() {
                    view.sent
                        .insert(type_url.to_string(), state.names.set.clone());
                }
            }
            None => {
                view.status.types.remove(type_url);
                view.sent.remove(type_url);
            }
        }
    }

    /// Copies the stream's state to the view (a push that sent nothing).
    fn publish_state(&self) {
        lock(&self.view).state = self.current.state.clone();
    }
}

impl Protocol for Connection {
    type Request = Request;
    type Response = Response;

    fn node(request: &Request) -> Option<&Node> {
        request.node.as_ref()
    }

    fn new(inner: Arc<Inner>, proxy: ProxyInfo, tx: ResponseTx, current: Arc<Update>) -> Self {
        Connection::new(inner, proxy, tx, current)
    }

    fn first_sync(&mut self) -> &mut FirstSync {
        &mut self.first_sync
    }

    fn synced(&self) -> bool {
        Connection::synced(self)
    }

    fn on_request(&mut self, request: Request) -> impl Future<Output = Result<(), End>> + Send {
        Connection::on_request(self, request)
    }

    fn push(&mut self, update: Arc<Update>) -> impl Future<Output = Result<(), End>> + Send {
        Connection::push(self, update)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.inner.connections.remove(self.id);
        self.inner.metrics.connected().dec();
        info!(connection = self.id, "proxy disconnected");
    }
}

/// Why [`generate_or_log`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Generated {
    /// The generator does not know the type: the stream forgets the subscription.
    UnknownType,
    /// Any other error (logged and counted).
    Failed,
}

/// Generates `names` of a type for `proxy` from `current` (both protocols);
/// an error is logged and counted in the push-error metric.
pub(super) fn generate_or_log(
    inner: &Inner,
    current: &Update,
    proxy: &ProxyInfo,
    type_url: &str,
    names: &BTreeSet<String>,
) -> Result<Vec<Arc<SharedResource>>, Generated> {
    current
        .state
        .generate_shared(proxy, type_url, names)
        .map_err(|error| {
            inner.metrics.push_error(type_url);
            warn!(type_url, %error, "cannot generate resources; nothing sent for this type");
            if matches!(error, GenerateError::UnknownType(_)) {
                Generated::UnknownType
            } else {
                Generated::Failed
            }
        })
}
