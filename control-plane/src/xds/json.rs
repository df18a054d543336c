//! xDS resources as Envoy-style JSON (for `/debug/config_dump`, `proxy-config`
//! and golden tests), with nested `Any` values expanded.
//!
//! Uses the protobuf descriptors that `envoy-types` 0.7.7 was generated
//! from (`descriptors/envoy-types-0.7.7.bin`, copied from that crate), so the
//! JSON follows the proto3 JSON mapping exactly as Envoy prints it. Decoding
//! through the descriptors is also the check that every resource we emit is
//! a well-formed message of the type its URL names.

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static DESCRIPTORS: &[u8] = include_bytes!("descriptors/envoy-types-0.7.7.bin");

/// The descriptor pool of every Envoy v3 message.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).unwrap_or_else(|_| DescriptorPool::new())
    })
}

/// Why an `Any` could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("unknown type URL {0:?}")]
    UnknownType(String),
    #[error("{type_url}: does not decode: {source}")]
    Decode {
        type_url: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{0}")]
    Serialize(String),
}

/// Decodes `any` by its type URL and renders it as JSON (nested `Any`s expanded, with `@type`).
pub fn to_json(any: &Any) -> Result<serde_json::Value, JsonError> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let desc = pool()
        .get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownType(any.type_url.clone()))?;
    let msg =
        DynamicMessage::decode(desc, any.value.as_slice()).map_err(|source| JsonError::Decode {
            type_url: any.type_url.clone(),
            source,
        })?;
    let mut out = serde_json::Serializer::new(Vec::new());
    let options = SerializeOptions::new().skip_default_fields(true);
    msg.serialize_with_options(&mut out, &options)
        .map_err(|e| JsonError::Serialize(e.to_string()))?;
    let mut value: serde_json::Value = serde_json::from_slice(&out.into_inner())
        .map_err(|e| JsonError::Serialize(e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("@type".into(), any.type_url.clone().into());
    }
    Ok(value)
}
