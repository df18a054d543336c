//! `isthmus ca`: the shared root and per-cluster intermediates (Istio `cacerts` layout).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use isthmus_identity::tool::{RootCa, create_intermediate, create_root, write_cacerts};

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
    }
    Ok(ExitCode::SUCCESS)
}
