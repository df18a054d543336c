//! The protocol state of one incremental stream: per type, the
//! subscription (wildcard and/or names), what the proxy has
//! ([`Known`]), the responses it has not answered yet, and what it
//! rejected; published to the server's status view after every change.
//!
//! A push asks the new state what changed (as on state-of-the-world
//! streams): for an endpoint-only change only the changed assignments the
//! proxy subscribed to are compared with what it has; otherwise every
//! subscribed type is regenerated and compared resource by resource. Only
//! resources whose content differs from what the proxy has travel, and
//! names it holds that are gone travel as `removed_resources`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, trace, warn};

use super::known::{Delta, Known, Rejected, diff_all, diff_names};
use super::wire::Response;
use crate::xds::server::connection::{
    CONTROL_PLANE_ID, DRAIN_WAIT, Generated, SMALL_PUSH, generate_or_log,
};
use crate::xds::server::debounce::{Update, same_state};
use crate::xds::server::first_sync::FirstSync;
use crate::xds::server::metrics::short_type;
use crate::xds::server::names::Names;
use crate::xds::server::pending::PendingPushes;
use crate::xds::server::push::version_info;
use crate::xds::server::status::{NackStatus, TypeSyncStatus, View};
use crate::xds::server::stream::{End, Protocol, ResponseTx};
use crate::xds::server::{Inner, RESPONSE_BUFFER, lock};
use crate::xds::{
    Changes, ENDPOINT, LISTENER, PUSH_ORDER, ProxyInfo, SharedResource, is_wildcard_type,
};

/// The wildcard resource name.
const WILDCARD: &str = "*";
/// Unanswered responses kept per type (for a NACK to take back); older
/// ones count as accepted.
const MAX_IN_FLIGHT: usize = 64;

/// Protocol state of one subscribed type.
#[derive(Default)]
struct TypeState {
    wildcard: bool,
    /// Explicitly subscribed names.
    names: Names,
    known: Known,
    rejected: Rejected,
    in_flight: VecDeque<InFlight>,
    sent_version: Option<String>,
    acked: Option<String>,
    nack: Option<NackStatus>,
}

impl TypeState {
    /// Whether `name` is in the subscription.
    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// A response the proxy has not answered yet.
struct InFlight {
    nonce: String,
    version: String,
    upserts: Arc<Vec<Arc<SharedResource>>>,
    /// What the proxy had of each upsert before (same order).
    before: Vec<Option<Arc<SharedResource>>>,
    /// Removed names and what the proxy had of each.
    removed: Vec<(String, Option<Arc<SharedResource>>)>,
}

impl InFlight {
    fn touches(&self) -> impl Iterator<Item = &str> {
        self.upserts
            .iter()
            .map(|r| r.name.as_str())
            .chain(self.removed.iter().map(|(n, _)| n.as_str()))
    }
}

/// What a request asks to be answered with.
enum Scope {
    /// The whole subscription: the type's first request (always answered,
    /// even with nothing), or a wildcard subscription added later.
    All { first: bool },
    /// Names (re)subscribed: each is sent, or announced absent.
    Names(Vec<String>),
}

/// One response to send.
struct Step {
    type_url: String,
    delta: Delta,
}

/// One proxy on one incremental stream.
pub(in crate::xds::server) struct Connection {
    inner: Arc<Inner>,
    id: u64,
    proxy: ProxyInfo,
    tx: ResponseTx<Response>,
    /// The state every response is generated from.
    current: Arc<Update>,
    types: BTreeMap<String, TypeState>,
    pending: PendingPushes,
    view: Arc<Mutex<View>>,
    first_sync: FirstSync,
}

impl Connection {
    /// Whether the proxy has answered every response and subscribed to LDS.
    fn is_synced(&self) -> bool {
        self.types.contains_key(LISTENER) && self.types.values().all(|t| t.in_flight.is_empty())
    }

