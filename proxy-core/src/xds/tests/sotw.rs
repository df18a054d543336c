//! State-of-the-world ADS, without I/O.

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use super::{accepted, new_state};
use crate::config::tests::fixtures::*;
use crate::config::{CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceType, SECRET};
use crate::xds::sotw::Sotw;
use crate::xds::state::{Handled, Outcome, State};

/// The protocol state and the state-of-the-world wire, as the client has them.
struct Client {
    state: State,
    sotw: Sotw,
}

impl Client {
    fn start_stream(&mut self) -> Vec<DiscoveryRequest> {
        self.sotw.start(&mut self.state)
    }

    fn on_response(&mut self, response: DiscoveryResponse) -> Handled<DiscoveryRequest> {
        self.sotw.on_response(&mut self.state, response)
    }
}

impl Deref for Client {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

fn state() -> Client {
    Client {
        state: new_state(),
        sotw: Sotw::default(),
    }
}

fn response(type_url: &str, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: type_url.into(),
        nonce: nonce.into(),
        ..DiscoveryResponse::default()
    }
}

/// (type, names, version, nonce, error) of each request, for compact asserts.
fn summary(requests: &[DiscoveryRequest]) -> Vec<(String, Vec<String>, String, String, bool)> {
    requests
        .iter()
        .map(|r| {
            let short = ResourceType::from_type_url(&r.type_url)
                .map(|t| t.kind().to_string())
                .unwrap_or_default();
            (
                short,
                r.resource_names.clone(),
                r.version_info.clone(),
                r.response_nonce.clone(),
                r.error_detail.is_some(),
            )
        })
        .collect()
}

fn req(
    kind: &str,
    names: &[&str],
    version: &str,
    nonce: &str,
) -> (String, Vec<String>, String, String, bool) {
    (
        kind.into(),
        names.iter().map(|n| n.to_string()).collect(),
        version.into(),
        nonce.into(),
        false,
    )
}

/// Brings a fresh state through a first sync: one EDS cluster, one HTTP listener.
fn synced() -> Client {
    let mut s = state();
    s.start_stream();
    s.on_response(response(
        CLUSTER,
        "c1",
        "n1",
        vec![pack_any(eds_cluster("outbound|80||a"))],
    ));
    s.on_response(response(
        LISTENER,
        "l1",
        "n2",
        vec![pack_any(http_listener("0.0.0.0_80", 80, "80"))],
    ));
    s.on_response(response(
        ENDPOINT,
        "e1",
        "n3",
        vec![pack_any(cla("outbound|80||a"))],
    ));
    s.on_response(response(
        ROUTE,
        "r1",
        "n4",
        vec![pack_any(route("80", &[("a", &["a"])]))],
    ));
    let last = s.on_response(response(SECRET, "s1", "n5", vec![pack_any(root_ca())]));
    assert!(accepted(&last.outcome));
    s
}

#[test]
fn a_stream_starts_with_wildcard_cds_and_lds_and_the_node_once() {
    let mut s = state();
    let requests = s.start_stream();
    assert_eq!(
        summary(&requests),
        [req("Cluster", &[], "", ""), req("Listener", &[], "", "")]
    );
    assert!(requests[0].node.is_some());
    assert!(requests[1].node.is_none());

    let mut with_extra = Client {
        state: State::new(
            Node::default(),
            ["extra".to_string()].into(),
            BTreeSet::new(),
        ),
        sotw: Sotw::default(),
    };
    let requests = with_extra.start_stream();
    assert_eq!(
        summary(&requests),
        [
            req("Cluster", &[], "", ""),
            req("Listener", &[], "", ""),
            req("Secret", &["extra"], "", "")
        ]
    );
}

#[test]
fn first_sync_waits_for_routes_endpoints_and_secrets() {
    let mut s = state();
    s.start_stream();
    let cds = s.on_response(response(
        CLUSTER,
        "c1",
        "n1",
        vec![pack_any(eds_cluster("outbound|80||a"))],
    ));
    // Subscriptions first (local `default` excluded), then the ACK.
    assert_eq!(
        summary(&cds.requests),
        [
            req("ClusterLoadAssignment", &["outbound|80||a"], "", ""),
            req("Secret", &["ROOTCA"], "", ""),
            req("Cluster", &[], "c1", "n1"),
        ]
    );
    assert!(!accepted(&cds.outcome));
    let lds = s.on_response(response(
        LISTENER,
        "l1",
        "n2",
        vec![pack_any(http_listener("0.0.0.0_80", 80, "80"))],
    ));
    assert_eq!(
        summary(&lds.requests),
        [
            req("RouteConfiguration", &["80"], "", ""),
            req("Listener", &[], "l1", "n2")
        ]
    );
    assert!(!accepted(&lds.outcome));
    assert!(s.has_wildcards());
    let eds = s.on_response(response(
        ENDPOINT,
        "e1",
        "n3",
        vec![pack_any(cla("outbound|80||a"))],
    ));
    assert_eq!(
        summary(&eds.requests),
        [req(
            "ClusterLoadAssignment",
            &["outbound|80||a"],
            "e1",
            "n3"
        )]
    );
    assert!(!accepted(&eds.outcome));
    let rds = s.on_response(response(
        ROUTE,
        "r1",
        "n4",
        vec![pack_any(route("80", &[("a", &["a"])]))],
    ));
    assert!(!accepted(&rds.outcome), "ROOTCA is still missing");
    assert_eq!(s.missing().to_string(), "secrets ROOTCA");
    let sds = s.on_response(response(SECRET, "s1", "n5", vec![pack_any(root_ca())]));
    assert!(accepted(&sds.outcome));
    assert!(s.is_synced());
    assert!(s.missing().is_empty());
}

