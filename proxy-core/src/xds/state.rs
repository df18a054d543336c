//! The client side of ADS without I/O and without the wire format: what the
//! proxy subscribes to, whether an update is accepted, and when the config
//! is consistent enough to publish. `sotw` and `delta` turn this into
//! requests and read responses of their protocol.
//!
//! - A stream starts with CDS and LDS (wildcard), then EDS, RDS and SDS for
//!   the names the last good config references.
//! - An update is decoded and validated whole (by the protocol module).
//!   Accepted: applied, and the named subscriptions it changes are
//!   requested (before the ACK, as Envoy does, so the server sees the new
//!   names first). Rejected: NACKed; the config does not change.
//! - A named resource (EDS, RDS, SDS) never requested on the stream is an
//!   error; one requested earlier but since dropped answers an old
//!   subscription and is ignored.
//! - Warming: nothing is published until CDS and LDS arrived and every
//!   route, endpoint and subscribed secret they reference is in (or the
//!   caller gives up waiting, see [`State::force_sync`]). After that every
//!   accepted update is published.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status;
use tracing::debug;

use crate::config::{ConfigError, Missing, ProxyConfig, ResourceType, Resources};

/// Subscription state of one type.
#[derive(Debug, Default)]
struct TypeState {
    /// Names subscribed to (named types only).
    names: BTreeSet<String>,
    /// Every name requested on the current stream.
    requested: BTreeSet<String>,
}

/// What handling one response produced, in a protocol's request type.
#[derive(Debug)]
pub(super) struct Handled<R> {
    /// Requests to send, in order.
    pub(super) requests: Vec<R>,
    /// What happened to the response.
    pub(super) outcome: Outcome,
}

impl<R> Handled<R> {
    /// A response of a type this client does not subscribe to.
    pub(super) fn ignored() -> Self {
        Self {
            requests: Vec::new(),
            outcome: Outcome::Ignored,
        }
    }
}

/// The fate of one response.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Applied; `publish` when the config should be published now.
    Accepted { publish: bool },
    /// NACKed; the config did not change.
    Rejected(ConfigError),
    /// Not a type this client subscribes to.
    Ignored,
}

/// The resources of one response, as its protocol means them.
#[derive(Debug)]
pub(super) enum Update {
    /// State of the world: for wildcard types the complete set, for named
    /// types the subscribed resources that changed.
    Whole(Resources),
    /// Incremental: resources added or changed, and names removed.
    Incremental {
        resources: Resources,
        removed: Vec<String>,
    },
}

/// An accepted update: whether to publish, and the named types whose
/// subscriptions it changed (to request, in order, before the ACK).
#[derive(Debug)]
pub(super) struct Accepted {
    pub(super) publish: bool,
    pub(super) resubscribe: Vec<ResourceType>,
}

/// The xDS protocol state of one client, across streams.
#[derive(Debug)]
pub(super) struct State {
    node: Node,
    extra_secrets: BTreeSet<String>,
    local_secrets: BTreeSet<String>,
    /// The newest accepted config; incomplete before the first sync.
    config: ProxyConfig,
    /// Indexed by `ResourceType as usize`.
    types: [TypeState; 5],
    node_sent: bool,
    synced: bool,
}

impl State {
    pub(super) fn new(
        node: Node,
        extra_secrets: BTreeSet<String>,
        local_secrets: BTreeSet<String>,
    ) -> Self {
        let mut state = Self {
            node,
            extra_secrets,
            local_secrets,
            config: ProxyConfig::default(),
            types: Default::default(),
            node_sent: false,
            synced: false,
        };
        // Before any config, only the caller's extra secrets.
        state.state_mut(ResourceType::Secret).names = state.wanted_secrets();
        state
    }

    /// The newest accepted config.
    pub(super) fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Whether the first complete config was published.
    pub(super) fn is_synced(&self) -> bool {
        self.synced
    }

    /// Whether both wildcard types arrived (the warming clock runs from then).
    pub(super) fn has_wildcards(&self) -> bool {
        [ResourceType::Cluster, ResourceType::Listener]
            .iter()
            .all(|t| self.config.versions.contains_key(t))
    }

