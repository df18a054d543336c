//! ServiceEntries (with inline endpoints or a workload selector) and WorkloadEntries.

use std::collections::BTreeMap;

use isthmus_api::naming::{Locality, ServiceName};
use isthmus_api::networking::{self, WorkloadEntrySpec};
use isthmus_api::{Kind, Resource};

use super::{
    Builder, CLUSTER_LABEL, ClusterContext, Endpoint, MeshLocation, NETWORK_LABEL, Protocol,
    Resolution, Service, ServicePort,
};

pub(super) fn add_service_entries(b: &mut Builder<'_>) {
    let entries: Vec<networking::ServiceEntry> = b
        .of_kind(Kind::ServiceEntry)
        .filter_map(|r| match &**r {
            Resource::ServiceEntry(se)
                if se
                    .spec
                    .hosts
                    .iter()
                    .any(|h| b.wants(&h.to_ascii_lowercase())) =>
            {
                Some(se.clone())
            }
            _ => None,
        })
        .collect();
    for se in entries {
        let ns = se.metadata.namespace.clone().unwrap_or_default();
        let name = se.metadata.name.clone().unwrap_or_default();
        let spec = &se.spec;
        let ports: Vec<ServicePort> = spec
            .ports
            .iter()
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.clone(),
                    port: u16::try_from(p.number).ok()?,
                    protocol: p
                        .protocol
                        .as_deref()
                        .and_then(Protocol::from_name)
                        .or_else(|| Protocol::from_name(&p.name))
                        .unwrap_or(Protocol::Tcp),
                })
            })
            .collect();
        // targetPort is the default endpoint port for each named port.
        let target_ports: BTreeMap<String, u16> = spec
            .ports
            .iter()
            .filter_map(|p| Some((p.name.clone(), u16::try_from(p.target_port?).ok()?)))
            .collect();
        let resolution = match spec.resolution {
            Some(networking::Resolution::Static) => Resolution::Static,
            Some(networking::Resolution::Dns | networking::Resolution::DnsRoundRobin) => {
                Resolution::Dns
            }
            Some(networking::Resolution::None) | None => Resolution::Passthrough,
        };
        let mut endpoints: Vec<Endpoint> = spec
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, we)| workload_entry_endpoint(b.ctx, we, &format!("{name}-{i}")))
            .collect();
        if let Some(selector) = &spec.workload_selector {
            endpoints.extend(selected_workloads(b, &ns, &selector.labels));
        }
        if resolution == Resolution::Dns && endpoints.is_empty() {
            // DNS with no endpoints: the hosts themselves are resolved.
            endpoints.extend(
                spec.hosts
                    .iter()
                    .filter(|h| !h.starts_with('*'))
                    .map(|h| Endpoint {
                        address: h.clone(),
                        ports: BTreeMap::new(),
                        labels: BTreeMap::new(),
                        cluster: b.ctx.cluster.clone(),
                        network: b.ctx.network.clone(),
                        locality: Locality::default(),
                        service_account: String::new(),
                        healthy: true,
                        weight: 1,
                        workload: String::new(),
                    }),
            );
        }
        for ep in &mut endpoints {
            for (port_name, target) in &target_ports {
                ep.ports.entry(port_name.clone()).or_insert(*target);
            }
        }
        let addresses = spec
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect::<Vec<_>>();
        let location = match spec.location {
            Some(networking::Location::MeshExternal) => MeshLocation::External,
            _ => MeshLocation::Internal,
        };
        for host in &spec.hosts {
            let host = host.to_ascii_lowercase();
            b.add(Service {
                name: ServiceName::from_host(&host).map(|(n, _)| n),
                hostname: host,
                namespace: ns.clone(),
                ports: ports.clone(),
                addresses: addresses.clone(),
                location,
                resolution,
                exported: false,
                export_to: spec.export_to.clone(),
                endpoints: endpoints.clone(),
                sources: vec![format!("ServiceEntry {ns}/{name}")],
            });
        }
    }
}

/// WorkloadEntries (and Pods) in `ns` whose labels match `selector`.
fn selected_workloads(
    b: &Builder<'_>,
    ns: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for r in b.of_kind(Kind::WorkloadEntry) {
        if let Resource::WorkloadEntry(we) = &**r
            && we.metadata.namespace.as_deref() == Some(ns)
            && selector
                .iter()
                .all(|(k, v)| we.spec.labels.get(k) == Some(v))
        {
            out.push(workload_entry_endpoint(
                b.ctx,
                &we.spec,
                we.metadata.name.as_deref().unwrap_or_default(),
            ));
        }
    }
    out
}

/// One endpoint from a WorkloadEntry spec (standalone or inline in a ServiceEntry).
///
/// Health: a WorkloadEntry is healthy unless its weight is 0 (the federation
/// controller writes weight = healthy endpoint count of a remote cluster).
pub(super) fn workload_entry_endpoint(
    ctx: &ClusterContext,
    we: &WorkloadEntrySpec,
    name: &str,
) -> Endpoint {
    let labels = we.labels.clone();
    Endpoint {
        address: we.address.clone(),
        ports: we
            .ports
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), u16::try_from(*v).ok()?)))
            .collect(),
        cluster: labels
            .get(CLUSTER_LABEL)
            .cloned()
            .unwrap_or_else(|| ctx.cluster.clone()),
        network: we
            .network
            .clone()
            .or_else(|| labels.get(NETWORK_LABEL).cloned())
            .unwrap_or_else(|| ctx.network.clone()),
        locality: we
            .locality
            .as_deref()
            .and_then(|l| l.parse().ok())
            .unwrap_or_default(),
        service_account: we
            .service_account
            .clone()
            .unwrap_or_else(|| "default".into()),
        healthy: we.weight != Some(0),
        weight: we.weight.unwrap_or(1).max(1),
        workload: name.to_string(),
        labels,
    }
    .with_topology_labels()
}
