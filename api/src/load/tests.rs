use super::*;

const VS_90: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld
  namespace: sample
spec:
  hosts: [helloworld]
  http:
  - route:
    - destination: {host: helloworld, subset: v1}
      weight: 60
    - destination: {host: helloworld, subset: v2}
      weight: 30
"#;

#[test]
fn weights_error_names_file_resource_and_field() {
    let loaded = load_yaml(Some("vs.yaml"), VS_90);
    assert!(loaded.resources.is_empty());
    let msgs: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        msgs,
        [
            "vs.yaml:1: VirtualService sample/helloworld: spec.http[0].route: weights sum to 90, expected 100"
        ]
    );
}

#[test]
fn unknown_field_is_named_with_its_path() {
    let text = VS_90.replace(
        "  hosts: [helloworld]",
        "  hosts: [helloworld]\n  hostz: [x]",
    );
    let loaded = load_yaml(None, &text);
    let e = &loaded.errors[0];
    assert_eq!(e.field.as_deref(), Some("spec.hostz"), "{e}");
    assert!(e.message.contains("unknown field `hostz`"), "{e}");
}

#[test]
fn unsupported_istio_field_is_rejected_by_name() {
    let text = VS_90.replace(
        "  - route:",
        "  - corsPolicy: {allowOrigins: [{exact: x}]}\n    route:",
    );
    let e = &load_yaml(None, &text).errors[0];
    assert_eq!(e.field.as_deref(), Some("spec.http[0].corsPolicy"), "{e}");
    assert!(e.message.contains("not supported"), "{e}");
}

#[test]
fn unknown_top_level_field_and_kind() {
    let text =
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspek: {}\n";
    let e = &load_yaml(None, text).errors[0];
    assert_eq!(e.field.as_deref(), Some("spek"));
    let text = "apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: a}\n";
    let e = &load_yaml(None, text).errors[0];
    assert!(e.message.contains("unknown kind EnvoyFilter"), "{e}");
}

#[test]
fn every_error_in_a_document_is_reported() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: default}
spec:
  host: reviews
  subsets:
  - name: V1_bad
  - name: v2
  - name: v2
  trafficPolicy:
    outlierDetection: {maxEjectionPercent: 140}
"#;
    let loaded = load_yaml(Some("dr.yaml"), text);
    let fields: Vec<_> = loaded
        .errors
        .iter()
        .filter_map(|e| e.field.clone())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "spec.subsets[0].name",
            "spec.subsets[2].name"
        ]
    );
}

#[test]
fn documents_are_numbered_and_defaults_applied() {
    let text = "---\n# empty\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: sample, namespace: ignored}\n---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: helloworld}\n---\napiVersion: v1\nkind: Nope\n";
    let loaded = load_yaml(Some("f.yaml"), text);
    assert_eq!(loaded.resources.len(), 2);
    assert_eq!(loaded.resources[0].key().to_string(), "Namespace sample");
    assert_eq!(
        loaded.resources[1].key().to_string(),
        "ServiceExport default/helloworld"
    );
    assert_eq!(loaded.errors.len(), 1);
    assert!(
        loaded.errors[0]
            .to_string()
            .starts_with("f.yaml:4: kind: unknown kind Nope"),
        "{}",
        loaded.errors[0]
    );
}

#[test]
fn duplicate_objects_in_one_file_are_an_error() {
    let text = format!("{VS_90}---{VS_90}").replace("weight: 30", "weight: 40");
    let loaded = load_yaml(Some("d.yaml"), &text);
    assert_eq!(loaded.resources.len(), 1);
    assert!(loaded.errors[0].message.contains("more than once"));
}

#[test]
fn yaml_syntax_errors_are_located() {
    let loaded = load_yaml(Some("bad.yaml"), "apiVersion: v1\nkind: [unclosed\n");
    assert!(
        loaded.errors[0]
            .to_string()
            .starts_with("bad.yaml:1: invalid YAML"),
        "{}",
        loaded.errors[0]
    );
}

#[test]
fn non_mapping_and_garbage_never_panic() {
    for text in [
        "42",
        "- a\n- b",
        "!!binary aGVsbG8=",
        "{apiVersion: 1, kind: 2}",
        "apiVersion: v1\nkind: Pod\nmetadata: 7",
    ] {
        let loaded = load_yaml(None, text);
        assert!(!loaded.errors.is_empty(), "{text:?}");
    }
}

