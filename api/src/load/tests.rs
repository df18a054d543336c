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
    let text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: a}\n";
    let e = &load_yaml(None, text).errors[0];
    assert!(e.message.contains("unknown kind Sidecar"), "{e}");
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
