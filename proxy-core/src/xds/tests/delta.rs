//! Incremental ADS, without I/O.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use super::{accepted, new_state};
use crate::config::tests::fixtures::*;
use crate::config::{CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceType, SECRET};
use crate::xds::delta::Delta;
use crate::xds::state::{Handled, Outcome, State};

struct Client {
    state: State,
    delta: Delta,
}

impl Client {
    fn new() -> Self {
        Self {
            state: new_state(),
            delta: Delta::default(),
        }
    }

    fn start(&mut self) -> Vec<DeltaDiscoveryRequest> {
        self.delta.start(&mut self.state)
    }

    fn on(&mut self, response: DeltaDiscoveryResponse) -> Handled<DeltaDiscoveryRequest> {
        self.delta.on_response(&mut self.state, response)
    }
}

/// A resource with its name and version, as a delta response carries it.
fn res(name: &str, version: &str, body: Any) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(body),
        ..Resource::default()
    }
}

fn response(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("sys-{nonce}"),
        resources,
        type_url: type_url.into(),
        removed_resources: removed.iter().map(|n| n.to_string()).collect(),
        nonce: nonce.into(),
        ..DeltaDiscoveryResponse::default()
    }
}

/// (type, subscribe, unsubscribe, nonce, error) of each request.
type Summary = (String, Vec<String>, Vec<String>, String, bool);

fn summary(requests: &[DeltaDiscoveryRequest]) -> Vec<Summary> {
    requests
        .iter()
        .map(|r| {
            (
                ResourceType::from_type_url(&r.type_url)
                    .map(|t| t.kind().to_string())
                    .unwrap_or_default(),
                r.resource_names_subscribe.clone(),
                r.resource_names_unsubscribe.clone(),
                r.response_nonce.clone(),
                r.error_detail.is_some(),
            )
        })
        .collect()
}

fn sub(kind: &str, subscribe: &[&str], unsubscribe: &[&str]) -> Summary {
    let own = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    (
        kind.into(),
        own(subscribe),
        own(unsubscribe),
        String::new(),
        false,
    )
}

fn ack(kind: &str, nonce: &str) -> Summary {
    (kind.into(), Vec::new(), Vec::new(), nonce.into(), false)
}