#[test]
fn a_bad_response_is_nacked_with_the_previous_version() {
    let mut s = synced();
    let before = s.config().clone();
    let bad = s.on_response(response(
        CLUSTER,
        "c2",
        "n6",
        vec![
            pack_any(eds_cluster("outbound|80||a")),
            pack_any(cla("oops")),
        ],
    ));
    let Outcome::Rejected(error) = &bad.outcome else {
        panic!("{:?}", bad.outcome)
    };
    assert_eq!(error.resource_type(), ResourceType::Cluster);
    assert_eq!(bad.requests.len(), 1);
    let nack = &bad.requests[0];
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("c1", "n6")
    );
    let detail = nack.error_detail.as_ref().unwrap();
    assert!(
        detail.message.contains("resources[1]"),
        "{}",
        detail.message
    );
    assert_eq!(detail.code, tonic::Code::InvalidArgument as i32);
    assert_eq!(*s.config(), before);

    // The next good response is ACKed as usual.
    let good = s.on_response(response(
        CLUSTER,
        "c3",
        "n7",
        vec![pack_any(eds_cluster("outbound|80||a"))],
    ));
    assert!(accepted(&good.outcome));
    assert_eq!(summary(&good.requests), [req("Cluster", &[], "c3", "n7")]);
}

#[test]
fn named_resources_must_have_been_requested() {
    let mut s = synced();
    let unknown = s.on_response(response(
        ENDPOINT,
        "e2",
        "n6",
        vec![pack_any(cla("never-asked"))],
    ));
    let Outcome::Rejected(error) = &unknown.outcome else {
        panic!("{:?}", unknown.outcome)
    };
    assert_eq!(
        error.to_string(),
        "ClusterLoadAssignment \"never-asked\": not subscribed"
    );

    // Dropping the cluster drops its subscription and its endpoints.
    let cds = s.on_response(response(
        CLUSTER,
        "c2",
        "n7",
        vec![pack_any(eds_cluster("outbound|80||b"))],
    ));
    assert!(accepted(&cds.outcome));
    assert_eq!(
        summary(&cds.requests)[0],
        req("ClusterLoadAssignment", &["outbound|80||b"], "e1", "n6")
    );
    assert!(s.config().endpoints.is_empty());

    // A late answer to the old subscription is ignored, not NACKed.
    let late = s.on_response(response(
        ENDPOINT,
        "e2",
        "n8",
        vec![
            pack_any(cla("outbound|80||a")),
            pack_any(cla("outbound|80||b")),
        ],
    ));
    assert!(accepted(&late.outcome));
    assert_eq!(
        s.config().endpoints.keys().collect::<Vec<_>>(),
        ["outbound|80||b"]
    );
}

#[test]
fn a_new_stream_resubscribes_everything_with_the_last_versions() {
    let mut s = synced();
    let requests = s.start_stream();
    assert_eq!(
        summary(&requests),
        [
            req("Cluster", &[], "c1", ""),
            req("ClusterLoadAssignment", &["outbound|80||a"], "e1", ""),
            req("Listener", &[], "l1", ""),
            req("RouteConfiguration", &["80"], "r1", ""),
            req("Secret", &["ROOTCA"], "s1", ""),
        ]
    );
    assert!(requests[0].node.is_some());
    assert!(requests[1..].iter().all(|r| r.node.is_none()));
    // The config survives the reconnect.
    assert_eq!(s.config().clusters.len(), 1);
}

#[test]
fn unknown_types_are_ignored() {
    let mut s = synced();
    let other = s.on_response(response("type.googleapis.com/x.Y", "1", "n9", Vec::new()));
    assert!(matches!(other.outcome, Outcome::Ignored));
    assert!(other.requests.is_empty());
}

#[test]
fn force_sync_reports_what_is_missing() {
    let mut s = state();
    s.start_stream();
    s.on_response(response(
        CLUSTER,
        "c1",
        "n1",
        vec![pack_any(eds_cluster("outbound|80||a"))],
    ));
    s.on_response(response(LISTENER, "l1", "n2", Vec::new()));
    let missing = s.force_sync();
    assert_eq!(
        missing.to_string(),
        "endpoints outbound|80||a; secrets ROOTCA"
    );
    assert!(s.is_synced());
    let eds = s.on_response(response(
        ENDPOINT,
        "e1",
        "n3",
        vec![pack_any(cla("outbound|80||a"))],
    ));
    assert!(
        accepted(&eds.outcome),
        "after the first sync every update is published"
    );
}
