//! `isthmus link --context a --context b` against two fake API servers on loopback, reached
//! through a kubeconfig file with two contexts, as a user's kubectl would reach two clusters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use isthmus_api::federation::Peer;
use isthmus_test_support::apiserver::{FakeApiServer, RequestAction};
use serde_json::{Value, json};

use super::super::tests::parse;

const NS: &str = "isthmus-system";
const MF_API: &str = "federation.isthmus.io/v1alpha1";

/// One fake cluster: its API server and what the test seeded.
struct Fake {
    server: Arc<FakeApiServer>,
    root_pem: String,
}

async fn fake() -> Fake {
    let server = FakeApiServer::start().await;
    server.register("v1", "Secret", "secrets", true);
    server.register(MF_API, "MeshFederation", "meshfederations", true);
    let root = isthmus_identity::tool::create_root("test root").expect("root CA");
    Fake {
        server: Arc::new(server),
        root_pem: root.cert_pem().to_owned(),
    }
}

/// What `isthmus install` renders (chart contract): `mesh` with `spec.local`, no peers.
fn mesh_federation(cluster: &str, gateways: &[&str]) -> Value {
    json!({
        "apiVersion": MF_API, "kind": "MeshFederation",
        "metadata": {"name": "mesh", "namespace": NS},
        "spec": {"local": {
            "cluster": cluster, "network": format!("network-{cluster}"),
            "locality": format!("{cluster}-region/{cluster}-zone"),
            "trustDomain": format!("{cluster}.isthmus.local"),
            "gatewayAddresses": gateways, "federationListen": "0.0.0.0:15021"
        }}
    })
}

fn load_balancer(name: &str, port: u16, ingress: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "LoadBalancer", "ports": [
            {"name": "tcp", "port": port, "targetPort": port, "nodePort": 30000 + port % 1000}
        ]},
        "status": {"loadBalancer": {"ingress": ingress}}
    })
}

fn node_port(name: &str, port: u16, node_port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "NodePort", "ports": [
            {"name": "admin", "port": 15000, "nodePort": 30000},
            {"name": "tcp", "port": port, "targetPort": port, "nodePort": node_port}
        ]}
    })
}

fn node(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"addresses": [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": ip}
        ]}
    })
}

fn cacerts(root_pem: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": NS},
        "type": "Opaque",
        "data": {"root-cert.pem": b64(root_pem), "ca-cert.pem": b64("not read by link")}
    })
}

/// east: gateways behind a load balancer with a hostname (AWS style), federation on an IP.
/// A peer `north` was linked before.
async fn east() -> Fake {
    let east = fake().await;
    let mut mf = mesh_federation("east", &[]);
    mf["spec"]["peers"] = json!([{
        "name": "north", "federationEndpoint": "north.example.com:15021",
        "gatewayAddresses": ["north-gw.example.com:15443"], "network": "network-north",
        "locality": "north-region", "trustDomain": "north.isthmus.local"
    }]);
    east.server.apply(mf);
    east.server.apply(load_balancer(
        "isthmus-eastwestgateway",
        15443,
        json!([{"hostname": "east-gw.elb.example.com"}]),
    ));
    east.server.apply(load_balancer(
        "isthmus-federation",
        15021,
        json!([{"ip": "127.0.10.4"}]),
    ));
    east.server.apply(cacerts(&east.root_pem));
    east
}

/// west: kind-like, NodePort Services on two nodes.
async fn west() -> Fake {
    let west = fake().await;
    west.server.apply(mesh_federation("west", &[]));
    west.server
        .apply(node_port("isthmus-eastwestgateway", 15443, 31443));
    west.server
        .apply(node_port("isthmus-federation", 15021, 31021));
    west.server.apply(node("west-worker", "127.0.20.3"));
    west.server.apply(node("west-control-plane", "127.0.20.2"));
    west.server.apply(cacerts(&west.root_pem));
    west
}

