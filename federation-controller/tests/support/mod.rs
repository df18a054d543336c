//! Harness: clusters with intermediates under a shared root, config
//! directories, real controllers on their own loopback addresses
//! (127.88.<test>.<cluster>, federation port 15021 as in the lab), and fake
//! east-west gateways that read a ClientHello and close, as a gateway does
//! for an SNI it does not route. [`k8s`] puts a fake API server per cluster
//! around the same pieces for Kubernetes mode.

#![allow(dead_code)]

pub mod k8s;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use isthmus_api::Resource;
use isthmus_api::networking::ServiceEntry;
use isthmus_federation::peer::Timings;
use isthmus_federation::{Options, Running};
use isthmus_identity::TrustBundle;
use isthmus_identity::tool::{self, RootCa};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const FEDERATION_PORT: u16 = 15021;
pub const GATEWAY_PORT: u16 = 15443;

static NEXT_TEST: AtomicU8 = AtomicU8::new(1);

/// A test's address block.
pub fn test_net() -> u8 {
    NEXT_TEST.fetch_add(1, Ordering::Relaxed)
}

pub fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 88, net, host))
}

/// Fast timings so tests take seconds.
pub fn timings() -> Timings {
    Timings {
        probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(300),
        probe_failures: 3,
        heartbeat: Duration::from_millis(200),
        stream_timeout: Duration::from_millis(1000),
        connect_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        staleness: Duration::from_secs(2),
    }
}

/// The one root of a test federation.
pub fn root() -> RootCa {
    tool::create_root("Isthmus test root").expect("root")
}

/// Writes `cluster`'s cacerts (intermediate under `root`, trusting `roots`) into `dir`.
pub fn write_ca(dir: &Path, root: &RootCa, cluster: &str, trust_domain: &str, roots: &TrustBundle) {
    let intermediate =
        tool::create_intermediate(root, cluster, trust_domain).expect("intermediate");
    tool::write_cacerts(dir, &intermediate, roots).expect("cacerts");
}

/// How one cluster is described to the others.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub name: String,
    pub ip: IpAddr,
    pub trust_domain: String,
    pub network: String,
    pub locality: String,
}

impl ClusterSpec {
    pub fn new(name: &str, net: u8, host: u8) -> Self {
        Self {
            name: name.to_owned(),
            ip: ip(net, host),
            trust_domain: format!("{name}.isthmus.local"),
            network: format!("net-{name}"),
            locality: format!("region-{name}/zone-a"),
        }
    }

    pub fn federation(&self) -> SocketAddr {
        SocketAddr::new(self.ip, FEDERATION_PORT)
    }

    pub fn gateway(&self) -> SocketAddr {
        SocketAddr::new(self.ip, GATEWAY_PORT)
    }

    fn peer_yaml(&self, trust_domain: &str) -> String {
        format!(
            "  - name: {}\n    federationEndpoint: \"{}\"\n    gatewayAddresses: [\"{}\"]\n    network: {}\n    locality: {}\n    trustDomain: {}\n",
            self.name,
            self.federation(),
            self.gateway(),
            self.network,
            self.locality,
            trust_domain
        )
    }
}

/// One cluster's directories and, while running, its controller and gateway.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub dir: tempfile::TempDir,
    pub running: Option<(Running, CancellationToken)>,
    pub gateway: Option<CancellationToken>,
}

