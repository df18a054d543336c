//! Split horizon over every gateway of a network: EDS spreads a remote
//! network's endpoints over all its gateways (IP addresses and resolved
//! hostnames), and the whole control plane follows a hostname gateway whose
//! DNS answer changes (a real DNS server on loopback, a real ADS client).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use isthmus_api::load::load_yaml;
use isthmus_config::Store;
use isthmus_control_plane::registry::ClusterContext;
use isthmus_control_plane::resolve::{ResolvedGateways, ResolverOptions};
use isthmus_control_plane::run::{MoreOptions, Options, Source, start_full};
use isthmus_control_plane::xds::generate::{MeshConfig, PushContext};
use isthmus_control_plane::xds::{Changes, ConfigState, ENDPOINT, json};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

mod fixtures;
use fixtures::{golden, sleep_proxy};

/// East's view: helloworld has one local endpoint, three in west (weights
/// 3, 2, 2) and one in central, reached through those networks' gateways.
fn config(west_gateways: &str) -> String {
    format!(
        r#"
apiVersion: federation.isthmus.io/v1alpha1
kind: MeshFederation
metadata: {{name: mesh, namespace: isthmus-system}}
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
    gatewayAddresses: {west_gateways}
    network: net-west
    locality: us-west/us-west-1a
    trustDomain: west.isthmus.local
  - name: central
    federationEndpoint: "127.0.30.4:15021"
    gatewayAddresses: ["gw.central.example:15443"]
    network: net-central
    locality: eu-central/eu-central-1a
    trustDomain: central.isthmus.local
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: helloworld, namespace: sample}}
spec:
  hosts: [helloworld.sample.global]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5000, name: http}}]
  endpoints:
  - address: 127.0.10.11
    labels: {{topology.istio.io/cluster: east, topology.istio.io/network: net-east}}
  - address: 10.20.0.1
    weight: 3
    labels: {{topology.istio.io/cluster: west, topology.istio.io/network: net-west}}
  - address: 10.20.0.2
    weight: 2
    labels: {{topology.istio.io/cluster: west, topology.istio.io/network: net-west}}
  - address: 10.20.0.3
    weight: 2
    labels: {{topology.istio.io/cluster: west, topology.istio.io/network: net-west}}
  - address: 10.30.0.1
    labels: {{topology.istio.io/cluster: central, topology.istio.io/network: net-central}}
"#
    )
}

const CLUSTER_NAME: &str = "outbound|5000||helloworld.sample.global";

fn mesh() -> MeshConfig {
    MeshConfig {
        cluster: ClusterContext {
            cluster: "east".into(),
            network: "net-east".into(),
            domain: "cluster.local".into(),
        },
        trust_domain: "east.isthmus.local".into(),
        ..MeshConfig::default()
    }
}

fn store(yaml: &str) -> Store {
    let loaded = load_yaml(Some("mesh.yaml"), yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let store = Store::new();
    store.replace_origin("mesh.yaml", loaded.resources);
    store
}

fn assignment(pc: &PushContext) -> ClusterLoadAssignment {
    let names: BTreeSet<String> = [CLUSTER_NAME.to_string()].into();
    let out = pc.generate(&sleep_proxy(), ENDPOINT, &names).unwrap();
    assert_eq!(out.len(), 1);
    ClusterLoadAssignment::decode(out[0].resource.value.as_slice()).unwrap()
}

/// (address:port, weight) of every endpoint.
fn endpoints(cla: &ClusterLoadAssignment) -> Vec<(String, u32)> {
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("{e:?}")
            };
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                panic!("{ep:?}")
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                panic!("{sa:?}")
            };
            (
                format!("{}:{port}", sa.address),
                e.load_balancing_weight.as_ref().unwrap().value,
            )
        })
        .collect()
}