/// A kubeconfig with contexts `ctx-<name>` pointing at each `(name, url)`.
fn kubeconfig(dir: &Path, servers: &[(&str, String)]) -> PathBuf {
    let mut clusters = String::new();
    let mut contexts = String::new();
    for (name, url) in servers {
        clusters.push_str(&format!("- name: {name}\n  cluster:\n    server: {url}\n"));
        contexts.push_str(&format!(
            "- name: ctx-{name}\n  context:\n    cluster: {name}\n    user: nobody\n"
        ));
    }
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}contexts:\n{contexts}\
         users:\n- name: nobody\n  user: {{}}\ncurrent-context: ctx-{}\n",
        servers[0].0
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// Runs `isthmus link <args>` and returns its output or error.
async fn run(args: &[&str]) -> anyhow::Result<String> {
    let args = parse(args);
    let super::super::Mode::Kubernetes(a, b) = super::super::mode(&args)? else {
        panic!("not Kubernetes mode: {args:?}");
    };
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), super::run(&args, (a, b), &mut out))
        .await
        .expect("link finishes within 20 s")?;
    Ok(String::from_utf8(out).expect("UTF-8 output"))
}

/// Overrides naming west's node-port addresses, so that its Services need not say them.
const WEST_BY_NODE_PORT: [&str; 4] = [
    "--gateway-address",
    "ctx-west=127.0.20.2:31443",
    "--federation-endpoint",
    "ctx-west=127.0.20.2:31021",
];

fn link_args<'a>(kubeconfig: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--kubeconfig",
        kubeconfig,
        "--context",
        "ctx-east",
        "--context",
        "ctx-west",
    ];
    args.extend_from_slice(extra);
    args
}

fn peers(server: &FakeApiServer) -> Vec<Peer> {
    let mf = server
        .get(MF_API, "MeshFederation", Some(NS), "mesh")
        .expect("MeshFederation mesh");
    serde_json::from_value(mf["spec"]["peers"].clone()).expect("spec.peers parse as peers")
}

fn peer<'a>(peers: &'a [Peer], name: &str) -> &'a Peer {
    peers
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no peer {name} in {peers:?}"))
}

fn replaces(server: &FakeApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.action == RequestAction::Replace)
        .count()
}

#[tokio::test]
async fn link_discovers_both_clusters_and_writes_each_into_the_other() {
    let (east, west) = (east().await, west().await);
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig(
        dir.path(),
        &[("east", east.server.url()), ("west", west.server.url())],
    );
    let kc = kc.display().to_string();

    // The install leaves spec.local.gatewayAddresses empty: link finds them from the Services.
    let out = run(&link_args(&kc, &[])).await.expect("link");
    assert!(!out.contains("warning"), "{out}");
    assert!(
        out.contains(
            "east (context ctx-east): MeshFederation isthmus-system/mesh: peer west added"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "west (context ctx-west): MeshFederation isthmus-system/mesh: peer east added"
        ),
        "{out}"
    );
    assert!(
        out.contains("gateway east-gw.elb.example.com:15443 (from Service isthmus-system/isthmus-eastwestgateway load balancer ingress)"),
        "{out}"
    );
    assert!(
        out.contains("federation 127.0.20.2:31021 (from Service isthmus-system/isthmus-federation NodePort 31021 on the nodes' InternalIP, first of 2)"),
        "{out}"
    );

    let in_east = peers(&east.server);
    assert_eq!(in_east.len(), 2, "north is kept: {in_east:?}");
    assert_eq!(
        peer(&in_east, "north").federation_endpoint,
        "north.example.com:15021"
    );
    let w = peer(&in_east, "west");
    assert_eq!(
        w,
        &Peer {
            name: "west".into(),
            federation_endpoint: "127.0.20.2:31021".into(),
            gateway_addresses: vec!["127.0.20.2:31443".into(), "127.0.20.3:31443".into()],
            network: "network-west".into(),
            locality: "west-region/west-zone".into(),
            trust_domain: "west.isthmus.local".into(),
            trust_bundle: Some(west.root_pem.clone()),
        }
    );
    let in_west = peers(&west.server);
    assert_eq!(in_west.len(), 1, "{in_west:?}");
    let e = peer(&in_west, "east");
    assert_eq!(e.federation_endpoint, "127.0.10.4:15021");
    assert_eq!(e.gateway_addresses, ["east-gw.elb.example.com:15443"]);
    assert_eq!(e.trust_domain, "east.isthmus.local");
    assert_eq!(e.trust_bundle.as_deref(), Some(east.root_pem.as_str()));
    // The local section the install wrote is untouched.
    let mf = west
        .server
        .get(MF_API, "MeshFederation", Some(NS), "mesh")
        .unwrap();
    assert_eq!(mf["spec"]["local"]["federationListen"], "0.0.0.0:15021");
    assert_eq!(mf["spec"]["local"]["gatewayAddresses"], json!([]));

    // Twice changes nothing: no write at all.
    let (rv_east, rv_west) = (
        east.server.resource_version(),
        west.server.resource_version(),
    );
    let (w_east, w_west) = (replaces(&east.server), replaces(&west.server));
    let out = run(&link_args(&kc, &[])).await.expect("link again");
    assert!(
        out.contains("peer west unchanged") && out.contains("peer east unchanged"),
        "{out}"
    );
    assert_eq!(
        (replaces(&east.server), replaces(&west.server)),
        (w_east, w_west)
    );
    assert_eq!(east.server.resource_version(), rv_east);
    assert_eq!(west.server.resource_version(), rv_west);

    // Overrides win, are said, and replace the entry (north still kept).
    let out = run(&link_args(
        &kc,
        &[
            "--gateway-address",
            "ctx-west=172.18.0.3:31443",
            "--federation-endpoint",
            "ctx-west=172.18.0.3:31021",
            "--json",
        ],
    ))
    .await
    .expect("link with overrides");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["linked"], json!(["east", "west"]));
    assert_eq!(
        report["changes"],
        json!({"east": "updated", "west": "unchanged"})
    );
    assert_eq!(
        report["sources"]["west"]["gatewayAddresses"],
        "--gateway-address"
    );
    assert_eq!(
        report["peers"]["east"]["federationEndpoint"],
        "172.18.0.3:31021"
    );
    let in_east = peers(&east.server);
    assert_eq!(in_east.len(), 2, "{in_east:?}");
    assert_eq!(
        peer(&in_east, "west").gateway_addresses,
        ["172.18.0.3:31443"]
    );
}

