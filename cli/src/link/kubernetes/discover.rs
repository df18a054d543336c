//! What a peer needs to know about one cluster, read from its API server: the cluster's
//! MeshFederation (`spec.local`), how its east-west gateway and federation API are reached
//! from outside, and its root certificate.

use std::net::IpAddr;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use isthmus_api::federation::{LocalCluster, MeshFederation, Peer};
use isthmus_identity::TrustBundle;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, TypeMeta};
use serde_json::Value;

use super::check::{check, join};

/// The east-west gateway's Service and port (what the chart installs).
pub(super) const GATEWAY_SERVICE: &str = "isthmus-eastwestgateway";
pub(super) const GATEWAY_PORT: u16 = 15443;
/// The federation controller's Service and port.
pub(super) const FEDERATION_SERVICE: &str = "isthmus-federation";
pub(super) const FEDERATION_PORT: u16 = 15021;

/// Addresses and where they came from (said in the output: a node address seen from this
/// machine is not always what the other cluster sees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reach {
    pub addresses: Vec<String>,
    pub source: String,
}

/// One cluster as seen through one kubeconfig context.
pub(super) struct Cluster {
    pub context: String,
    pub namespace: String,
    /// Its MeshFederations (in `namespace`).
    pub api: Api<DynamicObject>,
    /// Its MeshFederation as read (the object written back, with peers changed).
    pub object: DynamicObject,
    pub local: LocalCluster,
    pub gateway: Reach,
    pub federation: Reach,
    /// `root-cert.pem` of the CA Secret, normalized.
    pub trust_bundle: String,
    /// What Isthmus's validation says is wrong with the MeshFederation as read.
    pub warnings: Vec<String>,
    pub trust_bundle_source: String,
}

impl Cluster {
    /// `metadata.name` of the MeshFederation.
    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }

    /// The peer entry other clusters need to reach this one.
    pub fn peer(&self) -> Peer {
        let local = &self.local;
        Peer {
            name: local.cluster.clone(),
            federation_endpoint: self.federation.addresses[0].clone(),
            gateway_addresses: self.gateway.addresses.clone(),
            network: local.network.clone(),
            locality: local.locality.clone(),
            trust_domain: local.trust_domain.clone(),
            trust_bundle: Some(self.trust_bundle.clone()),
        }
    }
}

