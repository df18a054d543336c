use crate::config::Encoded;
use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CustomClusterType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, SocketAddress, TransportSocket, address,
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
    transport_socket::ConfigType as SocketConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter::ConfigType as FilterConfig,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, ScopedRoutes, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    UpstreamTlsContext, common_tls_context, secret,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::Name;

use super::*;

/// Builders shared with the client's unit tests.
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn ads() -> ConfigSource {
        ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..ConfigSource::default()
        }
    }

    pub(crate) fn sds(name: &str) -> SdsSecretConfig {
        SdsSecretConfig {
            name: name.into(),
            sds_config: Some(ads()),
        }
    }

    /// An EDS cluster with mesh mTLS (`default` certificate, `ROOTCA` bundle).
    pub(crate) fn eds_cluster(name: &str) -> Cluster {
        let tls = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds("default")],
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::CombinedValidationContext(
                        common_tls_context::CombinedCertificateValidationContext {
                            validation_context_sds_secret_config: Some(sds("ROOTCA")),
                            ..Default::default()
                        },
                    ),
                ),
                ..CommonTlsContext::default()
            }),
            ..UpstreamTlsContext::default()
        };
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(SocketConfig::TypedConfig(pack_any(tls))),
            }),
            ..Cluster::default()
        }
    }

    pub(crate) fn address(port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        }
    }

    pub(crate) fn hcm_filter(routes: RouteSpecifier) -> Filter {
        Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(FilterConfig::TypedConfig(pack_any(HttpConnectionManager {
                stat_prefix: "test".into(),
                route_specifier: Some(routes),
                ..HttpConnectionManager::default()
            }))),
        }
    }

    /// A listener whose HCM loads route config `route` by RDS.
    pub(crate) fn http_listener(name: &str, port: u32, route: &str) -> Listener {
        Listener {
            name: name.into(),
            address: Some(address(port)),
            filter_chains: vec![FilterChain {
                filters: vec![hcm_filter(RouteSpecifier::Rds(Rds {
                    config_source: Some(ads()),
                    route_config_name: route.into(),
                }))],
                ..FilterChain::default()
            }],
            ..Listener::default()
        }
    }

    pub(crate) fn route(name: &str, hosts: &[(&str, &[&str])]) -> RouteConfiguration {
        RouteConfiguration {
            name: name.into(),
            virtual_hosts: hosts
                .iter()
                .map(|(vh, domains)| VirtualHost {
                    name: (*vh).into(),
                    domains: domains.iter().map(|d| (*d).to_string()).collect(),
                    ..VirtualHost::default()
                })
                .collect(),
            ..RouteConfiguration::default()
        }
    }

    pub(crate) fn cla(name: &str) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: name.into(),
            ..ClusterLoadAssignment::default()
        }
    }

    pub(crate) fn root_ca() -> Secret {
        Secret {
            name: "ROOTCA".into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext::default(),
            )),
        }
    }
}

use fixtures::*;

fn decode_err(t: ResourceType, resources: &[Any]) -> String {
    Resources::decode(t, resources).unwrap_err().to_string()
}

#[test]
fn a_resource_of_another_type_rejects_the_response() {
    let err = decode_err(
        ResourceType::Cluster,
        &[pack_any(eds_cluster("a")), pack_any(cla("b"))],
    );
    assert_eq!(
        err,
        format!("Cluster response: resources[1] has type URL {ENDPOINT:?}, expected {CLUSTER:?}")
    );
}

#[test]
fn undecodable_bytes_reject_the_response() {
    let garbage = Any {
        type_url: LISTENER.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    let err = decode_err(ResourceType::Listener, &[garbage]);
    assert!(
        err.starts_with("Listener response: resources[0] does not decode as Listener"),
        "{err}"
    );
}

#[test]
fn names_must_be_present_and_unique() {
    let err = decode_err(ResourceType::Endpoint, &[pack_any(cla(""))]);
    assert_eq!(
        err,
        "ClusterLoadAssignment response: resources[0] has an empty name"
    );
    let err = decode_err(
        ResourceType::Route,
        &[pack_any(route("80", &[])), pack_any(route("80", &[]))],
    );
    assert_eq!(
        err,
        "RouteConfiguration \"80\": appears more than once in the response"
    );
}

#[test]
fn clusters_need_a_supported_discovery_type() {
    let mut logical = eds_cluster("logical");
    logical.cluster_discovery_type =
        Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32));
    let mut custom = eds_cluster("custom");
    custom.cluster_discovery_type = Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
        name: "envoy.clusters.aggregate".into(),
        typed_config: None,
    }));
    let mut dns = eds_cluster("dns");
    dns.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
    let mut unknown = eds_cluster("unknown");
    unknown.cluster_discovery_type = Some(ClusterDiscoveryType::Type(42));
    for (cluster, message) in [
        (
            logical,
            "Cluster \"logical\": type: discovery type LOGICAL_DNS is not supported",
        ),
        (
            custom,
            "Cluster \"custom\": cluster_type: custom cluster type \"envoy.clusters.aggregate\" is not supported",
        ),
        (
            dns,
            "Cluster \"dns\": load_assignment: a STRICT_DNS cluster needs its hosts",
        ),
        (
            unknown,
            "Cluster \"unknown\": type: unknown discovery type 42",
        ),
    ] {
        let ok = pack_any(eds_cluster("fine"));
        assert_eq!(
            decode_err(ResourceType::Cluster, &[ok, pack_any(cluster)]),
            message
        );
    }
    let static_default = Cluster {
        name: "BlackHoleCluster".into(),
        ..Cluster::default()
    };
    assert!(Resources::decode(ResourceType::Cluster, &[pack_any(static_default)]).is_ok());
}

