//! Directory mode of `isthmus link`: each cluster's MeshFederation is a YAML document in
//! its config directory (the lab, or any directory a federation controller reads).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use isthmus_api::Resource;
use isthmus_api::federation::{MeshFederation, Peer};
use isthmus_api::load::{load_value, load_yaml};

use super::LinkArgs;

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
             --lab-dir (or link clusters in Kubernetes with --context <a> --context <b>)"
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

/// Links clusters `a` and `b` through their config directories.
pub(super) fn run(
    args: &LinkArgs,
    (a_name, b_name): (&str, &str),
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if a_name == b_name {
        bail!("cannot link cluster {a_name:?} with itself");
    }
    let a = locate(&config_dir(args, a_name)?, a_name)?;
    let b = locate(&config_dir(args, b_name)?, b_name)?;
    let (peer_a, peer_b) = (peer_entry(&a.mf, &a.file)?, peer_entry(&b.mf, &b.file)?);
    write_peer(&a, &peer_b)?;
    write_peer(&b, &peer_a)?;
    if args.json {
        let report = serde_json::json!({
            "linked": [a_name, b_name],
            "files": [a.file, b.file],
            "peers": { (a_name): peer_b, (b_name): peer_a },
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "linked {} and {}:\n  {}: peer {} at {}\n  {}: peer {} at {}",
            a_name,
            b_name,
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
