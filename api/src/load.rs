//! From YAML text or API-server JSON to typed, validated [`Resource`]s.
//!
//! Every source goes through [`load_value`], so a file and a Kubernetes
//! watch event are checked the same way: known kind, no unknown field,
//! typed deserialization with the failing field's path, then semantic
//! validation that reports every problem, not only the first.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::LoadError;
use crate::naming::validate_dns1123_subdomain;
use crate::resource::{Kind, Resource, ResourceKey};
use crate::validate;

/// Objects and errors from one input; an input with errors should be applied as nothing.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid objects, in document order.
    pub resources: Vec<Resource>,
    /// Every problem found.
    pub errors: Vec<LoadError>,
}

/// Namespace given to namespaced objects that name none (as `kubectl apply` does).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Largest YAML input accepted, so a stray huge file cannot exhaust memory.
pub const MAX_INPUT_BYTES: usize = 8 * 1024 * 1024;

/// Top-level keys allowed on custom kinds.
const TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// Loads every document of a multi-document YAML text. `origin` names the file in errors.
pub fn load_yaml(origin: Option<&str>, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    if text.len() > MAX_INPUT_BYTES {
        loaded.errors.push(
            LoadError::new(format!(
                "input is {} bytes, over the {MAX_INPUT_BYTES} byte limit",
                text.len()
            ))
            .at(origin, None),
        );
        return loaded;
    }
    let mut seen = BTreeSet::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let yaml = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                // A syntax error ends the stream: later documents cannot be located reliably.
                loaded
                    .errors
                    .push(LoadError::new(format!("invalid YAML: {e}")).at(origin, Some(index)));
                break;
            }
        };
        if yaml.is_null() {
            continue;
        }
        let value = match yaml_to_json(yaml) {
            Ok(v) => v,
            Err(e) => {
                loaded.errors.push(e.at(origin, Some(index)));
                continue;
            }
        };
        match load_value(value.clone()).and_then(|r| no_dropped_fields(&value, r)) {
            Ok(resource) => {
                let key = resource.key();
                if seen.insert(key.clone()) {
                    loaded.resources.push(resource);
                } else {
                    loaded.errors.push(
                        LoadError::new("defined more than once in this file")
                            .with_resource(&key)
                            .at(origin, Some(index)),
                    );
                }
            }
            Err(errors) => loaded
                .errors
                .extend(errors.into_iter().map(|e| e.at(origin, Some(index)))),
        }
    }
    loaded
}

/// Loads one object given as JSON (a YAML document or an API-server object).
pub fn load_value(mut value: Value) -> Result<Resource, Vec<LoadError>> {
    let Some(obj) = value.as_object_mut() else {
        return Err(vec![LoadError::new(
            "expected a mapping with apiVersion and kind",
        )]);
    };
    let api_version = string_field(obj, "apiVersion")?;
    let kind_name = string_field(obj, "kind")?;
    let Some(kind) = Kind::from_type(&api_version, &kind_name) else {
        return Err(vec![unknown_kind(&api_version, &kind_name)]);
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err(vec![
            LoadError::new("must be a mapping").with_field("metadata"),
        ]);
    };
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if kind.namespaced() {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if ns.is_empty() {
            meta.insert("namespace".into(), DEFAULT_NAMESPACE.into());
        }
    } else {
        meta.remove("namespace");
    }
    let namespace = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let key = ResourceKey::new(kind, namespace, name.clone());
    let mut errors = Vec::new();
    if let Err(e) = validate_dns1123_subdomain(&name) {
        errors.push(
            LoadError::new(e.to_string())
                .with_field("metadata.name")
                .with_resource(&key),
        );
    }
    if kind.is_custom() {
        for k in obj.keys().filter(|k| !TOP_LEVEL.contains(&k.as_str())) {
            errors.push(
                LoadError::new(format!("unknown field `{k}`"))
                    .with_field(k)
                    .with_resource(&key),
            );
        }
        if kind == Kind::ServiceExport {
            obj.entry("spec")
                .or_insert_with(|| Value::Object(Map::new()));
        }
        if !matches!(kind, Kind::MeshFederation | Kind::ServiceExport) {
            // Istio's status is written by its controllers and means nothing to us.
            obj.remove("status");
        }
    }
    obj.insert("apiVersion".into(), kind.api_version().into());
    if !errors.is_empty() {
        return Err(errors);
    }
    let resource = Resource::deserialize_as(kind, value).map_err(|e| {
        vec![
            LoadError::new(clean_serde_message(&e.inner().to_string()))
                .with_field(e.path().to_string().trim_start_matches('.'))
                .with_resource(&key),
        ]
    })?;
    let errors = validate::resource(&resource);
    if errors.is_empty() {
        Ok(resource)
    } else {
        Err(errors
            .into_iter()
            .map(|e| e.into_load_error(&key))
            .collect())
    }
}

/// Core kinds come from k8s-openapi, whose types ignore unknown fields. In a
/// file, a field that does not survive the round trip is a typo: report it.
/// (Objects from an API server are not checked this way: a newer server may
/// legitimately send fields our k8s-openapi version does not know.)
fn no_dropped_fields(input: &Value, resource: Resource) -> Result<Resource, Vec<LoadError>> {
    if resource.kind().is_custom() {
        return Ok(resource);
    }
    let mut dropped = Vec::new();
    find_dropped(input, &resource.to_value(), String::new(), &mut dropped);
    // Cluster-scoped kinds lose their namespace on purpose.
    dropped.retain(|p| p != "metadata.namespace");
    if dropped.is_empty() {
        return Ok(resource);
    }
    let key = resource.key();
    Err(dropped
        .into_iter()
        .map(|path| {
            let name = path
                .rsplit(['.', ']'])
                .next()
                .unwrap_or_default()
                .to_string();
            LoadError::new(format!("unknown field `{name}`"))
                .with_field(path)
                .with_resource(&key)
        })
        .collect())
}

fn find_dropped(input: &Value, output: &Value, path: String, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => find_dropped(v, ov, p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) if i.len() == o.len() => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                find_dropped(iv, ov, format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn string_field(obj: &Map<String, Value>, field: &str) -> Result<String, Vec<LoadError>> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(vec![
            LoadError::new("must be a non-empty string").with_field(field),
        ]),
        None => Err(vec![LoadError::new("missing").with_field(field)]),
    }
}

fn unknown_kind(api_version: &str, kind: &str) -> LoadError {
    let known: Vec<String> = Kind::ALL
        .iter()
        .map(|k| format!("{} {}", k.api_version(), k.name()))
        .collect();
    LoadError::new(format!(
        "unknown kind {kind} in {api_version}; Isthmus reads: {}",
        known.join(", ")
    ))
    .with_field("kind")
}

/// serde's messages end with the source position of the JSON value, which means nothing here.
fn clean_serde_message(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// YAML → JSON, turning non-string mapping keys (`8080:`) into strings as Kubernetes does.
fn yaml_to_json(v: serde_yaml_ng::Value) -> Result<Value, LoadError> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| LoadError::new(format!("number {n} cannot be represented")))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(seq) => Value::Array(
            seq.into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(LoadError::new(format!(
                            "mapping key {other:?} must be a string or a number"
                        )));
                    }
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value)?,
    })
}

#[cfg(test)]
mod tests;
