use isthmus_config::Store;

use super::*;

const WORKLOADS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 5000, protocol: HTTP}]
  endpoints:
  - {address: 10.0.0.1, labels: {app: helloworld, version: v1, evil: "yes"}, locality: r1/z1, serviceAccount: helloworld}
  - {address: 10.0.0.2, labels: {app: helloworld, version: v1, evil: "no"}, locality: r1/z1, serviceAccount: helloworld}
  - {address: 10.0.0.3, labels: {app: helloworld, version: v2}, locality: r1/z2, serviceAccount: helloworld, weight: 0}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secret, namespace: sample}
spec:
  hosts: [secret.sample.svc.cluster.local]
  resolution: STATIC
  ports: [{name: tcp, number: 9000}]
  endpoints: [{address: 10.0.0.9}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: helloworld, namespace: sample}
"#;

fn snapshot(yaml: &str) -> std::sync::Arc<Snapshot> {
    let loaded = isthmus_api::load::load_yaml(Some("test.yaml"), yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let store = Store::new();
    store.replace_origin("test.yaml", loaded.resources);
    store.snapshot()
}

#[test]
fn only_exported_services_with_allowed_labels_cross() {
    let ctx = ClusterContext {
        cluster: "east".into(),
        network: "net-east".into(),
        domain: "cluster.local".into(),
    };
    let services = exported_services(&snapshot(WORKLOADS), &ctx, &LabelAllowList::default());
    assert_eq!(services.len(), 1, "{services:?}");
    let svc = &services[0];
    assert_eq!(
        (svc.name.as_str(), svc.namespace.as_str()),
        ("helloworld", "sample")
    );
    assert_eq!(
        svc.ports,
        vec![proto::Port {
            name: "http".into(),
            number: 5000,
            protocol: "HTTP".into()
        }]
    );
    // The evil label is gone, so v1's two endpoints fall into one group.
    let summary: Vec<(String, Option<String>, u32, u32)> = svc
        .groups
        .iter()
        .map(|g| {
            assert!(
                g.labels.keys().all(|k| k == "app" || k == "version"),
                "{g:?}"
            );
            (
                g.locality.clone(),
                g.labels.get("version").cloned(),
                g.healthy,
                g.total,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("r1/z1".into(), Some("v1".into()), 2, 2),
            ("r1/z2".into(), Some("v2".into()), 0, 1),
        ]
    );
    assert!(svc.groups.iter().all(|g| g.service_account == "helloworld"));
}

#[test]
fn allow_list_never_passes_topology_labels() {
    let allow = LabelAllowList::new([CLUSTER_LABEL, "version"]);
    assert!(!allow.allows(CLUSTER_LABEL));
    assert!(!allow.allows(NETWORK_LABEL));
    assert!(allow.allows("version"));
}
