//! Accepted resources kept as the control plane encoded them.
//!
//! A decoded Envoy message is many times its encoded size: prost inlines
//! every optional sub-message and gives each string, list and map its own
//! allocation. A sidecar with 100 services held 2.5 MB of decoded clusters,
//! assignments and route configurations for the whole of its life
//! (heaptrack, `docs/benchmarks/sidecar.md`), most of it never read again
//! after the route tables and balancers were compiled from it. So the
//! config keeps each resource's bytes, plus the names it makes the proxy
//! subscribe to (found once, when the resource is accepted), and a consumer
//! decodes a resource when it compiles it, then drops the message.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Message;

use super::refs;

/// The names one resource makes the proxy subscribe to in other types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Route configurations (RDS) its HTTP connection managers load.
    pub routes: Vec<String>,
    /// Its EDS name, for an EDS cluster.
    pub endpoints: Vec<String>,
    /// Secrets (SDS) its TLS transport sockets load.
    pub secrets: Vec<String>,
}

/// An xDS resource type a proxy keeps.
pub trait Resource: Message + Default + Sized {
    /// The names this resource makes the proxy subscribe to.
    fn references(&self) -> References {
        References::default()
    }
}

impl Resource for Cluster {
    fn references(&self) -> References {
        let one = std::slice::from_ref(self);
        References {
            routes: Vec::new(),
            endpoints: refs::endpoint_names(one.iter()).into_iter().collect(),
            secrets: refs::cluster_secret_names(one.iter()).into_iter().collect(),
        }
    }
}

impl Resource for Listener {
    fn references(&self) -> References {
        let one = std::slice::from_ref(self);
        References {
            routes: refs::route_names(one.iter()).into_iter().collect(),
            endpoints: Vec::new(),
            secrets: refs::listener_secret_names(one.iter())
                .into_iter()
                .collect(),
        }
    }
}

impl Resource for ClusterLoadAssignment {}
impl Resource for RouteConfiguration {}
impl Resource for Secret {}

/// One accepted resource: its encoded bytes and its [`References`].
/// Cloning shares them. Two are equal when their bytes are (prost encodes
/// one message one way, so unchanged resources compare equal).
pub struct Encoded<T> {
    inner: Arc<Inner>,
    _message: PhantomData<fn() -> T>,
}

struct Inner {
    bytes: Box<[u8]>,
    references: References,
}

impl<T: Resource> Encoded<T> {
    /// Encodes `message` (configs built by hand: tests, tools).
    pub fn new(message: &T) -> Self {
        Self::accepted(message.encode_to_vec(), message)
    }

    /// `bytes`, which decoded to `message` (and passed validation).
    pub(crate) fn accepted(bytes: impl Into<Box<[u8]>>, message: &T) -> Self {
        Self {
            inner: Arc::new(Inner {
                bytes: bytes.into(),
                references: message.references(),
            }),
            _message: PhantomData,
        }
    }

    /// The message. The bytes decoded once already when the resource was
    /// accepted, so this fails only if memory was corrupted; callers treat
    /// an error as an invalid resource all the same.
    ///
    /// # Errors
    /// If the bytes do not decode.
    pub fn decode(&self) -> Result<T, prost::DecodeError> {
        T::decode(&*self.inner.bytes)
    }

    /// Decodes the message, lets `f` change it and keeps the result
    /// (configs built by hand: tests, tools).
    ///
    /// # Errors
    /// If the bytes do not decode.
    pub fn edit(&mut self, f: impl FnOnce(&mut T)) -> Result<(), prost::DecodeError> {
        let mut message = self.decode()?;
        f(&mut message);
        *self = Self::new(&message);
        Ok(())
    }
}

impl<T> Encoded<T> {
    /// The encoded message, as the control plane sent it.
    pub fn bytes(&self) -> &[u8] {
        &self.inner.bytes
    }

    /// The names this resource makes the proxy subscribe to.
    pub fn references(&self) -> &References {
        &self.inner.references
    }
}

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _message: PhantomData,
        }
    }
}

impl<T> PartialEq for Encoded<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.inner.bytes == other.inner.bytes
    }
}

impl<T> fmt::Debug for Encoded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoded")
            .field("type", &std::any::type_name::<T>())
            .field("bytes", &self.inner.bytes.len())
            .field("references", &self.inner.references)
            .finish()
    }
}

impl<T: Resource> From<T> for Encoded<T> {
    fn from(message: T) -> Self {
        Self::new(&message)
    }
}