/// Addresses given on the command line for one context.
#[derive(Debug, Default)]
pub(super) struct Overrides {
    pub gateway: Vec<String>,
    pub federation: Option<String>,
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub(super) fn mesh_federations() -> ApiResource {
    ApiResource::erase::<MeshFederation>(&())
}

/// `object` with `apiVersion` and `kind` (list items may come without them).
pub(super) fn with_type(mut object: DynamicObject) -> DynamicObject {
    if object.types.is_none() {
        let ar = mesh_federations();
        object.types = Some(TypeMeta {
            api_version: ar.api_version,
            kind: ar.kind,
        });
    }
    object
}

/// Reads everything about the cluster behind `context`.
pub(super) async fn cluster(
    client: kube::Client,
    context: &str,
    namespace: &str,
    ca_secret: &str,
    overrides: Overrides,
) -> anyhow::Result<Cluster> {
    let api = Api::namespaced_with(client.clone(), namespace, &mesh_federations());
    let (object, local, warnings) = mesh_federation(&api, context, namespace).await?;
    let gateway = if !overrides.gateway.is_empty() {
        Reach {
            addresses: overrides.gateway,
            source: "--gateway-address".into(),
        }
    } else if !local.gateway_addresses.is_empty() {
        Reach {
            addresses: local.gateway_addresses.clone(),
            source: format!(
                "spec.local.gatewayAddresses of MeshFederation {namespace}/{}",
                object.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    } else {
        let flag = "--gateway-address";
        service_reach(
            &client,
            context,
            namespace,
            GATEWAY_SERVICE,
            GATEWAY_PORT,
            flag,
        )
        .await?
    };
    let federation = match overrides.federation {
        Some(endpoint) => Reach {
            addresses: vec![endpoint],
            source: "--federation-endpoint".into(),
        },
        None => {
            let (service, port) = (FEDERATION_SERVICE, FEDERATION_PORT);
            let flag = "--federation-endpoint";
            service_reach(&client, context, namespace, service, port, flag).await?
        }
    };
    let (trust_bundle, roots) = root_cert(&client, context, namespace, ca_secret).await?;
    Ok(Cluster {
        context: context.to_owned(),
        namespace: namespace.to_owned(),
        api,
        object,
        local,
        gateway,
        federation,
        trust_bundle,
        warnings,
        trust_bundle_source: format!(
            "root-cert.pem of Secret {namespace}/{ca_secret} ({roots} root{})",
            if roots == 1 { "" } else { "s" }
        ),
    })
}

/// The one MeshFederation with a `spec.local` section in `namespace`.
async fn mesh_federation(
    api: &Api<DynamicObject>,
    context: &str,
    namespace: &str,
) -> anyhow::Result<(DynamicObject, LocalCluster, Vec<String>)> {
    let install = format!(
        "run `isthmus install --context {context}` first (with federation.enabled it creates \
         MeshFederation {namespace}/mesh), or pass the namespace it is in with --namespace"
    );
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "context {context}: the MeshFederation kind is not known to the API server (no \
             CRD meshfederations.federation.isthmus.io): {install}"
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("context {context}: listing MeshFederations in namespace {namespace}")
            });
        }
    };
    let mut with_local: Vec<DynamicObject> = list
        .items
        .into_iter()
        .filter(|o| {
            o.data["spec"]["local"]["cluster"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .collect();
    let object = match with_local.len() {
        0 => bail!(
            "context {context}: no MeshFederation with spec.local.cluster in namespace \
             {namespace}: {install}"
        ),
        1 => with_type(with_local.remove(0)),
        n => bail!(
            "context {context}: {n} MeshFederations with spec.local in namespace {namespace} \
             ({}); a cluster has exactly one, delete the others",
            with_local
                .iter()
                .filter_map(|o| o.metadata.name.as_deref())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let checked = check(&object).with_context(|| format!("context {context}"))?;
    let copied = checked.copied_errors();
    if !copied.is_empty() {
        bail!(
            "context {context}: {}; peers would get these values (set them at install: \
             isthmus install --set network=... --set locality=region/zone --set trustDomain=...)",
            join(copied)
        );
    }
    let warnings = checked
        .errors
        .iter()
        .map(|e| format!("context {context}: {e} (Isthmus rejects the object until this is fixed)"))
        .collect();
    Ok((object, checked.spec.local, warnings))
}

/// `host:port`, with brackets around an IPv6 address.
pub(super) fn host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// How clients outside the cluster reach port `port` of Service `service`: its load balancer
/// ingress (IP or hostname), else for a NodePort Service the node port on every node's
/// InternalIP.
async fn service_reach(
    client: &kube::Client,
    context: &str,
    namespace: &str,
    service: &str,
    port: u16,
    flag: &str,
) -> anyhow::Result<Reach> {
    let what = format!("context {context}: Service {namespace}/{service}");
    let or_flag = format!("or pass {flag} {context}=<host:port>");
    let services: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &resource("", "v1", "Service", "services"),
    );
    let svc = services
        .get_opt(service)
        .await
        .with_context(|| format!("{what}: reading it"))?
        .ok_or_else(|| {
            anyhow!("{what} not found: is Isthmus installed (isthmus install)? {or_flag}")
        })?;
    let spec = &svc.data["spec"];
    let Some(svc_port) = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))
    else {
        bail!("{what}: spec.ports has no port {port}; {or_flag}");
    };
    let ingress: Vec<String> = svc.data["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let nonempty = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
            nonempty(&i["ip"]).or_else(|| nonempty(&i["hostname"]))
        })
        .collect();
    if !ingress.is_empty() {
        return Ok(Reach {
            addresses: ingress.iter().map(|h| host_port(h, port)).collect(),
            source: format!("Service {namespace}/{service} load balancer ingress"),
        });
    }
    match spec["type"].as_str().unwrap_or("ClusterIP") {
        "NodePort" => {
            let Some(node_port) = svc_port["nodePort"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
            else {
                bail!("{what}: spec.ports (port {port}) has no nodePort yet; {or_flag}");
            };
            let ips = node_internal_ips(client, context).await?;
            if ips.is_empty() {
                bail!("context {context}: no Node has an InternalIP address; {or_flag}");
            }
            Ok(Reach {
                addresses: ips.iter().map(|ip| host_port(ip, node_port)).collect(),
                source: format!(
                    "Service {namespace}/{service} NodePort {node_port} on the nodes' InternalIP"
                ),
            })
        }
        "LoadBalancer" => bail!(
            "{what}: the load balancer has no address yet (status.loadBalancer.ingress is \
             empty); wait for it, {or_flag}"
        ),
        other => bail!(
            "{what} is of type {other}, which other clusters cannot reach; use a LoadBalancer \
             or NodePort Service (chart value gateway.serviceType), {or_flag}"
        ),
    }
}

/// Every node's InternalIP addresses, nodes in name order.
async fn node_internal_ips(client: &kube::Client, context: &str) -> anyhow::Result<Vec<String>> {
    let nodes: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource("", "v1", "Node", "nodes"));
    let mut list = nodes
        .list(&ListParams::default())
        .await
        .with_context(|| format!("context {context}: listing Nodes"))?
        .items;
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(list
        .iter()
        .flat_map(|n| {
            n.data["status"]["addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|a| a["type"] == "InternalIP")
        .filter_map(|a| a["address"].as_str().map(str::to_owned))
        .collect())
}

/// The root certificates in `data.root-cert.pem` of Secret `namespace/name`, as PEM, and
/// how many there are.
async fn root_cert(
    client: &kube::Client,
    context: &str,
    namespace: &str,
    name: &str,
) -> anyhow::Result<(String, usize)> {
    let what = format!("context {context}: Secret {namespace}/{name}");
    let secrets: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &resource("", "v1", "Secret", "secrets"),
    );
    let secret = secrets
        .get_opt(name)
        .await
        .with_context(|| format!("{what}: reading it"))?
        .ok_or_else(|| {
            anyhow!(
                "{what} not found: its root-cert.pem is the trust bundle peers need; install \
                 with `isthmus install --ca-dir <dir>` (an intermediate from `isthmus ca \
                 intermediate`) or name the CA Secret with --ca-secret"
            )
        })?;
    let Some(encoded) = secret.data["data"]["root-cert.pem"].as_str() else {
        bail!("{what}: data.root-cert.pem is missing");
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .with_context(|| format!("{what}: data.root-cert.pem is not base64"))?;
    let pem = String::from_utf8(bytes)
        .map_err(|_| anyhow!("{what}: data.root-cert.pem is not PEM text"))?;
    let bundle =
        TrustBundle::from_pem(&pem).with_context(|| format!("{what}: data.root-cert.pem"))?;
    Ok((bundle.to_pem(), bundle.len()))
}
