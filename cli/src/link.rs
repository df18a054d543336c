//! `isthmus link <a> <b>`: writes each cluster's peer entry into the other's
//! MeshFederation (directory mode: the lab, or any config directories).
//! `isthmus status`: peers as the federation controllers see them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use isthmus_api::Resource;
use isthmus_api::federation::{MeshFederation, Peer};
use isthmus_api::load::{load_value, load_yaml};
use isthmus_federation::admin::Status;

/// Arguments of `isthmus link`.
#[derive(Debug, Args)]
pub(crate) struct LinkArgs {
    /// One cluster.
    a: String,
    /// The other cluster.
    b: String,
    /// A cluster's config directory, `<cluster>=<dir>` (repeat for both).
    #[arg(long = "config-dir", value_name = "CLUSTER=DIR")]
    config_dirs: Vec<String>,
    /// A lab's directory: cluster `c` is configured in `<lab-dir>/clusters/<c>/config`.
    #[arg(long)]
    lab_dir: Option<PathBuf>,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `isthmus status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Admin address of a federation controller (repeat for several clusters).
    #[arg(long = "admin", default_value = "127.0.0.1:15022")]
    admins: Vec<SocketAddr>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One cluster's MeshFederation and where it lives.
struct Located {
    file: PathBuf,
    /// Index of its document in the file.
    doc: usize,
    mf: MeshFederation,
}

fn config_dir(args: &LinkArgs, cluster: &str) -> anyhow::Result<PathBuf> {
    for pair in &args.config_dirs {
        let Some((name, dir)) = pair.split_once('=') else {
            bail!("--config-dir {pair:?}: expected <cluster>=<dir>");
        };
        if name == cluster {
            return Ok(PathBuf::from(dir));
        }
    }
    match &args.lab_dir {
        Some(lab) => Ok(lab.join("clusters").join(cluster).join("config")),
        None => bail!(
            "no config directory for cluster {cluster:?}: pass --config-dir {cluster}=<dir> or \
             --lab-dir (linking through Kubernetes contexts is not supported yet)"
        ),
    }
}

fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs
}

/// Finds the MeshFederation of `cluster` among the YAML files of `dir` (not `generated/`).
fn locate(dir: &Path, cluster: &str) -> anyhow::Result<Located> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for (doc, chunk) in documents(&text).iter().enumerate() {
            for r in load_yaml(None, chunk).resources {
                if let Resource::MeshFederation(mf) = r
                    && mf.spec.local.cluster == cluster
                {
                    return Ok(Located { file, doc, mf });
                }
            }
        }
    }
    bail!(
        "no MeshFederation with spec.local.cluster {cluster:?} in {}",
        dir.display()
    )
}

/// The peer entry other clusters need to reach `mf`'s cluster.
fn peer_entry(mf: &MeshFederation, file: &Path) -> anyhow::Result<Peer> {
    let local = &mf.spec.local;
    let Some(endpoint) = local.federation_listen.clone() else {
        bail!(
            "{}: spec.local.federationListen is not set; peers need an address to dial",
            file.display()
        );
    };
    if endpoint
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified())
    {
        bail!(
            "{}: spec.local.federationListen is {endpoint}, which peers cannot dial; \
             set the address they reach this cluster on",
            file.display()
        );
    }
    Ok(Peer {
        name: local.cluster.clone(),
        federation_endpoint: endpoint,
        gateway_addresses: local.gateway_addresses.clone(),
        network: local.network.clone(),
        locality: local.locality.clone(),
        trust_domain: local.trust_domain.clone(),
        trust_bundle: None,
    })
}

/// Adds or replaces `peer` in `at` and rewrites its document (other documents stay as
/// they are; comments inside the rewritten document are lost).
fn write_peer(at: &Located, peer: &Peer) -> anyhow::Result<()> {
    let mut mf = at.mf.clone();
    match mf.spec.peers.iter_mut().find(|p| p.name == peer.name) {
        Some(existing) => {
            let bundle = existing.trust_bundle.take();
            *existing = Peer {
                trust_bundle: bundle,
                ..peer.clone()
            };
        }
        None => mf.spec.peers.push(peer.clone()),
    }
    mf.status = None;
    let resource = Resource::MeshFederation(mf).without_server_fields();
    let value = resource.to_value();
    load_value(value.clone()).map_err(|errors| {
        anyhow::anyhow!(
            "{}: the linked MeshFederation would be invalid: {}",
            at.file.display(),
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let text = std::fs::read_to_string(&at.file)?;
    let mut docs = documents(&text);
    docs[at.doc] = serde_yaml_ng::to_string(&value)?;
    let joined = docs.join("---\n");
    let tmp = at.file.with_extension("yaml.link-tmp");
    std::fs::write(&tmp, joined).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &at.file).with_context(|| format!("writing {}", at.file.display()))?;
    Ok(())
}

/// Runs `isthmus link`.
pub(crate) fn link(args: &LinkArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if args.a == args.b {
        bail!("cannot link cluster {:?} with itself", args.a);
    }
    let a = locate(&config_dir(args, &args.a)?, &args.a)?;
    let b = locate(&config_dir(args, &args.b)?, &args.b)?;
    let (peer_a, peer_b) = (peer_entry(&a.mf, &a.file)?, peer_entry(&b.mf, &b.file)?);
    write_peer(&a, &peer_b)?;
    write_peer(&b, &peer_a)?;
    if args.json {
        let report = serde_json::json!({
            "linked": [args.a, args.b],
            "files": [a.file, b.file],
            "peers": { &args.a: peer_b, &args.b: peer_a },
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "linked {} and {}:\n  {}: peer {} at {}\n  {}: peer {} at {}",
            args.a,
            args.b,
            a.file.display(),
            peer_b.name,
            peer_b.federation_endpoint,
            b.file.display(),
            peer_a.name,
            peer_a.federation_endpoint
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch_status(admin: SocketAddr) -> anyhow::Result<Status> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = format!("http://{admin}/status").parse()?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri))
        .await
        .with_context(|| format!("{admin}: no answer within 3 s"))?
        .with_context(|| format!("{admin}: is a federation controller's admin server there?"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{admin}/status: HTTP {status}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{admin}/status: unexpected answer"))
}

fn ago(unix: Option<u64>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    unix.map_or_else(
        || "never".into(),
        |t| format!("{}s ago", now.saturating_sub(t)),
    )
}

/// Runs `isthmus status`.
pub(crate) fn status(args: &StatusArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let statuses = rt.block_on(async {
        let mut all = Vec::new();
        for admin in &args.admins {
            all.push(fetch_status(*admin).await);
        }
        all
    });
    if args.json {
        let json: Vec<serde_json::Value> = statuses
            .iter()
            .zip(&args.admins)
            .map(|(s, admin)| match s {
                Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                Err(e) => serde_json::json!({ "admin": admin, "error": format!("{e:#}") }),
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        for (s, admin) in statuses.iter().zip(&args.admins) {
            let s = match s {
                Ok(s) => s,
                Err(e) => {
                    writeln!(out, "{admin}: {e:#}\n")?;
                    continue;
                }
            };
            writeln!(
                out,
                "CLUSTER {}  exports {} service(s), catalog v{}",
                s.cluster, s.exported, s.catalog_version
            )?;
            writeln!(
                out,
                "{:<12} {:<6} {:<11} {:>9} {:>8} {:>8} {:<10} LAST ERROR",
                "PEER", "STATE", "CONNECTION", "PROBE", "EXPORTED", "IMPORTED", "LAST SYNC"
            )?;
            for p in &s.peers {
                writeln!(
                    out,
                    "{:<12} {:<6} {:<11} {:>9} {:>8} {:>8} {:<10} {}",
                    p.name,
                    p.state,
                    p.connection,
                    p.probe_latency_ms
                        .map_or_else(|| "-".into(), |ms| format!("{ms:.1}ms")),
                    p.exported,
                    p.imported,
                    ago(p.last_sync),
                    p.last_error.as_deref().unwrap_or("-"),
                )?;
            }
            writeln!(out)?;
        }
    }
    let failed = statuses.iter().any(Result::is_err);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EAST: &str = "# lab\napiVersion: federation.isthmus.io/v1alpha1\nkind: MeshFederation\nmetadata: {name: mesh, namespace: isthmus-system}\nspec:\n  local:\n    cluster: east\n    network: net-east\n    locality: r1/z1\n    trustDomain: east.isthmus.local\n    gatewayAddresses: [\"127.0.10.2:15443\"]\n    federationListen: \"127.0.10.4:15021\"\n  peers: []\n---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: helloworld, namespace: sample}\n";

    #[test]
    fn link_writes_both_peer_entries_and_keeps_other_documents() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, octet) in [("east", 10), ("west", 20)] {
            let d = dir.path().join("clusters").join(name).join("config");
            std::fs::create_dir_all(&d).expect("mkdir");
            let text = EAST
                .replace("east", name)
                .replace("127.0.10.", &format!("127.0.{octet}."));
            std::fs::write(d.join("federation.yaml"), text).expect("write");
        }
        let args = LinkArgs {
            a: "east".into(),
            b: "west".into(),
            config_dirs: vec![],
            lab_dir: Some(dir.path().to_owned()),
            json: false,
        };
        let mut out = Vec::new();
        link(&args, &mut out).expect("link");
        // Twice is the same as once.
        link(&args, &mut out).expect("link again");
        let east = dir.path().join("clusters/east/config/federation.yaml");
        let text = std::fs::read_to_string(&east).expect("read");
        let loaded = load_yaml(None, &text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.resources.len(), 2, "the ServiceExport stays");
        let Resource::MeshFederation(mf) = &loaded.resources[0] else {
            panic!("first document is the MeshFederation")
        };
        assert_eq!(mf.spec.peers.len(), 1);
        let west = &mf.spec.peers[0];
        assert_eq!(west.name, "west");
        assert_eq!(west.federation_endpoint, "127.0.20.4:15021");
        assert_eq!(west.gateway_addresses, ["127.0.20.2:15443"]);
        assert_eq!(west.trust_domain, "west.isthmus.local");
    }
}