#[tokio::test]
async fn spec_local_gateway_addresses_come_before_the_service() {
    let (east, west) = (east().await, fake().await);
    west.server
        .apply(mesh_federation("west", &["gw.west.example.com:15443"]));
    west.server.apply(cacerts(&west.root_pem));
    // No gateway Service at all: spec.local is enough. The federation endpoint is given.
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig(
        dir.path(),
        &[("east", east.server.url()), ("west", west.server.url())],
    );
    let kc = kc.display().to_string();
    let out = run(&link_args(
        &kc,
        &["--federation-endpoint", "ctx-west=10.0.0.9:15021"],
    ))
    .await
    .expect("link");
    assert!(
        out.contains("gateway gw.west.example.com:15443 (from spec.local.gatewayAddresses"),
        "{out}"
    );
    let w = peers(&east.server);
    assert_eq!(
        peer(&w, "west").gateway_addresses,
        ["gw.west.example.com:15443"]
    );
    assert_eq!(peer(&w, "west").federation_endpoint, "10.0.0.9:15021");
}

#[tokio::test]
async fn missing_pieces_fail_naming_context_namespace_and_what_to_do() {
    let east = east().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // No MeshFederation in west.
    let west = fake().await;
    west.server.apply(cacerts(&west.root_pem));
    let kc = kubeconfig(
        dir.path(),
        &[("east", east.server.url()), ("west", west.server.url())],
    );
    let kc = kc.display().to_string();
    let e = format!("{:#}", run(&link_args(&kc, &[])).await.unwrap_err());
    assert!(
        e.contains("context ctx-west: no MeshFederation with spec.local.cluster in namespace isthmus-system")
            && e.contains("isthmus install --context ctx-west"),
        "{e}"
    );
    assert_eq!(
        replaces(&east.server),
        0,
        "nothing is written when a side is missing"
    );

    // Two with a local section.
    west.server.apply(mesh_federation("west", &[]));
    let mut second = mesh_federation("west", &[]);
    second["metadata"]["name"] = json!("mesh-2");
    west.server.apply(second);
    let e = format!("{:#}", run(&link_args(&kc, &[])).await.unwrap_err());
    assert!(
        e.contains(
            "ctx-west: 2 MeshFederations with spec.local in namespace isthmus-system (mesh, mesh-2)"
        ),
        "{e}"
    );
    west.server
        .delete(MF_API, "MeshFederation", Some(NS), "mesh-2");

    // The gateway Service is ClusterIP.
    let mut svc = node_port("isthmus-eastwestgateway", 15443, 0);
    svc["spec"]["type"] = json!("ClusterIP");
    west.server.apply(svc);
    let e = format!("{:#}", run(&link_args(&kc, &[])).await.unwrap_err());
    assert!(
        e.contains(
            "context ctx-west: Service isthmus-system/isthmus-eastwestgateway is of type ClusterIP"
        ) && e.contains("--gateway-address ctx-west=<host:port>"),
        "{e}"
    );

    // No cacerts Secret.
    west.server.delete("v1", "Secret", Some(NS), "cacerts");
    let e = format!(
        "{:#}",
        run(&link_args(&kc, &WEST_BY_NODE_PORT)).await.unwrap_err()
    );
    assert!(
        e.contains("context ctx-west: Secret isthmus-system/cacerts not found"),
        "{e}"
    );

    // An invalid locality would be copied into east's peer entry.
    let mut mf = mesh_federation("west", &[]);
    mf["spec"]["local"]["locality"] = json!("eu-west//x");
    west.server.apply(mf);
    let e = format!(
        "{:#}",
        run(&link_args(&kc, &WEST_BY_NODE_PORT)).await.unwrap_err()
    );
    assert!(e.contains("context ctx-west: MeshFederation isthmus-system/mesh: spec.local.locality: invalid locality") && e.contains("--set locality="), "{e}");

    // Both clusters with one trust domain: nothing Isthmus would reject is written.
    let mut mf = mesh_federation("west", &[]);
    mf["spec"]["local"]["trustDomain"] = json!("east.isthmus.local");
    west.server.apply(mf);
    west.server.apply(cacerts(&west.root_pem));
    let e = format!(
        "{:#}",
        run(&link_args(&kc, &WEST_BY_NODE_PORT)).await.unwrap_err()
    );
    assert!(
        e.contains("context ctx-east: writing peer west would make it invalid: MeshFederation isthmus-system/mesh: spec.peers[1].trustDomain: trust domain \"east.isthmus.local\" is the local cluster's"),
        "{e}"
    );

    // A cluster without the CRD (Isthmus never installed).
    let bare = FakeApiServer::start().await;
    let kc = kubeconfig(
        dir.path(),
        &[("east", east.server.url()), ("west", bare.url())],
    );
    let kc = kc.display().to_string();
    let e = format!("{:#}", run(&link_args(&kc, &[])).await.unwrap_err());
    assert!(
        e.contains("context ctx-west: the MeshFederation kind is not known")
            && e.contains("isthmus install"),
        "{e}"
    );

    // An override for a context that is not linked.
    let e = format!(
        "{:#}",
        run(&link_args(
            &kc,
            &["--gateway-address", "ctx-north=1.2.3.4:15443"]
        ))
        .await
        .unwrap_err()
    );
    assert!(
        e.contains("\"ctx-north\" is not one of the --context values"),
        "{e}"
    );
    assert_eq!(replaces(&east.server), 0);
}

