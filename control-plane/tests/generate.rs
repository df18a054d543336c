//! Generated xDS for representative configs, compared with golden JSON
//! (regenerate with `UPDATE_GOLDEN=1 cargo test -p isthmus-control-plane --test generate`),
//! and the check that every emitted resource decodes as its type URL says.

use std::collections::BTreeSet;

use isthmus_api::load::load_yaml;
use isthmus_config::Store;
use isthmus_control_plane::registry::ClusterContext;
use isthmus_control_plane::xds::generate::{MeshConfig, PushContext};
use isthmus_control_plane::xds::{
    CLUSTER, ConfigState, ENDPOINT, LISTENER, ProxyInfo, ProxyRole, ROUTE, SECRET, json,
};
use serde_json::{Value, json};

#[allow(dead_code)]
mod fixtures;
use fixtures::golden;

/// East's view of a two-cluster federation: helloworld v1 runs in east (two
/// zones), v2 is imported from west through west's gateway.
const MESH: &str = r#"
apiVersion: federation.isthmus.io/v1alpha1
kind: MeshFederation
metadata: {name: mesh, namespace: isthmus-system}
spec:
  local:
    cluster: east
    network: net-east
    locality: us-east/us-east-1a
    trustDomain: east.isthmus.local
    gatewayAddresses: ["127.0.10.2:15443"]
  peers:
  - name: west
    federationEndpoint: "127.0.20.4:15021"
    gatewayAddresses: ["127.0.20.2:15443"]
    network: net-west
    locality: us-west/us-west-1a
    trustDomain: west.isthmus.local
---
apiVersion: v1
kind: Service
metadata: {name: helloworld, namespace: sample}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 5000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: helloworld-1, namespace: sample, labels: {kubernetes.io/service-name: helloworld}}
addressType: IPv4
ports: [{name: http, port: 5000}]
endpoints:
- addresses: [127.0.10.11]
  zone: us-east-1a
  targetRef: {kind: Pod, name: helloworld-v1-a, namespace: sample}
- addresses: [127.0.10.12]
  zone: us-east-1b
  targetRef: {kind: Pod, name: helloworld-v1-b, namespace: sample}
---
apiVersion: v1
kind: Pod
metadata:
  name: helloworld-v1-a
  namespace: sample
  labels: {app: helloworld, version: v1, topology.kubernetes.io/region: us-east}
spec: {serviceAccountName: helloworld, containers: [{name: app, image: hw}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: helloworld-v1-b
  namespace: sample
  labels: {app: helloworld, version: v1, topology.kubernetes.io/region: us-east}
spec: {serviceAccountName: helloworld, containers: [{name: app, image: hw}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: helloworld, namespace: sample}
---
apiVersion: v1
kind: Service
metadata: {name: secret-db, namespace: sample}
spec:
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: helloworld-global, namespace: sample}
spec:
  hosts: [helloworld.sample.global]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5000, name: http, protocol: HTTP}]
  endpoints:
  - address: 127.0.20.2
    network: net-west
    locality: us-west/us-west-1a
    weight: 2
    serviceAccount: helloworld
    labels: {topology.istio.io/cluster: west, version: v2}
    ports: {http: 15443}
"#;

const CANARY: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-global, namespace: sample}
spec:
  host: helloworld.sample.global
  subsets:
  - {name: east, labels: {topology.istio.io/cluster: east}}
  - {name: west, labels: {topology.istio.io/cluster: west}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld-global, namespace: sample}
spec:
  hosts: [helloworld.sample.global]
  http:
  - route:
    - {destination: {host: helloworld.sample.global, subset: east}, weight: 90}
    - {destination: {host: helloworld.sample.global, subset: west}, weight: 10}
"#;

const FAILOVER: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-global, namespace: sample}
spec:
  host: helloworld.sample.global
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s}
    loadBalancer:
      localityLbSetting:
        enabled: true
        failover: [{from: us-east, to: us-west}]
"#;

const FAULT_AND_MIRROR: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 100}}
      abort: {httpStatus: 500, percentage: {value: 10}}
    route: [{destination: {host: helloworld}}]
  - route: [{destination: {host: helloworld}}]
    mirror: {host: helloworld.sample.global, subset: west}
    mirrorPercentage: {value: 25}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,gateway-error,503"}
"#;

const STICKY: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld, namespace: sample}
spec:
  host: helloworld.sample.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 5s, baseEjectionTime: 10s, minHealthPercent: 20}
    loadBalancer:
      consistentHash:
        httpCookie: {name: session, path: /, ttl: 600s}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}
      loadBalancer:
        consistentHash: {httpHeaderName: X-User, ringHash: {minimumRingSize: 4096}}
"#;