#[test]
fn resources_round_trip_through_json() {
    let text = VS_90.replace("weight: 30", "weight: 40");
    let loaded = load_yaml(None, &text);
    let r = &loaded.resources[0];
    let again = load_value(r.to_value()).expect("round trip");
    assert_eq!(&again, r);
}

#[test]
fn typo_in_a_core_kind_file_is_named() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: hw, namespace: sample}\nspec:\n  selector: {app: hw}\n  ports:\n  - port: 5000\n    targetPort: http\n    nmae: http\n";
    let loaded = load_yaml(Some("svc.yaml"), text);
    let msgs: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        msgs,
        ["svc.yaml:1: Service sample/hw: spec.ports[0].nmae: unknown field `nmae`"]
    );
    // Objects from an API server may carry fields newer than our k8s-openapi: accepted.
    let value: Value = serde_yaml_ng::from_str(text).unwrap();
    assert!(load_value(value).is_ok());
}

const SIDECAR: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: scope, namespace: sample}
spec:
  workloadSelector:
    labels: {app: sleep}
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    hosts: [prod/reviews.prod.svc.cluster.local]
  - hosts: ["./*", "istio-system/*", "*/*.example.com", "~/*"]
  outboundTrafficPolicy: {mode: ALLOW_ANY}
"#;

#[test]
fn sidecar_loads_with_older_versions_too() {
    for version in ["v1", "v1beta1", "v1alpha3"] {
        let text = SIDECAR.replace("istio.io/v1\n", &format!("istio.io/{version}\n"));
        let loaded = load_yaml(Some("sidecar.yaml"), &text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let Resource::Sidecar(sc) = &loaded.resources[0] else {
            panic!("not a Sidecar: {:?}", loaded.resources[0]);
        };
        assert_eq!(sc.spec.egress.len(), 2);
        assert_eq!(sc.spec.egress[0].port.as_ref().unwrap().number, 9080);
        assert_eq!(
            loaded.resources[0].key().to_string(),
            "Sidecar sample/scope"
        );
    }
}

#[test]
fn sidecar_egress_hosts_follow_istio_rules() {
    let text = SIDECAR.replace(
        r#"["./*", "istio-system/*", "*/*.example.com", "~/*"]"#,
        r#"[reviews, "Bad_NS/*", "ns/", "ns/a..b", "./*.ok.com"]"#,
    );
    let loaded = load_yaml(Some("sc.yaml"), &text);
    let msgs: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    assert!(
        msgs[0].starts_with("sc.yaml:1: Sidecar sample/scope: spec.egress[1].hosts[0]: host \"reviews\" must be <namespace>/<dnsName>"),
        "{msgs:#?}"
    );
    assert!(
        msgs[1].contains("spec.egress[1].hosts[1]: host \"Bad_NS/*\": namespace must be"),
        "{msgs:#?}"
    );
    assert!(
        msgs[2].contains(
            "spec.egress[1].hosts[2]: host \"ns/\": namespace and dnsName must not be empty"
        ),
        "{msgs:#?}"
    );
    assert!(
        msgs[3].contains("spec.egress[1].hosts[3]: host \"ns/a..b\""),
        "{msgs:#?}"
    );
}

#[test]
fn sidecar_listener_rules() {
    let text = SIDECAR
        .replace(
            "number: 9080, protocol: HTTP",
            "number: 70000, protocol: QUIC",
        )
        .replace(
            "  outboundTrafficPolicy",
            "  - hosts: []\n  workloadSelector2: {}\n  outboundTrafficPolicy",
        );
    // An unknown field stops typed loading first, naming it.
    let e = &load_yaml(None, &text).errors[0];
    assert_eq!(e.field.as_deref(), Some("spec.workloadSelector2"), "{e}");
    let text = text.replace("  workloadSelector2: {}\n", "");
    let fields: Vec<String> = load_yaml(None, &text)
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.field.as_deref().unwrap_or_default(), e.message))
        .collect();
    assert_eq!(fields.len(), 5, "{fields:#?}");
    assert!(
        fields[0].starts_with("spec.egress[0].port.number: port 70000"),
        "{fields:#?}"
    );
    assert!(
        fields[1].starts_with("spec.egress[0].port.protocol: unknown protocol \"QUIC\""),
        "{fields:#?}"
    );
    assert!(
        fields[2].starts_with("spec.egress[1].port: only one egress listener may omit port"),
        "{fields:#?}"
    );
    assert!(
        fields[3].starts_with("spec.egress[2].port: only one egress listener may omit port"),
        "{fields:#?}"
    );
    assert!(
        fields[4].starts_with("spec.egress[2].hosts: at least one host is required"),
        "{fields:#?}"
    );
}