/// A proxy in front of an API server that, on the first `conflicts` replaces of MeshFederation
/// `mesh`, lets another writer change the object first (so the replace gets a real 409).
async fn racing_proxy(server: Arc<FakeApiServer>, conflicts: usize) -> SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("proxy address");
    let remaining = Arc::new(AtomicUsize::new(conflicts));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (server, remaining, client) = (server.clone(), remaining.clone(), client.clone());
            let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let (server, remaining, client) =
                    (server.clone(), remaining.clone(), client.clone());
                async move {
                    let replace_mesh = req.method() == hyper::Method::PUT
                        && req.uri().path().ends_with("/meshfederations/mesh");
                    if replace_mesh
                        && remaining
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        concurrent_write(&server);
                    }
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("{}{path}", server.url()).parse().expect("uri");
                    client.request(req).await
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// Another writer adds a peer `south-<n>` to MeshFederation `mesh`.
fn concurrent_write(server: &FakeApiServer) {
    let mut mf = server
        .get(MF_API, "MeshFederation", Some(NS), "mesh")
        .expect("mesh");
    let peers = mf["spec"]["peers"].as_array().map_or(0, Vec::len);
    let entry = json!({
        "name": format!("south-{peers}"), "federationEndpoint": "south.example.com:15021",
        "gatewayAddresses": ["south-gw.example.com:15443"], "network": "network-south",
        "locality": "south-region",
        "trustDomain": "south.isthmus.local"
    });
    match mf["spec"]["peers"].as_array_mut() {
        Some(list) => list.push(entry),
        None => mf["spec"]["peers"] = json!([entry]),
    }
    server.apply(mf);
}