    async fn on_request(&mut self, mut request: DeltaDiscoveryRequest) -> Result<(), End> {
        let type_url = request.type_url.clone();
        if type_url.is_empty() {
            return Err(End::Reject(Status::invalid_argument(
                "DeltaDiscoveryRequest without type_url",
            )));
        }
        if !request.response_nonce.is_empty() {
            self.on_answer(
                &type_url,
                &request.response_nonce,
                request.error_detail.take(),
            );
        }
        // Subscription changes count whatever the nonce.
        if let Some(scope) = self.subscribe(&type_url, &mut request) {
            self.first_sync.take_place(&self.inner).await;
            let _permit = self.inner.throttle.clone().acquire_owned().await;
            if let Some(step) = self.answer(&type_url, scope) {
                self.send(step).await?;
                self.drained().await;
            }
        }
        self.publish(&type_url);
        if self.first_sync.is_holding() && self.is_synced() {
            self.first_sync.end(&self.inner, true);
        }
        Ok(())
    }

    /// Applies a request's subscription changes; returns what to answer.
    fn subscribe(&mut self, type_url: &str, request: &mut DeltaDiscoveryRequest) -> Option<Scope> {
        let wildcard_type = is_wildcard_type(type_url);
        let first = !self.types.contains_key(type_url);
        let state = self.types.entry(type_url.to_string()).or_default();
        let star = request
            .resource_names_subscribe
            .iter()
            .any(|n| n == WILDCARD);
        let legacy_wildcard = first
            && request.resource_names_subscribe.is_empty()
            && request.resource_names_unsubscribe.is_empty();
        let mut wildcard_added = false;
        let mut wildcard_dropped = false;
        if wildcard_type && (star || legacy_wildcard) && !state.wildcard {
            state.wildcard = true;
            wildcard_added = !first;
        } else if star && !wildcard_type {
            debug!(
                type_url,
                "wildcard subscription ignored: served for LDS and CDS only"
            );
        }
        if first {
            for (name, version) in &request.initial_resource_versions {
                state.known.claim(name, version);
            }
        }
        let mut subscribed = Vec::new();
        let mut added = Vec::new();
        for name in std::mem::take(&mut request.resource_names_subscribe) {
            if name == WILDCARD {
                continue;
            }
            // A proxy that subscribes again may have forgotten the resource;
            // only a version it states (on reconnect) spares the resend.
            if !(first && request.initial_resource_versions.contains_key(&name)) {
                state.known.forget(&name);
            }
            state.rejected.remove(&name);
            if !first {
                subscribed.push(name.clone());
            }
            if !state.names.contains(&name) {
                added.push(name);
            }
        }
        let mut dropped = Vec::new();
        for name in std::mem::take(&mut request.resource_names_unsubscribe) {
            if name == WILDCARD {
                wildcard_dropped = state.wildcard;
                state.wildcard = false;
                continue;
            }
            if !state.wildcard {
                state.known.forget(&name);
            }
            state.rejected.remove(&name);
            dropped.push(name);
        }
        if !added.is_empty() || dropped.iter().any(|n| state.names.contains(n)) {
            let mut names: BTreeSet<String> = if state.names.len() == 0 {
                // Built in bulk (a first subscription names everything).
                added.into_iter().collect()
            } else {
                let mut names = (*state.names.set).clone();
                names.extend(added);
                names
            };
            for name in &dropped {
                names.remove(name);
            }
            debug!(type_url, names = names.len(), "subscription changed");
            state.names = self.inner.names.intern_set(names);
        }
        if !state.wildcard && (first || wildcard_dropped) {
            // Names the proxy holds but does not ask for are its own business.
            let dropped: Vec<String> = state
                .known
                .names()
                .filter(|n| !state.names.contains(n))
                .map(str::to_string)
                .collect();
            for name in dropped {
                state.known.forget(&name);
            }
        }
        if first || wildcard_added {
            Some(Scope::All { first })
        } else if subscribed.is_empty() {
            None
        } else {
            Some(Scope::Names(subscribed))
        }
    }

