//! Collapses bursts of config changes into one update: the server waits until
//! the state has been quiet for `quiet` (`endpoints_quiet` while everything
//! the burst changed is endpoints), but never longer than `max` after the
//! first change of the burst, then hands the newest state to every
//! connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::xds::{Changes, SharedState};

/// How long to wait.
#[derive(Clone, Copy, Debug)]
pub(super) struct Debounce {
    pub(super) quiet: Duration,
    pub(super) endpoints_quiet: Duration,
    pub(super) max: Duration,
}

impl Debounce {
    /// Both quiet times the same (tests).
    #[cfg(test)]
    pub(super) fn uniform(quiet: Duration, max: Duration) -> Self {
        Self {
            quiet,
            endpoints_quiet: quiet,
            max,
        }
    }
}

/// One debounced configuration update, as every connection sees it.
#[derive(Clone)]
pub(super) struct Update {
    pub(super) state: SharedState,
    /// When the first change folded into this update reached the server;
    /// `None` for the state the server started with.
    pub(super) changed_at: Option<Instant>,
}

impl Update {
    pub(super) fn initial(state: SharedState) -> Arc<Self> {
        Arc::new(Self {
            state,
            changed_at: None,
        })
    }
}

/// Whether two handles point at the same state value.
pub(super) fn same_state(a: &SharedState, b: &SharedState) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Forwards `source` to `updates`, debounced. Ends when the source is closed
/// (after publishing its last value) or when nobody listens to `updates`.
pub(super) async fn run(
    mut source: watch::Receiver<SharedState>,
    updates: watch::Sender<Arc<Update>>,
    debounce: Debounce,
) {
    loop {
        tokio::select! {
            changed = source.changed() => if changed.is_err() { return },
            () = updates.closed() => return,
        }
        let first = Instant::now();
        let deadline = first + debounce.max;
        let published = updates.borrow().state.version();
        let mut source_open = true;
        while source_open {
            let endpoints_only = matches!(
                source.borrow().changes_since(published),
                Changes::None | Changes::Endpoints(_)
            );
            let wait = if endpoints_only {
                debounce.endpoints_quiet
            } else {
                debounce.quiet
            };
            let quiet = (Instant::now() + wait).min(deadline);
            tokio::select! {
                biased;
                () = sleep_until(quiet) => break,
                changed = source.changed() => source_open = changed.is_ok(),
            }
        }
        let state = source.borrow_and_update().clone();
        tracing::debug!(
            version = state.version(),
            waited_ms = first.elapsed().as_millis(),
            "config change debounced"
        );
        updates.send_replace(Arc::new(Update {
            state,
            changed_at: Some(first),
        }));
        if !source_open {
            return;
        }
    }
}
