//! `isthmus-sidecar`: the sidecar alone, a binary without the control
//! plane, Kubernetes client or DNS server the multi-call `isthmus` carries,
//! so each workload's proxy maps only the code it runs. Same flags as
//! `isthmus sidecar`.

use std::process::ExitCode;

use clap::Parser;
use isthmus_proxy_core::process::{init_logging, terminate};
use isthmus_sidecar::cli::{SidecarArgs, run_until};

#[derive(Debug, Parser)]
#[command(name = "isthmus-sidecar", version, about = "Isthmus sidecar proxy")]
struct Cli {
    #[command(flatten)]
    args: SidecarArgs,
}

fn main() -> ExitCode {
    init_logging("info");
    let cli = Cli::parse();
    match run(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &SidecarArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    args.runtime()?.block_on(run_until(options, terminate()))?;
    Ok(())
}
