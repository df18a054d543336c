//! `isthmus-sidecar`: the sidecar alone, a binary without the control
//! plane, Kubernetes client or DNS server the multi-call `isthmus` carries,
//! so each workload's proxy maps only the code it runs. Same flags as
//! `isthmus sidecar`, plus `--concurrency`.

use std::process::ExitCode;

use clap::Parser;
use isthmus_sidecar::cli::SidecarArgs;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "isthmus-sidecar", version, about = "Isthmus sidecar proxy")]
struct Cli {
    #[command(flatten)]
    args: SidecarArgs,
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

fn run(args: &SidecarArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    // One worker: everything on this thread, no work stealing or wakeups
    // across threads (the admin server keeps its own thread either way).
    let rt = if args.concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.concurrency)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let running = isthmus_sidecar::run::start(options, shutdown.clone()).await?;
        eprintln!(
            "sidecar: outbound on {}, admin on {}",
            running.outbound, running.admin
        );
        terminate().await;
        tracing::info!("draining");
        shutdown.cancel();
        running.join().await;
        Ok(())
    })
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
