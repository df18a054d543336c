//! Writes what every cluster needs before its processes start: the shared
//! root and an intermediate per cluster, the config directory (demo
//! services, MeshFederation linking every cluster with every other, the
//! ServiceExport), and bootstrap tokens.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context;
use isthmus_identity::tool::{RootCa, create_intermediate, create_root, write_cacerts};

use crate::plan::{ClusterPlan, HELLO_PORT, LabSpec, NAMESPACE};

/// Creates (or keeps) the root and writes every cluster's files. Existing
/// certificates are kept so a second `lab up` keeps identities stable.
pub fn prepare(spec: &LabSpec) -> anyhow::Result<()> {
    fs::create_dir_all(&spec.dir).with_context(|| format!("creating {}", spec.dir.display()))?;
    fs::create_dir_all(spec.log_dir())?;
    let root_dir = spec.root_dir();
    let root = if root_dir.join("root-cert.pem").exists() {
        RootCa::load(&root_dir).with_context(|| format!("loading {}", root_dir.display()))?
    } else {
        let root = create_root("Isthmus lab root CA")?;
        root.write(&root_dir)
            .with_context(|| format!("writing {}", root_dir.display()))?;
        root
    };
    let plan = spec.plan();
    for c in &plan {
        fs::create_dir_all(c.config_dir())?;
        if !c.cacerts_dir().join("ca-cert.pem").exists() {
            let inter = create_intermediate(&root, &c.name, &c.trust_domain)?;
            write_cacerts(c.cacerts_dir(), &inter, &root.trust_bundle()?)
                .with_context(|| format!("writing {}", c.cacerts_dir().display()))?;
        }
        let mut tokens = String::new();
        for w in &c.workloads {
            let token = format!("lab-{}-{}-{}", c.name, w.name, random_hex());
            let path = c.token_file(w);
            let token = match fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => {
                    write_private(&path, &token)?;
                    token
                }
            };
            writeln!(
                tokens,
                "\"{token}\": {{namespace: {NAMESPACE}, serviceAccount: {}}}",
                w.service_account
            )?;
        }
        write_private(&c.tokens_file(), &tokens)?;
        write_atomic(&c.config_dir().join("services.yaml"), &services(c))?;
        write_atomic(
            &c.config_dir().join("federation.yaml"),
            &federation(c, &plan),
        )?;
    }
    Ok(())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    // /dev/urandom is always there on Linux; fall back to the clock.
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = t.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_atomic(path, contents)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so a watcher never sees half a file.
pub fn write_atomic(path: &Path, contents: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The demo services of one cluster: helloworld (this cluster's version)
/// and the sleep client, as ServiceEntries with WorkloadEntries.
pub fn services(c: &ClusterPlan) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "# Written by `isthmus lab up`: the demo workloads of cluster {name}.\n\
         apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata: {{name: helloworld, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [helloworld.{NAMESPACE}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: {HELLO_PORT}, name: http}}]\n  workloadSelector: {{labels: {{app: helloworld}}}}\n\
         ---\n\
         apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata: {{name: sleep, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [sleep.{NAMESPACE}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: 80, name: http}}]\n  workloadSelector: {{labels: {{app: sleep}}}}\n",
        name = c.name
    );
    for w in &c.workloads {
        let mut labels = format!("app: {}", w.app);
        if let Some(v) = &w.version {
            let _ = write!(labels, ", version: {v}");
        }
        let _ = write!(
            out,
            "---\n\
             apiVersion: networking.istio.io/v1\n\
             kind: WorkloadEntry\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
             spec: {{address: {ip}, labels: {{{labels}}}, serviceAccount: {sa}, locality: {loc}, network: {net}}}\n",
            name = w.name,
            ip = w.ip,
            sa = w.service_account,
            loc = c.locality,
            net = c.network,
        );
    }
    out
}

/// MeshFederation linking `c` with every other cluster, and the export of helloworld.
pub fn federation(c: &ClusterPlan, all: &[ClusterPlan]) -> String {
    let mut out = format!(
        "# Written by `isthmus lab up`: cluster {name} and its peers.\n\
         apiVersion: federation.isthmus.io/v1alpha1\n\
         kind: MeshFederation\n\
         metadata: {{name: mesh, namespace: isthmus-system}}\n\
         spec:\n  local:\n    cluster: {name}\n    network: {net}\n    locality: {loc}\n    \
         trustDomain: {td}\n    gatewayAddresses: [\"{gw}\"]\n    federationListen: \"{fed}\"\n  peers:",
        name = c.name,
        net = c.network,
        loc = c.locality,
        td = c.trust_domain,
        gw = c.gateway,
        fed = c.federation,
    );
    let peers: Vec<&ClusterPlan> = all.iter().filter(|p| p.name != c.name).collect();
    if peers.is_empty() {
        out.push_str(" []\n");
    } else {
        out.push('\n');
    }
    for p in peers {
        let _ = write!(
            out,
            "  - name: {name}\n    federationEndpoint: \"{fed}\"\n    gatewayAddresses: [\"{gw}\"]\n    \
             network: {net}\n    locality: {loc}\n    trustDomain: {td}\n",
            name = p.name,
            fed = p.federation,
            gw = p.gateway,
            net = p.network,
            loc = p.locality,
            td = p.trust_domain,
        );
    }
    let _ = write!(
        out,
        "---\n\
         apiVersion: multicluster.x-k8s.io/v1alpha1\n\
         kind: ServiceExport\n\
         metadata: {{name: helloworld, namespace: {NAMESPACE}}}\n"
    );
    out
}