#[test]
fn broken_tls_contexts_are_rejected() {
    let mut c = eds_cluster("c");
    c.transport_socket = Some(TransportSocket {
        name: "tls".into(),
        config_type: Some(SocketConfig::TypedConfig(Any {
            type_url: UpstreamTlsContext::type_url(),
            value: vec![0x0a, 0x05, 0x01],
        })),
    });
    let err = decode_err(ResourceType::Cluster, &[pack_any(c)]);
    assert!(
        err.starts_with("Cluster \"c\": transport_socket: cannot decode UpstreamTlsContext"),
        "{err}"
    );
}

#[test]
fn listeners_need_an_address_and_usable_connection_managers() {
    let mut no_address = http_listener("l", 80, "80");
    no_address.address = None;
    assert_eq!(
        decode_err(ResourceType::Listener, &[pack_any(no_address)]),
        "Listener \"l\": address: missing"
    );

    let mut scoped = http_listener("scoped", 80, "80");
    scoped.filter_chains[0].filters[0] =
        hcm_filter(RouteSpecifier::ScopedRoutes(ScopedRoutes::default()));
    assert_eq!(
        decode_err(ResourceType::Listener, &[pack_any(scoped)]),
        "Listener \"scoped\": filter_chains[0].filters[0].route_specifier: scoped routes are not supported"
    );

    let mut broken = http_listener("broken", 80, "80");
    broken.default_filter_chain = Some(FilterChain {
        filters: vec![Filter {
            name: "hcm".into(),
            config_type: Some(FilterConfig::TypedConfig(Any {
                type_url: HttpConnectionManager::type_url(),
                value: vec![0xff],
            })),
        }],
        ..FilterChain::default()
    });
    let err = decode_err(ResourceType::Listener, &[pack_any(broken)]);
    assert!(
        err.starts_with(
            "Listener \"broken\": default_filter_chain.filters[0]: cannot decode HttpConnectionManager"
        ),
        "{err}"
    );

    let mut inline = http_listener("inline", 80, "80");
    inline.filter_chains[0].filters[0] = hcm_filter(RouteSpecifier::RouteConfig(route(
        "inline",
        &[("a", &["x"]), ("b", &["X"])],
    )));
    assert_eq!(
        decode_err(ResourceType::Listener, &[pack_any(inline)]),
        "Listener \"inline\": filter_chains[0].filters[0].route_config.virtual_hosts[1].domains[0]: \"X\" is already in another virtual host"
    );
}

#[test]
fn route_configs_need_unique_domains() {
    let r = route("5000", &[("a", &["a", "a:5000"]), ("b", &["b", "a:5000"])]);
    assert_eq!(
        decode_err(ResourceType::Route, &[pack_any(r)]),
        "RouteConfiguration \"5000\": virtual_hosts[1].domains[1]: \"a:5000\" is already in another virtual host"
    );
    let ok = route("5000", &[("a", &["a", "a:5000"]), ("b", &["b", "b:5000"])]);
    assert!(Resources::decode(ResourceType::Route, &[pack_any(ok)]).is_ok());
}

