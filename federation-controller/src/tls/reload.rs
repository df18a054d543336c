//! Keeping identity and trust current: the controller's certificate renewed
//! at half its lifetime, the `cacerts` directory reloaded when it changes
//! (root rotation), and every trusted root written to a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_identity::ClusterCa;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Tls;

pub(crate) async fn renew_loop(tls: Arc<Tls>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(tls.renew_every()) => {}
        }
        if let Err(error) = tls.renew() {
            tracing::error!(%error, "renewing the federation certificate");
        }
    }
}

/// Reloads the `cacerts` directory when a file in it changes (root rotation steps).
pub(crate) async fn ca_reload_loop(
    dir: PathBuf,
    every: Duration,
    tls: Arc<Tls>,
    roots_changed: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut seen = fingerprint(&dir);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        match ClusterCa::load(&dir) {
            Ok(ca) => match tls.replace_ca(Arc::new(ca)) {
                Ok(()) => {
                    seen = now;
                    tracing::info!(dir = %dir.display(), roots = tls.local_roots().len(), "reloaded the cluster CA");
                    roots_changed.send_modify(|v| *v += 1);
                }
                Err(error) => tracing::error!(%error, "issuing from the reloaded cluster CA"),
            },
            // Files mid-rewrite: try again next time.
            Err(error) => tracing::warn!(%error, "reloading the cluster CA"),
        }
    }
}

fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.modified().ok(), meta.len()))
        })
        .collect();
    out.sort();
    out
}

/// Writes every trusted root to `path` whenever the set changes.
pub(crate) async fn trust_bundle_loop(
    path: PathBuf,
    tls: Arc<Tls>,
    mut roots: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let mut last = String::new();
    loop {
        let pem = tls.all_roots().to_pem();
        if pem != last {
            let tmp = path.with_extension("tmp");
            let result = std::fs::write(&tmp, &pem).and_then(|()| std::fs::rename(&tmp, &path));
            match result {
                Ok(()) => last = pem,
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "writing the trust bundle")
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = roots.changed() => if changed.is_err() { return },
        }
    }
}