#[test]
fn sidecar_selector_ports_and_traffic_policy() {
    let text = SIDECAR
        .replace("labels: {app: sleep}", "labels: {}")
        .replace(
            "  - hosts: [\"./*\"",
            "  - port: {number: 9080}\n    hosts: [\"./*\"]\n  - hosts: [\"./*\"",
        )
        .replace("ALLOW_ANY", "REGISTRY_ONLY");
    let fields: Vec<String> = load_yaml(None, &text)
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.field.as_deref().unwrap_or_default(), e.message))
        .collect();
    assert_eq!(
        fields,
        [
            "spec.workloadSelector.labels: at least one label is required (omit workloadSelector to select every workload)",
            "spec.egress[1].port.number: port 9080 has more than one egress listener",
            "spec.outboundTrafficPolicy.mode: REGISTRY_ONLY is not supported: Isthmus sidecars pass connections to unknown destinations through (ALLOW_ANY)",
        ]
    );
}

#[test]
fn sidecar_fields_isthmus_does_not_implement_are_rejected_by_name() {
    for (from, to, field) in [
        (
            "  egress:\n",
            "  ingress:\n  - port: {number: 9080, protocol: HTTP, name: http}\n    defaultEndpoint: 127.0.0.1:8080\n  egress:\n",
            "spec.ingress",
        ),
        (
            "  - hosts: [\"./*\"",
            "  - bind: 127.0.0.1\n    hosts: [\"./*\"",
            "spec.egress[1].bind",
        ),
        (
            "  - hosts: [\"./*\"",
            "  - captureMode: NONE\n    hosts: [\"./*\"",
            "spec.egress[1].captureMode",
        ),
        (
            "name: http}",
            "name: http, targetPort: 8080}",
            "spec.egress[0].port.targetPort",
        ),
        (
            "  outboundTrafficPolicy: {mode: ALLOW_ANY}",
            "  outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: proxy}}",
            "spec.outboundTrafficPolicy.egressProxy",
        ),
        (
            "  outboundTrafficPolicy",
            "  inboundConnectionPool: {http: {http1MaxPendingRequests: 10}}\n  outboundTrafficPolicy",
            "spec.inboundConnectionPool",
        ),
    ] {
        let text = SIDECAR.replace(from, to);
        assert_ne!(text, SIDECAR, "{from:?} not in the fixture");
        let loaded = load_yaml(Some("sc.yaml"), &text);
        let e = &loaded.errors[0];
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert!(e.message.contains("not supported by Isthmus"), "{e}");
        assert!(
            e.to_string()
                .starts_with("sc.yaml:1: Sidecar sample/scope: "),
            "{e}"
        );
    }
}

#[test]
fn egress_host_patterns_match_as_istio() {
    use crate::networking::EgressHost;
    let h = |s: &str| EgressHost::parse(s, "sample").unwrap();
    assert!(h("./*").matches("sample", "a.sample.svc.cluster.local"));
    assert!(!h("./*").matches("other", "a.other.svc.cluster.local"));
    assert!(h("*/*.example.com").matches("ext", "api.example.com"));
    assert!(!h("*/*.example.com").matches("ext", "example.com"));
    assert!(
        h("prod/Reviews.prod.svc.cluster.local.").matches("prod", "reviews.prod.svc.cluster.local")
    );
    assert!(
        !h("prod/reviews.prod.svc.cluster.local")
            .matches("other", "reviews.prod.svc.cluster.local")
    );
    assert!(!h("~/*").matches("sample", "a.sample.svc.cluster.local"));
    assert!(EgressHost::parse("reviews", "sample").is_none());
}
