//! State-of-the-world ADS (`StreamAggregatedResources`) on top of [`State`].
//!
//! Every request of a type carries the type's last accepted `version_info`
//! and, for named types, the full list of subscribed names. A response is
//! ACKed with its version and nonce; a rejected one is NACKed with the
//! previous version, the response's nonce and `error_detail`.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tracing::warn;

use super::state::{Handled, Outcome, State, Update, error_detail};
use crate::config::{ConfigError, ResourceType, Resources};

/// Per-stream state of the protocol: the last nonce per type.
#[derive(Debug, Default)]
pub(super) struct Sotw {
    /// Indexed by `ResourceType as usize`.
    nonces: [String; 5],
}

impl Sotw {
    /// The requests that open a new stream.
    pub(super) fn start(&mut self, state: &mut State) -> Vec<DiscoveryRequest> {
        self.nonces = Default::default();
        state
            .start_stream()
            .into_iter()
            .map(|t| self.request(state, t, None))
            .collect()
    }

    /// Handles one response: applies or rejects it and says what to send.
    pub(super) fn on_response(
        &mut self,
        state: &mut State,
        response: DiscoveryResponse,
    ) -> Handled<DiscoveryRequest> {
        let Some(t) = ResourceType::from_type_url(&response.type_url) else {
            warn!(
                type_url = response.type_url,
                "ignoring a response of a type the proxy does not subscribe to"
            );
            return Handled::ignored();
        };
        self.nonces[t as usize] = response.nonce;
        let applied = Resources::decode(t, &response.resources)
            .and_then(|r| state.apply(t, Update::Whole(r), response.version_info));
        match applied {
            Ok(accepted) => {
                let mut requests: Vec<DiscoveryRequest> = accepted
                    .resubscribe
                    .into_iter()
                    .map(|dep| self.request(state, dep, None))
                    .collect();
                requests.push(self.request(state, t, None));
                Handled {
                    requests,
                    outcome: Outcome::Accepted {
                        publish: accepted.publish,
                    },
                }
            }
            Err(error) => Handled {
                requests: vec![self.request(state, t, Some(&error))],
                outcome: Outcome::Rejected(error),
            },
        }
    }

    /// A request for `t`: an ACK (or NACK with `error`) of the last
    /// response, or a new subscription.
    fn request(
        &self,
        state: &mut State,
        t: ResourceType,
        error: Option<&ConfigError>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: state.config().version(t).unwrap_or_default().to_string(),
            node: state.node_once(),
            resource_names: if t.is_wildcard() {
                Vec::new()
            } else {
                state.names(t).iter().cloned().collect()
            },
            type_url: t.type_url().to_string(),
            response_nonce: self.nonces[t as usize].clone(),
            error_detail: error.map(error_detail),
            ..DiscoveryRequest::default()
        }
    }
}
