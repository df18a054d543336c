//! The directory source: multi-document YAML files under a directory tree.
//!
//! Each file is one origin in the store. A file is applied whole or not at
//! all: when it has any error, the error is recorded and the objects it
//! last loaded cleanly stay in effect. Changes are picked up with `notify`,
//! debounced, and by a periodic rescan in case an event was missed.

mod scan;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use scan::{ScanReport, Scanner, is_config_file};
pub use writer::{DirWriter, GENERATED_DIR};

use crate::source::{ConfigSource, ConfigWriter, SourceError};
use crate::store::Store;

/// Quiet period after a filesystem event before rescanning.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Rescan even without events this often.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);

/// Reads resources from a directory tree and keeps the store in step with it.
#[derive(Debug)]
pub struct DirectorySource {
    root: PathBuf,
    debounce: Duration,
    resync: Duration,
    store: Option<Store>,
}

impl DirectorySource {
    /// A source for `root` with default timings.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            debounce: DEFAULT_DEBOUNCE,
            resync: DEFAULT_RESYNC,
            store: None,
        }
    }

    /// Sets the quiet period after a change before rescanning.
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Sets the periodic rescan interval.
    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// The directory being read.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Attaches the store the writer should update immediately (read-your-writes).
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    async fn watch(self, store: Store, shutdown: CancellationToken) -> Result<(), SourceError> {
        let root = self.root.clone();
        let shown = root.display().to_string();
        let mut scanner = Scanner::new(&root);
        let name = self.name();
        store.register_source(&name);
        // Watch before the first scan: a file written between the scan and
        // the watch would otherwise wait for the periodic resync.
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(e) = &event
                    && matches!(e.kind, notify::EventKind::Access(_))
                {
                    return;
                }
                // A full channel already holds a pending rescan; dropping is fine.
                let _ = tx.try_send(());
            })
            .map_err(|source| SourceError::Watch {
                path: shown.clone(),
                source,
            })?;
        notify::Watcher::watch(&mut watcher, &root, notify::RecursiveMode::Recursive).map_err(
            |source| SourceError::Watch {
                path: shown.clone(),
                source,
            },
        )?;

        let report = scanner
            .rescan(&store)
            .map_err(|source| SourceError::Directory {
                path: shown.clone(),
                source,
            })?;
        info!(dir = %shown, files = report.files, errors = report.errors, "loaded config directory");
        store.mark_synced(&name);

        let mut resync = tokio::time::interval(self.resync);
        resync.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = resync.tick() => {}
                Some(()) = rx.recv() => {
                    // Debounce: wait until events stop for `debounce`, at most 10x that.
                    let deadline = tokio::time::Instant::now() + self.debounce * 10;
                    loop {
                        let quiet = tokio::time::sleep(self.debounce);
                        tokio::select! {
                            Some(()) = rx.recv() => {
                                if tokio::time::Instant::now() >= deadline { break; }
                            }
                            _ = quiet => break,
                        }
                    }
                }
            }
            match scanner.rescan(&store) {
                Ok(r) if r.changed > 0 => {
                    info!(dir = %shown, changed = r.changed, errors = r.errors, "config directory changed")
                }
                Ok(_) => debug!(dir = %shown, "rescan found no change"),
                Err(e) => warn!(dir = %shown, error = %e, "rescanning config directory"),
            }
        }
        drop(watcher);
        Ok(())
    }
}

impl ConfigSource for DirectorySource {
    fn name(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn run(
        self: Box<Self>,
        store: Store,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(self.watch(store, shutdown))
    }

    fn writer(&self) -> Arc<dyn ConfigWriter> {
        Arc::new(DirWriter::new(&self.root, self.store.clone()))
    }
}

#[cfg(test)]
mod tests;
