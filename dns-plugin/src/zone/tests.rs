use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::rr::{LowerName, Name, RData};
use isthmus_proto::dns as proto;

use super::*;

fn config(policy: Policy) -> AnswerConfig {
    AnswerConfig {
        zones: ZoneConfig::defaults(policy),
        cluster: "east".into(),
        locality: "us-east/us-east-1a".parse().unwrap(),
        ttl: DEFAULT_TTL,
    }
}

fn name(s: &str) -> LowerName {
    LowerName::from(Name::from_str(s).unwrap())
}

fn addrs(node: &Node) -> Vec<IpAddr> {
    node.a
        .iter()
        .chain(&node.aaaa)
        .map(|r| match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn lookup<'a>(s: &'a Snapshot, q: &str) -> Found<'a> {
    let n = name(q);
    Snapshot::lookup(s.zone_for(&n).expect("in a zone"), &n)
}

#[test]
fn names_in_both_zone_layouts() {
    let s = Snapshot::build(&crate::internal::sample_feed(), &config(Policy::Vip));
    let Found::Node(n) = lookup(&s, "Reviews.DEFAULT.global.") else {
        panic!("global name")
    };
    assert_eq!(
        addrs(n),
        [
            "240.240.1.2".parse::<IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert!(matches!(
        lookup(&s, "reviews.default.svc.clusterset.local."),
        Found::Node(_)
    ));
    assert!(matches!(
        lookup(&s, "reviews.default.clusterset.local."),
        Found::NxDomain
    ));
    assert!(matches!(lookup(&s, "global."), Found::Apex));
    assert!(matches!(
        lookup(&s, "default.global."),
        Found::EmptyNonTerminal
    ));
    assert!(matches!(
        lookup(&s, "svc.clusterset.local."),
        Found::EmptyNonTerminal
    ));
    assert!(matches!(
        lookup(&s, "_tcp.reviews.default.global."),
        Found::EmptyNonTerminal
    ));
    assert!(matches!(
        lookup(&s, "ratings.default.global."),
        Found::NxDomain
    ));
    let Found::Node(srv) = lookup(&s, "_http._tcp.reviews.default.global.") else {
        panic!("srv name")
    };
    assert_eq!(srv.srv.len(), 1);
    assert_eq!(srv.additionals.len(), 2);
}

#[test]
fn escaped_dot_in_a_label_does_not_alias_two_labels() {
    let s = Snapshot::build(&crate::internal::sample_feed(), &config(Policy::Vip));
    assert!(matches!(
        lookup(&s, "reviews\\.default.global."),
        Found::NxDomain
    ));
}

/// (address, locality, healthy)
type Ep<'a> = (&'a str, &'a str, bool);

fn svc(clusters: Vec<(&str, Vec<Ep<'_>>)>) -> proto::GlobalService {
    proto::GlobalService {
        name: "r".into(),
        namespace: "ns".into(),
        clusters: clusters
            .into_iter()
            .map(|(c, eps)| proto::ClusterEndpoints {
                cluster: c.into(),
                healthy: eps.iter().filter(|e| e.2).count() as u32,
                total: eps.len() as u32,
                endpoints: eps
                    .into_iter()
                    .map(|(a, l, h)| proto::Endpoint {
                        address: a.into(),
                        locality: l.into(),
                        healthy: h,
                        weight: 1,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn endpoints_local_cluster_then_region_then_others() {
    let s = svc(vec![
        ("central", vec![("10.3.0.1", "eu/eu-1a", true)]),
        ("east", vec![("10.1.0.1", "us-east/us-east-1b", true)]),
        (
            "west",
            vec![
                ("10.2.0.1", "us-east/us-east-1a", true),
                ("10.2.0.2", "us-west/x", true),
            ],
        ),
    ]);
    let me: Locality = "us-east/us-east-1a".parse().unwrap();
    assert_eq!(
        order_endpoints(&s, "east", &me),
        ips(&["10.1.0.1", "10.2.0.1", "10.3.0.1", "10.2.0.2"])
    );
}

#[test]
fn unhealthy_clusters_left_out_unless_none_is_healthy() {
    let me = Locality::default();
    let s = svc(vec![
        ("east", vec![("10.1.0.1", "", false)]),
        (
            "west",
            vec![("10.2.0.1", "", true), ("10.2.0.2", "", false)],
        ),
    ]);
    assert_eq!(order_endpoints(&s, "east", &me), ips(&["10.2.0.1"]));
    let s = svc(vec![
        ("east", vec![("10.1.0.1", "", false)]),
        ("west", vec![("10.2.0.1", "", false)]),
    ]);
    assert_eq!(
        order_endpoints(&s, "east", &me),
        ips(&["10.1.0.1", "10.2.0.1"])
    );
}

#[test]
fn endpoints_policy_answers_ordered_addresses() {
    let s = Snapshot::build(&crate::internal::sample_feed(), &config(Policy::Endpoints));
    let Found::Node(n) = lookup(&s, "reviews.default.global.") else {
        panic!()
    };
    assert_eq!(addrs(n), ips(&["10.0.0.1", "192.0.2.1"]));
}

#[test]
fn soa_serial_is_the_feed_version() {
    let mut feed = crate::internal::sample_feed();
    feed.version = 42;
    let s = Snapshot::build(&feed, &config(Policy::Vip));
    let RData::SOA(soa) = &s.zones[0].soa.data else {
        panic!()
    };
    assert_eq!(soa.serial, 42);
    assert_eq!(s.services(), 1);
}