#[tokio::test]
async fn a_conflicting_write_is_read_again_and_kept() {
    let (east, west) = (east().await, west().await);
    let proxy = racing_proxy(west.server.clone(), 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig(
        dir.path(),
        &[
            ("east", east.server.url()),
            ("west", format!("http://{proxy}")),
        ],
    );
    let kc = kc.display().to_string();
    let out = run(&link_args(&kc, &[])).await.expect("link");
    assert!(
        out.contains("peer east added (after 1 conflicting write)"),
        "{out}"
    );
    let in_west = peers(&west.server);
    let names: Vec<&str> = in_west.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["south-0", "east"],
        "the other writer's peer is kept"
    );
    let replaced: Vec<_> = west
        .server
        .requests()
        .into_iter()
        .filter(|r| r.action == RequestAction::Replace)
        .collect();
    assert_eq!(replaced.len(), 2, "one 409, one success: {replaced:?}");
    assert_eq!(
        replaced[0].param("fieldManager").as_deref(),
        Some("isthmus-link")
    );
}

#[tokio::test]
async fn endless_conflicts_give_up_after_a_bound() {
    let (east, west) = (east().await, west().await);
    let proxy = racing_proxy(west.server.clone(), usize::MAX).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig(
        dir.path(),
        &[
            ("east", east.server.url()),
            ("west", format!("http://{proxy}")),
        ],
    );
    let kc = kc.display().to_string();
    let e = format!("{:#}", run(&link_args(&kc, &[])).await.unwrap_err());
    assert!(
        e.contains(
            "context ctx-west: MeshFederation isthmus-system/mesh: every one of 5 writes conflicted"
        ),
        "{e}"
    );
    assert_eq!(replaces(&west.server), super::write::MAX_ATTEMPTS as usize);
    assert!(peers(&west.server).iter().all(|p| p.name != "east"));
}

#[test]
fn with_peer_replaces_by_name_keeps_others_and_drops_duplicates() {
    let entry = |name: &str, endpoint: &str| {
        json!({"name": name, "federationEndpoint": endpoint, "gatewayAddresses": ["gw:15443"],
               "network": "n", "locality": "r", "trustDomain": format!("{name}.td")})
    };
    let mut mf = mesh_federation("east", &["gw.east:15443"]);
    mf["spec"]["peers"] = json!([
        entry("west", "old:15021"),
        entry("north", "north:15021"),
        entry("west", "older:15021")
    ]);
    let object: kube::api::DynamicObject = serde_json::from_value(mf).expect("object");
    let west: Peer = serde_json::from_value(entry("west", "new:15021")).expect("peer");
    let (changed, outcome) = super::write::with_peer(&object, &west).expect("with_peer");
    assert_eq!(outcome, super::write::Outcome::Updated);
    assert_eq!(
        changed.data["spec"]["peers"],
        json!([entry("west", "new:15021"), entry("north", "north:15021")])
    );
    let (again, outcome) = super::write::with_peer(&changed, &west).expect("with_peer");
    assert_eq!(outcome, super::write::Outcome::Unchanged);
    assert_eq!(again.data, changed.data);

    let mut no_peers = object.clone();
    no_peers.data["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("peers");
    let (added, outcome) = super::write::with_peer(&no_peers, &west).expect("with_peer");
    assert_eq!(outcome, super::write::Outcome::Added);
    assert_eq!(
        added.data["spec"]["peers"],
        json!([entry("west", "new:15021")])
    );
}