fn push_context(extra: &str) -> PushContext {
    let loaded = load_yaml(Some("mesh.yaml"), &format!("{MESH}---\n{extra}"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let store = Store::new();
    store.replace_origin("mesh.yaml", loaded.resources);
    let mesh = MeshConfig {
        cluster: ClusterContext {
            cluster: "east".into(),
            network: "net-east".into(),
            domain: "cluster.local".into(),
        },
        trust_domain: "east.isthmus.local".into(),
        trust_bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        root_namespace: "istio-system".into(),
        ..MeshConfig::default()
    };
    PushContext::build(&store.snapshot(), mesh)
}

fn proxy(role: ProxyRole, workload: &str, locality: &str) -> ProxyInfo {
    ProxyInfo {
        id: ProxyInfo::node_id(role, "127.0.10.21".parse().ok(), workload, "sample"),
        role,
        ip: "127.0.10.21".parse().ok(),
        workload: workload.into(),
        namespace: "sample".into(),
        cluster: "east".into(),
        network: "net-east".into(),
        service_account: workload.into(),
        labels: [("app".to_string(), workload.to_string())].into(),
        locality: locality.parse().unwrap(),
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Generates `type_url` resources and renders those whose names pass `keep` as JSON.
fn render(
    pc: &PushContext,
    p: &ProxyInfo,
    type_url: &str,
    req: &[&str],
    keep: impl Fn(&str) -> bool,
) -> Vec<Value> {
    pc.generate(p, type_url, &names(req))
        .unwrap()
        .into_iter()
        .filter(|r| keep(&r.name))
        .map(|r| {
            assert_eq!(r.resource.type_url, type_url, "{}", r.name);
            json::to_json(&r.resource).unwrap_or_else(|e| panic!("{}: {e}", r.name))
        })
        .collect()
}

#[test]
fn canary_90_10_across_two_clusters() {
    let pc = push_context(CANARY);
    let sleep = proxy(ProxyRole::Sidecar, "sleep", "us-east/us-east-1a");
    let global =
        |n: &str| n.ends_with("|helloworld.sample.global") || n.ends_with(":5000") || n == "5000";
    golden(
        "canary-90-10",
        json!({
            "clusters": render(&pc, &sleep, CLUSTER, &[], global),
            "endpoints": render(&pc, &sleep, ENDPOINT, &["outbound|5000|east|helloworld.sample.global", "outbound|5000|west|helloworld.sample.global"], |_| true),
            "routes": render(&pc, &sleep, ROUTE, &["5000"], |_| true),
        }),
    );
}

#[test]
fn locality_failover_priorities() {
    let pc = push_context(FAILOVER);
    let in_1a = proxy(ProxyRole::Sidecar, "sleep", "us-east/us-east-1a");
    let eds = &["outbound|5000||helloworld.sample.global"];
    golden(
        "locality-failover",
        json!({
            "from-us-east-1a": render(&pc, &in_1a, ENDPOINT, eds, |_| true),
            "from-eu-west": render(&pc, &proxy(ProxyRole::Sidecar, "sleep", "eu-west/eu-west-1a"), ENDPOINT, eds, |_| true),
        }),
    );
}

#[test]
fn fault_injection_and_mirroring_routes() {
    let pc = push_context(&format!("{CANARY}---\n{FAULT_AND_MIRROR}"));
    let sleep = proxy(ProxyRole::Sidecar, "sleep", "us-east/us-east-1a");
    let routes = render(&pc, &sleep, ROUTE, &["5000"], |_| true);
    let vhost = routes[0]["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "helloworld.sample.svc.cluster.local:5000")
        .cloned()
        .unwrap();
    golden("fault-and-mirror", vhost);
}

#[test]
fn consistent_hash_ring_hash_clusters_route_hash_policies_and_h2_upgrade_policy() {
    let sticky_vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld-local, namespace: sample}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /v1}}]
    route: [{destination: {host: helloworld.sample.svc.cluster.local, subset: v1}}]
  - route: [{destination: {host: helloworld.sample.svc.cluster.local}}]
"#;
    let pc = push_context(&format!("{STICKY}---\n{sticky_vs}"));
    let sleep = proxy(ProxyRole::Sidecar, "sleep", "us-east/us-east-1a");
    let local = |n: &str| n.ends_with("|helloworld.sample.svc.cluster.local");
    let routes = render(&pc, &sleep, ROUTE, &["5000"], |_| true);
    let vhost = routes[0]["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "helloworld.sample.svc.cluster.local:5000")
        .cloned()
        .unwrap();
    golden(
        "consistent-hash",
        json!({
            "clusters": render(&pc, &sleep, CLUSTER, &[], local),
            "virtualHost": vhost,
        }),
    );
}

#[test]
fn gateway_sni_chains_cover_only_exported_services() {
    let pc = push_context(CANARY);
    let gw = proxy(ProxyRole::Gateway, "eastwest-gateway", "us-east/us-east-1a");
    let listeners = render(&pc, &gw, LISTENER, &[], |_| true);
    let text = listeners[0].to_string();
    assert!(
        text.contains("outbound_.5000_._.helloworld.sample.global"),
        "{text}"
    );
    assert!(
        !text.contains("secret-db"),
        "unexported services must have no chain"
    );
    assert!(
        listeners[0].get("defaultFilterChain").is_none(),
        "no default route through the gateway"
    );
    let eds = render(
        &pc,
        &gw,
        ENDPOINT,
        &["outbound|5000||helloworld.sample.svc.cluster.local"],
        |_| true,
    );
    assert!(
        !eds[0].to_string().contains("127.0.20.2"),
        "the gateway only sends to its own cluster"
    );
    golden(
        "gateway-sni",
        json!({
            "listeners": listeners,
            "clusters": render(&pc, &gw, CLUSTER, &[], |_| true),
            "endpoints": eds,
        }),
    );
}

#[test]
fn every_resource_decodes_with_its_exact_type_url() {
    let pc = push_context(&format!("{CANARY}---\n{FAULT_AND_MIRROR}---\n{FAILOVER}").replace("name: helloworld-global, namespace: sample}\nspec:\n  host: helloworld.sample.global\n  trafficPolicy", "name: hw-failover, namespace: sample}\nspec:\n  host: helloworld.sample.global\n  trafficPolicy"));
    for p in [
        proxy(ProxyRole::Sidecar, "sleep", "us-east/us-east-1a"),
        proxy(ProxyRole::Sidecar, "helloworld-v1-a", "us-east/us-east-1a"),
        proxy(ProxyRole::Gateway, "eastwest-gateway", "us-east/us-east-1a"),
    ] {
        let clusters: Vec<String> = pc
            .generate(&p, CLUSTER, &BTreeSet::new())
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        let cluster_refs: Vec<&str> = clusters.iter().map(String::as_str).collect();
        for (ty, req) in [
            (CLUSTER, vec![]),
            (ENDPOINT, cluster_refs.clone()),
            (LISTENER, vec![]),
            (ROUTE, vec!["5000"]),
            (SECRET, vec!["ROOTCA"]),
        ] {
            for r in pc.generate(&p, ty, &names(&req)).unwrap() {
                assert_eq!(r.resource.type_url, ty);
                json::to_json(&r.resource).unwrap_or_else(|e| panic!("{} {}: {e}", p.id, r.name));
            }
        }
    }
}

/// The DNS server answers a global service's VIP (`vip` policy); a TCP port
/// only works if the sidecar has a listener on that VIP, so both come from
/// one allocation and must agree.
#[test]
fn sidecars_listen_on_the_vips_dns_answers_for_global_tcp_services() {
    use isthmus_control_plane::dns_feed::VipRange;
    use isthmus_control_plane::dns_feed::build::snapshot;
    let pc = push_context(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: redis-global, namespace: sample}
spec:
  hosts: [redis.sample.global]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 6379, name: tcp-redis, protocol: TCP}]
  endpoints:
  - address: 127.0.20.2
    ports: {tcp-redis: 15443}
    network: net-west
    locality: us-west/us-west-1a
    labels: {topology.istio.io/cluster: west}
"#,
    );
    let feed = snapshot(&pc.registry, "east", &VipRange::default(), 1);
    let vip = |name: &str| {
        feed.services
            .iter()
            .find(|s| s.name == name && s.namespace == "sample")
            .unwrap_or_else(|| panic!("{name} not in the DNS feed"))
            .vips[0]
            .clone()
    };
    let redis = vip("redis");
    assert!(redis.starts_with("240.240."), "{redis}");
    let sleep = proxy(ProxyRole::Sidecar, "sleep", "us-east/us-east-1a");
    let listeners = render(&pc, &sleep, LISTENER, &[], |_| true);
    let name = format!("{redis}_6379");
    let l = listeners
        .iter()
        .find(|l| l["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no listener {name}"));
    let text = l.to_string();
    assert!(
        text.contains("outbound|6379||redis.sample.global"),
        "{text}"
    );
    assert_eq!(l["address"]["socketAddress"]["address"], redis.as_str());
    // Another range moves both, together.
    let range: VipRange = "10.250.0.0/16".parse().unwrap();
    let other = snapshot(&pc.registry, "east", &range, 1);
    let moved = &other
        .services
        .iter()
        .find(|s| s.name == "redis")
        .unwrap()
        .vips[0];
    assert!(moved.starts_with("10.250."), "{moved}");
}
