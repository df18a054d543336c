//! Pod → JSON Patch (RFC 6902) that adds the sidecar, its init container and
//! its token volume. Pure: the Pod is read as JSON, nothing else is consulted.

use serde_json::{Map, Value, json};

use super::Template;

/// The injected sidecar container.
pub const SIDECAR_CONTAINER: &str = "isthmus-proxy";
/// The injected init container that installs the iptables redirect.
pub const INIT_CONTAINER: &str = "isthmus-init";
/// The projected service-account token volume.
pub const TOKEN_VOLUME: &str = "isthmus-token";
/// Set on every injected Pod; its presence makes injection a no-op.
pub const STATUS_ANNOTATION: &str = "sidecar.isthmus.io/status";
/// Istio's opt-out switch, honoured as an annotation or a label.
pub const INJECT_SWITCH: &str = "sidecar.istio.io/inject";

const TOKEN_DIR: &str = "/var/run/secrets/isthmus/tokens";
const TOKEN_FILE: &str = "isthmus-token";

/// Istio's per-Pod capture annotations, passed to `isthmus iptables`.
const CAPTURE_ANNOTATIONS: &[(&str, &str)] = &[
    (
        "traffic.sidecar.istio.io/includeInboundPorts",
        "--inbound-ports",
    ),
    (
        "traffic.sidecar.istio.io/excludeInboundPorts",
        "--exclude-inbound-ports",
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        "--exclude-outbound-ports",
    ),
    (
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        "--include-outbound-cidrs",
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        "--exclude-outbound-cidrs",
    ),
];

/// What the webhook does with one Pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Allow with these JSON Patch operations.
    Inject(Vec<Value>),
    /// Allow unchanged, for this reason.
    Skip(&'static str),
}

/// Decides and builds the patch for `pod` (a Pod object as the API server sent it).
pub fn decide(pod: &Value, template: &Template) -> Decision {
    let meta = |field: &str| pod.pointer(&format!("/metadata/{field}"));
    let annotation = |key: &str| meta("annotations").and_then(|a| a.get(key)?.as_str());
    let label = |key: &str| meta("labels").and_then(|l| l.get(key)?.as_str());
    let opted_out = |v: Option<&str>| {
        v.is_some_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "n" | "no" | "off"
            )
        })
    };
    if opted_out(annotation(INJECT_SWITCH)) || opted_out(label(INJECT_SWITCH)) {
        return Decision::Skip("opted out (sidecar.istio.io/inject: false)");
    }
    if pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return Decision::Skip("hostNetwork pod (capture would redirect the node's traffic)");
    }
    let names = |list: &str| -> Vec<&str> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name")?.as_str())
            .collect()
    };
    if annotation(STATUS_ANNOTATION).is_some()
        || names("containers").contains(&SIDECAR_CONTAINER)
        || names("initContainers").contains(&INIT_CONTAINER)
        || names("volumes").contains(&TOKEN_VOLUME)
    {
        return Decision::Skip("already injected");
    }
    if pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_none()
    {
        return Decision::Skip("pod has no spec.containers");
    }

    let mut ops = Vec::new();
    let status = json!({
        "initContainers": [INIT_CONTAINER],
        "containers": [SIDECAR_CONTAINER],
        "volumes": [TOKEN_VOLUME],
        "version": env!("CARGO_PKG_VERSION"),
    })
    .to_string();
    add_to_map(
        &mut ops,
        pod,
        "/metadata/annotations",
        STATUS_ANNOTATION,
        status.into(),
    );
    let capture: Vec<String> = CAPTURE_ANNOTATIONS
        .iter()
        .filter_map(|(key, flag)| Some(format!("{flag}={}", annotation(key)?)))
        .collect();
    let init = init_container(template, capture);
    append(&mut ops, pod, "/spec/initContainers", init);
    append(
        &mut ops,
        pod,
        "/spec/containers",
        sidecar_container(pod, template),
    );
    append(&mut ops, pod, "/spec/volumes", token_volume(template));
    Decision::Inject(ops)
}

/// `add` of one key to a map that may not exist yet.
fn add_to_map(ops: &mut Vec<Value>, pod: &Value, path: &str, key: &str, value: Value) {
    if pod.pointer(path).is_some_and(Value::is_object) {
        let escaped = key.replace('~', "~0").replace('/', "~1");
        ops.push(json!({"op": "add", "path": format!("{path}/{escaped}"), "value": value}));
    } else {
        let mut map = Map::new();
        map.insert(key.to_string(), value);
        ops.push(json!({"op": "add", "path": path, "value": map}));
    }
}

/// `add` at the end of a list that may not exist yet.
fn append(ops: &mut Vec<Value>, pod: &Value, path: &str, value: Value) {
    if pod.pointer(path).is_some_and(Value::is_array) {
        ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": value}));
    } else {
        ops.push(json!({"op": "add", "path": path, "value": [value]}));
    }
}

fn init_container(t: &Template, capture: Vec<String>) -> Value {
    let mut args = vec![
        "iptables".to_string(),
        "--apply".into(),
        "--proxy-uid".into(),
        t.proxy_uid.to_string(),
        "--proxy-gid".into(),
        t.proxy_uid.to_string(),
    ];
    args.extend(capture);
    json!({
        "name": INIT_CONTAINER,
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        // iptables needs root with NET_ADMIN/NET_RAW in the Pod's network namespace only.
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

/// The sidecar's own binary in the image: a fraction of the multi-call
/// `isthmus` binary's code, so a fraction of its resident text.
pub const SIDECAR_COMMAND: &str = "/usr/local/bin/isthmus-sidecar";

fn sidecar_container(pod: &Value, t: &Template) -> Value {
    let mut args: Vec<String> = [
        "--mode",
        "transparent",
        "--control-plane",
        &t.control_plane,
        "--workload",
        "$(POD_NAMESPACE)/$(POD_NAME)",
        "--service-account",
        "$(SERVICE_ACCOUNT)",
        "--ip",
        "$(POD_IP)",
        "--cluster",
        &t.cluster,
        "--token-file",
        &format!("{TOKEN_DIR}/{TOKEN_FILE}"),
    ]
    .map(String::from)
    .to_vec();
    for (flag, value) in [("--network", &t.network), ("--locality", &t.locality)] {
        if !value.is_empty() {
            args.extend([flag.to_string(), value.clone()]);
        }
    }
    // Labels as the Pod has them at admission (what the registry sees too);
    // label values cannot hold `$(`, so Kubernetes leaves them unexpanded.
    if let Some(labels) = pod.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(v) = v.as_str() {
                args.extend(["--label".to_string(), format!("{k}={v}")]);
            }
        }
    }
    let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
    json!({
        "name": SIDECAR_CONTAINER,
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "command": [SIDECAR_COMMAND],
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "POD_IP", "valueFrom": field("status.podIP")},
            {"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": {
            "runAsUser": t.proxy_uid,
            "runAsGroup": t.proxy_uid,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
    })
}

fn token_volume(t: &Template) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": t.token_audience,
            "expirationSeconds": t.token_expiration_seconds,
            "path": TOKEN_FILE,
        }}]},
    })
}
