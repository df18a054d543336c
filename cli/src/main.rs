//! `isthmus`: one binary for every Isthmus component and tool.
//!
//! Every component runs as a subcommand (`control-plane`, `sidecar`,
//! `gateway`, `dns`, `federation`), next to the lab (`lab`, `canary`,
//! `drill`) and the tools (`validate`, `crds`, `ca`, `iptables`, ...).

#![forbid(unsafe_code)]

mod ca;
mod control_plane;
mod dns;
mod federation;
mod gateway;
mod install;
mod iptables;
mod lab;
mod link;
mod sidecar;
mod validate;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Isthmus: multicluster service-mesh federation.
#[derive(Debug, Parser)]
#[command(name = "isthmus", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check resource files (Istio YAML, MeshFederation, ServiceExport, core kinds).
    ///
    /// Exits 0 when everything is valid, 1 listing every error otherwise.
    Validate {
        /// Files or directories (searched recursively for *.yaml / *.yml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print a JSON report instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the CustomResourceDefinitions of every custom kind Isthmus reads.
    Crds,
    /// Run this cluster's control plane (service registry, xDS, CA).
    ControlPlane(Box<control_plane::ControlPlaneArgs>),
    /// Run the cross-cluster DNS server (.global, clusterset.local names).
    Dns(Box<dns::DnsArgs>),
    /// Run this cluster's federation controller (catalog exchange with peers over mTLS).
    Federation(Box<federation::FederationArgs>),
    /// Link two clusters: writes each one's peer entry into the other's MeshFederation.
    ///
    /// `isthmus link <a> <b>` for config directories (the lab); `isthmus link --context <a>
    /// --context <b>` for clusters in Kubernetes (reads their API servers).
    Link(link::LinkArgs),
    /// Show federation peers (ALIVE/DOWN, probe latency, imported/exported, last error).
    Status(link::StatusArgs),
    /// A whole federation on this machine: up, status, logs, curl, load, demo, down.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Shift traffic between clusters: writes DestinationRule + VirtualService, shows the split.
    Canary(lab::CanaryArgs),
    /// Failover drills against a running lab.
    #[command(subcommand)]
    Drill(lab::DrillCommand),
    /// Run the sidecar proxy next to one workload (xDS, mTLS, routing, authorization).
    Sidecar(Box<sidecar::SidecarArgs>),
    /// Run this cluster's east-west gateway (SNI passthrough to exported services).
    Gateway(Box<gateway::GatewayArgs>),
    /// Show the xDS config the control plane last sent to a proxy.
    ProxyConfig {
        /// What to show.
        kind: control_plane::ConfigKind,
        /// The proxy's node id (`sidecar~<ip>~<workload>.<ns>~<ns>.svc.cluster.local`).
        proxy: String,
        /// The control plane's debug address (host:port, default port 15014).
        #[arg(long, default_value = "127.0.0.1:15014")]
        control_plane: String,
        /// Print the full resources as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create the shared root CA and per-cluster intermediates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Print, install (--apply) or remove (--cleanup) the transparent-capture iptables rules.
    Iptables(iptables::Args),
    /// Install Isthmus into a Kubernetes cluster (the Helm chart in deploy/, server-side applied).
    Install(Box<install::InstallArgs>),
    /// Print the version.
    Version {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    isthmus_proxy_core::process::init_logging("info,hickory_server=warn");
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Validate { paths, json } => validate::run(&paths, json, &mut out),
        Command::ControlPlane(args) => control_plane::run(*args),
        Command::Dns(args) => dns::run(*args),
        Command::Federation(args) => federation::run(*args),
        Command::Link(args) => link::link(&args, &mut out),
        Command::Status(args) => link::status(&args, &mut out),
        Command::Sidecar(args) => sidecar::run(*args),
        Command::Lab(cmd) => lab::run(cmd),
        Command::Canary(args) => lab::canary(args),
        Command::Drill(cmd) => lab::drill_cmd(cmd),
        Command::Gateway(args) => gateway::run(*args),
        Command::ProxyConfig {
            kind,
            proxy,
            control_plane,
            json,
        } => control_plane::proxy_config(kind, &proxy, &control_plane, json, &mut out),
        Command::Ca(cmd) => ca::run(cmd, &mut out),
        Command::Iptables(args) => iptables::run(args, &mut out),
        Command::Install(args) => install::run(*args, &mut out),
        Command::Crds => {
            out.write_all(isthmus_api::crds::to_yaml().as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version { json } => {
            let version = env!("CARGO_PKG_VERSION");
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "name": "isthmus", "version": version })
                )?;
            } else {
                writeln!(out, "isthmus {version}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