fn versions(request: &DeltaDiscoveryRequest) -> BTreeMap<String, String> {
    request
        .initial_resource_versions
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// A first sync: one EDS cluster, one HTTP listener, its route, endpoints
/// and the root CA.
fn synced() -> Client {
    let mut c = Client::new();
    c.start();
    let a = "outbound|80||a";
    c.on(response(
        CLUSTER,
        "n1",
        vec![res(a, "c-a1", pack_any(eds_cluster(a)))],
        &[],
    ));
    c.on(response(
        LISTENER,
        "n2",
        vec![res(
            "0.0.0.0_80",
            "l1",
            pack_any(http_listener("0.0.0.0_80", 80, "80")),
        )],
        &[],
    ));
    c.on(response(
        ENDPOINT,
        "n3",
        vec![res(a, "e-a1", pack_any(cla(a)))],
        &[],
    ));
    c.on(response(
        ROUTE,
        "n4",
        vec![res("80", "r1", pack_any(route("80", &[("a", &["a"])])))],
        &[],
    ));
    let last = c.on(response(
        SECRET,
        "n5",
        vec![res("ROOTCA", "s1", pack_any(root_ca()))],
        &[],
    ));
    assert!(accepted(&last.outcome));
    c
}

#[test]
fn a_stream_starts_with_wildcard_cds_and_lds_the_node_once_and_acks_by_nonce() {
    let mut c = Client::new();
    let open = c.start();
    assert_eq!(
        summary(&open),
        [sub("Cluster", &[], &[]), sub("Listener", &[], &[])]
    );
    assert!(open[0].node.is_some() && open[1].node.is_none());
    assert!(open.iter().all(|r| r.initial_resource_versions.is_empty()));

    let a = "outbound|80||a";
    let cds = c.on(response(
        CLUSTER,
        "n1",
        vec![res(a, "c-a1", pack_any(eds_cluster(a)))],
        &[],
    ));
    // New names first (the local `default` secret excluded), then the ACK.
    assert_eq!(
        summary(&cds.requests),
        [
            sub("ClusterLoadAssignment", &[a], &[]),
            sub("Secret", &["ROOTCA"], &[]),
            ack("Cluster", "n1"),
        ]
    );
    assert!(!accepted(&cds.outcome));
    assert_eq!(
        c.state.config().version(ResourceType::Cluster),
        Some("sys-n1")
    );
}

#[test]
fn responses_merge_and_removals_unsubscribe_what_depended_on_them() {
    let mut c = synced();
    let (a, b) = ("outbound|80||a", "outbound|80||b");
    // Only the new cluster travels; the old one stays.
    let add = c.on(response(
        CLUSTER,
        "n6",
        vec![res(b, "c-b1", pack_any(eds_cluster(b)))],
        &[],
    ));
    assert!(accepted(&add.outcome));
    assert_eq!(
        summary(&add.requests),
        [
            sub("ClusterLoadAssignment", &[b], &[]),
            ack("Cluster", "n6")
        ]
    );
    assert_eq!(c.state.config().clusters.keys().collect::<Vec<_>>(), [a, b]);
    let eds = c.on(response(
        ENDPOINT,
        "n7",
        vec![res(b, "e-b1", pack_any(cla(b)))],
        &[],
    ));
    assert!(accepted(&eds.outcome));

    // Removing a cluster unsubscribes its endpoints and drops them.
    let remove = c.on(response(CLUSTER, "n8", Vec::new(), &[a]));
    assert!(accepted(&remove.outcome));
    assert_eq!(
        summary(&remove.requests),
        [
            sub("ClusterLoadAssignment", &[], &[a]),
            ack("Cluster", "n8")
        ]
    );
    assert_eq!(c.state.config().clusters.keys().collect::<Vec<_>>(), [b]);
    assert_eq!(c.state.config().endpoints.keys().collect::<Vec<_>>(), [b]);

    // A named resource the server says is gone is gone, and missing.
    let gone = c.on(response(ENDPOINT, "n9", Vec::new(), &[b]));
    assert!(accepted(&gone.outcome));
    assert!(c.state.config().endpoints.is_empty());
    assert_eq!(c.state.missing().to_string(), format!("endpoints {b}"));
}

#[test]
fn a_bad_response_is_nacked_by_nonce_and_changes_nothing() {
    let mut c = synced();
    let before = c.state.config().clone();
    let bad = c.on(response(
        CLUSTER,
        "n6",
        vec![
            res("ok", "1", pack_any(eds_cluster("ok"))),
            res("oops", "1", pack_any(cla("oops"))),
        ],
        &["outbound|80||a"],
    ));
    let Outcome::Rejected(error) = &bad.outcome else {
        panic!("{:?}", bad.outcome)
    };
    assert!(error.to_string().contains("resources[1]"), "{error}");
    assert_eq!(
        summary(&bad.requests),
        [("Cluster".into(), vec![], vec![], "n6".into(), true)]
    );
    assert_eq!(*c.state.config(), before);

    // The name outside must be the name inside.
    let renamed = c.on(response(
        CLUSTER,
        "n7",
        vec![res("outside", "1", pack_any(eds_cluster("inside")))],
        &[],
    ));
    let Outcome::Rejected(error) = &renamed.outcome else {
        panic!("{:?}", renamed.outcome)
    };
    assert_eq!(
        error.to_string(),
        "Cluster \"outside\": resources[0] carries a Cluster named \"inside\""
    );

    // Named resources must have been asked for.
    let unasked = c.on(response(
        ENDPOINT,
        "n8",
        vec![res("never", "1", pack_any(cla("never")))],
        &[],
    ));
    let Outcome::Rejected(error) = &unasked.outcome else {
        panic!("{:?}", unasked.outcome)
    };
    assert_eq!(
        error.to_string(),
        "ClusterLoadAssignment \"never\": not subscribed"
    );
    assert_eq!(*c.state.config(), before);
}

#[test]
fn a_body_less_resource_refreshes_one_held_and_is_an_error_otherwise() {
    let mut c = synced();
    let before = c.state.config().clusters.clone();
    let heartbeat = Resource {
        name: "outbound|80||a".into(),
        version: "c-a1".into(),
        ..Resource::default()
    };
    let ok = c.on(response(CLUSTER, "n6", vec![heartbeat], &[]));
    assert!(accepted(&ok.outcome));
    assert_eq!(c.state.config().clusters, before);

    let unknown = Resource {
        name: "outbound|80||zz".into(),
        ..Resource::default()
    };
    let bad = c.on(response(CLUSTER, "n7", vec![unknown], &[]));
    let Outcome::Rejected(error) = &bad.outcome else {
        panic!("{:?}", bad.outcome)
    };
    assert_eq!(
        error.to_string(),
        "Cluster \"outbound|80||zz\": resources[0] has no body, and the proxy does not hold it"
    );
}

#[test]
fn a_new_stream_resubscribes_with_the_versions_the_proxy_holds() {
    let mut c = synced();
    let (a, b) = ("outbound|80||a", "outbound|80||b");
    c.on(response(
        CLUSTER,
        "n6",
        vec![res(b, "c-b1", pack_any(eds_cluster(b)))],
        &[],
    ));
    c.on(response(
        ENDPOINT,
        "n7",
        vec![res(b, "e-b1", pack_any(cla(b)))],
        &[],
    ));
    // a goes away: its cluster and endpoints are not claimed any more.
    c.on(response(CLUSTER, "n8", Vec::new(), &[a]));

    let open = c.start();
    assert_eq!(
        summary(&open),
        [
            sub("Cluster", &[], &[]),
            sub("ClusterLoadAssignment", &[b], &[]),
            sub("Listener", &[], &[]),
            sub("RouteConfiguration", &["80"], &[]),
            sub("Secret", &["ROOTCA"], &[]),
        ]
    );
    assert!(open[0].node.is_some());
    assert!(open[1..].iter().all(|r| r.node.is_none()));
    let own = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(versions(&open[0]), own(&[(b, "c-b1")]));
    assert_eq!(versions(&open[1]), own(&[(b, "e-b1")]));
    assert_eq!(versions(&open[2]), own(&[("0.0.0.0_80", "l1")]));
    assert_eq!(versions(&open[3]), own(&[("80", "r1")]));
    assert_eq!(versions(&open[4]), own(&[("ROOTCA", "s1")]));

    // A reconnect that brings nothing new keeps the config.
    let quiet = c.on(response(CLUSTER, "m1", Vec::new(), &[]));
    assert!(accepted(&quiet.outcome));
    assert_eq!(c.state.config().clusters.keys().collect::<Vec<_>>(), [b]);
}

#[test]
fn unknown_types_are_ignored() {
    let mut c = synced();
    let other = c.on(response("type.googleapis.com/x.Y", "n9", Vec::new(), &[]));
    assert!(matches!(other.outcome, Outcome::Ignored));
    assert!(other.requests.is_empty());
}
