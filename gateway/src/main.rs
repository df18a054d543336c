//! `isthmus-gateway`: the east-west gateway alone, a binary without the
//! control plane, Kubernetes client or DNS server the multi-call `isthmus`
//! carries, so the gateway maps only the code it runs. Same flags as
//! `isthmus gateway`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use isthmus_gateway::cli::{GatewayArgs, run_until};

#[derive(Debug, Parser)]
#[command(name = "isthmus-gateway", version, about = "Isthmus east-west gateway")]
struct Cli {
    #[command(flatten)]
    args: GatewayArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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

/// Resolves on SIGTERM or Ctrl-C.
async fn terminate() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
