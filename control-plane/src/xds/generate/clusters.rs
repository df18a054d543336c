//! CDS: one cluster per service port (and per DestinationRule subset), named
//! `outbound|<port>|<subset>|<host>`, plus the sidecar's inbound clusters and
//! the passthrough/blackhole clusters.
//!
//! SNI for cross-network hops rides on the cluster, not per endpoint: a
//! cluster is exactly one (port, subset, host), which is exactly what the
//! SNI `outbound_.<port>_.<subset>_.<host>` names, so every endpoint of the
//! cluster — a local pod or a remote gateway — gets the same SNI. The remote
//! gateway routes on it; a local sidecar ignores it. Per-endpoint SNI would
//! need one transport socket match per endpoint for no gain.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier,
    circuit_breakers::Thresholds,
    cluster::{
        ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy,
        RingHashLbConfig,
        common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig},
    },
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::core::v3::{Http1ProtocolOptions, Http2ProtocolOptions};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    },
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt64Value;
use isthmus_api::naming::{Sni, SpiffeId};
use isthmus_api::networking::{ClientTlsMode, H2UpgradePolicy, SimpleLb};

use super::{
    EffectivePolicy, PushContext, SidecarScope, cluster_name, duration, resource, tls, u32_value,
};
use crate::registry::{MeshLocation, Protocol, Resolution, Service, ServicePort};
use crate::xds::{ProxyInfo, XdsResource};

/// Name of the cluster for traffic to addresses Isthmus does not know.
pub const PASSTHROUGH: &str = "PassthroughCluster";
/// Name of the cluster that drops traffic.
pub const BLACKHOLE: &str = "BlackHoleCluster";
/// Ring size of a consistent-hash cluster when the rule sets none (Istio's).
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Connect timeout when no DestinationRule sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every cluster a sidecar needs: the outbound ones (shared by every proxy
/// in the namespace, so generated once per push context) plus its own.
pub fn sidecar(pc: &PushContext, proxy: &ProxyInfo) -> Vec<XdsResource> {
    let scope = pc.sidecar_for(proxy).map(Arc::as_ref);
    let shared = pc.cache.outbound_clusters(&pc.view_key(proxy), || {
        outbound_all(pc, &proxy.namespace, scope)
    });
    let mut out = Vec::with_capacity(shared.len() + 4);
    out.extend(shared.iter().cloned());
    out.extend(inbound(pc, proxy));
    out.push(resource(PASSTHROUGH, passthrough()));
    out.push(resource(
        BLACKHOLE,
        Cluster {
            name: BLACKHOLE.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
            connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
            ..Cluster::default()
        },
    ));
    out
}

/// The outbound clusters visible from `namespace` (and in `scope`).
fn outbound_all(
    pc: &PushContext,
    namespace: &str,
    scope: Option<&SidecarScope>,
) -> Vec<XdsResource> {
    let mut out = Vec::new();
    for svc in pc.registry.services() {
        if !super::visible(&svc.export_to, Some(&svc.namespace), namespace)
            || scope.is_some_and(|s| !s.admits_any(svc))
        {
            continue;
        }
        let dr = pc.destination_rule(&svc.hostname, namespace, &svc.namespace);
        let subsets: Vec<Option<&str>> = std::iter::once(None)
            .chain(
                dr.iter()
                    .flat_map(|d| d.spec.subsets.iter().map(|s| Some(s.name.as_str()))),
            )
            .collect();
        for port in &svc.ports {
            if scope.is_some_and(|s| !s.admits(svc, port)) {
                continue;
            }
            for subset in &subsets {
                let policy = EffectivePolicy::resolve(dr, port.port, *subset);
                out.push(resource(
                    cluster_name(port.port, *subset, &svc.hostname),
                    outbound(pc, svc, port, *subset, &policy),
                ));
            }
        }
    }
    out
}

/// One outbound cluster.
pub fn outbound(
    pc: &PushContext,
    svc: &Service,
    port: &ServicePort,
    subset: Option<&str>,
    policy: &EffectivePolicy<'_>,
) -> Cluster {
    let name = cluster_name(port.port, subset, &svc.hostname);
    let mut c = base(&name, policy);
    match svc.resolution {
        Resolution::Static => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            // No `service_name`: Envoy's EDS name is then the cluster's own,
            // which is what it would repeat (2,000 clusters × 48 bytes for
            // every proxy's first sync).
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(super::ads()),
                service_name: String::new(),
            });
        }
        Resolution::Dns => {
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
            c.load_assignment = Some(dns_assignment(&name, svc, port));
        }
        Resolution::Passthrough => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    // HTTP/2 ports speak HTTP/2; an HTTP/1.1 port's hop follows
    // `h2UpgradePolicy` (unset: the proxy's default, HTTP/1.1 — Istio's
    // mesh-wide default DO_NOT_UPGRADE).
    let upgrade = policy
        .connection_pool
        .and_then(|cp| cp.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy);
    match (port.protocol, upgrade) {
        (Protocol::Http2 | Protocol::Grpc, _)
        | (Protocol::Http, Some(H2UpgradePolicy::Upgrade)) => {
            c.typed_extension_protocol_options = http2_options();
        }
        (Protocol::Http, Some(H2UpgradePolicy::DoNotUpgrade)) => {
            c.typed_extension_protocol_options = http1_options();
        }
        _ => {}
    }
    let mtls = match policy.tls.and_then(|t| t.mode) {
        Some(ClientTlsMode::Disable) => false,
        Some(ClientTlsMode::IstioMutual) => true,
        _ => svc.location == MeshLocation::Internal && svc.resolution != Resolution::Passthrough,
    };
    if mtls {
        let sans = match policy
            .tls
            .map(|t| &t.subject_alt_names)
            .filter(|s| !s.is_empty())
        {
            Some(explicit) => explicit.clone(),
            None => expected_identities(pc, svc),
        };
        let sni = policy
            .tls
            .and_then(|t| t.sni.clone())
            .or_else(|| {
                Sni::new(port.port, subset, &svc.hostname)
                    .ok()
                    .map(|s| s.to_string())
            })
            .unwrap_or_default();
        c.transport_socket = Some(tls::upstream(&sans, &sni));
    }
    c
}