#[test]
fn a_remote_network_is_spread_over_all_its_gateways() {
    let store = store(&config(
        r#"["127.0.20.2:15443", "127.0.20.3:15443", "gw.west.example:15443"]"#,
    ));
    // Not resolved yet: west has its two IP gateways, central none (its
    // endpoint is left out, with a warning).
    let pc = PushContext::build(&store.snapshot(), mesh());
    assert_eq!(
        endpoints(&assignment(&pc)),
        [
            ("127.0.10.11:5000".to_string(), 1),
            ("127.0.20.2:15443".to_string(), 4),
            ("127.0.20.3:15443".to_string(), 3),
        ]
    );
    assert!(
        pc.warnings
            .iter()
            .any(|w| w.contains("gw.central.example") && w.contains("not resolved")),
        "{:?}",
        pc.warnings
    );

    // Resolved: west's hostname adds an IPv4 and an IPv6 gateway (one
    // duplicates an IP gateway), central gets its gateway. West's weight (7)
    // is split over its three distinct gateways.
    let resolved: ResolvedGateways = [
        (
            "gw.west.example".to_string(),
            vec!["127.0.20.3".parse().unwrap(), "::1".parse().unwrap()],
        ),
        (
            "gw.central.example".to_string(),
            vec!["127.0.30.2".parse().unwrap()],
        ),
    ]
    .into();
    let pc = PushContext::build_with(&store.snapshot(), mesh(), Arc::new(resolved), 0);
    let cla = assignment(&pc);
    assert_eq!(
        endpoints(&cla),
        [
            ("127.0.10.11:5000".to_string(), 1),
            ("127.0.20.2:15443".to_string(), 3),
            ("127.0.20.3:15443".to_string(), 2),
            ("127.0.30.2:15443".to_string(), 1),
            ("::1:15443".to_string(), 2),
        ]
    );
    assert!(pc.warnings.is_empty(), "{:?}", pc.warnings);
    let names: BTreeSet<String> = [CLUSTER_NAME.to_string()].into();
    let resource = &pc.generate(&sleep_proxy(), ENDPOINT, &names).unwrap()[0];
    golden("multi-gateway", json::to_json(&resource.resource).unwrap());
}