impl Cluster {
    /// Creates the directories and cacerts (under `root`, trusting only it).
    pub fn new(spec: ClusterSpec, root: &RootCa) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("config")).expect("config dir");
        let roots = root.trust_bundle().expect("bundle");
        write_ca(
            &dir.path().join("ca"),
            root,
            &spec.name,
            &spec.trust_domain,
            &roots,
        );
        Self {
            spec,
            dir,
            running: None,
            gateway: None,
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn trust_bundle_out(&self) -> PathBuf {
        self.dir.path().join("trust-bundle.pem")
    }

    /// Writes the MeshFederation listing `peers` (each with the trust domain given, usually
    /// its own).
    pub fn link(&self, peers: &[(&ClusterSpec, &str)]) {
        let s = &self.spec;
        let mut yaml = format!(
            "apiVersion: federation.isthmus.io/v1alpha1\nkind: MeshFederation\nmetadata: {{name: {name}, namespace: isthmus-system}}\nspec:\n  local:\n    cluster: {name}\n    network: {network}\n    locality: {locality}\n    trustDomain: {td}\n    gatewayAddresses: [\"{gw}\"]\n    federationListen: \"{fed}\"\n",
            name = s.name,
            network = s.network,
            locality = s.locality,
            td = s.trust_domain,
            gw = s.gateway(),
            fed = s.federation(),
        );
        if !peers.is_empty() {
            yaml.push_str("  peers:\n");
            for (p, td) in peers {
                yaml.push_str(&p.peer_yaml(td));
            }
        }
        self.write("federation.yaml", &yaml);
    }

    pub fn write(&self, file: &str, yaml: &str) {
        let path = self.config_dir().join(file);
        let tmp = self.config_dir().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.config_dir().join(file)).expect("remove");
    }

    /// A service `name.sample.svc.cluster.local` with `healthy` + `unhealthy` endpoints
    /// (labels app, version, and an "evil" one that must never cross).
    pub fn add_service(&self, name: &str, healthy: u32, unhealthy: u32) {
        let mut eps = String::new();
        for i in 0..healthy + unhealthy {
            let weight = if i < healthy { "" } else { ", weight: 0" };
            eps.push_str(&format!(
                "  - {{address: 10.1.0.{i}, labels: {{app: {name}, version: v1, evil: \"drop-tables\"}}, locality: {loc}, serviceAccount: {name}{weight}}}\n",
                i = i + 1,
                loc = self.spec.locality,
            ));
        }
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: sample}}\nspec:\n  hosts: [{name}.sample.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{name: http, number: 5000, protocol: HTTP}}]\n  endpoints:\n{eps}"
        );
        self.write(&format!("svc-{name}.yaml"), &yaml);
    }

    pub fn export(&self, name: &str) {
        self.write(
            &format!("export-{name}.yaml"),
            &format!(
                "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {{name: {name}, namespace: sample}}\n"
            ),
        );
    }

    pub fn unexport(&self, name: &str) {
        self.remove(&format!("export-{name}.yaml"));
    }

    pub fn options(&self) -> Options {
        let mut o = Options::new(&self.spec.name, self.config_dir(), self.ca_dir());
        o.admin = Some(SocketAddr::new(self.spec.ip, 0));
        o.timings = timings();
        o.ca_reload = Some(Duration::from_millis(100));
        o.trust_bundle_out = Some(self.trust_bundle_out());
        o
    }

    pub async fn start(&mut self) {
        self.start_with(self.options()).await;
    }

    pub async fn start_with(&mut self, options: Options) {
        let token = CancellationToken::new();
        let running = isthmus_federation::start(options, token.clone())
            .await
            .expect("controller starts");
        assert_eq!(running.federation, self.spec.federation());
        self.running = Some((running, token));
    }

    pub async fn stop(&mut self) {
        if let Some((running, token)) = self.running.take() {
            token.cancel();
            tokio::time::timeout(Duration::from_secs(5), running.wait())
                .await
                .expect("controller stops in time")
                .expect("controller stops cleanly");
        }
    }

    pub fn running(&self) -> &Running {
        &self.running.as_ref().expect("running").0
    }

    /// A fake gateway on this cluster's gateway address.
    pub async fn start_gateway(&mut self) {
        let listener = TcpListener::bind(self.spec.gateway())
            .await
            .expect("gateway bind");
        let token = CancellationToken::new();
        let stop = token.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tcp.read(&mut buf).await;
                });
            }
        });
        self.gateway = Some(token);
    }

    pub fn stop_gateway(&mut self) {
        if let Some(t) = self.gateway.take() {
            t.cancel();
        }
    }

    /// Imported ServiceEntries in `generated/`, by name.
    pub fn imported(&self) -> BTreeMap<String, ServiceEntry> {
        let dir = self.config_dir().join("generated");
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for r in isthmus_api::load::load_yaml(None, &text).resources {
                if let Resource::ServiceEntry(se) = r {
                    out.insert(se.metadata.name.clone().unwrap_or_default(), se);
                }
            }
        }
        out
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return (v, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Endpoint weights of an imported entry.
pub fn weights(se: &ServiceEntry) -> Vec<u32> {
    se.spec
        .endpoints
        .iter()
        .map(|e| e.weight.unwrap_or(1))
        .collect()
}