    /// The response to a subscription change, if it has anything to say.
    fn answer(&mut self, type_url: &str, scope: Scope) -> Option<Step> {
        let (delta, first) = match scope {
            Scope::All { first } => {
                let want = self.want(type_url, None)?;
                let state = self.types.get(type_url)?;
                let mut delta = diff_all(&state.known, &state.rejected, &want);
                if !state.wildcard {
                    // Every subscribed name that does not exist is said so.
                    let absent = diff_names(
                        &state.known,
                        &state.rejected,
                        state.names.set.iter(),
                        &want,
                        true,
                    );
                    delta.removed.extend(absent.removed);
                    delta.removed.sort();
                    delta.removed.dedup();
                }
                (delta, first)
            }
            Scope::Names(names) => {
                let set: BTreeSet<String> = names.iter().cloned().collect();
                let want = self.want(type_url, Some(&set))?;
                let state = self.types.get(type_url)?;
                let delta = diff_names(&state.known, &state.rejected, &set, &want, true);
                (delta, false)
            }
        };
        if delta.is_empty() && !first {
            return None;
        }
        Some(Step {
            type_url: type_url.to_string(),
            delta,
        })
    }

    /// The subscribed resources of a type from the current state (only
    /// `names` of them when given), sorted by name.
    fn want(
        &mut self,
        type_url: &str,
        names: Option<&BTreeSet<String>>,
    ) -> Option<Vec<Arc<SharedResource>>> {
        let state = self.types.get(type_url)?;
        let subscription = state.names.set.clone();
        let wildcard = state.wildcard;
        let everything = BTreeSet::new();
        let ask = match names {
            _ if is_wildcard_type(type_url) => &everything,
            Some(names) => names,
            None => &*subscription,
        };
        let mut resources = self.generate(type_url, ask)?;
        if is_wildcard_type(type_url) {
            resources.retain(|r| match names {
                Some(names) => names.contains(&r.name),
                None => wildcard || subscription.contains(&r.name),
            });
        }
        if !resources.is_sorted_by(|a, b| a.name <= b.name) {
            resources.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Some(resources)
    }

    /// Generates `names` of a type (every resource for LDS and CDS); on
    /// error logs it, counts it, and forgets the subscription if the type
    /// is unknown.
    fn generate(
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

    /// An ACK or NACK of the response with `nonce`; responses before it
    /// that were not answered count as accepted.
    fn on_answer(&mut self, type_url: &str, nonce: &str, error: Option<RpcStatus>) {
        let Some(state) = self.types.get_mut(type_url) else {
            return;
        };
        let Some(at) = state.in_flight.iter().position(|f| f.nonce == nonce) else {
            trace!(type_url, nonce, "stale or unknown nonce");
            return;
        };
        let mut answered: Vec<InFlight> = state.in_flight.drain(..=at).collect();
        let Some(last) = answered.pop() else {
            return;
        };
        let mut accepted: Vec<String> = answered.into_iter().map(|f| f.nonce).collect();
        match error {
            None => {
                trace!(type_url, version = last.version, "ACK");
                state.acked = Some(last.version);
                accepted.push(last.nonce);
            }
            Some(error) => {
                warn!(
                    proxy = self.proxy.id,
                    type_url,
                    version = last.version,
                    message = error.message,
                    "proxy rejected config (NACK); keeping it until the config changes"
                );
                self.inner.metrics.nack(type_url);
                // Names a later response changed again are that response's.
                let later: BTreeSet<&str> =
                    state.in_flight.iter().flat_map(InFlight::touches).collect();
                for (r, before) in last.upserts.iter().zip(last.before) {
                    if !later.contains(r.name.as_str()) {
                        state.known.set(&r.name, before);
                        state.rejected.insert(r.name.clone(), r.hash);
                    }
                }
                for (name, before) in last.removed {
                    if !later.contains(name.as_str()) {
                        state.known.set(&name, before);
                    }
                }
                state.nack = Some(NackStatus {
                    version: last.version,
                    message: error.message,
                });
                self.pending.rejected(&last.nonce);
            }
        }
        self.pending.acked(
            accepted.iter().map(String::as_str),
            self.inner.metrics.convergence(),
        );
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
        let changes = update.state.changes_since(current).for_proxy(
            &self.proxy,
            &*update.state,
            &*self.current.state,
        );
        self.current = update;
        let (steps, small) = match changes {
            Changes::None => (Vec::new(), true),
            Changes::Endpoints(scope) if !scope.affects_whole(&self.proxy) => {
                let step = self.changed_endpoints(&scope.clusters);
                let small = step.as_ref().is_none_or(|s| {
                    s.delta
                        .upserts
                        .iter()
                        .map(|r| r.encoded.len())
                        .sum::<usize>()
                        <= SMALL_PUSH
                });
                (step.into_iter().collect(), small)
            }
            // The proxy's own workload moved: its other types may change,
            // but of its assignments only the changed ones can.
            Changes::Endpoints(scope) => (self.changed_types(Some(&scope.clusters)).await, false),
            Changes::Services(_) | Changes::All => (self.changed_types(None).await, false),
        };
        if steps.is_empty() {
            trace!(version, "nothing changed for this proxy");
            lock(&self.view).state = self.current.state.clone();
            return Ok(());
        }
        let _permit = if small {
            None
        } else {
            Some(self.inner.throttle.clone().acquire_owned().await)
        };
        let steps = make_before_break(steps);
        let types: Vec<&str> = steps.iter().map(|s| short_type(&s.type_url)).collect();
        debug!(version, ?types, "pushing");
        let mut awaiting = BTreeSet::new();
        for step in steps {
            let type_url = step.type_url.clone();
            awaiting.insert(self.send(step).await?);
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

    /// The changed assignments among `clusters` that the proxy subscribed to.
    fn changed_endpoints(&mut self, clusters: &BTreeSet<String>) -> Option<Step> {
        let state = self.types.get(ENDPOINT)?;
        let names: BTreeSet<String> = clusters
            .iter()
            .filter(|n| state.subscribed(n))
            .cloned()
            .collect();
        if names.is_empty() {
            return None;
        }
        let want = self.want(ENDPOINT, Some(&names))?;
        let state = self.types.get(ENDPOINT)?;
        let delta = diff_names(&state.known, &state.rejected, &names, &want, false);
        (!delta.is_empty()).then(|| Step {
            type_url: ENDPOINT.to_string(),
            delta,
        })
    }

    /// Every subscribed type regenerated and compared with what the proxy
    /// has; of EDS only the assignments of `endpoints`, when given (an
    /// endpoint change).
    async fn changed_types(&mut self, endpoints: Option<&BTreeSet<String>>) -> Vec<Step> {
        let mut steps = Vec::new();
        for type_url in self.push_order() {
            let permit = self.inner.throttle.clone().acquire_owned().await;
            if let (ENDPOINT, Some(clusters)) = (type_url.as_str(), endpoints) {
                steps.extend(self.changed_endpoints(clusters));
            } else if let Some(want) = self.want(&type_url, None)
                && let Some(state) = self.types.get(&type_url)
            {
                let delta = diff_all(&state.known, &state.rejected, &want);
                if !delta.is_empty() {
                    steps.push(Step { type_url, delta });
                }
            }
            drop(permit);
            // Generation is CPU work: let other streams run in between.
            tokio::task::yield_now().await;
        }
        steps
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

    /// Sends one response and records it as what the proxy has; returns
    /// its nonce.
    async fn send(&mut self, step: Step) -> Result<String, End> {
        let state_version = self.current.state.version();
        let nonce = self.inner.nonce();
        let Some(state) = self.types.get_mut(&step.type_url) else {
            return Ok(nonce);
        };
        let Delta { upserts, removed } = step.delta;
        let before: Vec<_> = upserts
            .iter()
            .map(|r| {
                state.rejected.remove(&r.name);
                state.known.set(&r.name, Some(r.clone()))
            })
            .collect();
        let removed: Vec<(String, Option<Arc<SharedResource>>)> = removed
            .into_iter()
            .map(|name| {
                state.rejected.remove(&name);
                let before = state.known.set(&name, None);
                (name, before)
            })
            .collect();
        let version = version_info(state_version, state.known.digest());
        let upserts = Arc::new(upserts);
        let response = Response {
            system_version_info: version.clone(),
            resources: upserts.clone(),
            type_url: step.type_url.clone(),
            removed: removed.iter().map(|(n, _)| n.clone()).collect(),
            nonce: nonce.clone(),
            control_plane: CONTROL_PLANE_ID,
        };
        debug!(
            type_url = step.type_url,
            version,
            nonce,
            resources = upserts.len(),
            removed = removed.len(),
            "sent"
        );
        if state.in_flight.len() == MAX_IN_FLIGHT {
            state.in_flight.pop_front();
        }
        state.in_flight.push_back(InFlight {
            nonce: nonce.clone(),
            version: version.clone(),
            upserts,
            before,
            removed,
        });
        state.sent_version = Some(version);
        // A proxy that stops reading must not hold up shutdown.
        tokio::select! {
            sent = self.tx.send(Ok(response)) => sent.map_err(|_| End::Gone)?,
            () = self.inner.close.cancelled() => return Err(End::Shutdown),
        }
        self.inner.metrics.response_sent(&step.type_url);
        Ok(nonce)
    }

    /// Waits (bounded) until the transport has taken every queued response
    /// (see the state-of-the-world connection).
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
                        wildcard: state.wildcard,
                        subscribed_names: state.names.len(),
                        last_sent_version: state.sent_version.clone(),
                        last_acked_version: state.acked.clone(),
                        last_nack: state.nack.clone(),
                    },
                );
                if state.sent_version.is_some() {
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
}

/// Orders one push's responses (given in push order): when several types
/// change, every addition and change goes first, in push order, and the
/// removals after them, so nothing points at a removed resource in between.
fn make_before_break(steps: Vec<Step>) -> Vec<Step> {
    if steps.len() < 2 {
        return steps;
    }
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    for step in steps {
        let Delta {
            upserts: up,
            removed,
        } = step.delta;
        if !up.is_empty() {
            upserts.push(Step {
                type_url: step.type_url.clone(),
                delta: Delta {
                    upserts: up,
                    removed: Vec::new(),
                },
            });
        }
        if !removed.is_empty() {
            removals.push(Step {
                type_url: step.type_url,
                delta: Delta {
                    upserts: Vec::new(),
                    removed,
                },
            });
        }
    }
    upserts.extend(removals);
    upserts
}

impl Protocol for Connection {
    type Request = DeltaDiscoveryRequest;
    type Response = Response;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn new(
        inner: Arc<Inner>,
        proxy: ProxyInfo,
        tx: ResponseTx<Response>,
        current: Arc<Update>,
    ) -> Self {
        let id = inner
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let view = inner
            .connections
            .insert(View::new(id, &proxy, current.state.clone(), true));
        inner.metrics.connected().inc();
        info!(
            connection = id,
            scope = current.state.scope_of(&proxy).as_deref().unwrap_or("none"),
            "proxy connected (incremental)"
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

    fn first_sync(&mut self) -> &mut FirstSync {
        &mut self.first_sync
    }

    fn synced(&self) -> bool {
        self.is_synced()
    }

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
    ) -> impl Future<Output = Result<(), End>> + Send {
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