    /// What the config still lacks to be consistent.
    pub(super) fn missing(&self) -> Missing {
        self.config.missing(&self.state(ResourceType::Secret).names)
    }

    /// Declares the first sync done with what is there (the initial fetch
    /// timeout passed); returns what was still missing.
    pub(super) fn force_sync(&mut self) -> Missing {
        self.synced = true;
        self.missing()
    }

    /// Starts a new stream: every subscribed name counts as requested
    /// again, the node goes with the next request. Returns the types to
    /// subscribe to, in order: every type with something to subscribe to,
    /// CDS and LDS always.
    pub(super) fn start_stream(&mut self) -> Vec<ResourceType> {
        self.node_sent = false;
        for t in &mut self.types {
            t.requested = t.names.clone();
        }
        ResourceType::ALL
            .into_iter()
            .filter(|t| t.is_wildcard() || !self.state(*t).names.is_empty())
            .collect()
    }

    /// The node, for the first request of a stream only.
    pub(super) fn node_once(&mut self) -> Option<Node> {
        let node = (!self.node_sent).then(|| self.node.clone());
        self.node_sent = true;
        node
    }

    /// The names subscribed to for a named type (empty for wildcards).
    pub(super) fn names(&self, t: ResourceType) -> &BTreeSet<String> {
        &self.state(t).names
    }

    /// Checks and applies an update of type `t` with the response's
    /// `version`; says whether to publish and which subscriptions changed.
    pub(super) fn apply(
        &mut self,
        t: ResourceType,
        update: Update,
        version: String,
    ) -> Result<Accepted, ConfigError> {
        let (mut resources, removed) = match update {
            Update::Whole(resources) => (resources, None),
            Update::Incremental { resources, removed } => (resources, Some(removed)),
        };
        if !t.is_wildcard() {
            let state = self.state(t);
            if let Some(name) = resources
                .names()
                .into_iter()
                .find(|n| !state.requested.contains(n))
            {
                return Err(ConfigError::NotSubscribed { kind: t, name });
            }
            resources.retain(|n| state.names.contains(n));
        }
        debug!(type_url = t.type_url(), version, "accepted");
        match removed {
            None => self.config.apply(resources, version),
            Some(removed) => self.config.apply_incremental(resources, &removed, version),
        }
        let routes = self.config.route_names();
        let endpoints = self.config.endpoint_names();
        let secrets = self.wanted_secrets();
        self.config.retain(&routes, &endpoints, &secrets);
        let mut resubscribe = Vec::new();
        for (dep, names) in [
            (ResourceType::Endpoint, endpoints),
            (ResourceType::Route, routes),
            (ResourceType::Secret, secrets),
        ] {
            let state = self.state_mut(dep);
            if state.names != names {
                debug!(
                    type_url = dep.type_url(),
                    names = names.len(),
                    "subscription changed"
                );
                state.requested.extend(names.iter().cloned());
                state.names = names;
                resubscribe.push(dep);
            }
        }
        let publish = self.synced || self.try_sync();
        Ok(Accepted {
            publish,
            resubscribe,
        })
    }

    /// Marks the first sync done when nothing is missing.
    fn try_sync(&mut self) -> bool {
        let missing = self.missing();
        if missing.is_empty() {
            self.synced = true;
        } else {
            debug!(%missing, "warming");
        }
        self.synced
    }

    /// Secrets to subscribe to: those the config references and the
    /// caller's extra ones, without those the proxy provides itself.
    fn wanted_secrets(&self) -> BTreeSet<String> {
        let mut names = self.config.secret_names();
        names.extend(self.extra_secrets.iter().cloned());
        names.retain(|n| !self.local_secrets.contains(n));
        names
    }

    fn state(&self, t: ResourceType) -> &TypeState {
        &self.types[t as usize]
    }

    fn state_mut(&mut self, t: ResourceType) -> &mut TypeState {
        &mut self.types[t as usize]
    }
}

/// The `error_detail` of a NACK.
pub(super) fn error_detail(error: &ConfigError) -> Status {
    Status {
        code: tonic::Code::InvalidArgument as i32,
        message: error.to_string(),
        details: Vec::new(),
    }
}
