//! `isthmus-gateway`: the east-west gateway alone, a binary without the
//! control plane, Kubernetes client or DNS server the multi-call `isthmus`
//! carries, so the gateway maps only the code it runs. Same flags as
//! `isthmus gateway`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use isthmus_gateway::cli::{GatewayArgs, run_until};
use isthmus_proxy_core::process::{init_logging, terminate};

#[derive(Debug, Parser)]
#[command(name = "isthmus-gateway", version, about = "Isthmus east-west gateway")]
struct Cli {
    #[command(flatten)]
    args: GatewayArgs,
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

fn run(args: &GatewayArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    args.runtime()?
        .block_on(run_until(options, terminate()))
        .map_err(Into::into)
}
