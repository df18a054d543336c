//! The client side of state-of-the-world ADS, without I/O: what to request,
//! whether a response is accepted, and when the config is consistent enough
//! to publish.
//!
//! - A stream starts with CDS and LDS (wildcard), then EDS, RDS and SDS for
//!   the names the last good config references; the first request carries
//!   the node, every request the type's last accepted `version_info`.
//! - A response is decoded and validated whole. Accepted: applied, the
//!   named subscriptions it changes are requested (before the ACK, as Envoy
//!   does, so the server sees the new names first), then it is ACKed with
//!   its version and nonce. Rejected: NACKed with the previous version, the
//!   response's nonce and `error_detail`; the config does not change.
//! - A named resource (EDS, RDS, SDS) never requested on the stream is an
//!   error; one requested earlier but since dropped answers an old
//!   subscription and is ignored.
//! - Warming: nothing is published until CDS and LDS arrived and every
//!   route, endpoint and subscribed secret they reference is in (or the
//!   caller gives up waiting, see [`State::force_sync`]). After that every
//!   accepted response is published.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use tracing::{debug, warn};

use crate::config::{ConfigError, Missing, ProxyConfig, ResourceType, Resources};

/// Subscription and stream state of one type.
#[derive(Debug, Default)]
struct TypeState {
    /// Names subscribed to (named types only).
    names: BTreeSet<String>,
    /// Every name requested on the current stream.
    requested: BTreeSet<String>,
    /// Nonce of the last response on the current stream.
    nonce: String,
}

/// What handling one response produced.
#[derive(Debug)]
pub(super) struct Handled {
    /// Requests to send, in order.
    pub(super) requests: Vec<DiscoveryRequest>,
    /// What happened to the response.
    pub(super) outcome: Outcome,
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

    /// The requests that open a new stream: every type with something to
    /// subscribe to, CDS and LDS always.
    pub(super) fn start_stream(&mut self) -> Vec<DiscoveryRequest> {
        self.node_sent = false;
        for t in &mut self.types {
            t.nonce.clear();
            t.requested = t.names.clone();
        }
        let types: Vec<ResourceType> = ResourceType::ALL
            .into_iter()
            .filter(|t| t.is_wildcard() || !self.state(*t).names.is_empty())
            .collect();
        types.into_iter().map(|t| self.request(t, None)).collect()
    }

    /// Handles one response: applies or rejects it and says what to send.
    pub(super) fn on_response(&mut self, response: DiscoveryResponse) -> Handled {
        let Some(t) = ResourceType::from_type_url(&response.type_url) else {
            warn!(
                type_url = response.type_url,
                "ignoring a response of a type the proxy does not subscribe to"
            );
            return Handled {
                requests: Vec::new(),
                outcome: Outcome::Ignored,
            };
        };
        self.state_mut(t).nonce = response.nonce.clone();
        match self.accept(t, &response) {
            Ok(mut requests) => {
                requests.push(self.request(t, None));
                let publish = self.synced || self.try_sync();
                Handled {
                    requests,
                    outcome: Outcome::Accepted { publish },
                }
            }
            Err(error) => Handled {
                requests: vec![self.request(t, Some(&error))],
                outcome: Outcome::Rejected(error),
            },
        }
    }

    /// Decodes, checks and applies a response; returns the subscription
    /// requests it causes.
    fn accept(
        &mut self,
        t: ResourceType,
        response: &DiscoveryResponse,
    ) -> Result<Vec<DiscoveryRequest>, ConfigError> {
        let mut resources = Resources::decode(t, &response.resources)?;
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
        debug!(
            type_url = t.type_url(),
            version = response.version_info,
            resources = response.resources.len(),
            "accepted"
        );
        self.config.apply(resources, response.version_info.clone());
        let routes = self.config.route_names();
        let endpoints = self.config.endpoint_names();
        let secrets = self.wanted_secrets();
        self.config.retain(&routes, &endpoints, &secrets);
        let mut requests = Vec::new();
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
                requests.push(self.request(dep, None));
            }
        }
        Ok(requests)
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

    /// A request for `t`: an ACK (or NACK with `error`) of the last response,
    /// or a new subscription.
    fn request(&mut self, t: ResourceType, error: Option<&ConfigError>) -> DiscoveryRequest {
        let node = (!self.node_sent).then(|| self.node.clone());
        self.node_sent = true;
        let state = self.state(t);
        DiscoveryRequest {
            version_info: self.config.version(t).unwrap_or_default().to_string(),
            node,
            resource_names: if t.is_wildcard() {
                Vec::new()
            } else {
                state.names.iter().cloned().collect()
            },
            type_url: t.type_url().to_string(),
            response_nonce: state.nonce.clone(),
            error_detail: error.map(|e| Status {
                code: tonic::Code::InvalidArgument as i32,
                message: e.to_string(),
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        }
    }

    fn state(&self, t: ResourceType) -> &TypeState {
        &self.types[t as usize]
    }

    fn state_mut(&mut self, t: ResourceType) -> &mut TypeState {
        &mut self.types[t as usize]
    }
}
