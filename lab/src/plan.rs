//! The lab's layout: which clusters, which addresses, which processes.
//!
//! Everything is derived from the cluster names and a network base, so
//! `lab up`, `lab status`, the drills and the tests agree without asking
//! each other. Cluster *i* owns `127.0.<base + 10·i>.0/24`:
//!
//! | host | component | ports |
//! | --- | --- | --- |
//! | .1 | control plane | 15010 xDS + CA, 15014 debug |
//! | .2 | east-west gateway | 15443 passthrough, 15000 admin |
//! | .3 | DNS | 15053 UDP/TCP, 15000 admin |
//! | .4 | federation controller | 15021 federation API, 15000 admin |
//! | .11 | helloworld sidecar | 5000 inbound (mTLS), 15001 outbound, 15000 admin |
//! | .111 | helloworld app | 5000 |
//! | .21 | sleep sidecar (a client, no app) | 15001 outbound, 15000 admin |

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Namespace of the demo workloads.
pub const NAMESPACE: &str = "sample";
/// Port of the demo service.
pub const HELLO_PORT: u16 = 5000;

/// What a lab is made of.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabSpec {
    /// Cluster names, in order (the first is "east" in the default lab).
    pub clusters: Vec<String>,
    /// Third octet of the first cluster's range (default 10).
    pub net_base: u8,
    /// State directory (config, certificates, logs, state file).
    pub dir: PathBuf,
}

impl LabSpec {
    /// The default lab: east and west under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            clusters: vec!["east".into(), "west".into()],
            net_base: 10,
            dir: dir.into(),
        }
    }

    /// Checks names and that every cluster's range fits in 127.0.0.0/8.
    pub fn validate(&self) -> Result<(), String> {
        if self.clusters.is_empty() {
            return Err("--clusters: at least one cluster".into());
        }
        for (i, c) in self.clusters.iter().enumerate() {
            isthmus_api::naming::validate_dns1123_label(c)
                .map_err(|e| format!("--clusters: {c:?}: {e}"))?;
            if self.clusters[..i].contains(c) {
                return Err(format!("--clusters: {c:?} appears twice"));
            }
        }
        let last = u32::from(self.net_base) + 10 * (self.clusters.len() as u32 - 1);
        if self.net_base == 0 || last > 255 {
            return Err(format!(
                "--net-base {}: {} clusters need 127.0.{}.0/24 … 127.0.{last}.0/24",
                self.net_base,
                self.clusters.len(),
                self.net_base
            ));
        }
        Ok(())
    }

    /// The plan of every cluster.
    pub fn plan(&self) -> Vec<ClusterPlan> {
        self.clusters
            .iter()
            .enumerate()
            .map(|(i, name)| ClusterPlan::new(self, i, name))
            .collect()
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<ClusterPlan> {
        self.plan().into_iter().find(|c| c.name == name)
    }

    /// `<dir>/state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// `<dir>/logs`.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `<dir>/root`: the shared root CA.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }
}

/// What kind of process a component is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    ControlPlane,
    Gateway,
    Dns,
    Federation,
    Sidecar,
    App,
}

impl ComponentKind {
    /// Name in `<cluster>/<name>` and log file names.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::ControlPlane => "control-plane",
            ComponentKind::Gateway => "gateway",
            ComponentKind::Dns => "dns",
            ComponentKind::Federation => "federation",
            ComponentKind::Sidecar => "sidecar",
            ComponentKind::App => "app",
        }
    }
}

/// A demo workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadPlan {
    /// `helloworld-v1`, `sleep`.
    pub name: String,
    /// The app label.
    pub app: String,
    /// The version label (helloworld only).
    pub version: Option<String>,
    /// Service account (and bootstrap token owner).
    pub service_account: String,
    /// The workload address (sidecar inbound and outbound).
    pub ip: IpAddr,
    /// Where the app listens, if there is an app.
    pub app_addr: Option<SocketAddr>,
    /// The sidecar's outbound listener (what `lab curl` sends to).
    pub outbound: SocketAddr,
    /// The sidecar's admin server.
    pub admin: SocketAddr,
}

/// One cluster's addresses, names and files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterPlan {
    pub name: String,
    pub index: usize,
    pub network: String,
    pub trust_domain: String,
    /// `region/zone`.
    pub locality: String,
    /// `127.0.<net>.0/24`.
    pub net: u8,
    pub xds: SocketAddr,
    pub debug: SocketAddr,
    pub gateway: SocketAddr,
    pub gateway_admin: SocketAddr,
    pub dns: SocketAddr,
    pub dns_admin: SocketAddr,
    pub federation: SocketAddr,
    pub federation_admin: SocketAddr,
    pub workloads: Vec<WorkloadPlan>,
    /// `<dir>/clusters/<name>`.
    pub dir: PathBuf,
}

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

impl ClusterPlan {
    fn new(spec: &LabSpec, index: usize, name: &str) -> Self {
        let net = spec.net_base + 10 * index as u8;
        let locality = match name {
            "east" => "us-east/us-east-1a".to_string(),
            "west" => "us-west/us-west-1a".to_string(),
            other => format!("{other}/{other}-1a"),
        };
        // helloworld v1 in the first cluster, v2 in the second, v3 … after.
        let version = format!("v{}", index + 1);
        let at = |host: u8, port: u16| SocketAddr::new(ip(net, host), port);
        let workloads = vec![
            WorkloadPlan {
                name: format!("helloworld-{version}"),
                app: "helloworld".into(),
                version: Some(version.clone()),
                service_account: "helloworld".into(),
                ip: ip(net, 11),
                app_addr: Some(at(111, HELLO_PORT)),
                outbound: at(11, 15001),
                admin: at(11, 15000),
            },
            WorkloadPlan {
                name: "sleep".into(),
                app: "sleep".into(),
                version: None,
                service_account: "sleep".into(),
                ip: ip(net, 21),
                app_addr: None,
                outbound: at(21, 15001),
                admin: at(21, 15000),
            },
        ];
        Self {
            name: name.to_string(),
            index,
            network: format!("net-{name}"),
            trust_domain: format!("{name}.isthmus.local"),
            locality,
            net,
            xds: at(1, 15010),
            debug: at(1, 15014),
            gateway: at(2, 15443),
            gateway_admin: at(2, 15000),
            dns: at(3, 15053),
            dns_admin: at(3, 15000),
            federation: at(4, 15021),
            federation_admin: at(4, 15000),
            workloads,
            dir: spec.dir.join("clusters").join(name),
        }
    }

    /// The config directory the control plane and federation controller watch.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// The cluster's intermediate CA (Istio cacerts layout).
    pub fn cacerts_dir(&self) -> PathBuf {
        self.dir.join("cacerts")
    }

    /// The bootstrap token file.
    pub fn tokens_file(&self) -> PathBuf {
        self.dir.join("tokens.yaml")
    }

    /// A workload's token file.
    pub fn token_file(&self, workload: &WorkloadPlan) -> PathBuf {
        self.dir.join(format!("{}.token", workload.name))
    }

    /// The workload named `name`.
    pub fn workload(&self, name: &str) -> Option<&WorkloadPlan> {
        self.workloads.iter().find(|w| w.name == name)
    }

    /// The helloworld workload.
    pub fn helloworld(&self) -> &WorkloadPlan {
        &self.workloads[0]
    }

    /// The sleep workload.
    pub fn sleep(&self) -> &WorkloadPlan {
        &self.workloads[1]
    }
}

/// `<dir>/<file>` shown relative to nothing: for messages.
pub fn show(path: &Path) -> String {
    path.display().to_string()
}
