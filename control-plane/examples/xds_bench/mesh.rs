//! The generated mesh: `services` ServiceEntries with inline endpoints, the
//! sidecars that connect, and the one-endpoint changes.
//!
//! Shape (fixed, so runs are comparable):
//! - service `i` is `svc-<i>.ns-<i % 10>.svc.cluster.local`, MESH_INTERNAL,
//!   STATIC, VIP `240.<i>`; one HTTP port taken in turn from
//!   [`HTTP_PORTS`], and every tenth service also a TCP port
//!   ([`TCP_PORT`], which gives it a `<vip>_6379` listener);
//! - [`ENDPOINTS`] endpoints each, `10.<i * 5 + j>`, in two zones of one
//!   region, with labels `app`/`version` and a service account;
//! - sidecar `c` is endpoint `c / services` of service `c % services`, so
//!   every proxy has its own inbound listener and clusters, as in a real mesh;
//! - with `--scoped`, every namespace has a Sidecar resource (no selector,
//!   so it applies to every sidecar there) importing `./*` plus the
//!   [`SHARED`] services of other namespaces: each proxy sees a tenth of
//!   the mesh plus a handful of services.

use std::net::Ipv4Addr;

use isthmus_api::Resource;
use isthmus_control_plane::xds::{ProxyInfo, ProxyRole};
use serde_json::json;

/// Endpoints per service.
pub const ENDPOINTS: usize = 5;
/// HTTP ports, assigned round-robin: one route configuration each.
pub const HTTP_PORTS: [u16; 4] = [80, 8080, 9080, 5000];
/// TCP port of every tenth service.
pub const TCP_PORT: u16 = 6379;
/// Namespaces the services and sidecars are spread over.
const NAMESPACES: usize = 10;
/// With `--scoped`: services every Sidecar imports besides its own namespace's.
pub const SHARED: [usize; 5] = [1, 2, 3, 4, 5];

fn name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn namespace(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

/// The `n`-th address of a /8 network.
fn addr(first_octet: u8, n: usize) -> Ipv4Addr {
    let n = u32::try_from(n).expect("address index fits in 24 bits") & 0x00ff_ffff;
    Ipv4Addr::from(u32::from(first_octet) << 24 | n)
}

fn locality(j: usize) -> String {
    format!(
        "us-east/us-east-1{}",
        if j.is_multiple_of(2) { 'a' } else { 'b' }
    )
}

/// Address of endpoint `j` of service `i`; change `k` (if any) moved it.
fn endpoint_address(i: usize, j: usize, moved_by: Option<usize>) -> Ipv4Addr {
    match moved_by {
        Some(k) => addr(172, k + 1),
        None => addr(10, i * ENDPOINTS + j),
    }
}

/// ServiceEntry `i`, with endpoint `moved.1` at the address change `moved.0` gave it.
pub fn service_entry(i: usize, moved: Option<(usize, usize)>) -> Resource {
    let mut ports = vec![
        json!({"number": HTTP_PORTS[i % HTTP_PORTS.len()], "name": "http-web", "protocol": "HTTP", "targetPort": 8080}),
    ];
    if i.is_multiple_of(10) {
        ports.push(json!({"number": TCP_PORT, "name": "tcp-redis", "protocol": "TCP"}));
    }
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|j| {
            let moved_by = moved.filter(|(_, e)| *e == j).map(|(k, _)| k);
            json!({
                "address": endpoint_address(i, j, moved_by).to_string(),
                "locality": locality(j),
                "serviceAccount": name(i),
                "labels": {"app": name(i), "version": "v1"},
            })
        })
        .collect();
    let value = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name(i), "namespace": namespace(i)},
        "spec": {
            "hosts": [format!("{}.{}.svc.cluster.local", name(i), namespace(i))],
            "addresses": [addr(240, i).to_string()],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": ports,
            "endpoints": endpoints,
        },
    });
    match isthmus_api::load::load_value(value) {
        Ok(r) => r,
        Err(errors) => panic!("generated ServiceEntry {i} is invalid: {errors:?}"),
    }
}

/// Every service, as first loaded.
pub fn services(count: usize) -> Vec<Resource> {
    (0..count).map(|i| service_entry(i, None)).collect()
}

/// Change `k`: which service and endpoint it moves (spread over the mesh).
pub fn change(k: usize, services: usize) -> (usize, usize) {
    ((k * 7919 + 13) % services, k % ENDPOINTS)
}

/// Sidecar `c` of a mesh of `services` services.
pub fn sidecar(c: usize, services: usize) -> ProxyInfo {
    let i = c % services;
    let j = (c / services) % ENDPOINTS;
    let ip = std::net::IpAddr::V4(endpoint_address(i, j, None));
    // The inline endpoint `j` of ServiceEntry `svc-i` is the workload `svc-i-j`.
    let workload = format!("{}-{j}", name(i));
    let ns = namespace(i);
    ProxyInfo {
        id: ProxyInfo::node_id(ProxyRole::Sidecar, Some(ip), &workload, &ns),
        role: ProxyRole::Sidecar,
        ip: Some(ip),
        workload,
        namespace: ns,
        cluster: "cluster-1".into(),
        network: String::new(),
        service_account: name(i),
        labels: [
            ("app".to_string(), name(i)),
            ("version".to_string(), "v1".to_string()),
        ]
        .into(),
        locality: locality(j).parse().expect("valid locality"),
    }
}

/// With `--scoped`: one Sidecar per namespace importing `./*` and [`SHARED`].
pub fn sidecar_resources(services: usize) -> Vec<Resource> {
    let shared: Vec<String> = SHARED
        .iter()
        .filter(|i| **i < services)
        .map(|i| {
            format!(
                "{}/{}.{}.svc.cluster.local",
                namespace(*i),
                name(*i),
                namespace(*i)
            )
        })
        .collect();
    (0..NAMESPACES.min(services))
        .map(|n| {
            let mut hosts = vec!["./*".to_string()];
            hosts.extend(shared.iter().cloned());
            let value = json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "Sidecar",
                "metadata": {"name": "default", "namespace": namespace(n)},
                "spec": {"egress": [{"hosts": hosts}]},
            });
            match isthmus_api::load::load_value(value) {
                Ok(r) => r,
                Err(errors) => panic!("generated Sidecar {n} is invalid: {errors:?}"),
            }
        })
        .collect()
}

/// With `--scoped`: whether sidecar `c` imports service `i`.
pub fn imports(c: usize, i: usize, services: usize) -> bool {
    namespace(c % services) == namespace(i) || SHARED.contains(&i)
}
