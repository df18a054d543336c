//! Kubernetes Services, EndpointSlices, Pods and Nodes → services and endpoints.

use std::collections::BTreeMap;

use isthmus_api::naming::{Locality, ServiceName};
use isthmus_api::{Kind, Resource};
use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::service_entry::workload_entry_endpoint;
use super::{
    Builder, CLUSTER_LABEL, Endpoint, MeshLocation, NETWORK_LABEL, Protocol, REGION_LABEL,
    Resolution, SUBZONE_LABEL, Service, ServicePort, ZONE_LABEL,
};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(super) fn add_services(b: &mut Builder<'_>) {
    let nodes: BTreeMap<String, BTreeMap<String, String>> = b
        .of_kind(Kind::Node)
        .filter_map(|r| match &**r {
            Resource::Node(n) => Some((
                n.metadata.name.clone()?,
                n.metadata.labels.clone().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    let pods: BTreeMap<(String, String), &Pod> = b
        .of_kind(Kind::Pod)
        .filter_map(|r| match &**r {
            Resource::Pod(p) => {
                Some(((p.metadata.namespace.clone()?, p.metadata.name.clone()?), p))
            }
            _ => None,
        })
        .collect();
    let mut slices: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for r in b.of_kind(Kind::EndpointSlice) {
        if let Resource::EndpointSlice(s) = &**r {
            let labels = s.metadata.labels.as_ref();
            if let (Some(ns), Some(svc)) = (
                s.metadata.namespace.clone(),
                labels.and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned(),
            ) {
                slices.entry((ns, svc)).or_default().push(s);
            }
        }
    }
    let services: Vec<KubeService> = b
        .of_kind(Kind::Service)
        .filter_map(|r| match &**r {
            Resource::Service(s)
                if b.wants(&format!(
                    "{}.{}.svc.{}",
                    s.metadata.name.as_deref().unwrap_or_default(),
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    b.ctx.domain
                )) =>
            {
                Some(s.clone())
            }
            _ => None,
        })
        .collect();
    for svc in services {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            b.warnings.push(format!(
                "Service {ns}/{name}: type ExternalName is not supported; use a ServiceEntry with resolution DNS"
            ));
            continue;
        }
        let ports: Vec<ServicePort> = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") != "UDP")
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let name = p.name.clone().unwrap_or_else(|| port.to_string());
                let protocol = p
                    .app_protocol
                    .as_deref()
                    .and_then(Protocol::from_name)
                    .or_else(|| Protocol::from_name(&name))
                    .unwrap_or(Protocol::Tcp);
                Some(ServicePort {
                    name,
                    port,
                    protocol,
                })
            })
            .collect();
        let addresses = spec
            .cluster_ips
            .unwrap_or_default()
            .iter()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .fold(Vec::new(), |mut acc, ip| {
                if !acc.contains(&ip) {
                    acc.push(ip);
                }
                acc
            });
        let ctx = EndpointContext {
            cluster: b.ctx,
            nodes: &nodes,
            pods: &pods,
        };
        let mut endpoints: Vec<Endpoint> = slices
            .get(&(ns.clone(), name.clone()))
            .into_iter()
            .flatten()
            .flat_map(|s| ctx.slice_endpoints(s))
            .collect();
        // Services may also select WorkloadEntries (VMs, lab workloads).
        if let Some(selector) = spec.selector.filter(|s| !s.is_empty()) {
            for r in b.of_kind(Kind::WorkloadEntry) {
                if let Resource::WorkloadEntry(we) = &**r
                    && we.metadata.namespace.as_deref() == Some(ns.as_str())
                    && selector
                        .iter()
                        .all(|(k, v)| we.spec.labels.get(k) == Some(v))
                {
                    endpoints.push(workload_entry_endpoint(
                        b.ctx,
                        &we.spec,
                        &we.metadata.name.clone().unwrap_or_default(),
                    ));
                }
            }
        }
        let hostname = format!("{name}.{ns}.svc.{}", b.ctx.domain);
        b.add(Service {
            hostname,
            namespace: ns.clone(),
            name: ServiceName::new(&name, &ns).ok(),
            ports,
            addresses,
            location: MeshLocation::Internal,
            resolution: Resolution::Static,
            exported: false,
            export_to: Vec::new(),
            endpoints,
            sources: vec![format!("Service {ns}/{name}")],
        });
    }
}

struct EndpointContext<'a> {
    cluster: &'a super::ClusterContext,
    nodes: &'a BTreeMap<String, BTreeMap<String, String>>,
    pods: &'a BTreeMap<(String, String), &'a Pod>,
}

impl EndpointContext<'_> {
    fn slice_endpoints(&self, slice: &EndpointSlice) -> Vec<Endpoint> {
        let ports: BTreeMap<String, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|e| {
                let address = e.addresses.first()?.clone();
                let conditions = e.conditions.clone().unwrap_or_default();
                let healthy =
                    conditions.ready.unwrap_or(true) && !conditions.terminating.unwrap_or(false);
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|t| t.kind.as_deref() == Some("Pod"))
                    .and_then(|t| {
                        self.pods
                            .get(&(t.namespace.clone().unwrap_or(ns.clone()), t.name.clone()?))
                    });
                let pod_labels = pod
                    .and_then(|p| p.metadata.labels.clone())
                    .unwrap_or_default();
                let node_labels = e.node_name.as_ref().and_then(|n| self.nodes.get(n));
                let label = |key: &str| {
                    pod_labels
                        .get(key)
                        .or_else(|| node_labels.and_then(|l| l.get(key)))
                        .cloned()
                };
                let locality = Locality {
                    region: label(REGION_LABEL).unwrap_or_default(),
                    zone: e
                        .zone
                        .clone()
                        .or_else(|| label(ZONE_LABEL))
                        .unwrap_or_default(),
                    subzone: label(SUBZONE_LABEL).unwrap_or_default(),
                };
                Some(
                    Endpoint {
                        address,
                        ports: ports.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                        cluster: pod_labels
                            .get(CLUSTER_LABEL)
                            .cloned()
                            .unwrap_or_else(|| self.cluster.cluster.clone()),
                        network: pod_labels
                            .get(NETWORK_LABEL)
                            .cloned()
                            .unwrap_or_else(|| self.cluster.network.clone()),
                        locality,
                        service_account: pod
                            .and_then(|p| p.spec.as_ref()?.service_account_name.clone())
                            .unwrap_or_else(|| "default".into()),
                        healthy,
                        weight: 1,
                        workload: pod
                            .and_then(|p| p.metadata.name.clone())
                            .unwrap_or_default(),
                        labels: pod_labels,
                    }
                    .with_topology_labels(),
                )
            })
            .collect()
    }
}
