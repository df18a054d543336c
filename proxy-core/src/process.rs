//! What every Isthmus process does the same way at its edges: log set-up,
//! waiting for the signal to stop, and the proxies' runtime clock tick. Shared by the multi-call `isthmus`
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

/// How often [`tick`] ticks; shorter than every per-connection timer the
/// proxies set (the 10 s header-read and ClientHello timeouts).
pub const TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps a timer due within [`TICK`] on the runtime it runs on; never
/// returns. tokio wakes its I/O driver (an eventfd write, then one more
/// `epoll_wait`, on another thread when the driver is parked there)
/// whenever a new timer is due before the driver's next planned wake-up.
/// Without a tick that is nearly every connection's or request's first
/// timer, since the previous one was dropped when it was met; with it,
/// one wake-up a second.
pub async fn tick() {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
