use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::util::pack_any;
use isthmus_proxy_core::config::Encoded;

use std::sync::Arc;

use super::*;

fn chain(cluster: &str, names: &[&str]) -> FilterChain {
    FilterChain {
        name: cluster.into(),
        filter_chain_match: Some(FilterChainMatch {
            server_names: names.iter().map(|n| n.to_string()).collect(),
            ..FilterChainMatch::default()
        }),
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
                stat_prefix: cluster.into(),
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                ..TcpProxy::default()
            }))),
        }],
        ..FilterChain::default()
    }
}

fn config(chains: Vec<FilterChain>, default: Option<FilterChain>) -> ProxyConfig {
    let mut c = ProxyConfig::default();
    for ch in &chains {
        c.clusters.insert(
            ch.name.clone(),
            Encoded::from(Cluster {
                name: ch.name.clone(),
                ..Cluster::default()
            }),
        );
    }
    c.listeners.insert(
        "0.0.0.0_15443".into(),
        Encoded::from(Listener {
            name: "0.0.0.0_15443".into(),
            filter_chains: chains,
            default_filter_chain: default,
            ..Listener::default()
        }),
    );
    c
}

const HW: &str = "outbound|5000||helloworld.sample.svc.cluster.local";
const HW_V1: &str = "outbound|5000|v1|helloworld.sample.svc.cluster.local";

#[test]
fn every_server_name_of_a_chain_routes_to_its_cluster_and_nothing_else_does() {
    let c = config(
        vec![
            chain(
                HW,
                &[
                    "outbound_.5000_._.helloworld.sample.svc.cluster.local",
                    "Outbound_.5000_._.helloworld.sample.global",
                ],
            ),
            chain(
                HW_V1,
                &["outbound_.5000_.v1_.helloworld.sample.svc.cluster.local"],
            ),
        ],
        None,
    );
    let t = RouteTable::build(&c, "0.0.0.0_15443", &RouteTable::default());
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.len(), 3);
    let name = |sni: &str| t.get(sni).map(|r| r.upstream.name().to_string());
    assert_eq!(
        name("outbound_.5000_._.helloworld.sample.global").as_deref(),
        Some(HW)
    );
    assert_eq!(
        name("outbound_.5000_.v1_.helloworld.sample.svc.cluster.local").as_deref(),
        Some(HW_V1)
    );
    assert_eq!(
        name("outbound_.5000_.v2_.helloworld.sample.svc.cluster.local"),
        None
    );
    assert_eq!(name("helloworld.sample.svc.cluster.local"), None);
    // The two SNIs of one chain share one upstream.
    assert!(Arc::ptr_eq(
        &t.get("outbound_.5000_._.helloworld.sample.global")
            .unwrap()
            .upstream,
        &t.get("outbound_.5000_._.helloworld.sample.svc.cluster.local")
            .unwrap()
            .upstream
    ));
}

#[test]
fn catch_alls_wildcards_and_defaults_are_never_routes() {
    let mut c = config(
        vec![
            chain(HW, &[]),
            chain(
                "outbound|1|x|secret.sample.svc.cluster.local",
                &["*.sample.svc.cluster.local"],
            ),
            chain(
                HW_V1,
                &["outbound_.5000_.v1_.helloworld.sample.svc.cluster.local"],
            ),
        ],
        Some(chain("outbound|9|x|db.sample.svc.cluster.local", &[])),
    );
    // A chain whose cluster is missing.
    c.listeners
        .get_mut("0.0.0.0_15443")
        .unwrap()
        .edit(|l| {
            l.filter_chains.push(chain(
                "outbound|7||gone.sample.svc.cluster.local",
                &["outbound_.7_._.gone"],
            ))
        })
        .unwrap();
    c.clusters
        .remove("outbound|7||gone.sample.svc.cluster.local");
    let t = RouteTable::build(&c, "0.0.0.0_15443", &RouteTable::default());
    assert_eq!(t.len(), 1);
    assert!(
        t.get("outbound_.5000_.v1_.helloworld.sample.svc.cluster.local")
            .is_some()
    );
    let warnings = t.warnings.join("\n");
    for expected in [
        "default_filter_chain ignored",
        "no server_names",
        "wildcard server name",
        "is not in the config",
    ] {
        assert!(warnings.contains(expected), "{expected}: {warnings}");
    }
}

#[test]
fn upstreams_survive_a_rebuild_and_another_listener_name_routes_nothing() {
    let c = config(
        vec![chain(HW, &["outbound_.5000_._.helloworld.sample.global"])],
        None,
    );
    let first = RouteTable::build(&c, "0.0.0.0_15443", &RouteTable::default());
    let second = RouteTable::build(&c, "0.0.0.0_15443", &first);
    let sni = "outbound_.5000_._.helloworld.sample.global";
    assert!(Arc::ptr_eq(
        &first.get(sni).unwrap().upstream,
        &second.get(sni).unwrap().upstream
    ));
    let other = RouteTable::build(&c, "0.0.0.0_16443", &first);
    assert!(other.is_empty());
    assert_eq!(other.warnings.len(), 1);
}
