//! Worker threads that own connections, as Envoy's and nginx's workers do.
//!
//! Each worker is a single-threaded tokio runtime on a thread of its own.
//! An accepted connection is handed to one worker (round robin) and lives
//! there: its requests, and the upstream connections they open (the pool
//! keeps them per worker, see [`current`]), all run on that thread. A
//! request and its upstream connection's task wake each other without a
//! cross-thread wake-up (futex, another core's cache), which is what a
//! work-stealing runtime pays on every message of a proxied request.
//!
//! ```text
//! main thread (xDS, certificates, state, accept) ──connection──► worker k (k = n mod N)
//!                                                                  ├─ downstream connection task
//!                                                                  ├─ its requests
//!                                                                  └─ upstream connections (pool shard k)
//! ```

use isthmus_proxy_core::process::tick;
use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

thread_local! {
    /// `k + 1` on worker `k`, 0 elsewhere.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Which worker runs the calling code: `k + 1` on worker `k`, 0 on any
/// other thread (the main runtime, tests). Pools keep their connections
/// per worker under this key.
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// The worker threads of one sidecar; they stop when this is dropped.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `n` worker threads (`n` ≥ 1).
    ///
    /// # Errors
    /// If a runtime or thread cannot be created.
    pub fn start(n: usize) -> io::Result<Arc<Self>> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        for k in 0..n.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("isthmus-worker-{k}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(k + 1));
                    runtime.block_on(async {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = tick() => {}
                        }
                    });
                })?;
        }
        Ok(Arc::new(Self {
            handles,
            next: AtomicUsize::new(0),
            stop,
        }))
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The runtime of the next connection (round robin).
    pub(crate) fn next(&self) -> &Handle {
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[k]
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
