//! `isthmus sidecar`: the data plane next to one workload. Its arguments
//! and run live in the sidecar library, shared with the thin
//! `isthmus-sidecar` binary.

use std::process::ExitCode;

pub(crate) use isthmus_sidecar::cli::SidecarArgs;
use isthmus_sidecar::cli::run_until;

/// Runs the sidecar until SIGTERM or Ctrl-C, then drains.
pub(crate) fn run(args: SidecarArgs) -> anyhow::Result<ExitCode> {
    let options = args.options()?;
    args.runtime()?
        .block_on(run_until(options, isthmus_proxy_core::process::terminate()))?;
    Ok(ExitCode::SUCCESS)
}
