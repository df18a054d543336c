//! Control-plane scale benchmark (issue 3): how fast config reaches many
//! sidecars, and what it costs in memory.
//!
//! ```sh
//! cargo run --release -p isthmus-control-plane --example xds_bench -- \
//!     --services 1000 --clients 100 --changes 20
//! ```
//!
//! The driver (default role) starts the control plane — the real
//! `isthmus_config::Store`, controller and `AdsServer` — as a child process
//! of this binary (`--role server`), connects `--clients` simulated sidecars
//! (real tonic ADS streams, one HTTP/2 connection each by default; state of
//! the world, or incremental with `--delta`), and measures:
//! - full push: from the moment every sidecar starts connecting until each
//!   has received and ACKed CDS, EDS, LDS and RDS;
//! - change latency: from one endpoint change written to the store until
//!   every sidecar has ACKed the EDS response generated from it (includes
//!   the push-context rebuild and the ADS debounce, `--debounce-ms`);
//! - the control plane's RSS (`/proc/<pid>/status`) and CPU time.
//!
//! It prints a table and one JSON line (also appended to `--json-out`).
//! `scripts/bench-control-plane.sh` runs the matrix; results and their
//! discussion are in `docs/benchmarks/control-plane.md`.

mod client;
mod driver;
mod mesh;
mod report;
mod server;
mod stats;
mod tracker;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

/// Which side of the benchmark this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Start the control plane as a child, run the sidecars, report.
    Driver,
    /// The control plane under test (started by the driver).
    Server,
}

/// Control-plane scale benchmark.
#[derive(Debug, Parser)]
#[command(about)]
pub struct Args {
    #[arg(long, value_enum, default_value = "driver")]
    role: Role,
    /// Services (ServiceEntries) in the mesh.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Simulated sidecars (at most 5 × services: each is one endpoint).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Sidecars speak incremental xDS (`DeltaAggregatedResources`)
    /// instead of state of the world.
    #[arg(long)]
    pub delta: bool,
    /// Every namespace gets a Sidecar resource importing its own namespace
    /// plus a handful of services (config scoping); changes are then
    /// measured on the sidecars that import the changed service.
    #[arg(long)]
    pub scoped: bool,
    /// ADS streams multiplexed on one HTTP/2 connection.
    #[arg(long, default_value_t = 1)]
    pub clients_per_connection: usize,
    /// One-endpoint changes to measure, one after the other.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Pause after each change has reached every sidecar.
    #[arg(long, default_value_t = 200)]
    pub change_interval_ms: u64,
    /// ADS debounce: push once config has been quiet this long.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// ADS debounce of endpoint-only changes (at most `--debounce-ms`).
    #[arg(long, default_value_t = 10)]
    pub endpoint_debounce_ms: u64,
    /// Streams the ADS server lets generate and send at once.
    #[arg(long, default_value_t = isthmus_control_plane::xds::server::DEFAULT_PUSH_THROTTLE)]
    pub push_throttle: usize,
    /// ADS debounce upper bound.
    #[arg(long, default_value_t = 1000)]
    pub max_debounce_ms: u64,
    /// Accept queue of the control plane's xDS listener (`isthmus
    /// control-plane` binds with tokio's default, 128).
    #[arg(long, default_value_t = 1024)]
    pub listen_backlog: u32,
    /// Give up on the full push after this long.
    #[arg(long, default_value_t = 600)]
    pub sync_timeout_s: u64,
    /// Give up on one change (and stop changing) after this long.
    #[arg(long, default_value_t = 60)]
    pub change_timeout_s: u64,
    /// Stop the control plane if its RSS passes this (protects the machine).
    #[arg(long, default_value_t = 12 * 1024)]
    pub max_server_rss_mib: u64,
    /// Append the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Print a Markdown table of the runs in this JSON-lines file and exit.
    #[arg(long)]
    summarize: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.summarize {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let runs = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", path.display()))?;
        print!("{}", report::markdown(&runs));
        return Ok(());
    }
    if args.clients > args.services * mesh::ENDPOINTS {
        anyhow::bail!(
            "--clients {} exceeds the {} endpoints of {} services",
            args.clients,
            args.services * mesh::ENDPOINTS,
            args.services
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.role {
        Role::Server => runtime.block_on(server::run(server::Settings {
            services: args.services,
            scoped: args.scoped,
            debounce: Duration::from_millis(args.debounce_ms),
            max_debounce: Duration::from_millis(args.max_debounce_ms),
            endpoint_debounce: Duration::from_millis(args.endpoint_debounce_ms),
            push_throttle: args.push_throttle,
            listen_backlog: args.listen_backlog,
        })),
        Role::Driver => {
            let report = runtime.block_on(driver::run(&args))?;
            let line = report.to_json().to_string();
            print!("{}", report.table());
            println!("{line}");
            if let Some(path) = &args.json_out {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                writeln!(f, "{line}")?;
            }
            // Client tasks are still attached to their streams: do not wait for them.
            runtime.shutdown_timeout(Duration::from_secs(1));
            Ok(())
        }
    }
}