/// The SPIFFE IDs the endpoints of a service may present.
fn expected_identities(pc: &PushContext, svc: &Service) -> Vec<String> {
    let ids: BTreeSet<String> = svc
        .endpoints
        .iter()
        .filter_map(|e| {
            SpiffeId::new(
                pc.trust_domain_of(&e.cluster),
                &svc.namespace,
                &e.service_account,
            )
            .ok()
        })
        .map(|id| id.to_string())
        .collect();
    ids.into_iter().collect()
}

/// Timeouts, balancing, circuit breaking and outlier detection from the policy.
fn base(name: &str, policy: &EffectivePolicy<'_>) -> Cluster {
    let tcp = policy.connection_pool.and_then(|cp| cp.tcp.as_ref());
    let http = policy.connection_pool.and_then(|cp| cp.http.as_ref());
    let connect = tcp
        .and_then(|t| t.connect_timeout)
        .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.get());
    let consistent = policy
        .load_balancer
        .and_then(|lb| lb.consistent_hash.as_ref());
    let lb = match policy.load_balancer.and_then(|lb| lb.simple) {
        _ if consistent.is_some() => LbPolicy::RingHash,
        Some(SimpleLb::Random) => LbPolicy::Random,
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        _ => LbPolicy::LeastRequest,
    };
    // Istio's ring: at least 1024 points unless the rule asks for more or fewer.
    let lb_config = consistent.map(|ch| {
        let min = ch
            .ring_hash
            .as_ref()
            .and_then(|r| r.minimum_ring_size)
            .or(ch.minimum_ring_size)
            .unwrap_or(DEFAULT_MIN_RING_SIZE);
        LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: min }),
            ..RingHashLbConfig::default()
        })
    });
    // Unset limits are unlimited, as in Istio (Envoy's own defaults, e.g. 3
    // concurrent retries per cluster, would fail requests under failover).
    let positive = |v: Option<i32>| {
        Some(u32_value(
            v.and_then(|v| u32::try_from(v).ok()).unwrap_or(u32::MAX),
        ))
    };
    let thresholds = Thresholds {
        max_connections: positive(tcp.and_then(|t| t.max_connections)),
        max_pending_requests: positive(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: positive(http.and_then(|h| h.http2_max_requests)),
        max_retries: positive(http.and_then(|h| h.max_retries)),
        ..Thresholds::default()
    };
    let distribute = policy
        .load_balancer
        .and_then(|lb| lb.locality_lb_setting.as_ref())
        .is_some_and(|l| !l.distribute.is_empty() && l.enabled != Some(false));
    // As Istio: with outlier detection, panic starts below minHealthPercent
    // (default 0: never), so ejections fail over instead of spreading load
    // over ejected hosts.
    let panic = policy
        .outlier_detection
        .map(|od| od.min_health_percent.unwrap_or(0).clamp(0, 100));
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(duration(connect)),
        lb_policy: lb as i32,
        lb_config,
        circuit_breakers: (thresholds != Thresholds::default()).then(|| CircuitBreakers {
            thresholds: vec![thresholds],
            ..CircuitBreakers::default()
        }),
        outlier_detection: policy.outlier_detection.map(|od| EnvoyOutlier {
            consecutive_5xx: od.consecutive_5xx_errors.map(u32_value),
            consecutive_gateway_failure: od.consecutive_gateway_errors.map(u32_value),
            enforcing_consecutive_gateway_failure: od
                .consecutive_gateway_errors
                .map(|_| u32_value(100)),
            consecutive_local_origin_failure: od.consecutive_local_origin_failures.map(u32_value),
            split_external_local_origin_errors: od
                .split_external_local_origin_errors
                .unwrap_or(false),
            interval: od.interval.map(|d| duration(d.get())),
            base_ejection_time: od.base_ejection_time.map(|d| duration(d.get())),
            max_ejection_percent: od
                .max_ejection_percent
                .and_then(|v| u32::try_from(v).ok())
                .map(u32_value),
            // Istio turns success-rate ejection off (Envoy's default is on).
            enforcing_success_rate: Some(u32_value(0)),
            ..EnvoyOutlier::default()
        }),
        common_lb_config: (distribute || panic.is_some()).then(|| CommonLbConfig {
            locality_config_specifier: distribute.then_some(
                LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig {}),
            ),
            healthy_panic_threshold: panic.map(|p| Percent {
                value: f64::from(p),
            }),
            ..CommonLbConfig::default()
        }),
        ..Cluster::default()
    }
}

