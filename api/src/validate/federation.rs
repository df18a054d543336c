//! MeshFederation.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::Ctx;
use crate::federation::MeshFederationSpec;
use crate::naming::{self, Locality};

pub(super) fn mesh_federation(cx: &mut Ctx, spec: &MeshFederationSpec) {
    let local = &spec.local;
    cx.field("local", |cx| {
        cx.field("cluster", |cx| {
            cx.check(
                naming::validate_dns1123_label(&local.cluster),
                "invalid cluster name",
            )
        });
        cx.field("network", |cx| network(cx, &local.network));
        // Both may be empty in what an install renders: no locality, and the gateway
        // addresses `isthmus link` works out from the gateway Service.
        if !local.locality.is_empty() {
            cx.field("locality", |cx| locality(cx, &local.locality));
        }
        cx.field("trustDomain", |cx| {
            cx.check(
                naming::validate_trust_domain(&local.trust_domain),
                "invalid trust domain",
            )
        });
        cx.each("gatewayAddresses", &local.gateway_addresses, |cx, a| {
            cx.host_port(a)
        });
        if let Some(listen) = &local.federation_listen
            && listen.parse::<SocketAddr>().is_err()
        {
            cx.error_at("federationListen", format!("{listen:?} must be ip:port"));
        }
    });
    let mut names = BTreeSet::new();
    let mut domains = BTreeSet::new();
    cx.each("peers", &spec.peers, |cx, p| {
        cx.field("name", |cx| {
            cx.check(naming::validate_dns1123_label(&p.name), "invalid peer name");
            if p.name == local.cluster {
                cx.error("a peer cannot have the local cluster's name");
            }
            if !names.insert(p.name.clone()) {
                cx.error(format!("peer {:?} is listed more than once", p.name));
            }
        });
        cx.field("federationEndpoint", |cx| cx.host_port(&p.federation_endpoint));
        if p.gateway_addresses.is_empty() {
            cx.error_at("gatewayAddresses", "at least one gateway address is required");
        }
        cx.each("gatewayAddresses", &p.gateway_addresses, |cx, a| cx.host_port(a));
        cx.field("network", |cx| network(cx, &p.network));
        // Empty: the peer declares no locality (as its own spec.local may).
        if !p.locality.is_empty() {
            cx.field("locality", |cx| locality(cx, &p.locality));
        }
        cx.field("trustDomain", |cx| {
            cx.check(naming::validate_trust_domain(&p.trust_domain), "invalid trust domain");
            if p.trust_domain == local.trust_domain {
                cx.error(format!(
                    "trust domain {:?} is the local cluster's trust domain; every cluster needs its own",
                    p.trust_domain
                ));
            } else if !domains.insert(p.trust_domain.clone()) {
                cx.error(format!("trust domain {:?} is used by another peer", p.trust_domain));
            }
        });
        if let Some(bundle) = &p.trust_bundle
            && !bundle.contains("-----BEGIN CERTIFICATE-----")
        {
            cx.error_at("trustBundle", "trustBundle must hold PEM certificates");
        }
    });
    if let Some(policy) = &spec.import_policy {
        cx.field("importPolicy", |cx| {
            cx.each("namespaces", &policy.namespaces, |cx, ns| {
                cx.check(naming::validate_dns1123_label(ns), "invalid namespace")
            });
            cx.each("services", &policy.services, |cx, s| {
                match s.split_once('/') {
                    Some((ns, name))
                        if naming::validate_dns1123_label(ns).is_ok()
                            && naming::validate_dns1123_label(name).is_ok() => {}
                    _ => cx.error(format!("service {s:?} must be namespace/name")),
                }
            });
        });
    }
}

fn network(cx: &mut Ctx, n: &str) {
    if n.is_empty() {
        cx.error("network is required");
    } else {
        cx.check(
            naming::validate_dns1123_subdomain(n),
            "invalid network name",
        );
    }
}

fn locality(cx: &mut Ctx, l: &str) {
    if let Err(e) = l.parse::<Locality>() {
        cx.error(e.to_string());
    }
}
