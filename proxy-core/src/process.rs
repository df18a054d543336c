//! What every Isthmus process does the same way at its edges: log set-up
//! and waiting for the signal to stop. Shared by the multi-call `isthmus`
//! and the thin `isthmus-sidecar` / `isthmus-gateway` binaries.

/// Logs to stderr, filtered by `ISTHMUS_LOG` (tracing's `EnvFilter` syntax),
/// else by `default` (e.g. `"info"`).
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminate() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