fn http2_options() -> HashMap<String, envoy_types::pb::google::protobuf::Any> {
    protocol_options(ProtocolConfig::Http2ProtocolOptions(
        Http2ProtocolOptions::default(),
    ))
}

/// HTTP/1.1 upstream, explicitly (`h2UpgradePolicy: DO_NOT_UPGRADE`).
fn http1_options() -> HashMap<String, envoy_types::pb::google::protobuf::Any> {
    protocol_options(ProtocolConfig::HttpProtocolOptions(
        Http1ProtocolOptions::default(),
    ))
}

fn protocol_options(
    config: ProtocolConfig,
) -> HashMap<String, envoy_types::pb::google::protobuf::Any> {
    let opts = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(config),
            },
        )),
        ..HttpProtocolOptions::default()
    };
    HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        envoy_types::util::pack_any(opts),
    )])
}

fn dns_assignment(name: &str, svc: &Service, port: &ServicePort) -> ClusterLoadAssignment {
    let lb_endpoints = svc
        .endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(&e.address, e.port_for(port))),
                ..Endpoint::default()
            })),
            load_balancing_weight: Some(u32_value(e.weight.max(1))),
            ..LbEndpoint::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

/// A TCP socket address.
pub(crate) fn socket_address(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..SocketAddress::default()
        })),
    }
}

fn passthrough() -> Cluster {
    Cluster {
        name: PASSTHROUGH.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        ..Cluster::default()
    }
}

/// `inbound|<port>||`: the local application, reached on loopback.
pub fn inbound_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Clusters for the proxy's own workload: one per port it serves.
pub(crate) fn inbound(pc: &PushContext, proxy: &ProxyInfo) -> Vec<XdsResource> {
    super::listeners::workload_ports(pc, proxy)
        .into_iter()
        .map(|(_, target, protocol)| {
            let name = inbound_name(target);
            // The sidecar speaks to the app in the port's protocol (h2c for gRPC).
            let typed_extension_protocol_options =
                if matches!(protocol, Protocol::Http2 | Protocol::Grpc) {
                    http2_options()
                } else {
                    HashMap::new()
                };
            resource(
                name.clone(),
                Cluster {
                    typed_extension_protocol_options,
                    name: name.clone(),
                    cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                        DiscoveryType::Static as i32,
                    )),
                    connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
                    load_assignment: Some(ClusterLoadAssignment {
                        cluster_name: name,
                        endpoints: vec![LocalityLbEndpoints {
                            lb_endpoints: vec![LbEndpoint {
                                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                                    address: Some(socket_address("127.0.0.1", target)),
                                    ..Endpoint::default()
                                })),
                                ..LbEndpoint::default()
                            }],
                            ..LocalityLbEndpoints::default()
                        }],
                        ..ClusterLoadAssignment::default()
                    }),
                    ..Cluster::default()
                },
            )
        })
        .collect()
}
