//! The contract with the control plane: what the federation controller
//! writes into west's config directory must make west's control plane send a
//! west sidecar east's gateway (healthy, weighted) for the `.global` host,
//! with the Istio SNI and east's SPIFFE identity, next to west's own
//! endpoints; and east's gateway must route that SNI. Uses the control
//! plane's own generators on the directories the controllers wrote.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use isthmus_api::naming::Locality;
use isthmus_config::Store;
use isthmus_config::dir::Scanner;
use isthmus_control_plane::registry::ClusterContext;
use isthmus_control_plane::xds::generate::{MeshConfig, PushContext, clusters, endpoints, gateway};
use isthmus_control_plane::xds::json::to_json;
use isthmus_control_plane::xds::{ProxyInfo, ProxyRole};
use support::*;

fn target(lb: &LbEndpoint) -> String {
    let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
        return String::new();
    };
    let Some(address::Address::SocketAddress(sa)) =
        ep.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return String::new();
    };
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => p,
        _ => 0,
    };
    format!("{}:{port}", sa.address)
}

fn push_context(cluster: &Cluster) -> PushContext {
    let store = Store::new();
    Scanner::new(&cluster.config_dir())
        .rescan(&store)
        .expect("scan config dir");
    let snapshot = store.snapshot();
    let errors: Vec<String> = snapshot
        .errors()
        .map(|(k, e)| format!("{k:?}: {e}"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    PushContext::build(
        &snapshot,
        MeshConfig {
            cluster: ClusterContext {
                cluster: cluster.spec.name.clone(),
                network: cluster.spec.network.clone(),
                domain: "cluster.local".into(),
            },
            trust_domain: cluster.spec.trust_domain.clone(),
            trust_bundle_pem: String::new(),
            root_namespace: "istio-system".into(),
            ..MeshConfig::default()
        },
    )
}

fn proxy(cluster: &Cluster, role: ProxyRole) -> ProxyInfo {
    ProxyInfo {
        id: format!("{role}~127.0.0.1~sleep.sample~sample.svc.cluster.local"),
        role,
        ip: None,
        workload: "sleep".into(),
        namespace: "sample".into(),
        cluster: cluster.spec.name.clone(),
        network: cluster.spec.network.clone(),
        service_account: "sleep".into(),
        labels: BTreeMap::new(),
        locality: cluster.spec.locality.parse::<Locality>().expect("locality"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn west_control_plane_routes_global_host_to_east_gateway_with_istio_sni() {
    let net = test_net();
    let root = root();
    let (e, w) = (
        ClusterSpec::new("east", net, 1),
        ClusterSpec::new("west", net, 2),
    );
    let mut east = Cluster::new(e.clone(), &root);
    let mut west = Cluster::new(w.clone(), &root);
    east.link(&[(&w, &w.trust_domain)]);
    west.link(&[(&e, &e.trust_domain)]);
    east.add_service("helloworld", 2, 0);
    east.export("helloworld");
    west.add_service("helloworld", 1, 0);
    for c in [&mut east, &mut west] {
        c.start_gateway().await;
        c.start().await;
    }
    eventually("imported", Duration::from_secs(10), || {
        west.imported().get("helloworld.east").map(|_| ())
    })
    .await;

    let pc = push_context(&west);
    let sidecar = proxy(&west, ProxyRole::Sidecar);
    let name = "outbound|5000||helloworld.sample.global";
    let cla = endpoints::assignment(&pc, &sidecar, name).expect("EDS for the .global host");
    let mut seen = BTreeSet::new();
    for group in &cla.endpoints {
        for lb in &group.lb_endpoints {
            let weight = lb.load_balancing_weight.as_ref().map(|w| w.value);
            let target = target(lb);
            if target == e.gateway().to_string() {
                assert_eq!(weight, Some(2), "east gateway weighted by healthy count");
                assert_eq!(lb.health_status, HealthStatus::Healthy as i32);
                seen.insert("east-gateway");
            } else if target == "10.1.0.1:5000" {
                seen.insert("west-local");
            } else {
                panic!("unexpected endpoint {target}");
            }
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["east-gateway", "west-local"]),
        "{cla:?}"
    );

    let cds = clusters::sidecar(&pc, &sidecar);
    let cluster = cds
        .iter()
        .find(|r| r.name == name)
        .expect("CDS for the .global host");
    let json = to_json(&cluster.resource).expect("json").to_string();
    assert!(
        json.contains("outbound_.5000_._.helloworld.sample.global"),
        "SNI: {json}"
    );
    assert!(
        json.contains("spiffe://east.isthmus.local/ns/sample/sa/helloworld"),
        "east's identity is accepted: {json}"
    );

    // East's gateway routes exactly that SNI to its local endpoints.
    let pc_east = push_context(&east);
    let gw = proxy(&east, ProxyRole::Gateway);
    let listeners = gateway::listeners(&pc_east, &gw);
    let json = to_json(&listeners[0].resource).expect("json").to_string();
    assert!(
        json.contains("outbound_.5000_._.helloworld.sample.global"),
        "{json}"
    );
    for c in [&mut east, &mut west] {
        c.stop().await;
    }
}
