//! Incremental ADS (`DeltaAggregatedResources`) on top of [`State`].
//!
//! - A stream opens one request per type: CDS and LDS as wildcards (no
//!   names on the first request), named types with every subscribed name;
//!   each with `initial_resource_versions`, the version of every resource
//!   the proxy holds, so a reconnect to a control plane that still has them
//!   sends nothing again.
//! - A response carries the resources added or changed (name, version,
//!   body) and `removed_resources`; the proxy merges them into what it
//!   holds. A body-less resource (a TTL heartbeat) is fine for one the
//!   proxy holds and an error otherwise.
//! - Subscription changes travel as differences
//!   (`resource_names_subscribe` / `_unsubscribe`) against what the stream
//!   was told before.
//! - An ACK is the type URL and the response's nonce; a NACK adds
//!   `error_detail`.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tracing::warn;

use super::state::{Accepted, Handled, Outcome, State, Update, error_detail};
use crate::config::{ConfigError, ResourceType, Resources};

/// The protocol's state; `Default` before the first stream.
#[derive(Debug, Default)]
pub(super) struct Delta {
    /// Names the current stream was told, per type (`ResourceType as usize`).
    sent: [BTreeSet<String>; 5],
    /// The version of every resource the proxy holds, per type; kept across
    /// streams for `initial_resource_versions`.
    versions: [BTreeMap<String, String>; 5],
}

impl Delta {
    /// The requests that open a new stream.
    pub(super) fn start(&mut self, state: &mut State) -> Vec<DeltaDiscoveryRequest> {
        self.sent = Default::default();
        state
            .start_stream()
            .into_iter()
            .map(|t| {
                self.prune(state, t);
                let names = state.names(t).clone();
                let request = DeltaDiscoveryRequest {
                    node: state.node_once(),
                    type_url: t.type_url().to_string(),
                    resource_names_subscribe: names.iter().cloned().collect(),
                    initial_resource_versions: self.versions[t as usize]
                        .iter()
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect(),
                    ..DeltaDiscoveryRequest::default()
                };
                self.sent[t as usize] = names;
                request
            })
            .collect()
    }

    /// Handles one response: applies or rejects it and says what to send.
    pub(super) fn on_response(
        &mut self,
        state: &mut State,
        response: DeltaDiscoveryResponse,
    ) -> Handled<DeltaDiscoveryRequest> {
        let Some(t) = ResourceType::from_type_url(&response.type_url) else {
            warn!(
                type_url = response.type_url,
                "ignoring a response of a type the proxy does not subscribe to"
            );
            return Handled::ignored();
        };
        match self.apply(state, t, &response) {
            Ok(accepted) => {
                let mut requests: Vec<DeltaDiscoveryRequest> = accepted
                    .resubscribe
                    .iter()
                    .filter_map(|dep| self.resubscribe(state, *dep))
                    .collect();
                requests.push(answer(state, t, response.nonce, None));
                Handled {
                    requests,
                    outcome: Outcome::Accepted {
                        publish: accepted.publish,
                    },
                }
            }
            Err(error) => Handled {
                requests: vec![answer(state, t, response.nonce, Some(&error))],
                outcome: Outcome::Rejected(error),
            },
        }
    }

    fn apply(
        &mut self,
        state: &mut State,
        t: ResourceType,
        response: &DeltaDiscoveryResponse,
    ) -> Result<Accepted, ConfigError> {
        let mut bodies = Vec::with_capacity(response.resources.len());
        for (index, r) in response.resources.iter().enumerate() {
            match &r.resource {
                Some(any) => bodies.push((index, r.name.as_str(), any)),
                None if state.config().contains(t, &r.name) => {}
                None => {
                    return Err(ConfigError::Invalid {
                        kind: t,
                        name: r.name.clone(),
                        reason: format!(
                            "resources[{index}] has no body, and the proxy does not hold it"
                        ),
                    });
                }
            }
        }
        let resources = Resources::decode_named(t, bodies)?;
        let update = Update::Incremental {
            resources,
            removed: response.removed_resources.clone(),
        };
        let accepted = state.apply(t, update, response.system_version_info.clone())?;
        let versions = &mut self.versions[t as usize];
        for name in &response.removed_resources {
            versions.remove(name);
        }
        for r in &response.resources {
            // Resources of a dropped subscription were not kept.
            if r.resource.is_some() && state.config().contains(t, &r.name) {
                versions.insert(r.name.clone(), r.version.clone());
            }
        }
        for dep in &accepted.resubscribe {
            self.prune(state, *dep);
        }
        Ok(accepted)
    }

    /// Tells the stream how a named type's subscription changed, if it did.
    fn resubscribe(&mut self, state: &mut State, t: ResourceType) -> Option<DeltaDiscoveryRequest> {
        let names = state.names(t);
        let sent = &mut self.sent[t as usize];
        let subscribe: Vec<String> = names.difference(sent).cloned().collect();
        let unsubscribe: Vec<String> = sent.difference(names).cloned().collect();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        *sent = names.clone();
        Some(DeltaDiscoveryRequest {
            node: state.node_once(),
            type_url: t.type_url().to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..DeltaDiscoveryRequest::default()
        })
    }

    /// Forgets the versions of resources the proxy no longer holds.
    fn prune(&mut self, state: &State, t: ResourceType) {
        self.versions[t as usize].retain(|name, _| state.config().contains(t, name));
    }
}

/// The ACK (or, with `error`, the NACK) of a response.
fn answer(
    state: &mut State,
    t: ResourceType,
    nonce: String,
    error: Option<&ConfigError>,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: state.node_once(),
        type_url: t.type_url().to_string(),
        response_nonce: nonce,
        error_detail: error.map(error_detail),
        ..DeltaDiscoveryRequest::default()
    }
}
