//! `isthmus link`: writes each cluster's peer entry into the other's MeshFederation.
//!
//! Two modes, one command:
//! - directory mode, `isthmus link <a> <b>` ([`dir`]): the MeshFederations are YAML files in
//!   the clusters' config directories (the lab);
//! - Kubernetes mode, `isthmus link --context <a> --context <b>` ([`kubernetes`]): the
//!   MeshFederations live in the clusters' API servers (`isthmus install` created them), and
//!   the peer entries are discovered there: the east-west gateway and federation Services,
//!   and the root certificate of the `cacerts` Secret.
//!
//! `isthmus status` ([`status`]) shows the links as the federation controllers see them.

mod dir;
mod kubernetes;
mod status;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

pub(crate) use status::{StatusArgs, status};

/// Arguments of `isthmus link`.
#[derive(Debug, Args)]
pub(crate) struct LinkArgs {
    /// Directory mode: one cluster.
    a: Option<String>,
    /// Directory mode: the other cluster.
    b: Option<String>,
    /// Directory mode: a cluster's config directory, `<cluster>=<dir>` (repeat for both).
    #[arg(long = "config-dir", value_name = "CLUSTER=DIR")]
    config_dirs: Vec<String>,
    /// Directory mode: a lab's directory; cluster `c` is configured in
    /// `<lab-dir>/clusters/<c>/config`.
    #[arg(long)]
    lab_dir: Option<PathBuf>,
    /// Kubernetes mode: a kubeconfig context of one cluster (exactly twice, one per cluster).
    #[arg(long = "context", value_name = "CONTEXT")]
    contexts: Vec<String>,
    /// Kubernetes mode: the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the namespace Isthmus is installed in, in both clusters.
    #[arg(long, default_value = "isthmus-system")]
    namespace: String,
    /// Kubernetes mode: how peers reach a cluster's east-west gateway, `<context>=<host:port>`
    /// (repeat for several addresses). Default: the MeshFederation's
    /// spec.local.gatewayAddresses, else the `isthmus-eastwestgateway` Service.
    #[arg(long = "gateway-address", value_name = "CONTEXT=HOST:PORT")]
    gateway_addresses: Vec<String>,
    /// Kubernetes mode: how peers reach a cluster's federation API, `<context>=<host:port>`.
    /// Default: the `isthmus-federation` Service.
    #[arg(long = "federation-endpoint", value_name = "CONTEXT=HOST:PORT")]
    federation_endpoints: Vec<String>,
    /// Kubernetes mode: the Secret (in --namespace) whose `root-cert.pem` becomes the
    /// cluster's trust bundle in its peer's MeshFederation.
    #[arg(long, default_value = "cacerts", value_name = "NAME")]
    ca_secret: String,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

/// Which mode the arguments ask for.
#[derive(Debug, PartialEq, Eq)]
enum Mode<'a> {
    /// Two cluster names, linked through their config directories.
    Directory(&'a str, &'a str),
    /// Two kubeconfig contexts, linked through their API servers.
    Kubernetes(&'a str, &'a str),
}

fn mode(args: &LinkArgs) -> anyhow::Result<Mode<'_>> {
    let kube_flags = args.kubeconfig.is_some()
        || !args.gateway_addresses.is_empty()
        || !args.federation_endpoints.is_empty();
    let dir_flags = !args.config_dirs.is_empty() || args.lab_dir.is_some();
    match (
        args.a.as_deref(),
        args.b.as_deref(),
        args.contexts.as_slice(),
    ) {
        (Some(_), _, [_, ..]) => bail!(
            "give either two cluster names (directory mode) or two --context (Kubernetes mode), \
             not both"
        ),
        (Some(a), Some(b), []) => {
            if kube_flags {
                bail!(
                    "--kubeconfig, --gateway-address and --federation-endpoint only apply with \
                     --context <a> --context <b>"
                );
            }
            Ok(Mode::Directory(a, b))
        }
        (Some(a), None, []) => bail!("directory mode links two clusters: isthmus link {a} <other>"),
        (None, _, [a, b]) => {
            if dir_flags {
                bail!(
                    "--config-dir and --lab-dir only apply to directory mode (isthmus link <a> <b>)"
                );
            }
            if a == b {
                bail!("cannot link context {a:?} with itself");
            }
            Ok(Mode::Kubernetes(a, b))
        }
        (None, _, []) => bail!(
            "name two clusters: isthmus link <a> <b> (config directories) or \
             isthmus link --context <a> --context <b> (Kubernetes)"
        ),
        (None, _, contexts) => bail!(
            "--context: give exactly two kubeconfig contexts, one per cluster (got {})",
            contexts.len()
        ),
    }
}

/// Runs `isthmus link`.
pub(crate) fn link(args: &LinkArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match mode(args)? {
        Mode::Directory(a, b) => dir::run(args, (a, b), out),
        Mode::Kubernetes(a, b) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(kubernetes::run(args, (a, b), out))
        }
    }
}

#[cfg(test)]
mod tests;