#[test]
fn references_drive_subscriptions() {
    let mut config = ProxyConfig::default();
    let mut named = eds_cluster("outbound|80||b");
    named.eds_cluster_config = Some(EdsClusterConfig {
        eds_config: Some(ads()),
        service_name: "b-service".into(),
    });
    let mut static_secret = eds_cluster("BlackHoleCluster");
    static_secret.cluster_discovery_type = None;
    static_secret.transport_socket = None;
    config.apply(
        Resources::decode(
            ResourceType::Cluster,
            &[
                pack_any(eds_cluster("outbound|80||a")),
                pack_any(named),
                pack_any(static_secret),
            ],
        )
        .unwrap(),
        "1".into(),
    );
    let mut inbound = http_listener("virtualInbound", 15006, "unused");
    inbound.filter_chains[0].filters.clear();
    inbound.filter_chains[0].transport_socket = Some(TransportSocket {
        name: "tls".into(),
        config_type: Some(SocketConfig::TypedConfig(pack_any(DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![
                    sds("inbound-cert"),
                    SdsSecretConfig {
                        name: "bootstrap-static".into(),
                        sds_config: None,
                    },
                ],
                ..CommonTlsContext::default()
            }),
            ..DownstreamTlsContext::default()
        }))),
    });
    config.apply(
        Resources::Listeners(
            [
                (
                    "0.0.0.0_80".to_string(),
                    Encoded::from(http_listener("0.0.0.0_80", 80, "80")),
                ),
                ("virtualInbound".to_string(), Encoded::from(inbound)),
            ]
            .into(),
        ),
        "1".into(),
    );
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(config.route_names(), set(&["80"]));
    assert_eq!(
        config.endpoint_names(),
        set(&["b-service", "outbound|80||a"])
    );
    assert_eq!(
        config.secret_names(),
        set(&["ROOTCA", "default", "inbound-cert"])
    );

    let missing = config.missing(&set(&["ROOTCA"]));
    assert_eq!(missing.routes, set(&["80"]));
    assert_eq!(missing.endpoints, set(&["b-service", "outbound|80||a"]));
    assert_eq!(missing.secrets, set(&["ROOTCA"]));
    assert_eq!(
        missing.to_string(),
        "routes 80; endpoints b-service, outbound|80||a; secrets ROOTCA"
    );
}

#[test]
fn wildcard_types_are_replaced_and_named_types_merged() {
    let mut config = ProxyConfig::default();
    assert_eq!(
        config.missing(&BTreeSet::new()).types,
        [ResourceType::Cluster, ResourceType::Listener].into()
    );
    let clusters = |names: &[&str]| {
        let any: Vec<Any> = names.iter().map(|n| pack_any(eds_cluster(n))).collect();
        Resources::decode(ResourceType::Cluster, &any).unwrap()
    };
    config.apply(clusters(&["a", "b"]), "1".into());
    config.apply(clusters(&["b", "c"]), "2".into());
    assert_eq!(config.clusters.keys().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(config.version(ResourceType::Cluster), Some("2"));

    let endpoints = |names: &[&str]| {
        let any: Vec<Any> = names.iter().map(|n| pack_any(cla(n))).collect();
        Resources::decode(ResourceType::Endpoint, &any).unwrap()
    };
    config.apply(endpoints(&["b"]), "1".into());
    config.apply(endpoints(&["c"]), "2".into());
    assert_eq!(config.endpoints.keys().collect::<Vec<_>>(), ["b", "c"]);
    config.retain(
        &BTreeSet::new(),
        &["c".to_string()].into(),
        &BTreeSet::new(),
    );
    assert_eq!(config.endpoints.keys().collect::<Vec<_>>(), ["c"]);
    assert_eq!(
        ResourceType::from_type_url(SECRET),
        Some(ResourceType::Secret)
    );
    assert_eq!(ResourceType::from_type_url("type.googleapis.com/x"), None);
    let secret = Resources::decode(ResourceType::Secret, &[pack_any(root_ca())]).unwrap();
    assert_eq!(secret.names(), ["ROOTCA".to_string()].into());
}

#[test]
fn accepted_resources_keep_the_bytes_sent_and_decode_to_the_message() {
    let cluster = eds_cluster("outbound|80||a");
    let any = pack_any(cluster.clone());
    let Resources::Clusters(accepted) =
        Resources::decode(ResourceType::Cluster, std::slice::from_ref(&any)).unwrap()
    else {
        panic!("clusters expected");
    };
    let kept = &accepted["outbound|80||a"];
    assert_eq!(kept.bytes(), any.value.as_slice());
    assert_eq!(kept.decode().unwrap(), cluster);
    assert_eq!(kept.references().endpoints, ["outbound|80||a"]);
    // Equal bytes are equal resources, whoever encoded them; a change is not.
    assert_eq!(*kept, Encoded::new(&cluster));
    let mut changed = kept.clone();
    changed.edit(|c| c.name = "outbound|80||b".into()).unwrap();
    assert_ne!(changed, *kept);
    assert_eq!(changed.decode().unwrap().name, "outbound|80||b");
    assert_eq!(changed.references().endpoints, ["outbound|80||b"]);
}
