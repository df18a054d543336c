//! `/config_dump`: the proxy's config as Envoy-style JSON (proto3 JSON
//! mapping, nested `Any`s expanded), so it diffs against the control
//! plane's `/debug/config_dump?proxy=` for the same proxy.
//!
//! The descriptors are the ones `envoy-types` was generated from; the
//! control plane keeps the file (`control-plane/src/xds/descriptors`), and
//! we include the same bytes rather than keep a second 3 MB copy. They are
//! decoded on the first dump, not at startup.

use std::sync::OnceLock;

use prost::Name;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value, json};

use crate::config::{Encoded, ProxyConfig};

static DESCRIPTORS: &[u8] =
    include_bytes!("../../../control-plane/src/xds/descriptors/envoy-types-0.7.7.bin");

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).unwrap_or_else(|_| DescriptorPool::new())
    })
}

/// One resource as JSON with its `@type`; a message the descriptors do not
/// know renders as `{"@type", "error"}` rather than failing the dump.
fn to_json<M: Name>(message: &Encoded<M>) -> Value {
    let type_url = M::type_url();
    let rendered = (|| {
        let desc = pool()
            .get_message_by_name(&M::full_name())
            .ok_or_else(|| "no descriptor".to_string())?;
        let dynamic = DynamicMessage::decode(desc, message.bytes()).map_err(|e| e.to_string())?;
        let mut out = serde_json::Serializer::new(Vec::new());
        dynamic
            .serialize_with_options(&mut out, &SerializeOptions::new().skip_default_fields(true))
            .map_err(|e| e.to_string())?;
        serde_json::from_slice::<Value>(&out.into_inner()).map_err(|e| e.to_string())
    })();
    match rendered {
        Ok(Value::Object(mut map)) => {
            let mut with_type = Map::new();
            with_type.insert("@type".into(), type_url.into());
            with_type.append(&mut map);
            Value::Object(with_type)
        }
        Ok(other) => other,
        Err(error) => json!({ "@type": type_url, "error": error }),
    }
}

/// Replaces every `privateKey` (and the other secret fields of TLS
/// contexts) with `"[redacted]"`, as Envoy's config dump does.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if matches!(k.as_str(), "privateKey" | "password" | "sessionTicketKeys") {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// The whole config: resources per type (in name order) and the accepted
/// version of each type.
pub fn config_dump(config: &ProxyConfig) -> Value {
    let mut secrets: Vec<Value> = config.secrets.values().map(to_json).collect();
    secrets.iter_mut().for_each(redact);
    let versions: Map<String, Value> = config
        .versions
        .iter()
        .map(|(t, v)| (t.kind().to_string(), v.clone().into()))
        .collect();
    json!({
        "versions": versions,
        "listeners": config.listeners.values().map(to_json).collect::<Vec<_>>(),
        "routes": config.routes.values().map(to_json).collect::<Vec<_>>(),
        "clusters": config.clusters.values().map(to_json).collect::<Vec<_>>(),
        "endpoints": config.endpoints.values().map(to_json).collect::<Vec<_>>(),
        "secrets": secrets,
    })
}
