//! `isthmus gateway`: the east-west gateway of one cluster. Its arguments
//! and run live in the gateway library, shared with the thin
//! `isthmus-gateway` binary.

use std::process::ExitCode;

pub(crate) use isthmus_gateway::cli::GatewayArgs;
use isthmus_gateway::cli::run_until;

/// Runs the gateway until SIGTERM or Ctrl-C, then drains.
pub(crate) fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let options = args.options()?;
    args.runtime()?
        .block_on(run_until(options, isthmus_proxy_core::process::terminate()))?;
    Ok(ExitCode::SUCCESS)
}
