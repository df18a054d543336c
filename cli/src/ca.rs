//! `isthmus ca`: the shared root and per-cluster intermediates (Istio `cacerts` layout).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use isthmus_identity::tool::{RootCa, create_intermediate, create_root, write_cacerts};
use isthmus_identity::{ClusterCa, ROOT_CERT_FILE, TrustBundle};

/// `isthmus ca ...`
#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Create the shared root CA (root-cert.pem, root-key.pem) in a directory.
    Root {
        /// Directory to create (refuses to overwrite an existing root).
        #[arg(long)]
        out: PathBuf,
        /// Common name of the root certificate.
        #[arg(long, default_value = "Isthmus root CA")]
        name: String,
    },
    /// Create a cluster's intermediate under the root, written as an Istio cacerts directory.
    Intermediate {
        /// The root directory made by `isthmus ca root`.
        #[arg(long)]
        root: PathBuf,
        /// Cluster name.
        #[arg(long)]
        cluster: String,
        /// The cluster's SPIFFE trust domain (carried by the intermediate).
        #[arg(long)]
        trust_domain: String,
        /// cacerts directory to write (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
        #[arg(long)]
        out: PathBuf,
    },
    /// Merge roots into one trust bundle (root rotation: old and new root side by side).
    ///
    /// Inputs are PEM files or directories holding root-cert.pem (a root directory or a
    /// cacerts directory). Prints the bundle, writes it to --out, or installs it as a
    /// cacerts directory's root-cert.pem (--cacerts, checked to still load).
    Bundle {
        /// PEM files or directories with root-cert.pem.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write the bundle to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace root-cert.pem of this cacerts directory with the bundle.
        #[arg(long, conflicts_with = "out")]
        cacerts: Option<PathBuf>,
    },
}

fn bundle(inputs: &[PathBuf]) -> anyhow::Result<TrustBundle> {
    let mut merged: Option<TrustBundle> = None;
    for input in inputs {
        let file = if input.is_dir() {
            input.join(ROOT_CERT_FILE)
        } else {
            input.clone()
        };
        let pem = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let roots = TrustBundle::from_pem(&pem).with_context(|| file.display().to_string())?;
        merged = Some(match merged {
            Some(m) => m.merged(&roots),
            None => roots,
        });
    }
    merged.context("no input")
}

/// Writes through a temporary file and renames it over `path`.
fn write_atomic(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Runs an `isthmus ca` subcommand.
pub(crate) fn run(cmd: CaCommand, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Root { out: dir, name } => {
            if dir.join("root-cert.pem").exists() {
                anyhow::bail!(
                    "{} already holds a root CA; refusing to overwrite it",
                    dir.display()
                );
            }
            let root = create_root(&name)?;
            root.write(&dir)
                .with_context(|| format!("writing {}", dir.display()))?;
            writeln!(out, "root CA written to {}", dir.display())?;
        }
        CaCommand::Intermediate {
            root,
            cluster,
            trust_domain,
            out: dir,
        } => {
            let root = RootCa::load(&root)
                .with_context(|| format!("loading root CA from {}", root.display()))?;
            let intermediate = create_intermediate(&root, &cluster, &trust_domain)?;
            write_cacerts(&dir, &intermediate, &root.trust_bundle()?)
                .with_context(|| format!("writing {}", dir.display()))?;
            writeln!(
                out,
                "cacerts for cluster {cluster} (trust domain {trust_domain}) written to {}",
                dir.display()
            )?;
        }
        CaCommand::Bundle {
            inputs,
            out: file,
            cacerts,
        } => {
            let merged = bundle(&inputs)?;
            match (file, cacerts) {
                (Some(file), _) => {
                    write_atomic(&file, &merged.to_pem())?;
                    writeln!(
                        out,
                        "{} root(s) written to {}",
                        merged.len(),
                        file.display()
                    )?;
                }
                (None, Some(dir)) => {
                    let current = ClusterCa::load(&dir)
                        .with_context(|| format!("loading cacerts {}", dir.display()))?;
                    let merged = current.trust_bundle().merged(&merged);
                    let path = dir.join(ROOT_CERT_FILE);
                    let previous = std::fs::read_to_string(&path)?;
                    write_atomic(&path, &merged.to_pem())?;
                    if let Err(e) = ClusterCa::load(&dir) {
                        write_atomic(&path, &previous)?;
                        anyhow::bail!(
                            "{}: the new bundle breaks the CA, restored: {e}",
                            path.display()
                        );
                    }
                    writeln!(
                        out,
                        "{} now trusts {} root(s)",
                        path.display(),
                        merged.len()
                    )?;
                }
                (None, None) => out.write_all(merged.to_pem().as_bytes())?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
