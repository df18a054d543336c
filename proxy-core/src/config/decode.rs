//! From `Any`s to typed, validated resources keyed by name.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;

use super::ResourceType;
use super::encoded::{Encoded, Resource};
use super::validate::{self, ConfigError};

/// The accepted resources of one response, keyed by name, kept encoded
/// ([`Encoded`]) and shared between the accepted config, the published
/// config and its consumers.
#[derive(Clone, Debug, PartialEq)]
pub enum Resources {
    /// CDS: the complete set of clusters.
    Clusters(BTreeMap<String, Encoded<Cluster>>),
    /// EDS: assignments by cluster (service) name.
    Endpoints(BTreeMap<String, Encoded<ClusterLoadAssignment>>),
    /// LDS: the complete set of listeners.
    Listeners(BTreeMap<String, Encoded<Listener>>),
    /// RDS: route configurations by name.
    Routes(BTreeMap<String, Encoded<RouteConfiguration>>),
    /// SDS: secrets by name.
    Secrets(BTreeMap<String, Encoded<Secret>>),
}

impl Resources {
    /// Decodes and validates every resource of a response of type `t`: each
    /// `Any` must carry exactly `t`'s type URL, decode, have a non-empty name
    /// unique in the response, and pass [`validate`]. The first error rejects
    /// the whole response.
    pub fn decode(t: ResourceType, resources: &[Any]) -> Result<Self, ConfigError> {
        Self::decode_items(
            t,
            resources.iter().enumerate().map(|(i, any)| (i, None, any)),
        )
    }

    /// [`decode`](Self::decode) for incremental xDS, where each resource
    /// travels with its name: `(index, name, resource)`; the name must be
    /// the one inside the resource.
    pub fn decode_named<'a>(
        t: ResourceType,
        resources: impl IntoIterator<Item = (usize, &'a str, &'a Any)>,
    ) -> Result<Self, ConfigError> {
        Self::decode_items(
            t,
            resources
                .into_iter()
                .map(|(i, name, any)| (i, Some(name), any)),
        )
    }

    fn decode_items<'a>(
        t: ResourceType,
        items: impl IntoIterator<Item = (usize, Option<&'a str>, &'a Any)>,
    ) -> Result<Self, ConfigError> {
        Ok(match t {
            ResourceType::Cluster => Self::Clusters(decode_all(t, items, |c: &Cluster| {
                (&c.name, validate::cluster(c))
            })?),
            ResourceType::Endpoint => {
                Self::Endpoints(decode_all(t, items, |e: &ClusterLoadAssignment| {
                    (&e.cluster_name, Ok(()))
                })?)
            }
            ResourceType::Listener => Self::Listeners(decode_all(t, items, |l: &Listener| {
                (&l.name, validate::listener(l))
            })?),
            ResourceType::Route => Self::Routes(decode_all(t, items, |r: &RouteConfiguration| {
                (&r.name, validate::route(r))
            })?),
            ResourceType::Secret => Self::Secrets(decode_all(t, items, |s: &Secret| {
                (&s.name, validate::secret(s))
            })?),
        })
    }

    /// The type these resources are of.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Self::Clusters(_) => ResourceType::Cluster,
            Self::Endpoints(_) => ResourceType::Endpoint,
            Self::Listeners(_) => ResourceType::Listener,
            Self::Routes(_) => ResourceType::Route,
            Self::Secrets(_) => ResourceType::Secret,
        }
    }

    /// The resource names, sorted.
    pub fn names(&self) -> BTreeSet<String> {
        fn keys<V>(m: &BTreeMap<String, V>) -> BTreeSet<String> {
            m.keys().cloned().collect()
        }
        match self {
            Self::Clusters(m) => keys(m),
            Self::Endpoints(m) => keys(m),
            Self::Listeners(m) => keys(m),
            Self::Routes(m) => keys(m),
            Self::Secrets(m) => keys(m),
        }
    }

    /// Keeps only the resources whose name `keep` accepts (named types:
    /// resources answering a subscription the client has since dropped).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        match self {
            Self::Clusters(m) => m.retain(|n, _| keep(n)),
            Self::Endpoints(m) => m.retain(|n, _| keep(n)),
            Self::Listeners(m) => m.retain(|n, _| keep(n)),
            Self::Routes(m) => m.retain(|n, _| keep(n)),
            Self::Secrets(m) => m.retain(|n, _| keep(n)),
        }
    }
}

/// Decodes every `Any` as `M`; `check` returns the resource's name and its
/// validation result. An item's name, when given, must match.
fn decode_all<'a, M: Resource>(
    t: ResourceType,
    items: impl IntoIterator<Item = (usize, Option<&'a str>, &'a Any)>,
    check: impl Fn(&M) -> (&String, Result<(), String>),
) -> Result<BTreeMap<String, Encoded<M>>, ConfigError> {
    let mut out = BTreeMap::new();
    for (index, expected, any) in items {
        if any.type_url != t.type_url() {
            return Err(ConfigError::WrongTypeUrl {
                kind: t,
                index,
                found: any.type_url.clone(),
            });
        }
        let message = M::decode(any.value.as_slice()).map_err(|source| ConfigError::Decode {
            kind: t,
            index,
            source,
        })?;
        let (name, valid) = check(&message);
        if name.is_empty() {
            return Err(ConfigError::EmptyName { kind: t, index });
        }
        if let Some(expected) = expected
            && expected != name
        {
            return Err(ConfigError::Invalid {
                kind: t,
                name: expected.to_string(),
                reason: format!("resources[{index}] carries a {t} named {name:?}"),
            });
        }
        let name = name.clone();
        if let Err(reason) = valid {
            return Err(ConfigError::Invalid {
                kind: t,
                name,
                reason,
            });
        }
        if out.contains_key(&name) {
            return Err(ConfigError::Duplicate { kind: t, name });
        }
        // The message is dropped here: the config keeps the bytes.
        out.insert(name, Encoded::accepted(any.value.as_slice(), &message));
    }
    Ok(out)
}
