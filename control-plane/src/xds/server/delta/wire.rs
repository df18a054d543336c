//! The incremental ADS messages on the wire.
//!
//! Requests are decoded by prost: an incremental ACK is a type URL and a
//! nonce, with none of the subscribed names a state-of-the-world ACK
//! repeats. Responses are written like state-of-the-world ones
//! ([`Chunks`](super::super::wire::Chunks)), from the shared encoded
//! resources: each `Resource` wrapper is a small prefix (its `version`, a
//! content digest, and its `name`) followed by the shared `Any` bytes.
//! The wrapper's fields are written in the order version, name, resource,
//! so that the shared bytes end it (protobuf decoders accept fields in any
//! order); the response's own fields are in tag order.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::{DecodeError, Message};

use super::super::wire::{
    Incoming, Outgoing, delimited_len, put_delimited_head, put_string, string_len,
};
use crate::xds::SharedResource;

impl Incoming for DeltaDiscoveryRequest {
    const NAME: &'static str = "DeltaDiscoveryRequest";

    fn decode_from(buf: impl Buf) -> Result<Self, DecodeError> {
        DeltaDiscoveryRequest::decode(buf)
    }
}

/// Field numbers of `DeltaDiscoveryResponse`.
const SYSTEM_VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;
const CONTROL_PLANE: u32 = 7;
/// `ControlPlane.identifier`.
const IDENTIFIER: u32 = 1;
/// Field numbers of `Resource`.
const RESOURCE_VERSION: u32 = 1;
const RESOURCE_BODY: u32 = 2;
const RESOURCE_NAME: u32 = 3;
/// Hex digits of a resource version.
const VERSION_LEN: usize = 16;

/// The version of a resource sent incrementally: its content hash in hex
/// (as [`Outgoing::put_prefix`] writes it).
#[cfg(test)]
pub(in crate::xds::server) fn resource_version(resource: &SharedResource) -> String {
    format!("{:016x}", resource.hash)
}

/// Parses a version made by [`resource_version`] (`None` for any other).
pub(in crate::xds::server) fn parse_version(version: &str) -> Option<u64> {
    if version.len() != VERSION_LEN {
        return None;
    }
    u64::from_str_radix(version, 16).ok()
}

fn put_version(hash: u64, buf: &mut BytesMut) {
    put_delimited_head(RESOURCE_VERSION, VERSION_LEN, buf);
    let mut hex = [0u8; VERSION_LEN];
    for (i, digit) in hex.iter_mut().enumerate() {
        let nibble = (hash >> (4 * (VERSION_LEN - 1 - i))) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    buf.put_slice(&hex);
}

/// One `DeltaDiscoveryResponse` to send.
#[derive(Clone, Debug)]
pub(in crate::xds::server) struct Response {
    pub(in crate::xds::server) system_version_info: String,
    /// Added or changed resources, sorted by name.
    pub(in crate::xds::server) resources: Arc<Vec<Arc<SharedResource>>>,
    pub(in crate::xds::server) type_url: String,
    /// Names the proxy must drop (removed, or never existed).
    pub(in crate::xds::server) removed: Vec<String>,
    pub(in crate::xds::server) nonce: String,
    pub(in crate::xds::server) control_plane: &'static str,
}

impl Response {
    /// A `Resource` wrapper's fields before the `Any` bytes: version, name
    /// and the body's field head (made once per resource, shared by every
    /// stream).
    fn wrapper_head(r: &SharedResource) -> &Bytes {
        r.delta_head.get_or_init(|| {
            let len = delimited_len(RESOURCE_VERSION, VERSION_LEN)
                + string_len(RESOURCE_NAME, &r.name)
                + delimited_len(RESOURCE_BODY, r.encoded.len())
                - r.encoded.len();
            let mut buf = BytesMut::with_capacity(len);
            put_version(r.hash, &mut buf);
            put_string(RESOURCE_NAME, &r.name, &mut buf);
            put_delimited_head(RESOURCE_BODY, r.encoded.len(), &mut buf);
            debug_assert_eq!(buf.len(), len);
            buf.freeze()
        })
    }

    fn control_plane_len(&self) -> usize {
        string_len(IDENTIFIER, self.control_plane)
    }

    /// As prost decodes it (tests).
    #[cfg(test)]
    pub(in crate::xds::server) fn to_message(
        &self,
    ) -> envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
        use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|r| Resource {
                    name: r.name.clone(),
                    version: resource_version(r),
                    resource: Some(r.resource()),
                    ..Resource::default()
                })
                .collect(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed.clone(),
            nonce: self.nonce.clone(),
            control_plane: Some(envoy_types::pb::envoy::config::core::v3::ControlPlane {
                identifier: self.control_plane.to_string(),
            }),
            ..DeltaDiscoveryResponse::default()
        }
    }
}

