use isthmus_api::load::load_yaml;
use isthmus_config::Store;

use super::*;

fn registry(yaml: &str) -> Registry {
    let loaded = load_yaml(Some("test.yaml"), yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let store = Store::new();
    store.replace_origin("test.yaml", loaded.resources);
    let ctx = ClusterContext {
        cluster: "east".into(),
        network: "net-east".into(),
        domain: "cluster.local".into(),
    };
    Registry::build(&store.snapshot(), &ctx)
}

const KUBE: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/region: us-east, topology.kubernetes.io/zone: us-east-1a}
---
apiVersion: v1
kind: Service
metadata: {name: helloworld, namespace: sample}
spec:
  clusterIP: 10.96.0.10
  selector: {app: helloworld}
  ports:
  - {name: http, port: 5000, targetPort: 5000}
  - {name: metrics, port: 9090, appProtocol: http}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: helloworld-abc
  namespace: sample
  labels: {kubernetes.io/service-name: helloworld}
addressType: IPv4
ports: [{name: http, port: 5001}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
  nodeName: node-a
  targetRef: {kind: Pod, name: helloworld-v1-1, namespace: sample}
- addresses: [10.0.0.2]
  conditions: {ready: true, terminating: true}
  nodeName: node-a
- addresses: [10.0.0.3]
  conditions: {ready: false}
---
apiVersion: v1
kind: Pod
metadata:
  name: helloworld-v1-1
  namespace: sample
  labels: {app: helloworld, version: v1, topology.istio.io/subzone: rack-1}
spec:
  serviceAccountName: helloworld
  containers: [{name: app, image: helloworld}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: helloworld, namespace: sample}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: ghost, namespace: sample}
"#;

#[test]
fn kubernetes_service_endpoints_carry_locality_identity_and_health() {
    let r = registry(KUBE);
    let svc = r.service("helloworld.sample.svc.cluster.local").unwrap();
    assert!(svc.exported);
    assert_eq!(svc.addresses, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    let ports: Vec<_> = svc
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            ("http", 5000, Protocol::Http),
            ("metrics", 9090, Protocol::Http)
        ],
        "UDP skipped"
    );
    let e = &svc.endpoints[0];
    assert_eq!(e.address, "10.0.0.1");
    assert_eq!(e.port_for(&svc.ports[0]), 5001);
    assert_eq!(e.locality.to_string(), "us-east/us-east-1a/rack-1");
    assert_eq!(e.service_account, "helloworld");
    assert_eq!(e.labels["version"], "v1");
    assert_eq!(
        (e.cluster.as_str(), e.network.as_str()),
        ("east", "net-east")
    );
    assert!(e.healthy);
    assert!(!svc.endpoints[1].healthy, "terminating");
    assert!(!svc.endpoints[2].healthy, "not ready");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("ServiceExport sample/ghost")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn service_entries_static_dns_and_selected_workloads() {
    let r = registry(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm-api, namespace: sample}
spec:
  hosts: [api.vm.internal]
  addresses: [240.0.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP, targetPort: 9080}]
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: sample}
spec:
  address: 127.0.10.7
  labels: {app: api, version: v2}
  locality: us-east/us-east-1b
  serviceAccount: api
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other-ns, namespace: other}
spec: {address: 127.0.10.8, labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: sample}
spec:
  hosts: [httpbin.org]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
"#,
    );
    let api = r.service("api.vm.internal").unwrap();
    assert_eq!(api.resolution, Resolution::Static);
    assert_eq!(
        api.endpoints.len(),
        1,
        "only the same namespace is selected"
    );
    let e = &api.endpoints[0];
    assert_eq!(
        (e.address.as_str(), e.port_for(&api.ports[0])),
        ("127.0.10.7", 9080)
    );
    assert_eq!(e.service_account, "api");
    let ext = r.service("httpbin.org").unwrap();
    assert_eq!(
        (ext.location, ext.resolution),
        (MeshLocation::External, Resolution::Dns)
    );
    assert_eq!(ext.endpoints[0].address, "httpbin.org");
    assert_eq!(ext.ports[0].protocol, Protocol::Tls);
}

#[test]
fn global_host_merges_remote_and_local_endpoints() {
    let imported = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: helloworld-global, namespace: sample}
spec:
  hosts: [helloworld.sample.global]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5000, name: http-web, protocol: HTTP}]
  endpoints:
  - address: 127.0.20.2
    network: net-west
    locality: us-west/us-west-1a
    weight: 3
    labels: {topology.istio.io/cluster: west}
    ports: {http-web: 15443}
  - address: 127.0.30.2
    network: net-central
    weight: 0
    labels: {topology.istio.io/cluster: central}
"#;
    let r = registry(&format!("{KUBE}{imported}"));
    let g = r.service("helloworld.sample.global").unwrap();
    let clusters: Vec<_> = g
        .endpoints
        .iter()
        .map(|e| (e.cluster.as_str(), e.healthy, e.weight))
        .collect();
    assert_eq!(
        clusters,
        [
            ("west", true, 3),
            ("central", false, 1),
            ("east", true, 1),
            ("east", false, 1),
            ("east", false, 1)
        ]
    );
    let local = &g.endpoints[2];
    assert_eq!(
        local.port_for(&g.ports[0]),
        5001,
        "local port mapped by number"
    );
}

#[test]
fn external_name_services_are_skipped_with_a_warning() {
    let r = registry(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: sample}\nspec: {type: ExternalName, externalName: example.com}\n",
    );
    assert!(r.is_empty());
    assert!(
        r.warnings[0].contains("Service sample/ext"),
        "{:?}",
        r.warnings
    );
}