#[test]
fn new_gateway_addresses_are_an_endpoints_only_change() {
    let store = store(&config(r#"["gw.west.example:15443"]"#));
    let snapshot = store.snapshot();
    let before = PushContext::build(&snapshot, mesh());
    let resolved = |ip: &str| -> Arc<ResolvedGateways> {
        Arc::new([("gw.west.example".to_string(), vec![ip.parse().unwrap()])].into())
    };
    let after = before.with_inputs(&snapshot, mesh(), resolved("127.0.20.2"));
    assert!(after.version > before.version);
    assert_eq!(after.store_version, before.store_version);
    let Changes::Endpoints(scope) = after.changes_since(before.version) else {
        panic!("{:?}", after.changes_since(before.version));
    };
    assert_eq!(scope.clusters, [CLUSTER_NAME.to_string()].into());
    // The same answer again changes nothing; a new trust bundle changes everything.
    let same = after.with_inputs(&snapshot, mesh(), resolved("127.0.20.2"));
    assert_eq!(same.changes_since(after.version), Changes::None);
    let bundle = MeshConfig {
        trust_bundle_pem: "roots".into(),
        ..mesh()
    };
    let rotated = same.with_inputs(&snapshot, bundle, resolved("127.0.20.2"));
    assert_eq!(rotated.changes_since(same.version), Changes::All);
    assert!(rotated.version > same.version);
}

/// A DNS server on loopback answering `gw.west.example` with whatever
/// `answer` holds (TTL 1 s), or SERVFAIL when it is empty.
struct DnsServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Vec<IpAddr>>>,
    queries: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    async fn start(initial: &[&str]) -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(
            initial
                .iter()
                .map(|s| s.parse().unwrap())
                .collect::<Vec<IpAddr>>(),
        ));
        let queries = Arc::new(Mutex::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                *q.lock().unwrap() += 1;
                let ips = a.lock().unwrap().clone();
                let reply = respond(&request, &ips);
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        Self {
            addr,
            answer,
            queries,
            task,
        }
    }

    fn set(&self, ips: &[&str]) {
        *self.answer.lock().unwrap() = ips.iter().map(|s| s.parse().unwrap()).collect();
    }

    fn queries(&self) -> u32 {
        *self.queries.lock().unwrap()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(request: &Message, ips: &[IpAddr]) -> Message {
    let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    if ips.is_empty() {
        reply.metadata.response_code = ResponseCode::ServFail;
        return reply;
    }
    for q in &request.queries {
        let name = q.name().clone();
        if name.to_ascii().trim_end_matches('.') != "gw.west.example" {
            reply.metadata.response_code = ResponseCode::NXDomain;
            continue;
        }
        for ip in ips {
            let rdata = match (ip, q.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            reply.add_answer(Record::from_rdata(name.clone(), 1, rdata));
        }
    }
    reply
}

/// The next EDS response with the gateway addresses it carries.
async fn next_gateways(
    rx: &mut tonic::Streaming<DiscoveryResponse>,
) -> (DiscoveryResponse, BTreeSet<String>) {
    let r = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("EDS within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(r.type_url, ENDPOINT);
    let mut out = BTreeSet::new();
    for any in &r.resources {
        let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        out.extend(
            endpoints(&cla)
                .into_iter()
                .map(|(a, _)| a)
                .filter(|a| a.ends_with(":15443")),
        );
    }
    (r, out)
}

#[tokio::test]
async fn eds_follows_a_hostname_gateway_whose_address_changes() {
    let dns = DnsServer::start(&["127.0.20.2", "::1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("mesh.yaml"),
        config(r#"["gw.west.example:15443"]"#),
    )
    .unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "tok: {namespace: sample, serviceAccount: sleep}\n").unwrap();
    let shutdown = CancellationToken::new();
    let options = Options {
        cluster: "east".into(),
        network: "net-east".into(),
        domain: "cluster.local".into(),
        source: Source::Directory(config_dir),
        ca_dir: None,
        ca_secret: None,
        trust_domain: "east.isthmus.local".into(),
        bootstrap_tokens: Some(tokens),
        xds_listen: "127.0.0.1:0".parse().unwrap(),
        debug_listen: "127.0.0.1:0".parse().unwrap(),
        drain_grace: Duration::from_secs(1),
    };
    let more = MoreOptions {
        gateway_dns: ResolverOptions {
            name_servers: vec![dns.addr],
            min_refresh: Duration::from_millis(200),
            max_refresh: Duration::from_secs(2),
            keep_stale: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
        },
        ..MoreOptions::default()
    };
    let (bound, run) = start_full(options, more, shutdown.clone()).await.unwrap();
    let server = tokio::spawn(run);

    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", bound.xds))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let request = |nonce: &str, version: &str| DiscoveryRequest {
        node: Some(sleep_proxy().to_node()),
        type_url: ENDPOINT.into(),
        resource_names: vec![CLUSTER_NAME.into()],
        response_nonce: nonce.into(),
        version_info: version.into(),
        ..DiscoveryRequest::default()
    };
    tx.send(request("", "")).await.unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    // Waits (bounded) for an EDS response whose gateways are `want`, ACKing each.
    let mut seen = Vec::new();
    let mut wait_for = async |want: &[&str]| {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (r, gateways) = next_gateways(&mut responses).await;
            tx.send(request(&r.nonce, &r.version_info)).await.unwrap();
            seen.push(gateways.clone());
            if gateways == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never got {want:?}; saw {seen:?}"
            );
        }
    };
    // Both records of the hostname (A and AAAA) become gateways.
    wait_for(&["127.0.20.2:15443", "::1:15443"]).await;
    // The answer changes: within a few refreshes the proxy gets the new address.
    let changed = Instant::now();
    dns.set(&["127.0.20.3"]);
    wait_for(&["127.0.20.3:15443"]).await;
    let followed = changed.elapsed();
    // The server fails: the last good answer stays (no EDS change).
    dns.set(&[]);
    let before = dns.queries();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(dns.queries() > before, "the resolver kept asking");
    let quiet = tokio::time::timeout(Duration::from_millis(300), responses.message()).await;
    assert!(quiet.is_err(), "EDS changed while DNS failed: {quiet:?}");
    eprintln!("EDS followed the DNS change in {followed:?}");
    assert!(followed < Duration::from_secs(3), "{followed:?}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