impl Outgoing for Response {
    fn head_len(&self) -> usize {
        string_len(SYSTEM_VERSION_INFO, &self.system_version_info)
    }

    fn put_head(&self, buf: &mut BytesMut) {
        put_string(SYSTEM_VERSION_INFO, &self.system_version_info, buf);
    }

    fn resources(&self) -> &[Arc<SharedResource>] {
        &self.resources
    }

    fn prefix_len(&self, r: &SharedResource) -> usize {
        let wrapper = Self::wrapper_head(r).len() + r.encoded.len();
        delimited_len(RESOURCES, wrapper) - r.encoded.len()
    }

    fn put_prefix(&self, r: &SharedResource, buf: &mut BytesMut) {
        let head = Self::wrapper_head(r);
        put_delimited_head(RESOURCES, head.len() + r.encoded.len(), buf);
        buf.put_slice(head);
    }

    fn tail_len(&self) -> usize {
        string_len(TYPE_URL, &self.type_url)
            + string_len(NONCE, &self.nonce)
            + self
                .removed
                .iter()
                .map(|n| delimited_len(REMOVED_RESOURCES, n.len()))
                .sum::<usize>()
            + delimited_len(CONTROL_PLANE, self.control_plane_len())
    }

    fn put_tail(&self, buf: &mut BytesMut) {
        put_string(TYPE_URL, &self.type_url, buf);
        put_string(NONCE, &self.nonce, buf);
        for name in &self.removed {
            // Written even when empty: a name is a repeated element.
            put_delimited_head(REMOVED_RESOURCES, name.len(), buf);
            buf.put_slice(name.as_bytes());
        }
        put_delimited_head(CONTROL_PLANE, self.control_plane_len(), buf);
        put_string(IDENTIFIER, self.control_plane, buf);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    use super::super::super::wire::{CHUNK, GRPC_HEADER, encode};
    use super::{Outgoing, Response, parse_version, resource_version};
    use crate::xds::{CLUSTER, SharedResource, XdsResource};

    fn resource(name: &str, size: usize) -> Arc<SharedResource> {
        SharedResource::new(XdsResource {
            name: name.into(),
            resource: Any {
                type_url: CLUSTER.into(),
                value: name.bytes().cycle().take(size).collect(),
            },
        })
    }

    #[test]
    fn chunked_delta_response_decodes_as_prost_message() {
        let cases = [
            (vec![], vec![]),
            (vec![resource("a", 10)], vec![]),
            (vec![], vec!["gone".to_string(), String::new()]),
            (
                vec![
                    resource("a", 10),
                    resource("big", CHUNK * 3 + 7),
                    resource("b", CHUNK / 2),
                    resource("c", CHUNK / 2 + 1),
                    resource("", 0),
                ],
                vec!["x".to_string()],
            ),
            (
                (0..300)
                    .map(|i| resource(&format!("outbound|80||svc-{i}.ns.svc.cluster.local"), i))
                    .collect(),
                (0..300).map(|i| format!("removed-{i}")).collect(),
            ),
        ];
        for (resources, removed) in cases {
            let response = Response {
                system_version_info: "7-abc".into(),
                resources: Arc::new(resources),
                type_url: CLUSTER.into(),
                removed,
                nonce: "2a".into(),
                control_plane: "isthmus",
            };
            let bytes = encode(&response);
            assert_eq!(bytes.len(), GRPC_HEADER + response.encoded_len());
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            assert_eq!(len, bytes.len() - GRPC_HEADER);
            let decoded = DeltaDiscoveryResponse::decode(&bytes[GRPC_HEADER..]).expect("decodes");
            assert_eq!(decoded, response.to_message());
        }
    }

    #[test]
    fn versions_round_trip() {
        let r = resource("a", 3);
        let v = resource_version(&r);
        assert_eq!(v.len(), 16);
        assert_eq!(parse_version(&v), Some(r.hash));
        assert_eq!(parse_version("1-abc"), None);
        assert_eq!(parse_version("zzzzzzzzzzzzzzzz"), None);
    }
}
